"""The console's review queue, kept from followed records, answers what `open_tasks` (which
reads both topics per call) answers: open tasks most urgent first, the latest record of a task
id winning, a verdict on an item closing all its tasks."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.policy.review import ReviewQueue, _pending
from pipeline.records import Record, envelope


def task(task_id: str, content_id: str, priority: int, deadline: int) -> Record:
    return {
        "task_id": task_id,
        "envelope": envelope("p1", content_id=content_id, event_id=f"e-{task_id}"),
        "priority": priority,
        "deadline": deadline,
        "reason": "r",
    }


def verdict(content_id: str) -> Record:
    return {"task_id": "x", "envelope": envelope("p1", content_id=content_id), "action": "allow"}


def follow(queue: ReviewQueue, topic: str, *records: Record) -> None:
    feed = queue.feed(topic)
    for r in records:
        feed.apply("key", r)
    feed.apply("key", None)  # a tombstone is not an event: ignored


def test_queue_orders_by_priority_then_deadline_and_drops_decided_items() -> None:
    queue = ReviewQueue()
    tasks = [task("t1", "c1", 4, 300), task("t2", "c2", 8, 900), task("t3", "c3", 4, 100), task("t4", "c4", 1, 50)]
    follow(queue, "review", *tasks)
    assert [t["task_id"] for t in queue.open_tasks()] == ["t2", "t3", "t1", "t4"]
    follow(queue, "review.verdicts", verdict("c3"))
    assert [t["task_id"] for t in queue.open_tasks()] == ["t2", "t1", "t4"]
    assert queue.task("t3") is not None  # a decided task can still be looked up (decide again)


def test_escalation_replaces_its_task_and_a_verdict_read_first_still_closes_it() -> None:
    queue = ReviewQueue()
    follow(queue, "review.verdicts", verdict("c9"))  # the two followers run apart: any order
    follow(queue, "review", task("t1", "c1", 4, 300), task("t9", "c9", 9, 1), task("t2", "c2", 4, 200))
    follow(queue, "review", {**task("t1", "c1", 10, 300), "reason": "escalated"})
    found = queue.open_tasks()
    assert [t["task_id"] for t in found] == ["t1", "t2"] and found[0]["reason"] == "escalated"


def test_same_answer_as_reading_the_topics() -> None:
    queue = ReviewQueue()
    tasks: list[dict[str, Any]] = [task(f"t{i}", f"c{i % 7}", i % 3, 1000 - i) for i in range(40)]
    verdicts = [verdict(f"c{i}") for i in (2, 5)]
    follow(queue, "review", *tasks)
    follow(queue, "review.verdicts", *verdicts)
    decided = {(v["envelope"]["content_id"], None) for v in verdicts}
    assert queue.open_tasks() == _pending({t["task_id"]: t for t in tasks}, decided)


def test_feed_of_another_topic_is_refused() -> None:
    with pytest.raises(ValueError, match="not 'decisions'"):
        ReviewQueue().feed("decisions")


def test_a_queue_whose_follower_stopped_is_not_live() -> None:
    import threading

    queue = ReviewQueue()
    assert queue.live  # no follower yet: a queue fed by hand
    done = threading.Thread(target=lambda: None)
    done.start()
    done.join()
    queue.followers.append(done)
    assert not queue.live
