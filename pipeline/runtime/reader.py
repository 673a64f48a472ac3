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
