"""The runner's decode/process/encode path with fake messages: no broker needed."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from pipeline.config import Settings
from pipeline.dev.services import free_port
from pipeline.records import Incoming, Output, envelope
from pipeline.runtime.runner import Runner, Unavailable
from pipeline.serde import Codec


class FakeMessage:
    def __init__(self, topic: str, value: bytes | None, offset: int, key: bytes | None = b"k") -> None:
        self._topic, self._value, self._offset, self._key = topic, value, offset, key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> None:
        return None


class Upper:
    """Turns uploads into review tasks; raises on text 'boom'."""

    name = "upper"
    inputs = ("uploads",)
    outputs = ("review",)

    def __init__(self) -> None:
        self.calls = 0

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        self.calls += 1
        out = []
        for r in batch:
            if r.value["text"] == "boom":
                raise ValueError("boom")
            task = {
                "task_id": r.value["envelope"]["event_id"],
                "envelope": r.value["envelope"],
                "priority": 1,
                "deadline": 0,
                "reason": r.value["text"].upper(),
                "decision_id": None,
                "created_at": 0,
            }
            out.append(Output("review", "k", task))
        return out


class Count:
    """Reads the review topic (handed over in memory when fused) and writes dead letters of nothing."""

    name = "count"
    inputs = ("review",)
    outputs = ()

    def __init__(self) -> None:
        self.seen: list[str] = []

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        self.seen += [r.value["reason"] for r in batch]
        return []


@pytest.fixture
def codec() -> Codec:
    return Codec()


def upload(codec: Codec, text: str, offset: int) -> FakeMessage:
    event = {"envelope": envelope("p", content_id=f"c{offset}", event_id=f"e{offset}"), "text": text}
    return FakeMessage("mod.uploads", codec.encode("UploadEvent", event), offset)


def decode_all(codec: Codec, encoded: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    types = {"review": "ReviewTask", "dlq": "DeadLetter"}
    return [(e.topic, codec.decode(types[e.topic], e.value)) for e in encoded]


def test_bad_bytes_and_raising_records_are_dead_lettered_others_processed(codec: Codec) -> None:
    stage = Upper()
    runner = Runner(Settings(bootstrap_servers="x"), [stage], codec)
    messages = [
        upload(codec, "a", 0),
        FakeMessage("mod.uploads", b"junk", 1),
        upload(codec, "boom", 2),
        upload(codec, "b", 3),
    ]
    out = decode_all(codec, runner.process_messages(messages))
    reviews = [v["reason"] for t, v in out if t == "review"]
    dead = {v["offset"]: v for t, v in out if t == "dlq"}
    assert reviews == ["A", "B"]
    assert set(dead) == {1, 2}
    assert dead[1]["error_type"] == "decode" and dead[1]["value"] == b"junk"
    assert dead[2]["error_type"] == "process" and "boom" in dead[2]["error"]
    assert dead[2]["stage"] == "upper" and dead[2]["topic"] == "mod.uploads"
    assert stage.calls == 1 + 3  # the batch, then each record alone


def test_fused_stages_hand_over_in_memory(codec: Codec) -> None:
    upper, count = Upper(), Count()
    runner = Runner(Settings(bootstrap_servers="x"), [upper, count], codec)
    assert runner.input_topics == ["uploads"]
    out = runner.process_messages([upload(codec, "a", 0), upload(codec, "b", 1)])
    assert out == []  # nothing produced: review records went to `count` in memory
    assert count.seen == ["A", "B"]


class Picky(Count):
    """Reads the review topic (handed over in memory when fused); raises on reason 'B'."""

    name = "picky"

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        if any(r.value["reason"] == "B" for r in batch):
            raise ValueError("no B")
        return super().process(batch)


def test_a_record_handed_over_in_memory_is_dead_lettered_as_the_record_consumed(codec: Codec) -> None:
    picky = Picky()
    runner = Runner(Settings(bootstrap_servers="x"), [Upper(), picky], codec)
    messages = [upload(codec, "a", 4), upload(codec, "b", 5), upload(codec, "c", 6)]
    [(topic, letter)] = decode_all(codec, runner.process_messages(messages))
    assert picky.seen == ["A", "C"]
    assert topic == "dlq" and letter["stage"] == "picky" and "no B" in letter["error"]
    # where it was consumed, and what: replayed, it goes through the whole chain again
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("mod.uploads", 0, 5)
    assert letter["value"] == messages[1].value() and letter["key"] == messages[1].key()


def test_runner_rejects_duplicate_stage_names_and_unknown_topics() -> None:
    with pytest.raises(ValueError, match="unique"):
        Runner(Settings(bootstrap_servers="x"), [Upper(), Upper()])

    class Bad(Upper):
        name = "bad"
        inputs = ("nope",)

    with pytest.raises(KeyError, match="unknown topic"):
        Runner(Settings(bootstrap_servers="x"), [Bad()])


def test_a_huge_undecodable_message_gets_a_bounded_dead_letter(codec: Codec) -> None:
    runner = Runner(Settings(bootstrap_servers="x"), [Upper()], codec)
    poison = b"\x07" * 999_900
    [(topic, letter)] = decode_all(codec, runner.process_messages([FakeMessage("mod.uploads", poison, 5)]))
    assert topic == "dlq" and letter["value_truncated"] is True
    assert letter["value"] == poison[: len(letter["value"])] and len(letter["value"]) < 100_000
    assert letter["value_size"] == len(poison)
    assert letter["value_sha256"] == hashlib.sha256(poison).hexdigest()


def test_an_output_over_the_message_limit_dead_letters_its_record_only(codec: Codec) -> None:
    runner = Runner(Settings(bootstrap_servers="x", message_max_bytes=70_000), [Upper()], codec)
    out = decode_all(codec, runner.process_messages([upload(codec, "a", 0), upload(codec, "x" * 80_000, 1)]))
    assert [v["reason"] for t, v in out if t == "review"] == ["A"]
    [letter] = [v for t, v in out if t == "dlq"]
    assert letter["offset"] == 1 and "exceeds the message limit" in letter["error"]


class Later(Upper):
    """Holds records whose text is a time in the future."""

    name = "later"

    def not_before(self, record: Incoming) -> int | None:
        text = record.value["text"]
        return int(text) if text.isdigit() else None


def test_a_record_not_yet_due_holds_its_partition_from_there_on(codec: Codec) -> None:
    runner = Runner(Settings(bootstrap_servers="x"), [Later()], codec)
    future = str(int(time.time() * 1000) + 60_000)
    messages = [upload(codec, "a", 0), upload(codec, future, 1), upload(codec, "b", 2)]
    done = runner.process(messages)
    assert [m.offset() for m in done.consumed] == [0]
    assert done.deferred == {("mod.uploads", 0): (1, int(future))}
    assert [v["reason"] for _, v in decode_all(codec, done.outputs)] == ["A"]


class Flaky(Upper):
    """Upper whose dependency stops answering: raises `on_batch` on a batch of several records
    and `alone` (if any) on one record alone."""

    name = "flaky"

    def __init__(self, on_batch: type[BaseException], alone: type[BaseException] | None = None) -> None:
        super().__init__()
        self.on_batch, self.alone = on_batch, alone

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        if len(batch) > 1:
            raise self.on_batch("no answer")
        if self.alone is not None:
            raise self.alone("no answer")
        return super().process(batch)


class NotThere(Exception):
    """A client's own error for a dependency that does not answer (redis.ConnectionError, say)."""


@pytest.mark.parametrize("error", [ConnectionError, TimeoutError, NotThere])
def test_a_dependency_that_does_not_answer_dead_letters_nothing(codec: Codec, error: type[BaseException]) -> None:
    unavailable = (ConnectionError, TimeoutError, NotThere)
    two = [upload(codec, "a", 0), upload(codec, "b", 1)]
    runner = Runner(Settings(bootstrap_servers="x"), [Flaky(error)], codec, unavailable=unavailable)
    with pytest.raises(Unavailable, match="flaky: .*no answer"):
        runner.process_messages(two)
    # The batch raised for another reason; each record alone is processed...
    runner = Runner(Settings(bootstrap_servers="x"), [Flaky(ValueError)], codec, unavailable=unavailable)
    assert [v["reason"] for _, v in decode_all(codec, runner.process_messages(two))] == ["A", "B"]
    # ... unless the dependency went away meanwhile: still no record's fault.
    runner = Runner(Settings(bootstrap_servers="x"), [Flaky(ValueError, error)], codec, unavailable=unavailable)
    with pytest.raises(Unavailable):
        runner.process_messages(two)


def test_other_errors_are_the_records_fault(codec: Codec) -> None:
    runner = Runner(Settings(bootstrap_servers="x"), [Flaky(NotThere, NotThere)], codec)  # not named unavailable
    out = decode_all(codec, runner.process_messages([upload(codec, "a", 0), upload(codec, "b", 1)]))
    assert [(t, v["offset"], v["error_type"]) for t, v in out] == [("dlq", 0, "process"), ("dlq", 1, "process")]


class FakeConsumer:
    """Hands out `messages` once; records seeks and commits."""

    def __init__(self, messages: list[FakeMessage]) -> None:
        self.queue = list(messages)
        self.seeks: list[tuple[str, int, int]] = []
        self.commits: list[tuple[str, int, int]] = []

    def poll(self, timeout: float) -> FakeMessage | None:
        return self.queue.pop(0) if self.queue else None

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        taken, self.queue = self.queue[:n], self.queue[n:]
        return taken

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def commit(self, offsets: list[TopicPartition], asynchronous: bool) -> None:
        self.commits += [(tp.topic, tp.partition, tp.offset) for tp in offsets]

    def consumer_group_metadata(self) -> None:
        return None


class FakeProducer:
    """Acknowledges every record on the next poll or flush; a transaction's commit fails if `abort`."""

    def __init__(self, abort: bool = False) -> None:
        self.abort = abort
        self.pending: list[Any] = []
        self.produced: list[str] = []
        self.aborted = 0

    def produce(self, topic: str, value: bytes | None, key: bytes | None, on_delivery: Any) -> None:
        self.produced.append(topic)
        self.pending.append(on_delivery)

    def poll(self, timeout: float) -> int:
        for on_delivery in self.pending:
            on_delivery(None, None)
        self.pending = []
        return 0

    flush = poll

    def begin_transaction(self) -> None: ...

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None: ...

    def commit_transaction(self, timeout: float) -> None:
        if self.abort:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    def abort_transaction(self, timeout: float) -> None:
        self.aborted += 1


def started(runner: Runner, consumer: FakeConsumer, producer: FakeProducer) -> Runner:
    runner._consumer, runner._producer = consumer, producer  # type: ignore[assignment]
    runner.assigned = {("mod.uploads", 0)}
    return runner


def test_a_batch_whose_dependency_is_away_is_redone_from_its_first_offset(codec: Codec) -> None:
    stage = Flaky(ConnectionError, ConnectionError)
    consumer, producer = FakeConsumer([upload(codec, "a", 5), upload(codec, "b", 6)]), FakeProducer()
    runner = started(Runner(Settings(bootstrap_servers="x"), [stage], codec), consumer, producer)
    assert runner.run_once() == 0
    assert consumer.commits == [] and producer.produced == []
    assert consumer.seeks == [("mod.uploads", 0, 5)]
    assert "ConnectionError" in runner.health()["redoing"]
    stage.on_batch, stage.alone = ValueError, None  # it answers again (and the batch fails on its own)
    consumer.queue = [upload(codec, "a", 5), upload(codec, "b", 6)]  # the seek's effect
    assert runner.run_once() == 2
    assert producer.produced == ["mod.review", "mod.review"] and runner.health()["redoing"] is None
    runner._settle()
    runner._commit(sync=True)
    assert consumer.commits == [("mod.uploads", 0, 7)]


def test_an_aborted_transaction_commits_nothing_and_is_redone(codec: Codec) -> None:
    consumer, producer = FakeConsumer([upload(codec, "a", 5), upload(codec, "b", 6)]), FakeProducer(abort=True)
    settings = Settings(bootstrap_servers="x", guarantee="exactly-once")
    runner = started(Runner(settings, [Upper()], codec), consumer, producer)
    assert runner.run_once() == 0
    assert producer.aborted == 1
    assert consumer.commits == []  # the aborted batch's offsets are not committed outside it
    assert consumer.seeks == [("mod.uploads", 0, 5)]


def test_a_registry_that_does_not_answer_redoes_the_batch(codec: Codec) -> None:
    away = Codec(registry_url=f"http://127.0.0.1:{free_port()}")
    consumer, producer = FakeConsumer([upload(codec, "a", 5), upload(codec, "b", 6)]), FakeProducer()
    runner = started(Runner(Settings(bootstrap_servers="x"), [Upper()], away), consumer, producer)
    assert runner.run_once() == 0
    assert producer.produced == [] and consumer.commits == []  # not dead-lettered as undecodable
    assert consumer.seeks == [("mod.uploads", 0, 5)]
    assert "RegistryUnavailable" in runner.health()["redoing"]
