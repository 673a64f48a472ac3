"""Follows a compacted topic (`mod.banks`, `mod.incidents`) into an in-memory table, from the
beginning and then live.

Tansu (the embedded broker) does not compact, and even Kafka keeps the head of
a compacted log uncompacted, so the follower applies latest-wins by key itself
and treats a null value as a delete.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.config import TOPICS, Settings
from pipeline.records import Record
from pipeline.serde import Codec, DecodeError

logger = logging.getLogger(__name__)


class Table(Protocol):
    def apply(self, key: str, value: Record | None) -> None: ...


class TopicFollower(threading.Thread):
    """A daemon thread that keeps `table` equal to the topic. `caught_up` is set once the
    start-time end of every partition has been applied."""

    def __init__(self, settings: Settings, codec: Codec, table: Table, topic: str, poll_s: float = 0.1) -> None:
        super().__init__(name=f"{topic}-follower", daemon=True)
        self.topic = topic
        self.settings = settings
        self.codec = codec
        self.table = table
        self.poll_s = poll_s
        self.caught_up = threading.Event()
        self._stop = threading.Event()
        self.errors = 0

    def stop(self) -> None:
        self._stop.set()

    def wait_caught_up(self, timeout_s: float = 60.0) -> None:
        if not self.caught_up.wait(timeout_s):
            raise TimeoutError(f"{self.topic} topic not loaded within {timeout_s} s")

    def run(self) -> None:
        topic = self.settings.topic(self.topic)
        consumer = Consumer(self.settings.consumer_config(None))
        try:
            meta = consumer.list_topics(topic, timeout=30)
            partitions = sorted(meta.topics[topic].partitions) if topic in meta.topics else []
            if not partitions:
                raise RuntimeError(f"topic {topic} does not exist: run `modstream topics create`")
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in partitions}
            positions = {p: 0 for p in partitions}
            started = time.monotonic()
            while not self._stop.is_set():
                for msg in consumer.consume(1000, self.poll_s):
                    if msg.error():
                        logger.warning("%s follower: %s", self.topic, msg.error())
                        continue
                    positions[int(msg.partition() or 0)] = int(msg.offset() or 0) + 1
                    self._apply(msg.key(), msg.value())
                if not self.caught_up.is_set() and all(positions[p] >= ends[p] for p in partitions):
                    logger.info("%s loaded in %.2f s", self.topic, time.monotonic() - started)
                    self.caught_up.set()
        finally:
            consumer.close()

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            self.errors += 1
            logger.warning("%s record without key ignored", self.topic)
            return
        if value is None:
            self.table.apply(key.decode(), None)
            return
        try:
            entry = self.codec.decode(TOPICS[self.topic], value)
        except DecodeError as exc:
            self.errors += 1
            logger.warning("undecodable %s record %r ignored: %s", self.topic, key, exc)
            return
        self.table.apply(key.decode(), entry)


class BankFollower(TopicFollower):
    """Follows `mod.banks` into a BankTable."""

    def __init__(self, settings: Settings, codec: Codec, table: Table, poll_s: float = 0.1) -> None:
        super().__init__(settings, codec, table, "banks", poll_s)
