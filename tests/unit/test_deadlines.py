"""The deadline escalator with a fake store: an item is marked escalated only once its urgent
task is acknowledged, so a crash in between re-produces the same task."""

from __future__ import annotations

import pytest

from pipeline.policy.deadlines import URGENT_PRIORITY, DeadlineEscalator
from pipeline.records import Output, Record, envelope
from pipeline.state.reports import DAY_MS

HOUR = 3_600_000
NOW = 1_700_000_000_000


class FakeDeadlines:
    def __init__(self) -> None:
        self.items: dict[str, tuple[int, Record]] = {}
        self.escalated: set[str] = set()
        self.crash_on_mark = False

    def report(self, content_id: str, first_reported_at: int) -> None:
        self.items[content_id] = (first_reported_at + DAY_MS, envelope("p", content_id=content_id))

    def due(self, before_ms: int) -> list[tuple[str, int, Record]]:
        return [(c, d, env) for c, (d, env) in self.items.items() if d <= before_ms and c not in self.escalated]

    def mark_escalated(self, content_id: str) -> bool:
        if self.crash_on_mark:
            raise KeyboardInterrupt  # stands for the process dying here
        first = content_id not in self.escalated
        self.escalated.add(content_id)
        return first


class Broker:
    def __init__(self) -> None:
        self.acked: list[Record] = []
        self.down = False

    def publish(self, tasks: list[Output]) -> None:
        if self.down:
            raise ConnectionError("not acknowledged")
        self.acked += [t.value for t in tasks if t.value]


def test_an_item_is_marked_only_after_its_task_is_acknowledged() -> None:
    store, broker = FakeDeadlines(), Broker()
    store.report("c-old", NOW - 21 * HOUR)
    store.report("c-new", NOW - 1 * HOUR)
    escalator = DeadlineEscalator(store, warn_before_ms=4 * HOUR)

    broker.down = True
    with pytest.raises(ConnectionError):
        escalator.run_once(broker.publish, NOW)
    assert store.escalated == set()  # not acknowledged: still due

    broker.down = False
    assert escalator.run_once(broker.publish, NOW) == 1
    [task] = broker.acked
    assert task["envelope"]["content_id"] == "c-old" and task["priority"] == URGENT_PRIORITY
    assert task["deadline"] == NOW + 3 * HOUR and "deadline in 3.0 h" in task["reason"]
    assert escalator.run_once(broker.publish, NOW) == 0 and len(broker.acked) == 1  # once per item


def test_a_crash_between_the_ack_and_the_mark_re_produces_the_same_task() -> None:
    store, broker = FakeDeadlines(), Broker()
    store.report("c-old", NOW - 25 * HOUR)
    escalator = DeadlineEscalator(store)
    store.crash_on_mark = True
    with pytest.raises(KeyboardInterrupt):
        escalator.run_once(broker.publish, NOW)
    store.crash_on_mark = False
    assert DeadlineEscalator(store).run_once(broker.publish, NOW + 1000) == 1  # the next round, a new process
    first, again = broker.acked
    assert first["task_id"] == again["task_id"] and first["envelope"] == again["envelope"]
    assert "deadline passed 1.0 h ago" in again["reason"]
