"""decide: evaluates the policy on each record and emits a Decision that explains itself,
plus what the decision entails: a review task, the removed item's hashes for the
`removed` bank (permanent removal), hash signals for partners.

Reports are aggregated per item (distinct reporters, their trust, reasons) before the
policy sees them; a burst creates one review task per item, however many reports follow.
Every reported item has a deadline 24 hours after its first report; a final decision on
it records when it was actioned. Review verdicts (`mod.review.verdicts`) become final
Decisions and update the trust of the item's reporters.

The one task of a reported item has an id derived from the item, and a claim in the report
store names the report that owns it (its event id). Claims are taken only once every record
of the batch is decided, so a record that raises takes none; the owner's record, redelivered
or retried alone, emits the same task again, and every other report of the item emits none.
Readers of `mod.review` keep one task per task_id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pipeline.policy.engine import FINAL, UPHELD, Facts, Outcome, Policy
from pipeline.records import Incoming, Output, Record, now_ms, record_key, stable_id, subject_key
from pipeline.state.reports import deadline_of, reported_at

CLAIM_CACHE_MAX = 100_000  # items whose review-task owner this process remembers

BANKABLE = frozenset({"md5", "sha256", "pdq", "video_pdq"})


def decision(record: Record, policy: Policy, action: str, rule_id: str, explanation: str, **extra: Any) -> Record:
    return {
        "decision_id": stable_id(record["envelope"]["event_id"], policy.policy_id, policy.version),
        "envelope": record["envelope"],
        "kind": record["kind"],
        "action": action,
        "decided_at": now_ms(),
        "policy_id": policy.policy_id,
        "policy_version": policy.version,
        "rule_id": rule_id,
        "explanation": explanation,
        "category": None,
        "severity": None,
        "signals": record["signals"],
        "matches": record["matches"],
        "scores": record["scores"],
        "thresholds": {},
        "effects": [],
        **extra,
    }


def decision_from(record: Record, policy: Policy, outcome: Outcome, action: str | None = None) -> Record:
    """The Decision a policy outcome gives the record: its rule's action unless `action` says
    otherwise, with the outcome's explanation, category, severity, thresholds and incident."""
    rule = outcome.rule
    return decision(
        record,
        policy,
        action or rule.action,
        rule.id,
        outcome.explanation,
        category=outcome.category,
        severity=outcome.severity,
        thresholds=outcome.thresholds,
        effects=list(rule.effects),
        incident_id=outcome.incident_id,
    )


def own_signals(signals: list[Record], given: list[Record] | None) -> list[Record]:
    """The signals that may be banked or shared: those computed here from the media, not the
    hashes an upload event brought (UploadEvent.signals), which are matched but never banked
    or shared: a wrong or hostile hash there must not put other people's content in a bank."""
    if not given:
        return signals
    brought = {(s["signal_type"], s["value"]) for s in given}
    return [s for s in signals if (s["signal_type"], s["value"]) not in brought]


def removal_entries(signals: list[Record], d: Record, bank: str) -> list[Output]:
    """BankEntry outputs for the hashes of a removed item."""
    item = subject_key(d["envelope"])
    entries = []
    for s in signals:
        if s["signal_type"] not in BANKABLE:
            continue
        entry = {
            "bank": bank,
            "signal_type": s["signal_type"],
            "hash": s["value"],
            "category": d["category"] or "removed",
            "severity": d["severity"] or "high",
            "source": f"{d['envelope']['platform_id']}:decision:{d['decision_id']}",
            "added_at": d["decided_at"],
            "item_id": item if s["signal_type"] == "video_pdq" else None,
            "incident_id": d.get("incident_id"),
        }
        entries.append(Output("banks", record_key("banks", entry), entry))
    return entries


def shared_signals(signals: list[Record], d: Record) -> list[Output]:
    """Hash signals for partner platforms: hashes and labels only, no content, no user data."""
    out = []
    for s in signals:
        if s["signal_type"] in BANKABLE:
            signal = {
                "signal_type": s["signal_type"],
                "hash": s["value"],
                "category": d["category"] or "removed",
                "severity": d["severity"] or "high",
                "source_platform": d["envelope"]["platform_id"],
                "incident_id": d.get("incident_id"),
                "shared_at": d["decided_at"],
            }
            out.append(Output("shared.signals", record_key("shared.signals", signal), signal))
    return out


@dataclass(slots=True)
class _Decided:
    """What one record decided: its outputs, and the effects that wait until the whole batch is
    decided (so that a record that raises leaves no claim and no write behind)."""

    outputs: list[Output]
    claim: tuple[str, str, Output] | None = None  # content_id, event_id, the review task it emits if it owns it
    resolved: tuple[str, int] | None = None  # content_id, actioned_at
    verdict: tuple[str, bool, str] | None = None  # content_id, upheld, task_id


class DecideStage:
    name = "decide"
    outputs = ("decisions", "review", "banks", "shared.signals")

    def __init__(
        self,
        policy: Policy,
        reports: Any = None,  # a ReportStore (and ContentStore); None disables report aggregation
        removed_bank: str = "removed",
        inputs: tuple[str, ...] = ("classified", "review.verdicts"),
        incidents: Callable[[], list[Record]] = list,
    ) -> None:
        """`incidents` gives the active incidents (newest first), read once per batch."""
        self.policy = policy
        self.reports = reports
        self.removed_bank = removed_bank
        self.inputs = inputs
        self.incidents = incidents
        # content_id -> event id of the report owning the item's review task (claims never change)
        self._owners: dict[str, str] = {}
        self._aggregator = ThreadPoolExecutor(1, thread_name_prefix="decide-reports")

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        incidents = tuple(self.incidents())
        # 1. Decide every record; nothing below this loop runs if one of them raises. The
        # reports' aggregation runs in Redis while the other records are decided.
        decided: dict[int, _Decided] = {}  # by the record's place in the batch
        reported = [
            i
            for i, r in enumerate(batch)
            if r.topic != "review.verdicts" and r.value["kind"] == "report" and r.value["envelope"].get("content_id")
        ]
        aggregating = None
        if self.reports is not None and reported:
            events = [batch[i].value["report"] for i in reported]
            aggregating = self._aggregator.submit(self.reports.add_reports, events)
        later = set(reported) if aggregating else set()
        for i, incoming in enumerate(batch):
            if incoming.topic == "review.verdicts":
                decided[i] = self._verdict(incoming.value)
            elif i not in later:
                decided[i] = self._decide(incoming.value, None, incidents)
        if aggregating is not None:
            for i, agg in zip(reported, aggregating.result(), strict=True):
                decided[i] = self._decide(batch[i].value, agg, incidents)
        # 2. Claim the reported items' review tasks; 3. the writes the decisions entail.
        done = [decided[i] for i in range(len(batch))]
        owners = self._claim([d.claim[:2] for d in done if d.claim])
        out: list[Output] = []
        for d in done:
            out += d.outputs
            if d.claim and owners[d.claim[0]] == d.claim[1]:
                out.append(d.claim[2])
            if d.verdict and self.reports is not None:
                self.reports.verdict(*d.verdict)
            if d.resolved and self.reports is not None:
                self.reports.resolve(*d.resolved)
        return out

    def _decide(self, record: Record, agg: dict[str, Any] | None, incidents: tuple[Record, ...]) -> _Decided:
        outcome = self.policy.evaluate(Facts(record, agg, bool(incidents), incidents))
        rule = outcome.rule
        d = decision_from(record, self.policy, outcome)
        result = _Decided([Output("decisions", subject_key(record["envelope"]), d)])
        if rule.action == "review":
            task = self._task(record, d, outcome, agg)
            content_id = record["envelope"].get("content_id")
            if agg is not None and self.reports is not None and content_id:
                result.claim = (content_id, record["envelope"]["event_id"], task)
            else:
                result.outputs.append(task)
        own = own_signals(record["signals"], (record.get("upload") or {}).get("signals"))
        if "bank" in rule.effects and rule.action in UPHELD:
            result.outputs += removal_entries(own, d, self.removed_bank)
        if "share" in rule.effects and rule.action in UPHELD:
            result.outputs += shared_signals(own, d)
        if rule.action in FINAL and record["kind"] == "report" and self.reports is not None:
            result.resolved = (record["envelope"]["content_id"], d["decided_at"])  # a reported item, acted on
        return result

    def _task(self, record: Record, d: Record, outcome: Outcome, agg: dict[str, Any] | None) -> Output:
        env = record["envelope"]
        content_id = env.get("content_id")
        if agg is not None and self.reports is not None and content_id:
            task_id = stable_id(content_id, "report-review")  # one task per reported item
            deadline = agg["deadline"]
        else:
            task_id = stable_id(d["decision_id"], "review")
            deadline = deadline_of(reported_at(env["occurred_at"], d["decided_at"]))
        task = {
            "task_id": task_id,
            "envelope": env,
            "priority": outcome.rule.review_priority,
            "deadline": deadline,
            "reason": d["explanation"],
            "decision_id": d["decision_id"],
            "created_at": now_ms(),
        }
        return Output("review", subject_key(env), task)

    def _claim(self, claims: list[tuple[str, str]]) -> dict[str, str]:
        """content_id -> the event id owning its review task; the first claim in the batch of
        an item not already known is sent to the store."""
        owners = {cid: self._owners[cid] for cid, _ in claims if cid in self._owners}
        first: dict[str, str] = {}
        for cid, eid in claims:
            if cid not in owners:
                first.setdefault(cid, eid)
        if first:
            ask = list(first.items())
            for (cid, _), owner in zip(ask, self.reports.claim_reviews(ask), strict=True):
                owners[cid] = owner
                if len(self._owners) >= CLAIM_CACHE_MAX:
                    self._owners.clear()
                self._owners[cid] = owner
        return owners

    def _verdict(self, v: Record) -> _Decided:
        env = v["envelope"]
        record = {
            "envelope": env,
            "kind": "live" if env.get("stream_id") and not env.get("content_id") else "upload",
            "signals": [],
            "matches": [],
            "scores": [],
        }
        content_id = env.get("content_id")
        given: list[Record] = []
        if self.reports is not None and content_id:
            stored = self.reports.recall_content([content_id])[0] or {}
            record["signals"] = stored.get("signals", [])
            given = stored.get("given", [])
            if not env.get("user_id") and stored.get("user_id"):
                # reports read before their upload carry no owner; by the verdict it is known
                record["envelope"] = {**env, "user_id": stored["user_id"]}
        d = decision(
            record,
            self.policy,
            v["action"],
            "human-review",
            f"{v['action']} by reviewer {v['reviewer']}" + (f": {v['note']}" if v["note"] else ""),
            category=v["category"],
            effects=["bank", "strike"] if v["action"] in UPHELD else [],
        )
        d["decision_id"] = stable_id(v["task_id"], "verdict")
        result = _Decided([Output("decisions", subject_key(env), d)])
        if v["action"] in UPHELD:
            result.outputs += removal_entries(own_signals(record["signals"], given), d, self.removed_bank)
        if self.reports is not None and content_id:
            result.verdict = (content_id, v["action"] in UPHELD, v["task_id"])
            result.resolved = (content_id, d["decided_at"])
        return result
