"""The in-memory bank table: every live BankEntry, latest-wins by key, with an index per
kind of signal, and the matching rules.

- md5, sha256: exact lookups.
- pdq: Hamming distance within the bank's threshold (default 31), for the record's own
  hash and its dihedral variants (mirrors, rotations), if its quality is high enough.
- video_pdq: vPDQ-style. Every banked frame hash is indexed; a record's frames match a
  banked video when at least `video_query_pct` of the query's frames match some frame of
  that video (and `video_index_pct` of the video's frames are matched).

The table is written by the bank follower's thread and read by the match stage's, so
every access takes the lock. The lock is held only for short work: the PDQ indexes rebuild
themselves in a background thread (pipeline/banks/pdq.py), never under this lock.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.banks.pdq import LivePDQIndex
from pipeline.records import Record, record_key

EXACT_TYPES = frozenset({"md5", "sha256"})
PDQ_QUERY_TYPES = frozenset({"pdq", "pdq_dihedral"})


@dataclass(frozen=True)
class MatchConfig:
    pdq_threshold: int = 31
    bank_thresholds: Mapping[str, int] = field(default_factory=dict)  # per bank, overrides the default
    min_quality: int = 50
    video_frame_threshold: int = 31
    video_query_pct: float = 80.0
    video_index_pct: float = 0.0

    def threshold(self, bank: str) -> int:
        return self.bank_thresholds.get(bank, self.pdq_threshold)


def bank_match(entry: Record, distance: int = 0, item_id: str | None = None, score: float | None = None) -> Record:
    return {
        "bank": entry["bank"],
        "signal_type": entry["signal_type"],
        "hash": entry["hash"],
        "distance": distance,
        "category": entry["category"],
        "severity": entry["severity"],
        "source": entry.get("source", ""),
        "item_id": item_id,
        "score": score,
        "incident_id": entry.get("incident_id"),
    }


def video_item(entry: Record) -> tuple[str, str]:
    return entry["bank"], entry.get("item_id") or entry["hash"]


class BankTable:
    """Latest BankEntry per key, and matching of records' signals against them."""

    def __init__(self, config: MatchConfig | None = None) -> None:
        self.config = config or MatchConfig()
        self._lock = threading.Lock()
        self._entries: dict[str, Record] = {}
        self._exact: dict[tuple[str, str], dict[str, Record]] = {}
        self._pdq = LivePDQIndex()
        self._video = LivePDQIndex()
        self._video_frames: dict[tuple[str, str], int] = defaultdict(int)
        self.version = 0  # bumps on every change

    def __len__(self) -> int:
        return len(self._entries)

    # ---- updates ---------------------------------------------------------
    def apply(self, key: str, entry: Record | None) -> None:
        """Applies one record of the topic: an entry replaces its key's, None deletes it."""
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._unindex(key, old)
            if entry is not None:
                entry = {**entry, "hash": entry["hash"].lower()}
                self._entries[key] = entry
                self._index(key, entry)
            self.version += 1

    def load(self, entries: Iterable[Record]) -> None:
        for entry in entries:
            self.apply(record_key("banks", entry), entry)

    def _index(self, key: str, entry: Record) -> None:
        kind = entry["signal_type"]
        if kind == "pdq":
            self._pdq.add(key, entry["hash"])
        elif kind == "video_pdq":
            self._video.add(key, entry["hash"])
            self._video_frames[video_item(entry)] += 1
        else:
            self._exact.setdefault((kind, entry["hash"]), {})[key] = entry

    def _unindex(self, key: str, entry: Record) -> None:
        kind = entry["signal_type"]
        if kind == "pdq":
            self._pdq.remove(key)
        elif kind == "video_pdq":
            self._video.remove(key)
            self._video_frames[video_item(entry)] -= 1
        else:
            slot = self._exact.get((kind, entry["hash"]))
            if slot is not None:
                slot.pop(key, None)
                if not slot:
                    del self._exact[(kind, entry["hash"])]

    # ---- matching ----------------------------------------------------------
    def match_exact(self, signal_type: str, value: str) -> list[Record]:
        with self._lock:
            slot = self._exact.get((signal_type, value.lower()))
            return [bank_match(e) for e in slot.values()] if slot else []

    def match_batch(self, signal_lists: list[list[Record]]) -> list[list[Record]]:
        """The bank matches of each record's signals; perceptual queries of the whole batch
        go to the indexes together."""
        cfg = self.config
        with self._lock:
            radius = max([cfg.pdq_threshold, *cfg.bank_thresholds.values()])
            pdq_q = [
                (i, s["value"])
                for i, sigs in enumerate(signal_lists)
                for s in sigs
                if s["signal_type"] in PDQ_QUERY_TYPES and (s["quality"] or 0) >= cfg.min_quality
            ]
            pdq_hits = self._pdq.search([v for _, v in pdq_q], radius)
            video_q = [
                (i, s["value"])
                for i, sigs in enumerate(signal_lists)
                for s in sigs
                if s["signal_type"] == "video_pdq" and (s["quality"] or 0) >= cfg.min_quality
            ]
            video_hits = self._video.search([v for _, v in video_q], cfg.video_frame_threshold)

            out: list[list[Record]] = []
            for sigs in signal_lists:
                matches = []
                for s in sigs:
                    if s["signal_type"] in EXACT_TYPES:
                        slot = self._exact.get((s["signal_type"], s["value"].lower()))
                        matches += [bank_match(e) for e in slot.values()] if slot else []
                out.append(matches)
            best: dict[tuple[int, str], int] = {}
            for (i, _), hits in zip(pdq_q, pdq_hits, strict=True):
                for key, dist in hits:
                    if dist <= cfg.threshold(self._entries[key]["bank"]) and dist < best.get((i, key), 999):
                        best[(i, key)] = dist
            for (i, key), dist in sorted(best.items()):
                out[i].append(bank_match(self._entries[key], dist))
            self._video_matches(video_q, video_hits, out)
            return out

    def _video_matches(
        self, queries: list[tuple[int, str]], hits: list[list[tuple[str, int]]], out: list[list[Record]]
    ) -> None:
        cfg = self.config
        frames_per_record: dict[int, int] = defaultdict(int)
        matched_q: dict[tuple[int, tuple[str, str]], set[int]] = defaultdict(set)
        matched_b: dict[tuple[int, tuple[str, str]], set[str]] = defaultdict(set)
        nearest: dict[tuple[int, tuple[str, str]], tuple[int, str]] = {}
        for n, ((i, _), frame_hits) in enumerate(zip(queries, hits, strict=True)):
            frames_per_record[i] += 1
            for key, dist in frame_hits:
                item = video_item(self._entries[key])
                matched_q[(i, item)].add(n)
                matched_b[(i, item)].add(key)
                if dist < nearest.get((i, item), (999, ""))[0]:
                    nearest[(i, item)] = (dist, key)
        for (i, item), q_frames in sorted(matched_q.items()):
            query_pct = 100.0 * len(q_frames) / frames_per_record[i]
            index_pct = 100.0 * len(matched_b[(i, item)]) / max(1, self._video_frames[item])
            if query_pct >= cfg.video_query_pct and index_pct >= cfg.video_index_pct:
                dist, key = nearest[(i, item)]
                out[i].append(bank_match(self._entries[key], dist, item_id=item[1], score=round(query_pct, 1)))

    def video_frame_hits(self, frame_hashes: list[list[str]]) -> list[list[tuple[tuple[str, str], int, Record]]]:
        """For each frame (its PDQ and dihedral variants), the banked videos it is near: a list of
        ((bank, item_id), nearest distance, nearest entry), one per video. A live stream counts
        these over its recent frames (pipeline.stages.live)."""
        flat = [(i, h) for i, variants in enumerate(frame_hashes) for h in variants]
        with self._lock:
            hits = self._video.search([h for _, h in flat], self.config.video_frame_threshold)
            best: list[dict[tuple[str, str], tuple[int, Record]]] = [{} for _ in frame_hashes]
            for (i, _), frame_hits in zip(flat, hits, strict=True):
                for key, dist in frame_hits:
                    entry = self._entries[key]
                    item = video_item(entry)
                    if dist < best[i].get(item, (999, entry))[0]:
                        best[i][item] = (dist, entry)
        return [[(item, d, e) for item, (d, e) in sorted(found.items())] for found in best]

    # ---- inspection ----------------------------------------------------------
    def entries(self) -> list[Record]:
        with self._lock:
            return list(self._entries.values())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts: dict[str, int] = defaultdict(int)
            for e in self._entries.values():
                counts[f"{e['bank']}/{e['signal_type']}"] += 1
            return dict(counts)
