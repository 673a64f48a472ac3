"""The minimal reproduction behind the exactly-once xfail on the embedded broker: a
read_committed consumer must not see records of aborted or never-committed transactions."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from pipeline.config import Settings

pytestmark = pytest.mark.integration


def test_read_committed_hides_aborted_transactions(
    settings: Settings, broker_kind: str, request: pytest.FixtureRequest
) -> None:
    if broker_kind == "embedded":
        request.applymarker(
            pytest.mark.xfail(
                strict=True, reason="Tansu does not filter aborted transactions for read_committed consumers"
            )
        )
    topic = settings.topic("uploads")
    tid = settings.topic_prefix + "repro"
    old = Producer(settings.producer_config(tid))
    old.init_transactions(30)
    old.begin_transaction()
    old.produce(topic, b"committed", partition=0)
    old.commit_transaction(30)
    old.begin_transaction()
    old.produce(topic, b"aborted", partition=0)
    old.flush(30)
    old.abort_transaction(30)
    old.begin_transaction()
    old.produce(topic, b"left open by a crash", partition=0)
    old.flush(30)
    new = Producer(settings.producer_config(tid))
    new.init_transactions(30)  # fences the old producer and aborts its open transaction
    new.begin_transaction()
    new.produce(topic, b"committed again", partition=0)
    new.commit_transaction(30)

    consumer = Consumer(settings.consumer_config(None))
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        seen += [m.value() for m in consumer.consume(100, 0.2) if not m.error()]
    consumer.close()
    assert seen == [b"committed", b"committed again"]
