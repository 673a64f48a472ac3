"""Follows a compacted topic (`mod.banks`, `mod.incidents`) into an in-memory table, from the
beginning and then live.

Tansu (the embedded broker) does not compact, and even Kafka keeps the head of
a compacted log uncompacted, so the follower applies latest-wins by key itself
and treats a null value as a delete.

A record the follower cannot apply (undecodable value or key, no key) is dead-lettered to
`mod.dlq` and skipped. Every process that follows the topic (each match and serve process)
reads all of it, on every start, so each writes the same dead letters: keyed by the record's
topic/partition/offset (`record_key("dlq", ...)`), with the same content but for
`failed_at`. Readers of the dead-letter topic can drop the repeats by key. While the schema
registry does not answer (to decode a record, or to write its dead letter), the follower
waits on the record in hand (the table holds what it had) instead of dead-lettering it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message, Producer

from pipeline.config import TOPICS, Settings
from pipeline.records import Record, dead_letter_value, record_key
from pipeline.runtime import metrics
from pipeline.runtime.reader import TopicScan
from pipeline.serde import Codec, DecodeError, RegistryUnavailable

logger = logging.getLogger(__name__)

FLUSH_ON_STOP_S = 10.0
REGISTRY_RETRY_S = 2.0


class Table(Protocol):
    def apply(self, key: str, value: Record | None) -> None: ...


class Feed:
    """A Table that hands each record's value (not its key, tombstones skipped) to `apply`:
    for followers of topics whose records are events, not latest-wins entries."""

    def __init__(self, apply: Callable[[Record], Any]) -> None:
        self._apply = apply

    def apply(self, key: str, value: Record | None) -> None:
        if value is not None:
            self._apply(value)


class TopicFollower(threading.Thread):
    """A daemon thread that keeps `table` equal to the topic. `caught_up` is set once every
    partition has been read to its end (see TopicScan), so the table holds at least every
    record written before the follower started."""

    def __init__(self, settings: Settings, codec: Codec, table: Table, topic: str, poll_s: float = 0.1) -> None:
        super().__init__(name=f"{topic}-follower", daemon=True)
        self.topic = topic
        self.stage = f"{topic}-follower"  # the stage of its metrics and dead letters
        self.settings = settings
        self.codec = codec
        self.table = table
        self.poll_s = poll_s
        self.caught_up = threading.Event()
        self._stopping = threading.Event()
        self._producer: Producer | None = None  # for dead letters, made at the first
        self.errors = 0

    def stop(self) -> None:
        self._stopping.set()

    def wait_caught_up(self, timeout_s: float = 60.0) -> None:
        if not self.caught_up.wait(timeout_s):
            raise TimeoutError(f"{self.topic} topic not loaded within {timeout_s} s")

    def run(self) -> None:
        scan = TopicScan(self.settings, self.settings.topic(self.topic))
        try:
            started = time.monotonic()
            while not self._stopping.is_set():
                for msg in scan.consume(1000, self.poll_s):
                    self._apply(msg)
                if self._producer is not None:
                    self._producer.poll(0)  # delivery reports of dead letters; never waits
                if scan.at_end and not self.caught_up.is_set():
                    logger.info("%s loaded in %.2f s", self.topic, time.monotonic() - started)
                    self.caught_up.set()
        finally:
            scan.close()
            if self._producer is not None:
                left = self._producer.flush(FLUSH_ON_STOP_S)
                if left:
                    logger.error("%s: %d dead letters not delivered at stop", self.stage, left)

    def _apply(self, msg: Message) -> None:
        """Applies one record (or dead-letters it); while the schema registry does not answer,
        to decode it or to write its dead letter, waits and tries again."""
        while True:
            try:
                self._apply_once(msg)
                return
            except RegistryUnavailable as exc:
                metrics.ERRORS.labels(self.stage, "unavailable").inc()
                logger.error("%s: %s; trying again in %g s", self.stage, exc, REGISTRY_RETRY_S)
                if self._stopping.wait(REGISTRY_RETRY_S):
                    return

    def _apply_once(self, msg: Message) -> None:
        raw_key, raw_value = msg.key(), msg.value()
        if raw_key is None:
            self._dead_letter(msg, "key", "record without a key")
            return
        try:
            key = raw_key.decode()
        except UnicodeDecodeError as exc:
            self._dead_letter(msg, "decode", f"key is not UTF-8: {exc}")
            return
        if raw_value is None:
            self.table.apply(key, None)
            return
        try:
            entry = self.codec.decode(TOPICS[self.topic], raw_value)
        except DecodeError as exc:
            self._dead_letter(msg, "decode", f"{type(exc).__name__}: {exc}")
            return
        self.table.apply(key, entry)

    def _dead_letter(self, msg: Message, kind: str, reason: str) -> None:
        topic, partition, offset = str(msg.topic()), int(msg.partition() or 0), int(msg.offset() or 0)
        letter = dead_letter_value(topic, partition, offset, msg.key(), msg.value(), self.stage, kind, reason)
        dlq = self.settings.topic("dlq")
        value = self.codec.encode("DeadLetter", letter, f"{dlq}-value")  # first: it may need the registry
        self.errors += 1
        metrics.ERRORS.labels(self.stage, kind).inc()
        logger.warning("dead-lettering %s[%d]@%d in %s: %s", topic, partition, offset, self.stage, reason)
        if self._producer is None:
            self._producer = Producer(self.settings.producer_config())
        while not self._stopping.is_set():
            try:
                self._producer.produce(dlq, value, key=record_key("dlq", letter).encode(), on_delivery=self._delivered)
                return
            except BufferError:  # the local queue is full: wait for deliveries, a little at a time
                self._producer.poll(0.5)
        logger.error("%s stopped before dead-lettering %s[%d]@%d", self.stage, topic, partition, offset)

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            metrics.ERRORS.labels(self.stage, "delivery").inc()
            logger.error("%s: dead letter for %s not delivered: %s", self.stage, msg.key(), err)


class BankFollower(TopicFollower):
    """Follows `mod.banks` into a BankTable."""

    def __init__(self, settings: Settings, codec: Codec, table: Table, poll_s: float = 0.1) -> None:
        super().__init__(settings, codec, table, "banks", poll_s)
