"""The Kafka runner: drives one stage, or several fused in one process.

For each batch the runner does, in order:

1. Wait up to `batch_timeout_s` for a first message, then take whatever else is
   already fetched, up to `batch_size`, without waiting: batches grow with load
   and a lone event is not held back to fill one.
2. Decode each by its topic's schema. A message that does not decode becomes
   a dead letter (`mod.dlq`) carrying its raw bytes, the reason and its origin.
3. Hand the decoded records to the stages that read their topic. When stages
   are fused, an output for a topic that a later stage reads is handed over in
   memory instead of produced. If a stage raises on a batch, its records are
   retried one by one and only those that still raise are dead-lettered.
4. Encode and produce the outputs and dead letters.
5. At-least-once: flush the producer and check every delivery report. Exactly-
   once: send the batch's offsets into the open transaction and commit it.
6. Commit the offsets after the last message of the batch (at-least-once),
   asynchronously; synchronously on partition revocation and on shutdown.

If a delivery fails (or a transaction aborts), no offset moves: the consumer
seeks back to the first offset of the batch and the batch is redone, so
nothing is lost; outputs may then repeat, which is why effects are idempotent.

The runner stops cleanly on SIGTERM or SIGINT (or `stop()` from another
thread): it finishes the batch in hand, commits, and leaves the group.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pipeline.config import TOPICS, Settings
from pipeline.records import Incoming, Output, Stage, now_ms
from pipeline.runtime import metrics
from pipeline.serde import Codec, DecodeError

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Encoded:
    topic: str  # short name
    key: bytes | None
    value: bytes | None
    occurred_at: int | None  # for end-to-end latency


# (topic, partition, offset) -> (key, value) of the messages in a batch, for dead letters.
_RawIndex = dict[tuple[str, int, int], tuple[bytes | None, bytes | None]]


class DeliveryFailed(Exception):
    """A produced record was not acknowledged; the batch must be redone."""


class Runner:
    """Runs `stages` (a chain; one stage is the usual case) until stopped."""

    def __init__(
        self,
        settings: Settings,
        stages: Sequence[Stage],
        codec: Codec | None = None,
        group: str | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """`before_commit`, if given, runs after a batch's outputs are acknowledged and
        before its offsets (or its transaction) are committed: a seam for fault injection."""
        if not stages:
            raise ValueError("a runner needs at least one stage")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        self.settings = settings
        self.stages = list(stages)
        self.codec = codec or Codec(registry_url=settings.schema_registry_url)
        self.name = "+".join(names)
        self.group = group or settings.group_id(self.name)
        # A topic read by a later stage of the chain is handed over in memory.
        self._internal: list[set[str]] = [
            {t for later in self.stages[i + 1 :] for t in later.inputs} for i in range(len(self.stages))
        ]
        # Consumed from Kafka: every input no earlier stage of the chain produces.
        produced_inside = {t for i, s in enumerate(self.stages) for t in s.outputs if t in self._internal[i]}
        self.input_topics = sorted({t for s in self.stages for t in s.inputs} - produced_inside)
        for topic in self.input_topics:
            settings.topic(topic)  # raises on an unknown topic
        self._before_commit = before_commit
        self._topics = {short: settings.topic(short) for short in TOPICS}
        self._stop = threading.Event()
        self.heartbeat = metrics.Heartbeat()
        self.assigned: set[tuple[str, int]] = set()
        self.ready = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._delivery_errors: list[str] = []
        self._pending_latency: list[_Encoded] = []
        self._health_server: metrics.HealthServer | None = None

    # ---- lifecycle -------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def health(self) -> dict[str, Any]:
        age = self.heartbeat.age()
        return {
            "healthy": age < self.heartbeat.stale_after_s and not self._stop.is_set(),
            "stage": self.name,
            "group": self.group,
            "assigned": sorted(f"{t}[{p}]" for t, p in self.assigned),
            "last_poll_age_s": round(age, 3),
        }

    def run(self, install_signal_handlers: bool = True) -> None:
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        if self.settings.metrics_port:
            self._health_server = metrics.HealthServer(self.settings.metrics_port, self.health).start()
        self._open()
        logger.info(
            "stage %s consuming %s as group %s (%s)",
            self.name,
            self.input_topics,
            self.group,
            self.settings.guarantee,
        )
        try:
            while not self._stop.is_set():
                self.heartbeat.beat()
                self.run_once()
        finally:
            self._close()

    def _open(self) -> None:
        s = self.settings
        conf = s.consumer_config(
            self.group,
            **{"statistics.interval.ms": 5000, "stats_cb": lambda j: metrics.record_lag(self.name, j)},
        )
        self._consumer = Consumer(conf)
        txn_id = f"{self.group}-{s.instance_id}" if s.exactly_once else None
        self._producer = Producer(s.producer_config(txn_id))
        if txn_id:
            self._producer.init_transactions(30)
        self._consumer.subscribe(
            [s.topic(t) for t in self.input_topics], on_assign=self._on_assign, on_revoke=self._on_revoke
        )

    def _close(self) -> None:
        consumer, producer = self._consumer, self._producer
        if producer is not None:
            producer.flush(10)
        if consumer is not None:
            consumer.close()  # commits nothing by itself (auto-commit is off); leaves the group
        if self._health_server is not None:
            self._health_server.stop()
        logger.info("stage %s stopped", self.name)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        self.ready.set()
        logger.info("stage %s assigned %s", self.name, [f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The poll loop is single-threaded: when this runs inside consume(), the
        # previous batch is fully produced and its offsets already committed
        # asynchronously; a synchronous commit here makes sure they landed.
        self.assigned -= {(p.topic, p.partition) for p in partitions}
        if not self.settings.exactly_once:
            try:
                consumer.commit(asynchronous=False)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError._NO_OFFSET:
                    logger.warning("commit on revoke failed: %s", exc)

    # ---- one batch -------------------------------------------------------
    def run_once(self) -> int:
        """Consume, process and commit one batch; returns the number of messages."""
        assert self._consumer is not None and self._producer is not None
        first = self._consumer.poll(self.settings.batch_timeout_s)
        if first is None:
            self._producer.poll(0)
            return 0
        messages = [first, *self._consumer.consume(self.settings.batch_size - 1, 0)]
        messages = [m for m in messages if not self._is_error(m)]
        if not messages:
            self._producer.poll(0)
            return 0
        started = time.perf_counter()
        try:
            if self.settings.exactly_once:
                self._transact(messages)
            else:
                self._deliver(messages)
        except DeliveryFailed as exc:
            logger.error("stage %s: %s; redoing the batch", self.name, exc)
            metrics.ERRORS.labels(self.name, "delivery").inc()
            self._rewind(messages)
            time.sleep(0.5)
            return 0
        metrics.BATCH_SECONDS.labels(self.name).observe(time.perf_counter() - started)
        return len(messages)

    def _is_error(self, message: Message) -> bool:
        err = message.error()
        if err is None:
            return False
        if err.fatal():
            raise KafkaException(err)
        logger.warning("stage %s consumer error: %s", self.name, err)
        metrics.ERRORS.labels(self.name, "consumer").inc()
        return True

    def _deliver(self, messages: list[Message]) -> None:
        assert self._consumer is not None
        self._produce(self.process_messages(messages))
        self._flush()
        if self._before_commit:
            self._before_commit()
        self._consumer.commit(offsets=self._next_offsets(messages), asynchronous=True)

    def _transact(self, messages: list[Message]) -> None:
        assert self._consumer is not None and self._producer is not None
        producer = self._producer
        outputs = self.process_messages(messages)
        try:
            producer.begin_transaction()
            self._produce(outputs)
            if self._before_commit:
                producer.flush(30)
                self._before_commit()
            producer.send_offsets_to_transaction(
                self._next_offsets(messages), self._consumer.consumer_group_metadata(), 30
            )
            producer.commit_transaction(60)
        except KafkaException as exc:
            error = exc.args[0]
            if error.fatal():
                raise
            try:
                producer.abort_transaction(30)
            except KafkaException as abort_exc:
                logger.warning("abort_transaction failed: %s", abort_exc)
            raise DeliveryFailed(f"transaction aborted: {error}") from exc
        self._record_latency(outputs)

    def _produce(self, outputs: list[_Encoded]) -> None:
        assert self._producer is not None
        self._delivery_errors.clear()
        produce = self._producer.produce
        counts: Counter[str] = Counter()
        for out in outputs:
            while True:
                try:
                    produce(self._topics[out.topic], value=out.value, key=out.key, on_delivery=self._on_delivery)
                    break
                except BufferError:  # local queue full: serve delivery reports, then retry
                    self._producer.poll(0.1)
            counts[out.topic] += 1
        for topic, n in counts.items():
            metrics.RECORDS_OUT.labels(self.name, topic).inc(n)
        self._pending_latency = outputs

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err}")

    def _flush(self) -> None:
        assert self._producer is not None
        remaining = self._producer.flush(60)
        if remaining:
            raise DeliveryFailed(f"{remaining} records not acknowledged within 60 s")
        if self._delivery_errors:
            raise DeliveryFailed(f"{len(self._delivery_errors)} deliveries failed: {self._delivery_errors[0]}")
        self._record_latency(self._pending_latency)

    def _record_latency(self, outputs: Iterable[_Encoded]) -> None:
        now = now_ms()
        histograms: dict[str, Any] = {}
        for out in outputs:
            if out.occurred_at:
                if out.topic not in histograms:
                    histograms[out.topic] = metrics.E2E_SECONDS.labels(self.name, out.topic)
                histograms[out.topic].observe((now - out.occurred_at) / 1000)

    @staticmethod
    def _next_offsets(messages: list[Message]) -> list[TopicPartition]:
        last: dict[tuple[str, int], int] = {}
        for m in messages:
            topic, partition, offset = _where(m)
            last[(topic, partition)] = offset
        return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]

    def _rewind(self, messages: list[Message]) -> None:
        assert self._consumer is not None
        first: dict[tuple[str, int], int] = {}
        for m in messages:
            topic, partition, offset = _where(m)
            first.setdefault((topic, partition), offset)
        for (t, p), o in first.items():
            self._consumer.seek(TopicPartition(t, p, o))

    # ---- decode, process, encode (no Kafka I/O) --------------------------
    def process_messages(self, messages: Sequence[Message]) -> list[_Encoded]:
        """Steps 2 to 4 for a batch of raw messages; returns what to produce."""
        out: list[_Encoded] = []
        batch: list[Incoming] = []
        raw: _RawIndex = {}
        counts: Counter[str] = Counter()
        for m in messages:
            full_topic, partition, offset = _where(m)
            topic = self.settings.short_name(full_topic)
            counts[topic] += 1
            try:
                value = self.codec.decode(TOPICS[topic], m.value())
            except DecodeError as exc:
                out.append(self._dead_letter(topic, partition, offset, m.key(), m.value(), "decode", exc))
                continue
            raw[(topic, partition, offset)] = (m.key(), m.value())
            batch.append(Incoming(topic, m.key(), value, partition, offset, m.value()))
        for topic, n in counts.items():
            metrics.RECORDS_IN.labels(self.name, topic).inc(n)
        out.extend(self._run_chain(batch, raw))
        return out

    def _run_chain(self, batch: list[Incoming], raw: _RawIndex) -> list[_Encoded]:
        out: list[_Encoded] = []
        pending = batch
        for index, stage in enumerate(self.stages):
            mine = [r for r in pending if r.topic in stage.inputs]
            pending = [r for r in pending if r.topic not in stage.inputs]
            if not mine:
                continue
            try:
                handed, encoded = self._apply(index, mine)
            except Exception as exc:  # the batch failed: find the records that fail alone
                logger.warning("stage %s failed on a batch of %d (%s); retrying one by one", stage.name, len(mine), exc)
                handed, encoded = [], []
                for record in mine:
                    try:
                        h, e = self._apply(index, [record])
                    except Exception as exc:  # one bad record must not stop the stage
                        key, value = self._raw_of(record, raw)
                        out.append(
                            self._dead_letter(
                                record.topic,
                                record.partition,
                                record.offset,
                                key,
                                value,
                                "process",
                                exc,
                                stage.name,
                            )
                        )
                        continue
                    handed += h
                    encoded += e
            pending += handed
            out += encoded
        return out

    def _apply(self, index: int, records: list[Incoming]) -> tuple[list[Incoming], list[_Encoded]]:
        """Runs stage `index` on records: outputs for later stages stay in memory, others are encoded."""
        origin = records[0]
        handed: list[Incoming] = []
        encoded: list[_Encoded] = []
        for o in self.stages[index].process(records):
            if o.topic in self._internal[index]:
                handed.append(Incoming(o.topic, _key_bytes(o.key), o.value or {}, origin.partition, origin.offset))
            else:
                encoded.append(self._encode(o))
        return handed, encoded

    def _raw_of(self, record: Incoming, raw: _RawIndex) -> tuple[bytes | None, bytes | None]:
        found = raw.get((record.topic, record.partition, record.offset))
        if found is not None:
            return found
        # A record handed over in memory: dead-letter its encoded form, which can be replayed.
        return record.key, self.codec.encode(TOPICS[record.topic], record.value)

    def _encode(self, o: Output) -> _Encoded:
        value = None if o.value is None else self.codec.encode(TOPICS[o.topic], o.value, self._subject(o.topic))
        occurred = (o.value or {}).get("envelope", {}) or {}
        return _Encoded(o.topic, _key_bytes(o.key), value, occurred.get("occurred_at"))

    def _subject(self, topic: str) -> str:
        return f"{self.settings.topic(topic)}-value"

    def _dead_letter(
        self,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        kind: str,
        exc: BaseException,
        stage: str | None = None,
    ) -> _Encoded:
        stage = stage or self.name
        metrics.ERRORS.labels(stage, kind).inc()
        reason = f"{type(exc).__name__}: {exc}"
        logger.warning("dead-lettering %s[%d]@%d in %s: %s", topic, partition, offset, stage, reason)
        letter = {
            "topic": self.settings.topic(topic),
            "partition": partition,
            "offset": offset,
            "key": key,
            "value": value,
            "stage": stage,
            "error_type": kind,
            "error": reason[:2000],
            "failed_at": now_ms(),
        }
        return _Encoded("dlq", key, self.codec.encode("DeadLetter", letter, self._subject("dlq")), None)


def _where(m: Message) -> tuple[str, int, int]:
    """A consumed message's topic, partition and offset (typed as optional by the client)."""
    return str(m.topic()), int(m.partition() or 0), int(m.offset() or 0)


def _key_bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key
