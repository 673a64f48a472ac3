"""flood: detects content that many distinct accounts upload at once, quarantines its copies
and proposes an incident.

The stage reads `mod.enriched` in its own consumer group, beside the upload pipeline, so it
sees every upload with its hashes and its uploader. For each batch:

1. Each upload with media joins a content cluster: its PDQ hash (an image of sufficient
   quality) joins the cluster of an earlier PDQ within `pdq_distance` bits, else starts one;
   other media (videos, files, flat images) cluster by exact SHA-256. Uploads without media,
   reports and live events are not looked at.
2. The cluster's window (pipeline.state.floods, in Redis, shared by all processes) counts the
   distinct accounts that uploaded it in the last `window_s` seconds; 25 uploads by one account
   count once. The threshold is `accounts`, or that of the cluster's category in
   `category_accounts` (the category of a bank match, or the top classifier label named there;
   records read from `enriched` have neither unless a bank matcher is given).
3. The copy that brings the cluster to its threshold claims the flood (in Redis, with its
   event id). Its batch emits a `restrict` Decision (rule `flood-quarantine`) for every copy of
   the cluster in the window, itself and the earlier ones; one urgent ReviewTask (priority 100)
   for the cluster; one Incident with status `proposed` (its hashes, its category), which an
   operator accepts with `modstream incident accept ID`. Every later copy gets its own
   `restrict` Decision while the flood lasts (until a window passes with no copy).

Decision ids derive from the upload's event id, and the task and incident ids from the cluster
and the claiming event, so a redelivered batch emits the same records: the claim keeps what it
quarantined, and the claiming event gets it back. Quarantine takes nothing away for good and
adds no strike (the uploaders may be sharing news); a reviewer decides.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter

from pipeline.records import Incoming, Output, Record, now_ms, stable_id, subject_key
from pipeline.state.floods import Copy, FloodStore, Limits, Seen

logger = logging.getLogger(__name__)

DETECTED = Counter("modstream_flood_detected_total", "Content floods detected (proposed incidents)", ["category"])
QUARANTINED = Counter("modstream_flood_quarantined_total", "Copies of flooding content quarantined (restrict)")

RULE = "flood-quarantine"
REVIEW_PRIORITY = 100
REVIEW_DEADLINE_MS = 3_600_000  # a flood cannot wait a day
LABEL_MIN_SCORE = 0.5  # a classifier label names the category only from this score
INCIDENT_SIGNALS_MAX = 200
CLUSTER_TYPES = ("sha256", "pdq")  # the hashes kept with a copy and proposed with the incident


class BankMatcher(Protocol):
    def match_batch(self, signal_lists: list[list[Record]]) -> list[list[Record]]: ...


@dataclass(frozen=True)
class FloodConfig:
    accounts: int = 20
    window_s: int = 600
    category_accounts: tuple[tuple[str, int], ...] = ()  # per category, instead of `accounts`
    pdq_distance: int = 8
    min_quality: int = 50  # PDQ hashes below this quality cluster by SHA-256 instead

    @property
    def version(self) -> str:
        """The settings that decide, as the Decision's policy version (audit)."""
        per = ",".join(f"{c}={n}" for c, n in self.category_accounts)
        return f"accounts={self.accounts};window_s={self.window_s};pdq_distance={self.pdq_distance}" + (
            f";categories={per}" if per else ""
        )

    def limits(self) -> Limits:
        return Limits(self.window_s, self.accounts, self.category_accounts)

    def window_text(self) -> str:
        w = self.window_s
        return f"{w // 60} minutes" if w % 60 == 0 else f"{w} seconds"


def cluster_signal(signals: list[Record], min_quality: int) -> Record | None:
    """The hash an upload clusters by: its PDQ if good enough, else its SHA-256, else None."""
    pdq = next((s for s in signals if s["signal_type"] == "pdq" and (s["quality"] or 0) >= min_quality), None)
    return pdq or next((s for s in signals if s["signal_type"] == "sha256"), None)


class FloodStage:
    name = "flood"
    outputs = ("decisions", "review", "incidents")

    def __init__(
        self,
        floods: FloodStore,
        config: FloodConfig | None = None,
        banks: BankMatcher | None = None,
        inputs: tuple[str, ...] = ("enriched",),
    ) -> None:
        """`banks`, if given, names the category of uploads that carry no bank match yet."""
        self.floods = floods
        self.config = config or FloodConfig()
        self.banks = banks
        self.inputs = inputs
        self._named = {c for c, _ in self.config.category_accounts}

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        cfg = self.config
        # 1. The uploads to look at, and the hash each clusters by (no state touched yet).
        uploads: list[tuple[Record, Record]] = []
        for incoming in batch:
            r = incoming.value
            if r.get("kind") != "upload" or not r["envelope"].get("content_id"):
                continue
            key = cluster_signal(r.get("signals") or [], cfg.min_quality)
            if key is not None:
                uploads.append((r, key))
        if not uploads:
            return []
        categories = self._categories([r for r, _ in uploads])
        now = now_ms()
        times = [min(r["envelope"]["occurred_at"], now) for r, _ in uploads]
        # 2. Clusters: PDQ representatives from the store, SHA-256 as it is.
        pdqs = [(k["value"], at) for (_, k), at in zip(uploads, times, strict=True) if k["signal_type"] == "pdq"]
        reps = iter(self.floods.representatives(pdqs))
        copies = []
        for (r, key), at, category in zip(uploads, times, categories, strict=True):
            kind = key["signal_type"]
            cluster = stable_id(kind, next(reps) if kind == "pdq" else key["value"].lower())
            env = r["envelope"]
            kept = [s for s in r["signals"] if s["signal_type"] in CLUSTER_TYPES]
            copy = {"envelope": env, "kind": r["kind"], "signals": kept}
            copies.append(Copy(cluster, env["event_id"], env.get("user_id"), at, copy, category[0]))
        # 3. The windows, and what they say.
        out: dict[tuple[str, str], Output] = {}  # one output per (topic, id) in a batch
        seen_all = self.floods.record(copies, cfg.limits())
        for c, seen, (_, severity) in zip(copies, seen_all, categories, strict=True):
            if seen.status == "owner" and seen.claim is not None:
                records = self._flood(c, seen, severity)
            elif seen.status == "flooded" and seen.claim is not None:
                records = [self._decision(c.record, c.cluster, seen.claim, seen.count, c.category)]
            else:
                continue
            for o in records:
                assert o.value is not None
                ident = o.value.get("decision_id") or o.value.get("task_id") or o.value["incident_id"]
                out.setdefault((o.topic, ident), o)
        QUARANTINED.inc(sum(1 for o in out.values() if o.topic == "decisions"))
        return list(out.values())

    def _categories(self, records: list[Record]) -> list[tuple[str | None, str | None]]:
        """(category, severity) of each upload: its first bank match (asking the bank matcher
        for those without one), else its top classifier label named in the category thresholds."""
        matches = [r.get("matches") or [] for r in records]
        if self.banks is not None:
            ask = [i for i, m in enumerate(matches) if not m and records[i].get("signals")]
            if ask:
                for i, found in zip(ask, self.banks.match_batch([records[i]["signals"] for i in ask]), strict=True):
                    matches[i] = found
        out: list[tuple[str | None, str | None]] = []
        for r, m in zip(records, matches, strict=True):
            if m:
                out.append((m[0]["category"], m[0]["severity"]))
                continue
            labels = [s for s in r.get("scores") or [] if s["label"] in self._named and s["score"] >= LABEL_MIN_SCORE]
            out.append((max(labels, key=lambda s: s["score"])["label"], None) if labels else (None, None))
        return out

    # ---- outputs ----------------------------------------------------------------------------
    def _ids(self, cluster: str, by: str) -> tuple[str, str]:
        """The review task id and the incident id of the flood `by` claimed in `cluster`."""
        return stable_id(cluster, by, "flood-review"), "inc-flood-" + stable_id(cluster, by)[:16]

    def _decision(self, copy: Record, cluster: str, head: Record, count: int, category: str | None = None) -> Output:
        cfg, env = self.config, copy["envelope"]
        task_id, incident_id = self._ids(cluster, head["by"])
        category = head.get("category") or category
        d = {
            "decision_id": stable_id(env["event_id"], RULE),
            "envelope": env,
            "kind": copy["kind"],
            "action": "restrict",
            "decided_at": now_ms(),
            "policy_id": "flood",
            "policy_version": cfg.version,
            "rule_id": RULE,
            "explanation": (
                f"flood quarantine: {count} distinct accounts uploaded copies of this content within "
                f"{cfg.window_text()} (threshold {head['threshold']}"
                + (f", category {category}" if category else "")
                + f"); restricted pending urgent review (task {task_id}, proposed incident {incident_id})"
            ),
            "category": category or None,
            "severity": None,
            "signals": copy["signals"],
            "matches": [],
            "scores": [],
            "thresholds": {
                "flood_accounts": float(head["threshold"]),
                "flood_window_s": float(cfg.window_s),
                "flood_pdq_distance": float(cfg.pdq_distance),
            },
            "effects": [],
            "incident_id": None,  # the incident is only proposed
        }
        return Output("decisions", subject_key(env), d)

    def _flood(self, c: Copy, seen: Seen, severity: str | None) -> list[Output]:
        """The claim's outputs: the copies' decisions, the cluster's review task, the proposal."""
        claim = seen.claim
        assert claim is not None
        cfg, count = self.config, int(claim["count"])
        category = claim.get("category") or None
        task_id, incident_id = self._ids(c.cluster, claim["by"])
        copies: list[Record] = claim["copies"]
        out = [self._decision(copy, c.cluster, claim, count) for copy in copies]
        owner = next((copy for copy in copies if copy["envelope"]["event_id"] == claim["by"]), c.record)
        hashes = _hashes(copies)
        named = [f"{s['signal_type']}:{s['value']}" for s in hashes]
        minutes = cfg.window_text()
        title = f"possible flood: {count} accounts uploaded the same content in {minutes}"
        reason = (
            f"flood detection: {count} distinct accounts uploaded copies of one piece of content within {minutes} "
            f"(threshold {claim['threshold']}" + (f", category {category}" if category else "") + "); "
            f"{len(copies)} copies quarantined, review task {task_id}, cluster {c.cluster}; "
            f"hashes: {', '.join(named[:4])}" + (f" and {len(named) - 4} more" if len(named) > 4 else "")
        )
        task = {
            "task_id": task_id,
            "envelope": owner["envelope"],
            "priority": REVIEW_PRIORITY,
            "deadline": int(claim["at"]) + REVIEW_DEADLINE_MS,
            "reason": reason,
            "decision_id": stable_id(owner["envelope"]["event_id"], RULE),
            "created_at": now_ms(),
        }
        incident = {
            "incident_id": incident_id,
            "title": title,
            "status": "proposed",
            "declared_at": int(claim["at"]),
            "closed_at": None,
            "signals": hashes,
            "category": category or "unknown",
            "severity": severity or "high",
            "reason": reason,
        }
        if seen.fresh:
            DETECTED.labels(category or "unknown").inc()
            logger.warning("%s (incident %s proposed, %d copies quarantined)", title, incident_id, len(copies))
        out.append(Output("review", subject_key(owner["envelope"]), task))
        return [*out, Output("incidents", incident_id, incident)]


def _hashes(copies: list[Record]) -> list[Record]:
    """The distinct SHA-256 and PDQ hashes of the copies, as Signals (the incident's seeds)."""
    seen: dict[tuple[str, str], Record] = {}
    for copy in copies:
        for s in copy["signals"]:
            seen.setdefault((s["signal_type"], s["value"]), {**s, "frame": None})
    return list(seen.values())[:INCIDENT_SIGNALS_MAX]
