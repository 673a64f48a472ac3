"""Baselines for bench/pipeline.py: the same pass-through (read a record, write it to another
topic) as a plain confluent-kafka loop and as a faust-streaming agent, both with the runner's
batching: up to MODSTREAM_BATCH_SIZE records at a time.

`avro` is the plain loop plus the least Avro work any pipeline that decides on events must do:
each event is decoded by its topic's schema and a Decision is encoded for it (allow, no rule),
with modstream's Codec. It is the floor of such a pipeline in Python, beside which the
stages' own cost can be read.

    python bench/passthrough.py confluent|avro|faust BOOTSTRAP IN_TOPIC[,IN_TOPIC...] OUT_TOPIC
"""

from __future__ import annotations

import os
import signal
import sys

# The same consumer fetch wait as the pipeline under test (see bench/pipeline.py).
FETCH_WAIT_MS = int(os.environ.get("MODSTREAM_FETCH_WAIT_MAX_MS", "500"))
BATCH_SIZE = int(os.environ.get("MODSTREAM_BATCH_SIZE", "500"))
# faust's take() holds a batch until it is full or `within` has passed; the runner instead takes
# what is already fetched. The closest faust gets: a short `within`, the fetch wait by default.
FAUST_WITHIN_S = float(os.environ.get("BENCH_FAUST_WITHIN_S", str(max(FETCH_WAIT_MS, 1) / 1000)))
# The plain loop's producer: the settings the runner's producer has (pipeline.config).
PRODUCER = {"enable.idempotence": True, "acks": "all", "linger.ms": 5, "compression.type": "lz4"}


def confluent_loop(bootstrap: str, sources: list[str], sink: str, decide: bool = False) -> None:
    from confluent_kafka import Consumer, Producer

    transform = avro_decision(sources) if decide else None

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-plain-{sink}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "fetch.wait.max.ms": FETCH_WAIT_MS,
        }
    )
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER})
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    consumer.subscribe(sources)
    while running:
        first = consumer.poll(0.1)  # the same batching as the runner: wait for one, take what is there
        if first is None:
            continue
        messages = [m for m in [first, *consumer.consume(BATCH_SIZE - 1, 0)] if not m.error()]
        for m in messages:
            value = transform(m.topic(), m.value()) if transform else m.value()
            while True:
                try:
                    producer.produce(sink, value=value, key=m.key())
                    break
                except BufferError:
                    producer.poll(0.1)
        producer.flush()
        consumer.commit(asynchronous=True)
    consumer.close()


def avro_decision(sources: list[str]):  # type: ignore[no-untyped-def]
    """(topic, raw event) -> an encoded Decision: the event decoded, a Decision built and encoded."""
    import time

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from pipeline.serde import Codec

    codec = Codec()
    schemas = {t: "ReportEvent" if t.endswith("reports") else "UploadEvent" for t in sources}

    def transform(topic: str, raw: bytes) -> bytes:
        schema = schemas[topic]
        event = codec.decode(schema, raw)
        decision = {
            "decision_id": event["envelope"]["event_id"],
            "envelope": event["envelope"],
            "kind": "report" if schema == "ReportEvent" else "upload",
            "action": "allow",
            "decided_at": int(time.time() * 1000),
            "policy_id": "floor",
            "policy_version": "0",
            "rule_id": "none",
            "explanation": "no rule applies",
        }
        return codec.encode("Decision", decision)

    return transform


def faust_agent(bootstrap: str, sources: list[str], sink: str) -> None:
    import aiokafka
    import faust

    class Consumer(aiokafka.AIOKafkaConsumer):  # type: ignore[misc]
        """faust hard-codes fetch_max_wait_ms=1500; give it the same wait as the others."""

        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs["fetch_max_wait_ms"] = FETCH_WAIT_MS
            super().__init__(*args, **kwargs)

    aiokafka.AIOKafkaConsumer = Consumer

    app = faust.App(
        f"bench-faust-{sink}",
        broker=f"kafka://{bootstrap}",
        value_serializer="raw",
        key_serializer="raw",
        topic_disable_leader=True,
        web_enabled=False,
        broker_session_timeout=6.0,
        consumer_auto_offset_reset="earliest",
    )
    source_topic = app.topic(*sources, value_serializer="raw", key_serializer="raw")
    sink_topic = app.topic(sink, value_serializer="raw", key_serializer="raw")

    @app.agent(source_topic)
    async def passthrough(stream):  # type: ignore[no-untyped-def]
        # take_events is stream.take (same buffering) but keeps each record's key.
        async for batch in stream.take_events(BATCH_SIZE, within=FAUST_WITHIN_S):
            for event in batch:
                await sink_topic.send(key=event.key, value=event.value)

    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    kind, bootstrap, sources, sink = sys.argv[1:5]
    if kind == "avro":
        confluent_loop(bootstrap, sources.split(","), sink, decide=True)
    else:
        {"confluent": confluent_loop, "faust": faust_agent}[kind](bootstrap, sources.split(","), sink)
