"""live: judges live streams as their frames arrive, and ends a violating stream once.

The live path consumes `mod.live` in its own consumer group and processes, so a backlog of
uploads never delays a frame. For each batch (frames of many streams together):

1. Load the streams' state (pipeline.state.streams) and their accounts. Events of a stream
   that is already over (ended by a decision, or closed by its `ended` event) are not
   judged again; they are counted in `modstream_live_ignored_total`.
2. Hash every frame to judge (exact hashes, PDQ and its dihedral variants) and look them
   up together: each frame against the image banks, and each kept frame against the frames
   of the banked videos. As for uploaded videos (vPDQ-style), frames below the quality
   floor are dropped and a frame within a few bits of the stream's last kept frame is
   collapsed into it.
3. Stream-level matching: over a sliding window of the stream's last `window` frame
   indexes, a banked video that at least `min_frames` distinct frames are near is a match
   (a re-broadcast, re-encoded, rescaled, cropped or mirrored, whose single frames need not
   be in any image bank). The match names the banked video and the frames.
4. Models: the stream's title goes through the text models when it starts; every
   `image_every`-th kept frame goes through the image models, if the registry has any.
5. The policy decides. `end_stream` is claimed once per stream (Redis), so a stream gets
   exactly one end_stream Decision (decision id from the stream), one strike and one set of
   banked hashes, whatever the number of violating frames, redeliveries or processes; the
   claim keeps the decision, so a redelivery of the event that ended the stream emits the
   same decision again. A review is claimed the same way (one task per stream). `started`
   gets a Decision (allow, or end_stream when the account may not go live); frames that
   are fine produce none: the stream's state counts them.
6. `ended` closes the stream's state, which then expires.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
from prometheus_client import Counter

from pipeline.policy.engine import UPHELD, Facts, Outcome, Policy
from pipeline.records import Incoming, Output, Record, now_ms, stable_id
from pipeline.signals.media import MediaError, MediaLimits, media_signals
from pipeline.signals.video import DEDUP_DISTANCE
from pipeline.stages.decide import decision_from, removal_entries, shared_signals
from pipeline.stages.enrich import moderation_record
from pipeline.state.accounts import AccountStore, account_context
from pipeline.state.streams import StreamState, StreamStore

logger = logging.getLogger(__name__)

IGNORED = Counter("modstream_live_ignored_total", "Live events of streams already over, not judged", ["kind"])
FRAMES = Counter("modstream_live_frames_total", "Live frames judged", ["outcome"])
ENDED = Counter("modstream_live_streams_ended_total", "Streams ended by a decision", ["rule"])


class LiveBanks(Protocol):
    def match_batch(self, signal_lists: list[list[Record]]) -> list[list[Record]]: ...
    def video_frame_hits(self, frame_hashes: list[list[str]]) -> list[list[tuple[tuple[str, str], int, Record]]]: ...


class Classifier(Protocol):
    def process(self, batch: Sequence[Incoming]) -> list[Output]: ...


class LiveStage:
    name = "live"
    inputs = ("live",)
    outputs = ("decisions", "review", "banks", "shared.signals")

    def __init__(
        self,
        streams: StreamStore,
        accounts: AccountStore,
        banks: LiveBanks,
        policy: Policy,
        classify: Classifier | None = None,
        limits: MediaLimits | None = None,
        *,
        window: int = 30,
        min_frames: int = 3,
        image_every: int = 5,
        removed_bank: str = "removed",
        incidents: Callable[[], list[Record]] = list,
    ) -> None:
        self.streams = streams
        self.accounts = accounts
        self.banks = banks
        self.policy = policy
        self.classify = classify
        self.limits = limits or MediaLimits()
        self.window = window
        self.min_frames = min_frames
        self.image_every = max(1, image_every)
        self.removed_bank = removed_bank
        self.incidents = incidents
        self._sampled: set[int] = set()  # frames of the batch in hand chosen for the image models

    # ---- the batch -----------------------------------------------------------
    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        events = [r.value for r in batch]
        states = self.streams.load([e["envelope"]["stream_id"] for e in events if e["envelope"].get("stream_id")])
        users = {e["envelope"]["user_id"] for e in events if e["envelope"].get("user_id")}
        accounts = self.accounts.get_many(users)
        judged = [e for e in events if self._judge(e, states)]
        signals = {id(e): self._signals(e) for e in judged if e["kind"] == "frame"}
        image_matches, video_hits = self._lookups(signals)

        records: list[tuple[Record, Record]] = []  # (event, record to decide), in order
        kept: dict[str, dict[int, str]] = defaultdict(dict)
        started_at: dict[str, int] = {}
        closed: list[tuple[str, int]] = []
        for event in judged:
            env = event["envelope"]
            sid = env["stream_id"]
            state = states[sid]
            state.user_id = state.user_id or env.get("user_id")
            if event["kind"] == "ended":
                closed.append((sid, env["occurred_at"]))
                continue
            if env["event_id"] in (state.ended_by, state.review_by):  # a redelivery: re-emitted below
                records.append((event, {}))
                continue
            if state.status == "":
                state.status = "live"
                started_at[sid] = env["occurred_at"]
            record = moderation_record("live", event)
            user = env.get("user_id")
            record["account"] = (accounts.get(user) or account_context(user, {})) if user else None
            record["stages"] = ["live"]
            if event["kind"] == "frame":
                found = signals[id(event)]
                if isinstance(found, MediaError):
                    record["media_error"] = str(found)
                    FRAMES.labels("unhashable").inc()
                    continue  # a frame that cannot be read is counted, not judged alone
                record["signals"] = found
                record["matches"] = image_matches[id(event)]
                if not self._keep_frame(state, event, found, video_hits.get(id(event), []), kept):
                    FRAMES.labels("collapsed").inc()
                    if not record["matches"]:
                        continue
                record["matches"] += self._stream_matches(state, event)
            records.append((event, record))

        self._classify(records)
        self._sampled.clear()
        out: list[Output] = []
        incidents = tuple(self.incidents())
        for event, record in records:
            state, event_id = states[event["envelope"]["stream_id"]], event["envelope"]["event_id"]
            if state.ended_by == event_id and state.end is not None:  # redelivered: the same outputs again
                out += self._end_outputs(state.end)
            elif state.over:  # an earlier event of this batch ended it
                IGNORED.labels(event["kind"]).inc()
            elif state.review_by == event_id and state.review is not None:
                out += self._review_outputs(state.review)
            else:
                out += self._decide(event, record, state, incidents)
        self.streams.save(
            [states[s] for s in dict.fromkeys(e["envelope"]["stream_id"] for e in judged)], kept, started_at
        )
        for sid, at in closed:
            self.streams.close(sid, at)
        return out

    def _judge(self, event: Record, states: dict[str, StreamState]) -> bool:
        """False for an event of a stream that is over (unless it is the event that ended it)."""
        sid = event["envelope"].get("stream_id")
        if not sid:
            return False
        state = states[sid]
        if not state.over:
            return True
        if state.ended_by == event["envelope"]["event_id"]:
            return True  # a redelivery of the event that ended it: emit its decision again
        if event["kind"] != "ended":
            IGNORED.labels(event["kind"]).inc()
        return event["kind"] == "ended"

    # ---- hashing and lookups ---------------------------------------------------
    def _signals(self, event: Record) -> list[Record] | MediaError:
        data = event.get("frame_b64")
        if not data:
            return MediaError("live frame without image bytes")
        try:
            found = media_signals(data, self.limits)
        except MediaError as exc:
            return exc
        index = event.get("frame_index")
        return [{**s, "frame": index} if s["signal_type"] in ("pdq", "pdq_dihedral") else s for s in found]

    def _lookups(
        self, signals: dict[int, list[Record] | MediaError]
    ) -> tuple[dict[int, list[Record]], dict[int, list[tuple[tuple[str, str], int, Record]]]]:
        ok = {k: v for k, v in signals.items() if not isinstance(v, MediaError)}
        keys = list(ok)
        image = dict(zip(keys, self.banks.match_batch([ok[k] for k in keys]), strict=True))
        queries = [(k, _pdq_variants(ok[k], self.limits.min_frame_quality)) for k in keys]
        queries = [(k, q) for k, q in queries if q]
        hits = self.banks.video_frame_hits([q for _, q in queries]) if queries else []
        return image, dict(zip([k for k, _ in queries], hits, strict=True))

    def _keep_frame(
        self,
        state: StreamState,
        event: Record,
        signals: list[Record],
        hits: list[tuple[tuple[str, str], int, Record]],
        kept: dict[str, dict[int, str]],
    ) -> bool:
        """Adds the frame to the stream's window unless it is of low quality or near the last kept one."""
        pdq = next((s for s in signals if s["signal_type"] == "pdq"), None)
        if pdq is None or (pdq["quality"] or 0) < self.limits.min_frame_quality:
            return False
        if state.last_pdq and _distance(state.last_pdq, pdq["value"]) <= DEDUP_DISTANCE:
            return False
        index = int(event.get("frame_index") or 0)
        state.last_pdq = pdq["value"]
        state.frames += 1
        kept[state.stream_id][index] = pdq["value"]
        if (state.frames - 1) % self.image_every == 0:
            self._sampled.add(id(event))
        state.hits[index] = [
            [bank, item, dist, entry["hash"], entry["category"], entry["severity"]]
            for (bank, item), dist, entry in hits
        ]
        FRAMES.labels("matched" if hits else "kept").inc()
        return True

    def _stream_matches(self, state: StreamState, event: Record) -> list[Record]:
        """Banked videos that at least `min_frames` frames of the window are near, as BankMatches."""
        newest = int(event.get("frame_index") or 0)
        frames_of: dict[tuple[str, str], set[int]] = defaultdict(set)
        nearest: dict[tuple[str, str], list[Any]] = {}
        for index, hits in state.hits.items():
            if newest - self.window < index <= newest:
                for bank, item, dist, value, category, severity in hits:
                    frames_of[(bank, item)].add(index)
                    if (bank, item) not in nearest or dist < nearest[(bank, item)][0]:
                        nearest[(bank, item)] = [dist, value, category, severity]
        out = []
        for (bank, item), frames in sorted(frames_of.items()):
            if len(frames) >= self.min_frames:
                dist, value, category, severity = nearest[(bank, item)]
                source = f"frames {','.join(str(i) for i in sorted(frames))} of the stream"
                out.append(
                    {
                        "bank": bank,
                        "signal_type": "video_pdq",
                        "hash": value,
                        "distance": int(dist),
                        "category": category,
                        "severity": severity,
                        "source": source,
                        "item_id": item,
                        "score": float(len(frames)),
                        "incident_id": None,
                    }
                )
        return out

    # ---- models and policy ------------------------------------------------------
    def _classify(self, records: list[tuple[Record, Record]]) -> None:
        """The title of a started stream, and the sampled frames, through the models."""
        if self.classify is None:
            return
        chosen = [r for e, r in records if r and (e["kind"] == "started" or id(e) in self._sampled)]
        if not chosen:
            return
        chosen = [r for r in chosen if not r["matches"]]  # a bank match needs no model
        scored = self.classify.process([Incoming("matched", None, r) for r in chosen])
        for record, output in zip(chosen, scored, strict=True):
            record["scores"] = (output.value or {}).get("scores", [])

    def _decide(self, event: Record, record: Record, state: StreamState, incidents: tuple[Record, ...]) -> list[Output]:
        outcome = self.policy.evaluate(Facts(record, None, bool(incidents), incidents))
        action = outcome.rule.action
        if action in UPHELD:  # remove or restrict on a live stream means: end it
            return self._end(event, record, state, outcome)
        if action == "review":
            return self._review(event, record, state, outcome)
        if event["kind"] == "started":
            return [Output("decisions", state.stream_id, self._decision(record, outcome, action))]
        return []

    def _decision(self, record: Record, outcome: Outcome, action: str, decision_id: str | None = None) -> Record:
        d = decision_from(record, self.policy, outcome, action)
        if decision_id:
            d["decision_id"] = decision_id
        return d

    def _end(self, event: Record, record: Record, state: StreamState, outcome: Outcome) -> list[Output]:
        index = event.get("frame_index")
        d = self._decision(
            record, outcome, "end_stream", stable_id(state.stream_id, "end_stream", self.policy.policy_id)
        )
        where = f"frame {index}" if event["kind"] == "frame" else event["kind"]
        d["explanation"] = f"stream {state.stream_id} ended at {where}: {d['explanation']}"
        owner, d = self.streams.claim(state.stream_id, "end", record["envelope"]["event_id"], d, status="ended")
        state.status = "ended"
        if owner != record["envelope"]["event_id"]:
            return []  # another event (or process) ended it first
        ENDED.labels(d["rule_id"]).inc()
        return self._end_outputs(d)

    def _end_outputs(self, d: Record) -> list[Output]:
        key = d["envelope"]["stream_id"]
        out = [Output("decisions", key, d)]
        if "bank" in d["effects"]:
            out += removal_entries(d["signals"], d, self.removed_bank)
        if "share" in d["effects"]:
            out += shared_signals(d["signals"], d)
        return out

    def _review(self, event: Record, record: Record, state: StreamState, outcome: Outcome) -> list[Output]:
        d = self._decision(record, outcome, "review", stable_id(state.stream_id, "review", self.policy.policy_id))
        task = {
            "task_id": stable_id(state.stream_id, "live-review"),
            "envelope": record["envelope"],
            "priority": outcome.rule.review_priority,
            "deadline": record["envelope"]["occurred_at"] + 3_600_000,  # a live stream cannot wait a day
            "reason": d["explanation"],
            "decision_id": d["decision_id"],
            "created_at": now_ms(),
        }
        owner, both = self.streams.claim(state.stream_id, "review", record["envelope"]["event_id"], {"d": d, "t": task})
        state.review_by = owner
        if owner != record["envelope"]["event_id"]:
            return []  # the stream already has its review task
        return self._review_outputs(both)

    @staticmethod
    def _review_outputs(both: Record) -> list[Output]:
        key = both["t"]["envelope"]["stream_id"]
        return [Output("decisions", key, both["d"]), Output("review", key, both["t"])]


def _pdq_variants(signals: list[Record], min_quality: int) -> list[str]:
    return [
        s["value"]
        for s in signals
        if s["signal_type"] in ("pdq", "pdq_dihedral") and (s["quality"] or 0) >= min_quality
    ]


def _distance(a: str, b: str) -> int:
    return int(
        np.unpackbits(np.frombuffer(bytes.fromhex(a), np.uint8) ^ np.frombuffer(bytes.fromhex(b), np.uint8)).sum()
    )
