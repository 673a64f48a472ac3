"""What the API writes: upload events to `mod.uploads` (awaited without blocking the event
loop), bank entries to `mod.banks`, and audit lines.

`KafkaPublisher` is the SDK's ModerationProducer (idempotent, acks=all) whose deliveries
resolve asyncio futures: `submit` encodes and enqueues an event at once (raising
RecordTooLarge before anything is sent) and returns a future that a background thread
resolves when the broker acknowledges it or refuses it.

Audit: no topic of the topic map records operator actions, so every write through the API
is logged by the `pipeline.api.audit` logger at INFO as one JSON object: who (the token's
name), what (the action and its subject) and when (ms since the epoch). The bank entries
also name the writer in their `source` (`api:NAME`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterable
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message

from pipeline.banks import admin
from pipeline.config import Settings
from pipeline.records import Record, now_ms
from pipeline.sdk import DeliveryError, ModerationProducer
from pipeline.serde import Codec

logger = logging.getLogger(__name__)
audit_log = logging.getLogger("pipeline.api.audit")


class Publisher(Protocol):
    def submit(self, topic: str, event: Record) -> asyncio.Future[None]:
        """Enqueues `event`; the future completes once the broker has it (DeliveryError if not).
        Raises RecordTooLarge (a ValueError) at once for an event over the message limit."""
        ...

    def close(self) -> None: ...


class BankWriter(Protocol):
    def __call__(self, entries: Iterable[Record]) -> int:
        """Produces bank entries and waits for every acknowledgement; blocking."""
        ...


def audit(who: str, action: str, **what: Any) -> None:
    audit_log.info("%s", json.dumps({"audit": action, "who": who, "at": now_ms(), **what}, sort_keys=True))


def bank_writer(settings: Settings) -> BankWriter:
    """Writes through pipeline.banks.admin.publish: every match process applies them within a second."""
    return lambda entries: admin.publish(settings, entries)


class KafkaPublisher(ModerationProducer):
    POLL_S = 0.05

    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        super().__init__(settings, codec)
        self._lock = threading.Lock()
        self._waiting: dict[str, list[asyncio.Future[None]]] = {}
        self._stopping = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="api-producer", daemon=True)
        self._poller.start()

    def submit(self, topic: str, event: Record) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        event_id = event["envelope"]["event_id"]
        with self._lock:
            self._waiting.setdefault(event_id, []).append(future)
        try:
            self.send(topic, event)
        except BaseException:
            self._forget(event_id, future)
            raise
        return future

    def _produce(self, topic: str, key: str | bytes | None, value: bytes | None, event_id: str) -> None:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            self._delivered(event_id, err)

        while True:
            try:
                self.producer.produce(self.settings.topic(topic), value=value, key=key, on_delivery=on_delivery)
                return
            except BufferError:  # the local queue is full: the poller thread drains it
                self.producer.flush(0.05)
            except KafkaException as exc:
                raise DeliveryError([(event_id or "?", str(exc.args[0]))]) from exc

    def _delivered(self, event_id: str, err: KafkaError | None) -> None:
        with self._lock:
            futures = self._waiting.pop(event_id, [])
        for future in futures:
            future.get_loop().call_soon_threadsafe(_settle, future, event_id, err)

    def _forget(self, event_id: str, future: asyncio.Future[None]) -> None:
        with self._lock:
            waiting = self._waiting.get(event_id, [])
            if future in waiting:
                waiting.remove(future)
            if not waiting:
                self._waiting.pop(event_id, None)

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self.producer.poll(self.POLL_S)

    def close(self) -> None:
        left = self.producer.flush(10.0)
        self._stopping.set()
        self._poller.join(5)
        if left:
            logger.error("%d upload events not acknowledged at shutdown", left)


def _settle(future: asyncio.Future[None], event_id: str, err: KafkaError | None) -> None:
    if future.done():  # the request gave up waiting
        return
    if err is None:
        future.set_result(None)
    else:
        future.set_exception(DeliveryError([(event_id, str(err))]))
