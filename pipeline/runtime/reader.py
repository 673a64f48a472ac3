"""Reading a topic outside any consumer group: for `tail`, the demo, reports, tests, and the
followers of the compacted topics (through TopicScan)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, Message, TopicPartition

from pipeline.config import TOPICS, Settings
from pipeline.records import Record
from pipeline.serde import Codec, DecodeError
from pipeline.serde.json_form import to_json

logger = logging.getLogger(__name__)


class TopicScan:
    """A consumer outside any group over every partition of a topic, from the beginning, that
    knows when it has read each partition to its end: the one way this package reads "to the
    end" (read_to_end and the followers).

    The end is taken from librdkafka's partition-EOF events, emitted when a fetch leaves the
    consumer at the partition's end (for read_committed, its last stable offset), not from
    offsets. Comparing the last record's offset with the end fails in two ways:
    - a transaction's commit marker takes the last offset of the partition and is never
      delivered as a message, so no record reaches the end;
    - Tansu (the embedded broker) answers the end-offset query (ListOffsets, behind
      get_watermark_offsets) with the base offset of the last record batch plus one, too low
      for batches of several records, and with 0 for read_committed while a transaction is
      open; its fetch responses, which the EOF events come from, are right.
    tests/integration/test_followers.py reproduces both.
    """

    def __init__(self, settings: Settings, topic: str, timeout_s: float = 30.0) -> None:
        self.topic = topic  # the full name
        conf = settings.consumer_config(None)
        conf["enable.partition.eof"] = True  # what the end is detected by, so no setting overrides it
        self.consumer = Consumer(conf)
        try:
            meta = self.consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise RuntimeError(f"topic {topic} does not exist: run `modstream topics create`")
            self.partitions = sorted(meta.partitions)
            self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self.partitions])
        except BaseException:
            self.consumer.close()
            raise
        self._pending = set(self.partitions)

    @property
    def at_end(self) -> bool:
        """Whether every partition has been read to its end (once; records may arrive since)."""
        return not self._pending

    def consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        """The next records; end-of-partition events are noted, other errors logged and skipped."""
        records = []
        # Wait for one message, then take what is already fetched: librdkafka's batch consume
        # would otherwise hold a lone new record for the whole timeout.
        first = self.consumer.poll(timeout_s)
        batch = [] if first is None else [first, *self.consumer.consume(max_messages - 1, 0)]
        for msg in batch:
            err = msg.error()
            if err is None:
                records.append(msg)
            elif err.code() == KafkaError._PARTITION_EOF:
                self._pending.discard(int(msg.partition() or 0))
            else:
                logger.warning("reading %s: %s", self.topic, err)
        return records

    def close(self) -> None:
        self.consumer.close()


def read_topic(
    settings: Settings,
    topic: str,
    from_beginning: bool = True,
    max_records: int = 0,
    idle_timeout_s: float = 0.0,
    as_json: bool = True,
    codec: Codec | None = None,
) -> Iterator[tuple[str | None, Record | None]]:
    """Yields (key, value) of `topic` (short name). Values are in JSON form unless `as_json`
    is false; a tombstone yields None, an undecodable value an {"_undecodable": reason} object.
    Stops after `max_records` or after `idle_timeout_s` with nothing new (0: never)."""
    codec = codec or Codec(registry_url=settings.schema_registry_url)
    name = settings.topic(topic)
    record_type = TOPICS[topic]
    consumer = Consumer(settings.consumer_config(None))
    try:
        meta = consumer.list_topics(name, timeout=30)
        if name not in meta.topics or meta.topics[name].error is not None:
            raise RuntimeError(f"topic {name} does not exist")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(name, p, start) for p in meta.topics[name].partitions])
        seen = 0
        last = time.monotonic()
        while True:
            messages = consumer.consume(500, 0.2)
            for msg in messages:
                if msg.error():
                    continue
                raw_key = msg.key()
                key = raw_key.decode(errors="replace") if raw_key is not None else None
                yield key, _value(codec, record_type, msg.value(), as_json)
                seen += 1
                if max_records and seen >= max_records:
                    return
            if messages:
                last = time.monotonic()
            elif idle_timeout_s and time.monotonic() - last > idle_timeout_s:
                return
    finally:
        consumer.close()


def _value(codec: Codec, record_type: str, raw: bytes | None, as_json: bool) -> Record | None:
    if raw is None:
        return None
    try:
        value = codec.decode(record_type, raw)
    except DecodeError as exc:
        return {"_undecodable": str(exc)}
    return to_json(codec.schemas, record_type, value) if as_json else value


def read_to_end(
    settings: Settings, topic: str, codec: Codec | None = None, timeout_s: float = 60.0
) -> Iterator[tuple[str | None, Record | None]]:
    """(key, decoded value) of every record of a topic as it stands now: each partition is read
    to its end (so at least every record written before the call). Tombstones yield None;
    undecodable values are skipped."""
    codec = codec or Codec(registry_url=settings.schema_registry_url)
    name = settings.topic(topic)
    scan = TopicScan(settings, name, timeout_s)
    try:
        deadline = time.monotonic() + timeout_s
        while not scan.at_end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not read to its end within {timeout_s} s")
            for msg in scan.consume(1000, 0.2):
                value = _value(codec, TOPICS[topic], msg.value(), as_json=False)
                if value is None or "_undecodable" not in value:
                    raw_key = msg.key()
                    yield (raw_key.decode(errors="replace") if raw_key is not None else None), value
    finally:
        scan.close()


def read_table(settings: Settings, topic: str, codec: Codec | None = None) -> dict[str, Record]:
    """The latest value per key of a (compacted) topic as it stands now, tombstones applied."""
    table: dict[str, Record] = {}
    for key, value in read_to_end(settings, topic, codec):
        if key is None:
            continue
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return table


def read_all(settings: Settings, topic: str, codec: Codec | None = None) -> list[Record]:
    """Every record of a topic as it stands now."""
    return [value for _, value in read_to_end(settings, topic, codec) if value is not None]
