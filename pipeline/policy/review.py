"""The human review queue as operators see it: open tasks, and verdicts on them.

`open_tasks` reads both topics once (the CLI); a long-running process (the console in
`modstream serve`) keeps a `ReviewQueue` up to date by following them instead.
"""

from __future__ import annotations

import threading
from typing import Any

from pipeline.config import Settings
from pipeline.records import Record, now_ms, record_key
from pipeline.runtime.follower import Feed
from pipeline.runtime.reader import read_all
from pipeline.sdk import ModerationProducer


def _item(record: Record) -> tuple[str | None, str | None]:
    return record["envelope"].get("content_id"), record["envelope"].get("stream_id")


def _pending(tasks: dict[str, Record], decided: set[tuple[str | None, str | None]]) -> list[Record]:
    """Tasks without a verdict on their item, most urgent first (priority, then deadline)."""
    pending = [t for t in tasks.values() if _item(t) not in decided]
    return sorted(pending, key=lambda t: (-t["priority"], t["deadline"]))


def open_tasks(settings: Settings) -> list[Record]:
    """Tasks without a verdict on their item, most urgent first (priority, then deadline)."""
    decided = {_item(v) for v in read_all(settings, "review.verdicts")}
    return _pending({t["task_id"]: t for t in read_all(settings, "review")}, decided)


class ReviewQueue:
    """The queue `open_tasks` reads, kept in memory from followers of `mod.review` and
    `mod.review.verdicts` (`feed(topic)` is each one's table). Thread-safe. The latest record of
    a task id wins (an escalation replaces its task); a verdict on an item closes all its tasks.
    Holds every task and decided item it has read: memory grows with the topics' retention."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tasks: dict[str, Record] = {}
        self._decided: set[tuple[str | None, str | None]] = set()
        self.followers: list[threading.Thread] = []  # the threads that feed it, once started

    @property
    def live(self) -> bool:
        """Whether every follower feeding the queue still runs (a stopped one leaves it stale)."""
        return all(f.is_alive() for f in self.followers)

    def feed(self, topic: str) -> Feed:
        appliers = {"review": self.add_task, "review.verdicts": self.add_verdict}
        if topic not in appliers:
            raise ValueError(f"the review queue follows review and review.verdicts, not {topic!r}")
        return Feed(appliers[topic])

    def add_task(self, task: Record) -> None:
        with self._lock:
            self._tasks[task["task_id"]] = task

    def add_verdict(self, verdict: Record) -> None:
        with self._lock:
            self._decided.add(_item(verdict))

    def open_tasks(self) -> list[Record]:
        with self._lock:
            return _pending(self._tasks, self._decided)

    def task(self, task_id: str) -> Record | None:
        with self._lock:
            return self._tasks.get(task_id)


def decide(
    settings: Settings,
    task_id: str,
    action: str,
    reviewer: str,
    category: str | None = None,
    note: str = "",
    queue: ReviewQueue | None = None,
) -> Record:
    """Records a verdict on a task (found in `queue`, else read from `mod.review`)."""
    task = queue.task(task_id) if queue is not None else None
    if task is None:
        task = next((t for t in read_all(settings, "review") if t["task_id"] == task_id), None)
    if task is None:
        raise KeyError(f"no review task {task_id}")
    verdict: dict[str, Any] = {
        "task_id": task_id,
        "envelope": task["envelope"],
        "reviewer": reviewer,
        "action": action,
        "category": category,
        "note": note,
        "decided_at": now_ms(),
    }
    with ModerationProducer(settings) as producer:
        producer.send("review.verdicts", verdict, key=record_key("review.verdicts", verdict))
    if queue is not None:
        queue.add_verdict(verdict)  # the queue shows it at once, before its follower reads it
    return verdict
