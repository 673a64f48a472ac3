"""The human review queue as operators see it: open tasks, and verdicts on them."""

from __future__ import annotations

from typing import Any

from pipeline.config import Settings
from pipeline.records import Record, now_ms, record_key
from pipeline.runtime.reader import read_all
from pipeline.sdk import ModerationProducer


def open_tasks(settings: Settings) -> list[Record]:
    """Tasks without a verdict on their item, most urgent first (priority, then deadline)."""
    decided = {
        (v["envelope"].get("content_id"), v["envelope"].get("stream_id")) for v in read_all(settings, "review.verdicts")
    }
    tasks = {t["task_id"]: t for t in read_all(settings, "review")}
    pending = [
        t for t in tasks.values() if (t["envelope"].get("content_id"), t["envelope"].get("stream_id")) not in decided
    ]
    return sorted(pending, key=lambda t: (-t["priority"], t["deadline"]))


def decide(
    settings: Settings, task_id: str, action: str, reviewer: str, category: str | None = None, note: str = ""
) -> Record:
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
    return verdict
