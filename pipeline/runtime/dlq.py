"""Dead letters back to where they came from, once their cause is fixed.

A dead letter carries the record it gave up on: the topic, partition and offset it was
consumed at, its key and its bytes. `replay` produces the records of the selected letters (of
those on `mod.dlq` when it starts: the letters its replays may cause are not replayed again)
to their topics, with their keys, so every stage reading them tries them once more. Stages
are idempotent by event id, so replaying a letter twice decides its event once. A letter whose
value was too large to carry (`value_truncated`) holds only a prefix and digest of it, and a
letter naming a topic this deployment does not have cannot be replayed: both are counted,
never produced.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message, Producer

from pipeline.config import TOPICS, Settings
from pipeline.records import Record
from pipeline.runtime.reader import read_all


@dataclass
class Replayed:
    produced: Counter[str] = field(default_factory=Counter)  # per topic
    skipped: Counter[str] = field(default_factory=Counter)  # per reason
    unselected: int = 0


def replay(settings: Settings, select: Callable[[Record], bool], dry_run: bool = False) -> Replayed:
    """Produces the records of the dead letters `select` picks to their topics; raises
    RuntimeError if one is not acknowledged."""
    done = Replayed()
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(f"{msg.topic()}: {err}")

    producer = Producer(settings.producer_config())
    for letter in read_all(settings, "dlq"):
        if not select(letter):
            done.unselected += 1
            continue
        topic = letter["topic"]
        if settings.short_name(topic) not in TOPICS:
            done.skipped[f"topic {topic} is not one of this deployment's"] += 1
        elif letter["value_truncated"] or letter["value"] is None:
            done.skipped["value too large to have been kept whole"] += 1
        else:
            if not dry_run:
                producer.produce(topic, letter["value"], letter["key"], on_delivery=on_delivery)
                producer.poll(0)
            done.produced[topic] += 1
    left = producer.flush(30)
    if left or failures:
        raise RuntimeError(f"{left} records not acknowledged, {len(failures)} refused: {failures[:3]}")
    return done
