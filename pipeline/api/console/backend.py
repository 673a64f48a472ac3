"""What the console reads and writes, behind one seam (`Backend`), so its pages can be tested
without a broker. `KafkaBackend` is the real one, and it reuses the operators' code that the
CLI runs: the review queue and verdicts of pipeline.policy.review, bank admin, the crisis
protocol and the transparency report. Every method blocks; the pages call them in threads.

Evidence of a review task: its decision, found on `mod.decisions` from the time the task was
created (the broker's time index, so an item page does not read the whole topic; the whole
topic only if that finds nothing), the item's report aggregate and stored text from Redis,
and its media from the media store. The media reference of an item is `sha256:` and the
SHA-256 of its media, which is also its `sha256` signal, so the decision's signals name it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import OFFSET_END, TopicPartition

from pipeline.api.console.audit import Auditor
from pipeline.banks import admin
from pipeline.banks.table import BankTable
from pipeline.config import TOPICS, Settings
from pipeline.policy import crisis, review
from pipeline.policy.deadlines import URGENT_PRIORITY
from pipeline.policy.transparency import build_report
from pipeline.records import HASH_FORMATS, Record, now_ms, record_key, signal, subject_key
from pipeline.runtime.reader import TopicScan, read_all
from pipeline.sdk import ModerationProducer
from pipeline.serde import Codec, DecodeError
from pipeline.state.media import MediaStore
from pipeline.state.reports import RedisReportStore

logger = logging.getLogger(__name__)

LOOKBACK_MS = 10 * 60 * 1000  # a decision is produced with its task; allow for clocks and retries


class Backend(Protocol):
    audit: Auditor

    def open_tasks(self) -> list[Record]:
        """The review queue, most urgent first: the one `modstream review list` shows."""
        ...

    def decision(self, decision_id: str, since_ms: int) -> Record | None: ...
    def reports(self, content_id: str) -> dict[str, Any] | None: ...
    def content(self, content_id: str) -> dict[str, Any] | None: ...
    def media(self, ref: str) -> bytes | None: ...
    def decide(self, task_id: str, action: str, reviewer: str, category: str | None, note: str) -> Record: ...
    def escalate(self, task: Record, reviewer: str, note: str) -> Record: ...
    def bank_entries(self, value: str) -> list[Record]:
        """The entries holding `value`, and, when it has a PDQ hash's form, the PDQ entries
        within their bank's threshold of it; each with its `distance` (0 for an exact match),
        nearest first."""
        ...

    def bank_counts(self) -> dict[str, int]: ...
    def disable(self, bank: str, signal_type: str, value: str) -> int: ...
    def incidents(self) -> list[Record]: ...
    def declare(
        self, title: str, category: str, severity: str, media: list[Path], hashes: list[tuple[str, str]], reason: str
    ) -> tuple[Record, int]: ...
    def add_media(self, incident_id: str, media: list[Path]) -> int:
        """Seed media for an active incident: the number of hashes banked and shared. KeyError:
        no such incident; ValueError: it is not active; MediaError: a file is not media."""
        ...

    def close_incident(self, incident_id: str) -> Record: ...
    def accept(self, incident_id: str, reason: str) -> tuple[Record, int]:
        """Declares a proposed incident (flood detection's). KeyError: no such incident;
        ValueError: it is not proposed (accepted already, or closed)."""
        ...

    def report(self) -> dict[str, Any]: ...


@dataclass
class KafkaBackend:
    settings: Settings
    banks: BankTable  # followed live by the serve process
    audit: Auditor
    reports_store: RedisReportStore | None = None
    media_store: MediaStore | None = None
    codec: Codec | None = None
    queue: review.ReviewQueue | None = None  # followed live by the serve process; else read per call

    def open_tasks(self) -> list[Record]:
        if self.queue is not None and self.queue.live:
            return self.queue.open_tasks()
        if self.queue is not None:
            logger.error("the review queue's followers stopped: reading the review topics instead")
        return review.open_tasks(self.settings)

    def decision(self, decision_id: str, since_ms: int) -> Record | None:
        def wanted(d: Record) -> bool:
            return bool(d["decision_id"] == decision_id)

        found = find_since(self.settings, "decisions", since_ms - LOOKBACK_MS, wanted, self.codec)
        return found or find_since(self.settings, "decisions", None, wanted, self.codec)

    def reports(self, content_id: str) -> dict[str, Any] | None:
        if self.reports_store is None:
            return None
        found = self.reports_store.aggregate(content_id)
        return found if found["distinct_reporters"] else None

    def content(self, content_id: str) -> dict[str, Any] | None:
        return self.reports_store.recall_content([content_id])[0] if self.reports_store else None

    def media(self, ref: str) -> bytes | None:
        return self.media_store.get(ref) if self.media_store is not None else None

    def decide(self, task_id: str, action: str, reviewer: str, category: str | None, note: str) -> Record:
        return review.decide(self.settings, task_id, action, reviewer, category, note, self.queue)

    def escalate(self, task: Record, reviewer: str, note: str) -> Record:
        """The task again, urgent: readers of `mod.review` keep the latest record of a task id,
        and it goes to the same partition as the original (same key), so it comes after it."""
        why = f"escalated by {reviewer}" + (f": {note}" if note else "")
        urgent = {**task, "priority": max(URGENT_PRIORITY, task["priority"]), "reason": f"{why} ({task['reason']})"}
        with ModerationProducer(self.settings, self.codec) as producer:
            producer.send("review", urgent, key=subject_key(task["envelope"]))
        if self.queue is not None:
            self.queue.add_task(urgent)
        return urgent

    def bank_entries(self, value: str) -> list[Record]:
        """Near PDQ hashes as the match stage finds them (BankTable.match_batch: each bank's
        threshold), the query being a PDQ hash of full quality."""
        value = value.strip().lower()
        near: dict[str, int] = {}
        if HASH_FORMATS["pdq"].fullmatch(value):
            [matches] = self.banks.match_batch([[signal("pdq", value, 100)]])
            near = {record_key("banks", m): m["distance"] for m in matches}
        found = []
        for e in self.banks.entries():
            distance = near.get(record_key("banks", e), 0 if e["hash"] == value else None)
            if distance is not None:
                found.append({**e, "distance": distance})
        return sorted(found, key=lambda e: (e["distance"], e["bank"], e["signal_type"], e["hash"]))

    def bank_counts(self) -> dict[str, int]:
        return self.banks.stats()

    def disable(self, bank: str, signal_type: str, value: str) -> int:
        return admin.delete(self.settings, bank, signal_type, value)

    def incidents(self) -> list[Record]:
        return crisis.incidents(self.settings)

    def declare(
        self, title: str, category: str, severity: str, media: list[Path], hashes: list[tuple[str, str]], reason: str
    ) -> tuple[Record, int]:
        return crisis.declare(self.settings, title, category, severity, media, hashes, reason)

    def add_media(self, incident_id: str, media: list[Path]) -> int:
        return crisis.add_media(self.settings, incident_id, media)

    def close_incident(self, incident_id: str) -> Record:
        return crisis.close(self.settings, incident_id)

    def accept(self, incident_id: str, reason: str) -> tuple[Record, int]:
        return crisis.accept(self.settings, incident_id, reason)

    def report(self) -> dict[str, Any]:
        """What `modstream report` shows."""
        s = self.settings
        return build_report(
            read_all(s, "decisions", self.codec),
            read_all(s, "reports", self.codec),
            read_all(s, "enforcement.results", self.codec),
            now_ms(),
            accounts=read_all(s, "accounts", self.codec),
            incidents=read_all(s, "incidents", self.codec),
        )


def find_since(
    settings: Settings,
    topic: str,
    since_ms: int | None,
    wanted: Callable[[Record], bool],
    codec: Codec | None = None,
    timeout_s: float = 60.0,
) -> Record | None:
    """The first record of `topic` that `wanted` accepts, reading each partition from the
    first record the broker timestamps at or after `since_ms` (None: from the beginning) to
    its end."""
    codec = codec or Codec(registry_url=settings.schema_registry_url)
    scan = TopicScan(settings, settings.topic(topic), timeout_s)
    try:
        if since_ms is not None:
            asked = [TopicPartition(scan.topic, p, since_ms) for p in scan.partitions]
            starts = scan.consumer.offsets_for_times(asked, timeout=timeout_s)
            # -1: no record since then; start at the end, where the partition's EOF comes at once
            scan.consumer.assign(
                [TopicPartition(scan.topic, t.partition, t.offset if t.offset >= 0 else OFFSET_END) for t in starts]
            )
        deadline = time.monotonic() + timeout_s
        while not scan.at_end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{scan.topic} not read to its end within {timeout_s} s")
            for msg in scan.consume(1000, 0.2):
                raw = msg.value()
                if raw is None:
                    continue
                try:
                    value = codec.decode(TOPICS[topic], raw)
                except DecodeError:
                    continue
                if wanted(value):
                    return value
    finally:
        scan.close()
    return None
