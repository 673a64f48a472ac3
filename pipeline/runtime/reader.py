"""Reading a topic outside any consumer group: for `tail`, the demo, reports and tests."""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

from pipeline.config import TOPICS, Settings
from pipeline.records import Record
from pipeline.serde import Codec, DecodeError
from pipeline.serde.json_form import to_json


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
    up to its end at the start. Tombstones yield None; undecodable values are skipped."""
    codec = codec or Codec(registry_url=settings.schema_registry_url)
    name = settings.topic(topic)
    consumer = Consumer(settings.consumer_config(None))
    try:
        partitions = list(consumer.list_topics(name, timeout=timeout_s).topics[name].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(name, p), timeout=timeout_s)[1] for p in partitions}
        pending = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(name, p, OFFSET_BEGINNING) for p in pending])
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.2):
                if msg.error():
                    continue
                if int(msg.offset() or 0) + 1 >= ends[int(msg.partition() or 0)]:
                    pending.discard(int(msg.partition() or 0))
                value = _value(codec, TOPICS[topic], msg.value(), as_json=False)
                if value is None or "_undecodable" not in value:
                    raw_key = msg.key()
                    yield (raw_key.decode(errors="replace") if raw_key is not None else None), value
        if pending:
            raise TimeoutError(f"{name} not read to its end within {timeout_s} s")
    finally:
        consumer.close()


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
