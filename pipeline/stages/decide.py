"""decide: evaluates the policy on each record and emits a Decision that explains itself,
plus what the decision entails: a review task, the removed item's hashes for the
`removed` bank (permanent removal), hash signals for partners.

Reports are aggregated per item (distinct reporters, their trust, reasons) before the
policy sees them; a burst creates one review task per item, however many reports follow.
Every reported item has a deadline 24 hours after its first report; a final decision on
it records when it was actioned. Review verdicts (`mod.review.verdicts`) become final
Decisions and update the trust of the item's reporters.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pipeline.policy.engine import FINAL, UPHELD, Facts, Outcome, Policy
from pipeline.records import Incoming, Output, Record, now_ms, record_key, stable_id, subject_key
from pipeline.state.reports import DAY_MS

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
                "incident_id": None,
                "shared_at": d["decided_at"],
            }
            out.append(Output("shared.signals", record_key("shared.signals", signal), signal))
    return out


class DecideStage:
    name = "decide"
    outputs = ("decisions", "review", "banks", "shared.signals")

    def __init__(
        self,
        policy: Policy,
        reports: Any = None,  # a ReportStore (and ContentStore); None disables report aggregation
        removed_bank: str = "removed",
        inputs: tuple[str, ...] = ("classified", "review.verdicts"),
        incident_active: Callable[[], bool] = lambda: False,
    ) -> None:
        self.policy = policy
        self.reports = reports
        self.removed_bank = removed_bank
        self.inputs = inputs
        self.incident_active = incident_active
        self._claimed: set[str] = set()  # items known to have their review task (claims never revert)

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        records = [r.value for r in batch if r.topic != "review.verdicts"]
        reported = [r for r in records if r["kind"] == "report" and r["envelope"].get("content_id")]
        aggregates: dict[str, dict[str, Any]] = {}
        if self.reports is not None and reported:
            for r, agg in zip(reported, self.reports.add_reports([r["report"] for r in reported]), strict=True):
                aggregates[r["envelope"]["event_id"]] = agg
        incident = self.incident_active()
        out: list[Output] = []
        for incoming in batch:
            if incoming.topic == "review.verdicts":
                out += self.verdict(incoming.value)
            else:
                agg = aggregates.get(incoming.value["envelope"]["event_id"])
                out += self.decide(incoming.value, agg, incident)
        return out

    def decide(self, record: Record, agg: dict[str, Any] | None = None, incident: bool = False) -> list[Output]:
        outcome = self.policy.evaluate(Facts(record, agg, incident))
        rule = outcome.rule
        d = decision(
            record,
            self.policy,
            rule.action,
            rule.id,
            outcome.explanation,
            category=outcome.category,
            severity=outcome.severity,
            thresholds=outcome.thresholds,
            effects=list(rule.effects),
        )
        out = [Output("decisions", subject_key(record["envelope"]), d)]
        if rule.action == "review":
            out += self._review(record, d, outcome, agg)
        if "bank" in rule.effects and rule.action in UPHELD:
            out += removal_entries(record["signals"], d, self.removed_bank)
        if "share" in rule.effects and rule.action in UPHELD:
            out += shared_signals(record["signals"], d)
        if rule.action in FINAL and record["kind"] == "report" and self.reports is not None:
            self.reports.resolve(record["envelope"]["content_id"], d["decided_at"])  # a reported item, acted on
        return out

    def _review(self, record: Record, d: Record, outcome: Outcome, agg: dict[str, Any] | None) -> list[Output]:
        content_id = record["envelope"].get("content_id")
        if agg is not None and self.reports is not None and content_id:
            if content_id in self._claimed or not self.reports.claim_review(content_id):
                self._remember_claim(content_id)
                return []  # this item already has its review task
            self._remember_claim(content_id)
        deadline = agg["deadline"] if agg else record["envelope"]["occurred_at"] + DAY_MS
        task = {
            "task_id": stable_id(d["decision_id"], "review"),
            "envelope": record["envelope"],
            "priority": outcome.rule.review_priority,
            "deadline": deadline,
            "reason": d["explanation"],
            "decision_id": d["decision_id"],
            "created_at": now_ms(),
        }
        return [Output("review", subject_key(record["envelope"]), task)]

    def _remember_claim(self, content_id: str) -> None:
        if len(self._claimed) > 100_000:
            self._claimed.clear()
        self._claimed.add(content_id)

    def verdict(self, v: Record) -> list[Output]:
        env = v["envelope"]
        record = {
            "envelope": env,
            "kind": "live" if env.get("stream_id") and not env.get("content_id") else "upload",
            "signals": [],
            "matches": [],
            "scores": [],
        }
        content_id = env.get("content_id")
        if self.reports is not None and content_id:
            [stored] = self.reports.recall_content([content_id])
            record["signals"] = (stored or {}).get("signals", [])
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
        out = [Output("decisions", subject_key(env), d)]
        if v["action"] in UPHELD:
            out += removal_entries(record["signals"], d, self.removed_bank)
        if self.reports is not None and content_id:
            self.reports.verdict(content_id, v["action"] in UPHELD, v["task_id"])
            self.reports.resolve(content_id, d["decided_at"])
        return out
