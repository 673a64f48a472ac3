"""The 24-hour deadline: reported items still undecided close to their deadline get an urgent
review task (once per item). Run by `modstream escalate` on a timer."""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.records import Output, Record, now_ms, stable_id, subject_key

URGENT_PRIORITY = 100


class DeadlineStore(Protocol):
    def due(self, before_ms: int) -> list[tuple[str, int, Record]]: ...
    def mark_escalated(self, content_id: str) -> bool: ...


class DeadlineEscalator:
    def __init__(self, store: DeadlineStore, warn_before_ms: int = 4 * 3600 * 1000) -> None:
        self.store = store
        self.warn_before_ms = warn_before_ms

    def run_once(self, now: int | None = None) -> list[Output]:
        now = now_ms() if now is None else now
        out = []
        for content_id, deadline, env in self.store.due(now + self.warn_before_ms):
            if not self.store.mark_escalated(content_id):
                continue
            hours = (deadline - now) / 3_600_000
            task: dict[str, Any] = {
                "task_id": stable_id(content_id, "deadline"),
                "envelope": env,
                "priority": URGENT_PRIORITY,
                "deadline": deadline,
                "reason": f"urgent: reported item undecided, deadline in {hours:.1f} h"
                if hours > 0
                else f"urgent: reported item undecided, deadline passed {-hours:.1f} h ago",
                "decision_id": None,
                "created_at": now,
            }
            out.append(Output("review", subject_key(env), task))
        return out
