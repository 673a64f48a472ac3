"""The Kafka runner: drives one stage, or several fused in one process.

Each turn of the poll loop does, in order:

1. Serve the producer's delivery reports. A batch whose outputs are all
   acknowledged is complete; the offsets of complete batches are committed in
   consumption order (never past a batch still in flight), asynchronously, at
   most every `COMMIT_INTERVAL_S`. Partitions held for a scheduled retry whose
   time has come are resumed.
2. Wait up to `batch_timeout_s` for a first message, then take whatever else is
   already fetched, up to `batch_size`, without waiting: batches grow with load
   and a lone event is not held back to fill one.
3. Decode each by its topic's schema. A message that does not decode becomes a
   dead letter (`mod.dlq`) carrying (a bounded prefix of) its raw bytes, the
   reason and its origin. A record a stage says is not yet due (`not_before`)
   holds its partition from that offset on: the consumer seeks back to it and
   pauses the partition until the time comes.
4. Hand the decoded records to the stages that read their topic. When stages
   are fused, an output for a topic that a later stage reads is handed over in
   memory instead of produced. If a stage raises on a batch, its records are
   retried one by one and only those that still raise are dead-lettered (one
   handed over in memory as the consumed record it came from); an output
   larger than `message_max_bytes` makes its record raise.
5. Encode and produce the outputs and dead letters without waiting for their
   acknowledgements (pipelining: batch N+1 is processed while batch N's
   acknowledgements arrive). At most `MAX_IN_FLIGHT` batches are in flight;
   beyond that the loop waits for acknowledgements (backpressure).
   Exactly-once instead produces each batch in a transaction with its offsets
   and commits the transaction before the next batch.

If a delivery fails (or a transaction aborts), no offset moves past the failed
batch: the runner waits for what is in flight, commits what completed before
it, seeks every partition back to its first unacknowledged offset and redoes
from there, so nothing is lost; outputs may then repeat, which is why effects
are idempotent. The same happens when a stage raises one of the runner's
`unavailable` errors (a dependency such as Redis did not answer: by default
ConnectionError and TimeoutError): that is no fault of the records, so none is
dead-lettered and the batch is redone once the dependency answers. Redos in a
row back off, from 0.5 s to `MAX_BACKOFF_S`. On partition revocation and on
shutdown everything in flight is flushed and the completed offsets are
committed synchronously.

The runner stops cleanly on SIGTERM or SIGINT (or `stop()` from another
thread): it finishes the batch in hand, commits, and leaves the group.
"""

from __future__ import annotations

import gc
import logging
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from pipeline.config import TOPICS, Settings
from pipeline.records import Incoming, Output, Stage, dead_letter_value, now_ms
from pipeline.runtime import metrics
from pipeline.serde import Codec, DecodeError

logger = logging.getLogger(__name__)

COMMIT_INTERVAL_S = 0.5  # commit completed offsets at most this often (and always on revoke/shutdown)
MAX_IN_FLIGHT = 8  # batches produced but not yet fully acknowledged
FLUSH_TIMEOUT_S = 60.0
FIRST_BACKOFF_S = 0.5  # wait before redoing a failed batch, doubled for each redo in a row
MAX_BACKOFF_S = 8.0
UNAVAILABLE: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError)
REASON_MAX_CHARS = 500  # of a redo's reason, as logged and shown by health (clients quote commands)
GC_THRESHOLD = 20_000  # allocations between young-generation collections (CPython's default: 700)
_Partition = tuple[str, int]  # (full topic name, partition)


@dataclass(slots=True)
class _Encoded:
    topic: str  # short name
    key: bytes | None
    value: bytes | None
    occurred_at: int | None  # for end-to-end latency


@dataclass(slots=True)
class Processed:
    """What a batch of messages gave: outputs to produce, the messages it consumed (their
    offsets may be committed once the outputs are acknowledged), and partitions to hold."""

    outputs: list[_Encoded]
    consumed: list[Message]
    deferred: dict[_Partition, tuple[int, int]] = field(default_factory=dict)  # -> (offset, due_ms)
    first: dict[_Partition, int] = field(default_factory=dict)  # first offset consumed, per partition
    next: dict[_Partition, int] = field(default_factory=dict)  # the offset after the last one consumed


class _InFlight:
    """One produced batch: how many outputs await acknowledgement, and the offsets it covers."""

    __slots__ = ("first", "next", "pending", "error", "outputs")

    def __init__(self, first: dict[_Partition, int], next: dict[_Partition, int], outputs: list[_Encoded]) -> None:
        self.first = first
        self.next = next
        self.pending = len(outputs)
        self.error: str | None = None
        self.outputs = outputs

    def on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        self.pending -= 1
        if err is not None and self.error is None:
            self.error = f"{msg.topic()}: {err}"

    @property
    def done(self) -> bool:
        return self.pending <= 0


class DeliveryFailed(Exception):
    """A produced record was not acknowledged; the batch must be redone."""


class OutputTooLarge(Exception):
    """A stage produced a record larger than the configured message size."""


class Unavailable(Exception):
    """A stage's dependency did not answer; the batch must be redone, its records are not at fault."""


class Runner:
    """Runs `stages` (a chain; one stage is the usual case) until stopped."""

    def __init__(
        self,
        settings: Settings,
        stages: Sequence[Stage],
        codec: Codec | None = None,
        group: str | None = None,
        before_commit: Callable[[], None] | None = None,
        consume_from: Settings | None = None,
        exchange: Settings | None = None,
        unavailable: tuple[type[BaseException], ...] = UNAVAILABLE,
    ) -> None:
        """`before_commit`, if given, runs after a batch's outputs are acknowledged and
        before its offsets (or its transaction) are committed: a seam for fault injection.
        `consume_from` points the consumer at another cluster, and `exchange` names the cluster
        that outputs to the `exchange` topic go to (the partners' cluster); a runner that spans
        two clusters is at-least-once. `unavailable`: the errors that mean a dependency of the
        stages did not answer (the batch is redone), not that a record is bad (it is
        dead-lettered)."""
        if not stages:
            raise ValueError("a runner needs at least one stage")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique: {names}")
        self.settings = settings
        self.consume_from = consume_from or settings
        self.exchange = exchange
        self.unavailable = unavailable
        self._redo_on: tuple[type[BaseException], ...] = (Unavailable, *unavailable)
        self._redos = 0  # batches redone in a row
        self._redoing: str | None = None  # why the last batch was redone, until one succeeds
        if (consume_from or exchange) and settings.exactly_once:
            raise ValueError("exactly-once cannot span two clusters; run this runner at-least-once")
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
        self._subjects = {short: f"{full}-value" for short, full in self._topics.items()}
        self._short_names: dict[str, str] = {}  # full topic name -> short name, as met
        self._stop = threading.Event()
        self.heartbeat = metrics.Heartbeat()
        self.assigned: set[_Partition] = set()
        self.ready = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._exchange_producer: Producer | None = None  # outputs to the exchange, when on another cluster
        self._in_flight: deque[_InFlight] = deque()
        self._committable: dict[_Partition, int] = {}  # next offsets of completed batches, not yet committed
        self._last_commit = 0.0
        self._paused: dict[_Partition, int] = {}  # held partition -> resume at (ms)
        # Per input topic, the `not_before` of the stages that read it (most topics have none).
        self._not_before: dict[str, list[Callable[[Incoming], int | None]]] = {}
        for stage in self.stages:
            check = getattr(stage, "not_before", None)
            if check is not None:
                for topic in stage.inputs:
                    self._not_before.setdefault(topic, []).append(check)

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
            "held": sorted(f"{t}[{p}]" for t, p in self._paused),
            "in_flight_batches": len(self._in_flight),
            "redoing": self._redoing,
            "last_poll_age_s": round(age, 3),
        }

    def run(self, install_signal_handlers: bool = True) -> None:
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        if self.settings.metrics_port:
            metrics.serve(self.settings.metrics_port)
        metrics.register_health(self.name, self.health)
        self._open()
        gc.freeze()  # what start-up built (schemas, tables, models) is not scanned by every collection
        # A batch allocates thousands of short-lived dicts that reference counting frees; with the
        # default threshold (700) the collector ran every few records and took 8% of the CPU.
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
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
            metrics.unregister_health(self.name)

    def _open(self) -> None:
        s = self.settings
        conf = self.consume_from.consumer_config(
            self.group,
            **{"statistics.interval.ms": 5000, "stats_cb": lambda j: metrics.record_lag(self.name, j, self.assigned)},
        )
        self._consumer = Consumer(conf)
        txn_id = f"{self.group}-{s.instance_id}" if s.exactly_once else None
        self._producer = Producer(s.producer_config(txn_id))
        if self.exchange is not None and self.exchange.bootstrap_servers != s.bootstrap_servers:
            self._exchange_producer = Producer(self.exchange.producer_config())
        if txn_id:
            self._producer.init_transactions(30)
        self._consumer.subscribe(
            [s.topic(t) for t in self.input_topics], on_assign=self._on_assign, on_revoke=self._on_revoke
        )

    def _close(self) -> None:
        consumer = self._consumer
        try:
            if consumer is not None and self._producer is not None:
                try:
                    self._settle()
                except DeliveryFailed as exc:  # nothing past the failure is committed; the group redoes it
                    logger.error("stage %s: %s at shutdown", self.name, exc)
                self._commit(sync=True)
        finally:
            if consumer is not None:
                consumer.close()  # commits nothing by itself (auto-commit is off); leaves the group
        logger.info("stage %s stopped", self.name)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.assigned |= {(p.topic, p.partition) for p in partitions}
        self.ready.set()
        logger.info("stage %s assigned %s", self.name, [f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Runs inside consume(), between batches: every batch in hand has been produced.
        # Flush them and commit what completed, so the next owner starts right after it.
        revoked = {(p.topic, p.partition) for p in partitions}
        self.assigned -= revoked
        if not self.settings.exactly_once:
            try:
                self._settle()
            except DeliveryFailed as exc:  # commit what completed before it; the next owner redoes the rest
                self._redo([], str(exc))
            self._commit(sync=True)
        for tp in revoked:
            self._paused.pop(tp, None)

    # ---- one turn of the loop ---------------------------------------------
    def run_once(self) -> int:
        """Serve acknowledgements and commits, then consume, process and produce one batch;
        returns the number of messages taken."""
        assert self._consumer is not None and self._producer is not None
        try:
            self._serve()
        except DeliveryFailed as exc:
            self._redo([], str(exc))
            return 0
        first = self._consumer.poll(self.settings.batch_timeout_s)
        if first is None:
            return 0
        messages = [first, *self._consumer.consume(self.settings.batch_size - 1, 0)]
        messages = [m for m in messages if not self._is_error(m)]
        if not messages:
            return 0
        started = time.perf_counter()
        try:
            if self.settings.exactly_once:
                self._transact(messages)
            else:
                self._pipeline(messages)
        except DeliveryFailed as exc:
            self._redo(messages, str(exc))
            return 0
        except self._redo_on as exc:  # a stage's dependency, or the schema registry, did not answer
            self._redo(messages, f"{type(exc).__name__}: {exc}", "unavailable")
            return 0
        self._redos, self._redoing = 0, None
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

    def _pipeline(self, messages: list[Message]) -> None:
        """At-least-once: produce the batch's outputs and go on; offsets follow the acks."""
        assert self._producer is not None
        done = self.process(messages)
        self._hold(done.deferred)
        batch = _InFlight(done.first, done.next, done.outputs)
        self._in_flight.append(batch)
        self._produce(done.outputs, batch.on_delivery)
        while len(self._in_flight) > MAX_IN_FLIGHT:  # backpressure: wait for acknowledgements
            self._poll(0.01)
            self._retire()

    def _serve(self) -> None:
        self._poll(0)
        self._retire()
        now = time.monotonic()
        if self._committable and now - self._last_commit >= COMMIT_INTERVAL_S:
            self._commit(sync=False)
        self._resume_due()

    def _retire(self) -> None:
        """Moves completed batches, oldest first, to the committable offsets; raises
        DeliveryFailed (through run_once's caller) if the oldest batch failed."""
        while self._in_flight and self._in_flight[0].done:
            batch = self._in_flight[0]
            if batch.error is not None:
                raise DeliveryFailed(f"delivery failed: {batch.error}")
            self._in_flight.popleft()
            self._committable.update(batch.next)
            self._record_latency(batch.outputs)

    def _settle(self) -> None:
        """Waits for every batch in flight; completed ones become committable."""
        assert self._producer is not None
        if self._in_flight:
            self._flush(FLUSH_TIMEOUT_S)
        self._retire()
        if self._in_flight:
            raise DeliveryFailed(f"{len(self._in_flight)} batches not acknowledged within {FLUSH_TIMEOUT_S} s")

    def _poll(self, timeout_s: float) -> None:
        assert self._producer is not None
        self._producer.poll(timeout_s)
        if self._exchange_producer is not None:
            self._exchange_producer.poll(0)

    def _flush(self, timeout_s: float) -> None:
        assert self._producer is not None
        self._producer.flush(timeout_s)
        if self._exchange_producer is not None:
            self._exchange_producer.flush(timeout_s)

    def _commit(self, sync: bool) -> None:
        assert self._consumer is not None
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._committable.items() if (t, p) in self.assigned]
        self._committable.clear()
        self._last_commit = time.monotonic()
        if not offsets:
            return
        if self._before_commit:
            self._before_commit()
        try:
            if sync:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            else:
                self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:  # the group moved on (rebalance); the next owner redoes from its offset
            logger.warning("stage %s: commit failed: %s", self.name, exc)

    def _redo(self, messages: list[Message], reason: str, kind: str = "delivery") -> None:
        """A delivery failed (or a dependency did not answer): settle what is in flight, commit
        what completed before the failure, seek every partition back to its first offset not
        known to be done, and wait before going on (longer for each redo in a row)."""
        assert self._consumer is not None and self._producer is not None
        wait_s = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**self._redos)
        self._redos += 1
        reason = reason[:REASON_MAX_CHARS]
        self._redoing = reason
        logger.error("stage %s: %s; redoing from the first unacknowledged record in %g s", self.name, reason, wait_s)
        metrics.ERRORS.labels(self.name, kind).inc()
        self._flush(FLUSH_TIMEOUT_S)
        rewind: dict[_Partition, int] = {}
        failed = False
        unfinished = _InFlight(*_offsets(messages), [])  # the batch in hand, if it is not in flight
        unfinished.error = reason  # never completed, though none of its outputs is pending
        for batch in [*self._in_flight, unfinished]:
            if not failed and batch.done and batch.error is None:
                self._committable.update(batch.next)
                continue
            failed = True
            for tp, offset in batch.first.items():
                rewind[tp] = min(offset, rewind.get(tp, offset))
        self._in_flight.clear()
        self._commit(sync=True)
        for (t, p), o in rewind.items():
            if (t, p) in self.assigned:
                self._consumer.seek(TopicPartition(t, p, o))
        self._stop.wait(wait_s)

    def _hold(self, deferred: dict[_Partition, tuple[int, int]]) -> None:
        """Seeks each deferred partition back to its first not-yet-due record and pauses it."""
        assert self._consumer is not None
        for (t, p), (offset, due) in deferred.items():
            tp = TopicPartition(t, p, offset)
            self._consumer.seek(tp)
            self._consumer.pause([tp])
            self._paused[(t, p)] = due

    def _resume_due(self) -> None:
        if not self._paused:
            return
        assert self._consumer is not None
        now = now_ms()
        due = [tp for tp, at in self._paused.items() if at <= now]
        if due:
            self._consumer.resume([TopicPartition(t, p) for t, p in due])
            for tp in due:
                del self._paused[tp]

    def _transact(self, messages: list[Message]) -> None:
        assert self._consumer is not None and self._producer is not None
        producer = self._producer
        done = self.process(messages)
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                errors.append(f"{msg.topic()}: {err}")

        try:
            producer.begin_transaction()
            self._produce(done.outputs, on_delivery)
            if self._before_commit:
                producer.flush(30)
                self._before_commit()
            if done.next:
                offsets = [TopicPartition(t, p, o) for (t, p), o in done.next.items()]
                producer.send_offsets_to_transaction(offsets, self._consumer.consumer_group_metadata(), 30)
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
        if errors:
            raise DeliveryFailed(f"{len(errors)} deliveries failed: {errors[0]}")
        self._hold(done.deferred)
        self._record_latency(done.outputs)

    def _produce(self, outputs: list[_Encoded], on_delivery: Callable[[KafkaError | None, Message], None]) -> None:
        assert self._producer is not None
        local, topics = self._producer, self._topics
        counts: Counter[str] = Counter()
        for out in outputs:
            producer = self._exchange_producer if out.topic == "exchange" and self._exchange_producer else local
            while True:
                try:
                    producer.produce(topics[out.topic], value=out.value, key=out.key, on_delivery=on_delivery)
                    break
                except BufferError:  # local queue full: serve delivery reports, then retry
                    self._poll(0.05)
                except KafkaException as exc:  # refused locally (e.g. too large): the batch is redone
                    on_delivery(exc.args[0], _Refused(topics[out.topic]))  # type: ignore[arg-type]  # only .topic() is read
                    break
            counts[out.topic] += 1
        for topic, n in counts.items():
            metrics.RECORDS_OUT.labels(self.name, topic).inc(n)

    def _record_latency(self, outputs: Iterable[_Encoded]) -> None:
        now = now_ms()
        by_topic: dict[str, list[float]] = {}
        for out in outputs:
            if out.occurred_at:
                by_topic.setdefault(out.topic, []).append((now - out.occurred_at) / 1000)
        for topic, seconds in by_topic.items():
            metrics.E2E_SECONDS.observe_many((self.name, topic), seconds)

    # ---- decode, process, encode (no Kafka I/O) --------------------------
    def process_messages(self, messages: Sequence[Message]) -> list[_Encoded]:
        """Steps 3 and 4 for a batch of raw messages; returns what to produce."""
        return self.process(messages).outputs

    def process(self, messages: Sequence[Message]) -> Processed:
        """Steps 3 and 4: decode, hold what is not yet due, run the stages, encode."""
        out: list[_Encoded] = []
        batch: list[Incoming] = []
        consumed: list[Message] = []
        deferred: dict[_Partition, tuple[int, int]] = {}
        counts: Counter[str] = Counter()
        now = now_ms()
        decode, short_names = self.codec.decode, self._short_names
        for m in messages:
            full_topic, partition, offset = _where(m)
            if deferred and (full_topic, partition) in deferred:
                continue  # held from an earlier record of this partition on
            topic = short_names.get(full_topic) or short_names.setdefault(
                full_topic, self.settings.short_name(full_topic)
            )
            raw = m.value()
            try:
                value = decode(TOPICS[topic], raw)
            except DecodeError as exc:
                out.append(self._dead_letter(topic, partition, offset, m.key(), raw, "decode", exc))
            else:
                record = Incoming(topic, m.key(), value, partition, offset, raw)
                if topic in self._not_before:
                    due = self._due(record)
                    if due is not None and due > now:
                        deferred[(full_topic, partition)] = (offset, due)
                        continue
                batch.append(record)
            consumed.append(m)
            counts[topic] += 1
        for topic, n in counts.items():
            metrics.RECORDS_IN.labels(self.name, topic).inc(n)
        out.extend(self._run_chain(batch))
        return Processed(out, consumed, deferred, *_offsets(consumed))

    def _due(self, record: Incoming) -> int | None:
        for not_before in self._not_before[record.topic]:
            due = not_before(record)
            if due is not None:
                return due
        return None

    def _run_chain(self, batch: list[Incoming]) -> list[_Encoded]:
        out: list[_Encoded] = []
        pending = batch
        for index, stage in enumerate(self.stages):
            if {r.topic for r in pending}.issubset(stage.inputs):  # the usual case: all are this stage's
                mine, pending = pending, []
            else:
                mine = [r for r in pending if r.topic in stage.inputs]
                pending = [r for r in pending if r.topic not in stage.inputs]
            if not mine:
                continue
            try:
                handed, encoded = self._apply(index, mine)
            except self.unavailable as exc:
                raise Unavailable(f"stage {stage.name}: {type(exc).__name__}: {exc}") from exc
            except Exception as exc:  # the batch failed: find the records that fail alone
                logger.warning("stage %s failed on a batch of %d (%s); retrying one by one", stage.name, len(mine), exc)
                handed, encoded = [], []
                for record in mine:
                    try:
                        h, e = self._apply(index, [record])
                    except self.unavailable as exc:  # gone while retrying: no record is at fault
                        raise Unavailable(f"stage {stage.name}: {type(exc).__name__}: {exc}") from exc
                    except Exception as exc:  # one bad record must not stop the stage
                        out.append(self._dead_letter_of(record, batch, stage.name, exc))
                        continue
                    handed += h
                    encoded += e
            pending += handed
            out += encoded
        return out

    def _apply(self, index: int, records: list[Incoming]) -> tuple[list[Incoming], list[_Encoded]]:
        """Runs stage `index` on records: outputs for later stages stay in memory, others are encoded."""
        origin = records[0]
        internal = self._internal[index]
        handed: list[Incoming] = []
        encoded: list[_Encoded] = []
        limit = self.settings.message_max_bytes
        for o in self.stages[index].process(records):
            if o.topic in internal:
                handed.append(Incoming(o.topic, _key_bytes(o.key), o.value or {}, origin.partition, origin.offset))
                continue
            e = self._encode(o)
            if o.topic == "dlq":  # a dead letter the stage wrote itself
                metrics.ERRORS.labels(self.stages[index].name, str((o.value or {}).get("error_type"))).inc()
            if e.value is not None and len(e.value) > limit:
                raise OutputTooLarge(
                    f"a {len(e.value)}-byte record for {o.topic} exceeds the message limit of "
                    f"{limit} bytes (MODSTREAM_MESSAGE_MAX_BYTES)"
                )
            encoded.append(e)
        return handed, encoded

    def _dead_letter_of(self, record: Incoming, consumed: list[Incoming], stage: str, exc: Exception) -> _Encoded:
        """The dead letter of a record that makes `stage` raise on its own. A record handed over
        in memory is dead-lettered as the consumed record it came from (the one with its event
        id: its topic, partition, offset and bytes, which can be replayed through the whole
        chain); failing that, as its own encoded form under its internal topic."""
        event_id = (record.value.get("envelope") or {}).get("event_id")
        if record.raw is None and event_id is not None:
            record = next((r for r in consumed if (r.value.get("envelope") or {}).get("event_id") == event_id), record)
        value = record.raw if record.raw is not None else self.codec.encode(TOPICS[record.topic], record.value)
        return self._dead_letter(
            record.topic, record.partition, record.offset, record.key, value, "process", exc, stage
        )

    def _encode(self, o: Output) -> _Encoded:
        if o.value is None:
            return _Encoded(o.topic, _key_bytes(o.key), None, None)
        value = self.codec.encode(TOPICS[o.topic], o.value, self._subjects[o.topic])
        envelope = o.value.get("envelope")
        return _Encoded(o.topic, _key_bytes(o.key), value, envelope.get("occurred_at") if envelope else None)

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
        letter = dead_letter_value(self.settings.topic(topic), partition, offset, key, value, stage, kind, reason)
        return _Encoded("dlq", letter["key"], self.codec.encode("DeadLetter", letter, self._subjects["dlq"]), None)


class _Refused:
    """Stands in for the message of a record the producer refused before sending it."""

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def topic(self) -> str:
        return self._topic


def _where(m: Message) -> tuple[str, int, int]:
    """A consumed message's topic, partition and offset (typed as optional by the client)."""
    return str(m.topic()), int(m.partition() or 0), int(m.offset() or 0)


def _offsets(messages: list[Message]) -> tuple[dict[_Partition, int], dict[_Partition, int]]:
    """The first offset of `messages` per partition, and the offset after the last."""
    first: dict[_Partition, int] = {}
    after: dict[_Partition, int] = {}
    for m in messages:
        topic, partition, offset = _where(m)
        first.setdefault((topic, partition), offset)
        after[(topic, partition)] = offset + 1
    return first, after


def _key_bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key
