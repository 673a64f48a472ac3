"""The 24-hour deadline: reported items still undecided close to their deadline get an urgent
review task (once per item). Run by `modstream escalate` on a timer.

An item is marked escalated only after its task is acknowledged by the broker: the task id
derives from the item, so a crash between the two re-produces the same task next round, and
readers of `mod.review` keep one task per task_id.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from pipeline.records import Output, Record, now_ms, stable_id, subject_key

URGENT_PRIORITY = 100


class DeadlineStore(Protocol):
    def due(self, before_ms: int) -> list[tuple[str, int, Record]]: ...
    def mark_escalated(self, content_id: str) -> bool: ...


# Produces the tasks and returns only once every one is acknowledged; raises otherwise.
Publish = Callable[[list[Output]], None]


class DeadlineEscalator:
    def __init__(self, store: DeadlineStore, warn_before_ms: int = 4 * 3600 * 1000) -> None:
        self.store = store
        self.warn_before_ms = warn_before_ms

    def due_tasks(self, now: int | None = None) -> list[Output]:
        """The urgent review tasks of the items due now; changes nothing."""
        now = now_ms() if now is None else now
        out = []
        for content_id, deadline, env in self.store.due(now + self.warn_before_ms):
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

    def run_once(self, publish: Publish, now: int | None = None) -> int:
        """Publishes the due items' tasks, then marks the items escalated; returns how many
        items this round escalated (an item another escalator marked first is not counted)."""
        tasks = self.due_tasks(now)
        if not tasks:
            return 0
        publish(tasks)  # acknowledged, or raised: nothing is marked before this returns
        return sum(self.store.mark_escalated(t.value["envelope"]["content_id"]) for t in tasks if t.value)
