"""decide: turns a matched record into a Decision that names its rule and evidence.

Built-in rules, first match wins:
1. `bank-match`: any bank match removes the item (ends a live stream).
2. `report-needs-review`: a report with no matching signal goes to human
   review, with a deadline 24 hours after the report.
3. `default-allow`: anything else is allowed.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.records import Incoming, Output, Record, now_ms, stable_id, subject_key

POLICY_ID = "builtin"
POLICY_VERSION = "1"
REPORT_DEADLINE_MS = 24 * 3600 * 1000
SEVERITY_ORDER = {"low": 0, "medium": 1, "high": 2, "critical": 3}


def decision(record: Record, action: str, rule_id: str, explanation: str, **extra: object) -> Record:
    return {
        "decision_id": stable_id(record["envelope"]["event_id"], POLICY_ID, POLICY_VERSION),
        "envelope": record["envelope"],
        "kind": record["kind"],
        "action": action,
        "decided_at": now_ms(),
        "policy_id": POLICY_ID,
        "policy_version": POLICY_VERSION,
        "rule_id": rule_id,
        "explanation": explanation,
        "category": None,
        "severity": None,
        "signals": record["signals"],
        "matches": record["matches"],
        "scores": record["scores"],
        "thresholds": {},
        **extra,
    }


class DecideStage:
    name = "decide"

    def __init__(self, inputs: tuple[str, ...] = ("matched",)) -> None:
        self.inputs = inputs

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        out: list[Output] = []
        for incoming in batch:
            out.extend(self.decide(incoming.value))
        return out

    def decide(self, record: Record) -> list[Output]:
        key = subject_key(record["envelope"])
        if record["matches"]:
            worst = max(record["matches"], key=lambda m: SEVERITY_ORDER.get(m["severity"], 0))
            action = "end_stream" if record["kind"] == "live" else "remove"
            what = f"{worst['signal_type']} {worst['hash'][:16]}… in bank {worst['bank']!r}"
            d = decision(
                record,
                action,
                "bank-match",
                f"{action}: {len(record['matches'])} bank match(es); "
                f"worst {what} ({worst['category']}, {worst['severity']})",
                category=worst["category"],
                severity=worst["severity"],
            )
            return [Output("decisions", key, d)]
        if record["kind"] == "report":
            report = record["report"]
            d = decision(
                record,
                "review",
                "report-needs-review",
                f"reported for {report['reason']} with no matching signal: human review within 24 h",
                category=report["reason"],
            )
            deadline = record["envelope"]["occurred_at"] + REPORT_DEADLINE_MS
            task = {
                "task_id": stable_id(d["decision_id"], "review"),
                "envelope": record["envelope"],
                "priority": 1,
                "deadline": deadline,
                "reason": f"report: {report['reason']}",
                "decision_id": d["decision_id"],
                "created_at": now_ms(),
            }
            return [Output("decisions", key, d), Output("review", key, task)]
        d = decision(record, "allow", "default-allow", "no bank match and no other signal")
        return [Output("decisions", key, d)]
