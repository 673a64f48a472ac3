"""Helpers for integration tests: run stages in threads, collect a topic's records."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager

from confluent_kafka import Consumer, TopicPartition

from pipeline.app import App
from pipeline.banks.table import BankTable
from pipeline.config import Settings
from pipeline.records import Record, Stage, signal
from pipeline.runtime.reader import TopicScan, read_topic
from pipeline.runtime.runner import Runner


@contextmanager
def running(settings: Settings, *chains: Sequence[Stage], **runner_kw: object) -> Iterator[list[Runner]]:
    """Runs each chain of stages in its own runner thread for the duration of the block."""
    runners = [Runner(settings, list(chain), **runner_kw) for chain in chains]  # type: ignore[arg-type]
    threads = [threading.Thread(target=r.run, args=(False,), daemon=True) for r in runners]
    for t in threads:
        t.start()
    try:
        yield runners
    finally:
        for r in runners:
            r.stop()
        for t in threads:
            t.join(30)


def collect(
    settings: Settings,
    topic: str,
    until: Callable[[list[Record]], bool],
    timeout_s: float = 60.0,
) -> list[Record]:
    """Reads `topic` from the beginning (decoded, not JSON) until `until(records)` holds."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout_s
    for _, value in read_topic(settings, topic, from_beginning=True, idle_timeout_s=timeout_s, as_json=False):
        if value is not None:
            records.append(value)
        if until(records) or time.monotonic() > deadline:
            break
    return records


def event_ids(records: list[Record]) -> list[str]:
    return [r["envelope"]["event_id"] for r in records]


def wait_banked(table: BankTable, entries: list[Record], timeout_s: float = 30) -> None:
    """Waits until a running bank table (a match stage's) holds every exact and PDQ entry: the
    follower applies the bank topic's partitions independently, within about a second."""
    wanted = [e for e in entries if e["signal_type"] in ("md5", "sha256", "pdq")]
    deadline = time.monotonic() + timeout_s
    while True:
        found = table.match_batch([[signal(e["signal_type"], e["hash"].lower(), 100)] for e in wanted])
        if all(any(m["bank"] == e["bank"] for m in ms) for e, ms in zip(wanted, found, strict=True)):
            return
        assert time.monotonic() < deadline, f"the bank table did not get {len(wanted)} entries in {timeout_s} s"
        time.sleep(0.1)


def wait_for(done: Callable[[], bool], timeout_s: float = 120.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Per partition, the offset after its last record (read, not asked: Tansu's ListOffsets is off)."""
    scan = TopicScan(settings, settings.topic(topic))
    ends = dict.fromkeys(scan.partitions, 0)
    try:
        deadline = time.monotonic() + 30
        while not scan.at_end and time.monotonic() < deadline:
            for m in scan.consume(1000, 0.2):
                ends[m.partition()] = max(ends[m.partition()], (m.offset() or 0) + 1)
    finally:
        scan.close()
    return ends


def committed_through(settings: Settings, group: str, topic: str, ends: dict[int, int]) -> bool:
    """True if `group` has committed `topic` up to `ends` on every partition."""
    consumer = Consumer(settings.consumer_config(group))
    try:
        parts = [TopicPartition(settings.topic(topic), p) for p in ends]
        committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()
    return all(end == 0 or committed.get(p, -1) >= end for p, end in ends.items())


@contextmanager
def services(settings: Settings, *names: str) -> Iterator[App]:
    """Runs the named stages in threads, each runner in its own consumer group, as `modstream
    run` would (the account enforcer in group enforcer.account)."""
    app = App(settings)
    try:
        with ExitStack() as stack:
            for runner in app.runners(list(names)):
                stack.enter_context(
                    running(
                        settings, runner.stages, codec=app.codec, group=runner.group, unavailable=runner.unavailable
                    )
                )
            yield app
    finally:
        app.close()
