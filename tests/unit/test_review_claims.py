"""The review task of a reported item across crashes, redeliveries and records that raise:
one task per item, with an id derived from the item, owned by the report that claimed it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.records import Incoming, Output, Record, envelope, stable_id
from pipeline.serde import Codec
from pipeline.stages.decide import DecideStage, _Decided
from pipeline.stages.enrich import moderation_record
from pipeline.state.reports import DAY_MS, LONG_MAX
from tests.unit.test_stages import POLICY, FakeReports, report

TASK_ID = stable_id("c1", "report-review")


def classified(reports: list[Incoming]) -> list[Incoming]:
    """Reports as decide reads them (nothing matched or scored). Built here, not by enrich:
    decide must cope with any envelope, whatever enrich lets through."""
    return [Incoming("classified", b"c1", moderation_record("reports", r.value), 0, i) for i, r in enumerate(reports)]


def tasks(outputs: list[Output]) -> list[Record]:
    return [o.value for o in outputs if o.topic == "review" and o.value is not None]


class Raising(DecideStage):
    """Raises on the records of `poison`, after deciding them (the worst place to fail)."""

    def __init__(self, *args: Any, poison: frozenset[str] = frozenset(), **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.poison = poison

    def _decide(self, record: Record, agg: dict[str, Any] | None, incident: bool) -> _Decided:
        decided = super()._decide(record, agg, incident)
        if record["envelope"]["event_id"] in self.poison:
            raise ValueError("poison")
        return decided


def like_the_runner(stage: DecideStage, batch: Sequence[Incoming]) -> tuple[list[Output], list[int]]:
    """What the runner does: the batch, else each record alone; returns outputs and the offsets
    of the records dead-lettered."""
    try:
        return stage.process(batch), []
    except ValueError:
        out: list[Output] = []
        dead = []
        for record in batch:
            try:
                out += stage.process([record])
            except ValueError:
                dead.append(record.offset)
        return out, dead


def test_a_redelivered_batch_re_emits_the_same_review_task() -> None:
    store = FakeReports()
    batch = classified([report(f"r{i}") for i in range(4)])
    first = tasks(DecideStage(POLICY, store).process(batch))  # claim taken; then the process dies before the ack
    assert [t["task_id"] for t in first] == [TASK_ID]
    owner = first[0]["envelope"]["event_id"]
    assert store.owners == {"c1": owner} and owner == batch[2].value["envelope"]["event_id"]

    again = tasks(DecideStage(POLICY, store).process(batch))  # a new process reads the batch again
    redone = DecideStage(POLICY, store)
    redone.process(batch)
    twice = tasks(redone.process(batch))  # the same process redoes the batch (its cache knows the owner)
    same = ("task_id", "envelope", "deadline", "decision_id")  # the reason tells the aggregate as it is now
    for t in (again, twice):
        assert [{k: x[k] for k in same} for x in t] == [{k: first[0][k] for k in same}]


def test_later_reports_of_the_item_emit_no_task() -> None:
    store = FakeReports()
    stage = DecideStage(POLICY, store)
    assert len(tasks(stage.process(classified([report(f"r{i}") for i in range(3)])))) == 1
    later = classified([report(f"r{i}") for i in range(3, 8)])
    assert tasks(stage.process(later)) == [] and tasks(DecideStage(POLICY, store).process(later)) == []
    assert len(store.owners) == 1


def test_a_record_that_raises_takes_no_claim() -> None:
    store = FakeReports()
    batch = classified([report(f"r{i}") for i in range(5)])
    poison = batch[2].value["envelope"]["event_id"]  # the first to reach `review`: it would own the task
    stage = Raising(POLICY, store, poison=frozenset({poison}))
    out, dead = like_the_runner(stage, batch)
    assert dead == [2]
    [task] = tasks(out)
    assert task["task_id"] == TASK_ID and task["envelope"]["event_id"] == store.owners["c1"] != poison


def test_a_record_that_raises_after_others_claimed_does_not_lose_their_task() -> None:
    store = FakeReports()
    batch = classified([report(f"r{i}") for i in range(5)])
    DecideStage(POLICY, store).process(batch[:4])  # r2 claims the task; the process dies before the ack
    owner = store.owners["c1"]
    stage = Raising(POLICY, store, poison=frozenset({batch[4].value["envelope"]["event_id"]}))
    out, dead = like_the_runner(stage, batch)  # the redelivery fails on r4, is retried record by record
    assert dead == [4]
    [task] = tasks(out)
    assert task["task_id"] == TASK_ID and task["envelope"]["event_id"] == owner


def test_a_report_at_the_end_of_time_gets_a_deadline_that_fits_a_long() -> None:
    codec = Codec()
    burst = [report(f"r{i}") for i in range(3)]
    for r in burst:
        r.value["envelope"]["occurred_at"] = LONG_MAX
    [task] = tasks(DecideStage(POLICY, FakeReports()).process(classified(burst)))
    assert codec.decode("ReviewTask", codec.encode("ReviewTask", task))["deadline"] <= task["created_at"] + DAY_MS
    # No report store: the deadline of a review task comes from the record itself.
    upload = moderation_record("uploads", {"envelope": envelope("p", content_id="c2", occurred_at=LONG_MAX)})
    upload["media_error"] = "unsupported media"
    [task] = tasks(DecideStage(POLICY).process([Incoming("classified", b"c2", upload)]))
    assert codec.decode("ReviewTask", codec.encode("ReviewTask", task))["deadline"] <= task["created_at"] + DAY_MS


def test_uploads_decided_while_reports_aggregate_keep_the_batch_order() -> None:
    """decide aggregates a batch's reports on another thread while it decides the uploads; its
    outputs still follow the batch, and each report is decided with its item's aggregate."""
    store = FakeReports()
    uploads = [
        Incoming("classified", b"u", moderation_record("uploads", upload_event(f"u{i}")), 0, i) for i in range(3)
    ]
    reports = classified([report(f"r{i}") for i in range(3)])
    batch = [uploads[0], reports[0], uploads[1], reports[1], reports[2], uploads[2]]
    out = DecideStage(POLICY, store).process(batch)
    decisions = [o.value for o in out if o.topic == "decisions" and o.value is not None]
    assert [d["envelope"]["event_id"] for d in decisions] == [r.value["envelope"]["event_id"] for r in batch]
    assert [d["kind"] for d in decisions] == ["upload", "report", "upload", "report", "report", "upload"]
    assert store.reporters["c1"] == {"r0", "r1", "r2"}
    assert len(tasks(out)) == 1  # three reports on one item: one review task


def upload_event(content_id: str) -> Record:
    env = envelope("p", content_id=content_id, user_id="u1")
    return {"envelope": env, "media_b64": None, "media_uri": None, "media_type": None, "text": "hi", "signals": None}
