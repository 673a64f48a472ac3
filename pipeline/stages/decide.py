"""decide: turns a matched record into a Decision that names its rule and evidence.

Built-in rules, first match wins:
1. `bank-match`: any bank match removes the item (ends a live stream).
2. `classifier-remove`: a classifier score at or above its label's `remove`
   threshold removes the item.
3. `report-needs-review`: a report with no matching signal goes to human
   review, with a deadline 24 hours after the report.
4. `classifier-review`: a score at or above its label's `review` threshold
   sends the item to human review.
5. `unhashable-media`: media that could not be fetched or hashed goes to review:
   what cannot be checked is not waved through.
6. `default-allow`: anything else is allowed.
Thresholds come from the model registry; the Decision lists those that fired.

Permanent removal: when an item is removed, its hashes (exact, PDQ, video
frames) are banked in the `removed` bank, so a re-upload, even a transformed
copy, is matched at upload time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.models.registry import Threshold
from pipeline.records import Incoming, Output, Record, now_ms, record_key, stable_id, subject_key

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


BANKABLE = frozenset({"md5", "sha256", "pdq", "video_pdq"})


def removal_entries(record: Record, d: Record, bank: str) -> list[Output]:
    """BankEntry outputs for the hashes of a removed item."""
    item = subject_key(record["envelope"])
    entries = []
    for s in record["signals"]:
        if s["signal_type"] not in BANKABLE:
            continue
        entry = {
            "bank": bank,
            "signal_type": s["signal_type"],
            "hash": s["value"],
            "category": d["category"] or "removed",
            "severity": d["severity"] or "high",
            "source": f"{record['envelope']['platform_id']}:decision:{d['decision_id']}",
            "added_at": d["decided_at"],
            "item_id": item if s["signal_type"] == "video_pdq" else None,
        }
        entries.append(Output("banks", record_key("banks", entry), entry))
    return entries


class DecideStage:
    name = "decide"

    def __init__(
        self,
        inputs: tuple[str, ...] = ("classified",),
        removed_bank: str = "removed",
        thresholds: Mapping[tuple[str, str], Threshold] | None = None,
    ) -> None:
        self.inputs = inputs
        self.removed_bank = removed_bank
        self.thresholds = dict(thresholds or {})  # (model, label) -> Threshold

    def fired(self, record: Record, kind: str) -> list[tuple[Record, float]]:
        """(score, threshold) pairs at or above their `kind` threshold ("review" or "remove"),
        highest score first."""
        out = []
        for s in record["scores"]:
            t = self.thresholds.get((s["model"], s["label"]))
            limit = getattr(t, kind) if t else None
            if limit is not None and s["score"] >= limit:
                out.append((s, limit))
        return sorted(out, key=lambda f: -f[0]["score"])

    def _classifier(self, record: Record, action: str, kind: str) -> Record | None:
        fired = self.fired(record, kind)
        if not fired:
            return None
        top, limit = fired[0]
        return decision(
            record,
            action,
            f"classifier-{kind}",
            f"{action}: {top['model']} scored {top['label']} {top['score']:.2f} (>= {kind} threshold {limit})",
            category=top["label"],
            thresholds={f"{s['model']}/{s['label']}.{kind}": t for s, t in fired},
        )

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        out: list[Output] = []
        for incoming in batch:
            out.extend(self.decide(incoming.value))
        return out

    @staticmethod
    def _review_task(record: Record, d: Record, priority: int, reason: str) -> Output:
        task = {
            "task_id": stable_id(d["decision_id"], "review"),
            "envelope": record["envelope"],
            "priority": priority,
            "deadline": record["envelope"]["occurred_at"] + REPORT_DEADLINE_MS,
            "reason": reason,
            "decision_id": d["decision_id"],
            "created_at": now_ms(),
        }
        return Output("review", subject_key(record["envelope"]), task)

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
            return [Output("decisions", key, d), *removal_entries(record, d, self.removed_bank)]
        removal = self._classifier(record, "remove", "remove")
        if removal is not None:
            return [Output("decisions", key, removal), *removal_entries(record, removal, self.removed_bank)]
        if record["kind"] == "report":
            report = record["report"]
            d = decision(
                record,
                "review",
                "report-needs-review",
                f"reported for {report['reason']} with no matching signal: human review within 24 h",
                category=report["reason"],
            )
            task = self._review_task(record, d, priority=1, reason=f"report: {report['reason']}")
            return [Output("decisions", key, d), task]
        review = self._classifier(record, "review", "review")
        if review is not None:
            return [
                Output("decisions", key, review),
                self._review_task(record, review, priority=1, reason=review["explanation"]),
            ]
        if record["media_error"]:
            d = decision(
                record,
                "review",
                "unhashable-media",
                f"media could not be checked ({record['media_error']}): human review",
            )
            return [
                Output("decisions", key, d),
                self._review_task(record, d, priority=0, reason="unhashable media"),
            ]
        d = decision(record, "allow", "default-allow", "no bank match and no other signal")
        return [Output("decisions", key, d)]
