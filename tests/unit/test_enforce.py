"""The enforce stage with an injected clock: one attempt inline, retries scheduled on the
`enforcement.retry` topic, results that count attempts, dead letters after the last one."""

from __future__ import annotations

import pytest

from pipeline.enforce.account import AccountEnforcer
from pipeline.enforce.consumer import EnforceStage, PermanentError
from pipeline.records import Incoming, Output, Record, envelope
from pipeline.serde import Codec
from pipeline.stages.decide import decision
from tests.unit.test_stages import POLICY

NOW = 1_700_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


class Flaky:
    """Fails its first `failures` calls per decision with `error`."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.failures, self.error = failures, error
        self.calls: dict[str, int] = {}

    def __call__(self, d: Record) -> str:
        n = self.calls[d["decision_id"]] = self.calls.get(d["decision_id"], 0) + 1
        if n <= self.failures:
            raise self.error(f"HTTP 503 (call {n})")
        return "taken down"


def a_decision(action: str = "remove", content_id: str = "c1", effects: tuple[str, ...] = ()) -> Record:
    record = {
        "envelope": envelope("p", content_id=content_id, user_id="u1"),
        "kind": "upload",
        "signals": [],
        "matches": [],
        "scores": [],
    }
    return decision(record, POLICY, action, "test-rule", f"test {action}", effects=list(effects))


def consumed(outputs: list[Output], offset: int) -> list[Incoming]:
    """Outputs as the stage reads them back from the broker (the retries only)."""
    return [Incoming(o.topic, b"c1", o.value, 0, offset, b"raw") for o in outputs if o.topic == "enforcement.retry"]


def by_topic(outputs: list[Output]) -> dict[str, list[Record]]:
    found: dict[str, list[Record]] = {}
    for o in outputs:
        found.setdefault(o.topic, []).append(o.value or {})
    return found


def test_a_retryable_failure_schedules_a_retry_instead_of_sleeping() -> None:
    clock, handler = Clock(), Flaky(1)
    stage = EnforceStage("webhook", {"remove": handler}, retries=3, backoff_s=0.2, clock=clock)
    d = a_decision()
    first = stage.process([Incoming("decisions", b"c1", d, 0, 7, b"raw")])
    [retry] = by_topic(first)["enforcement.retry"]
    assert set(by_topic(first)) == {"enforcement.retry"}  # no result yet, no dead letter
    assert retry == {
        "decision": d,
        "enforcer": "webhook",
        "attempt": 1,
        "due_at": NOW + 200,
        "last_error": "ConnectionError: HTTP 503 (call 1)",
    }
    Codec().encode("EnforcementRetry", retry)  # fits the schema

    [again] = consumed(first, 3)
    assert stage.not_before(again) == NOW + 200
    assert stage.not_before(Incoming("decisions", b"c1", d)) is None
    clock.now = NOW + 200
    [result] = by_topic(stage.process([again]))["enforcement.results"]
    assert result["status"] == "succeeded" and result["attempts"] == 2 and result["detail"] == "taken down"
    assert result["acted_at"] == NOW + 200 and handler.calls == {d["decision_id"]: 2}


def test_the_last_attempt_publishes_a_failed_result_and_dead_letters_the_retry() -> None:
    clock, handler = Clock(), Flaky(99)
    stage = EnforceStage("webhook", {"remove": handler}, retries=4, backoff_s=0.5, max_backoff_s=1.5, clock=clock)
    d = a_decision()
    outputs = stage.process([Incoming("decisions", b"c1", d, 0, 7, b"raw")])
    dues = []
    for offset in range(3):
        [retry] = consumed(outputs, offset)
        dues.append(retry.value["due_at"] - clock.now)
        outputs = stage.process([retry])
    assert dues == [500, 1000, 1500]  # exponential, capped
    found = by_topic(outputs)
    [result], [dead] = found["enforcement.results"], found["dlq"]
    assert result["status"] == "failed" and result["attempts"] == 4 and "HTTP 503 (call 4)" in result["detail"]
    assert dead["topic"] == "mod.enforcement.retry" and dead["offset"] == 2 and dead["error_type"] == "enforce"
    assert "after 4 attempt(s)" in dead["error"] and handler.calls == {d["decision_id"]: 4}


def test_a_permanent_error_fails_at_once() -> None:
    stage = EnforceStage("webhook", {"remove": Flaky(1, PermanentError)}, clock=Clock())
    found = by_topic(stage.process([Incoming("decisions", b"c1", a_decision(), 0, 7, b"raw")]))
    [result], [dead] = found["enforcement.results"], found["dlq"]
    assert result["status"] == "failed" and result["attempts"] == 1
    assert dead["topic"] == "mod.decisions" and dead["offset"] == 7 and dead["value"] == b"raw"


class StoreAway(Exception):
    """A handler's store does not answer (redis.ConnectionError, say)."""


def test_a_handler_whose_store_is_away_spends_no_attempt() -> None:
    handler = Flaky(1, StoreAway)
    stage = EnforceStage("account", {"remove": handler}, retries=1, clock=Clock(), unavailable=(StoreAway,))
    d = a_decision()
    with pytest.raises(StoreAway):  # up to the runner, which redoes the batch
        stage.process([Incoming("decisions", b"c1", d, 0, 7, b"raw")])
    [result] = by_topic(stage.process([Incoming("decisions", b"c1", d, 0, 7, b"raw")]))["enforcement.results"]
    assert result["status"] == "succeeded" and result["attempts"] == 1  # the redo is its first attempt


def test_each_enforcer_handles_only_its_own_retries() -> None:
    handler = Flaky(0)
    stage = EnforceStage("account", {"remove": handler}, clock=Clock())
    theirs = {"decision": a_decision(), "enforcer": "webhook", "attempt": 1, "due_at": NOW + 10**9, "last_error": ""}
    record = Incoming("enforcement.retry", b"c1", theirs)
    assert stage.not_before(record) is None  # not held: skipped at once
    assert stage.process([record]) == [] and handler.calls == {}
    assert stage.process([Incoming("decisions", b"c1", a_decision(action="allow"))]) == []  # no handler for it


def test_the_stage_reads_and_writes_the_retry_topic() -> None:
    stage = EnforceStage("x", {"remove": Flaky(0)})
    assert stage.inputs == ("decisions", "enforcement.retry")
    assert {"enforcement.results", "enforcement.retry", "dlq"} <= set(stage.outputs)
    with pytest.raises(ValueError, match="at least 1"):
        EnforceStage("x", {}, retries=0)


class Strikes:
    """RedisAccountStore.add_strike in memory: one strike per event id."""

    def __init__(self) -> None:
        self.events: dict[str, set[str]] = {}
        self.suspended: set[str] = set()

    def add_strike(self, user_id: str, event_id: str, suspend_live: bool = False) -> int:
        events = self.events.setdefault(user_id, set())
        if event_id not in events:
            events.add(event_id)
            if suspend_live:
                self.suspended.add(user_id)
        return len(events)


def test_a_redelivered_or_retried_decision_strikes_once() -> None:
    """And so does the same offence decided again under a new policy version."""
    strikes = Strikes()
    stage = EnforceStage("account", {"remove": AccountEnforcer(strikes)}, clock=Clock())
    d = a_decision(effects=("strike", "suspend_live"))
    retry = {"decision": d, "enforcer": "account", "attempt": 1, "due_at": NOW, "last_error": ""}
    for _ in range(2):  # a redelivery, then a retry of the same decision
        stage.process([Incoming("decisions", b"c1", d)])
    [result] = by_topic(stage.process([Incoming("enforcement.retry", b"c1", retry)]))["enforcement.results"]
    newer = {**d, "decision_id": "decided-again-under-policy-v3", "policy_version": "3"}
    stage.process([Incoming("decisions", b"c1", newer)])
    assert strikes.events == {"u1": {"offence:c1"}} and strikes.suspended == {"u1"}
    assert result["detail"] == "u1: 1 strike(s); live access suspended"


def test_a_hung_endpoint_spends_the_batch_budget_then_the_rest_is_scheduled_not_attempted() -> None:
    clock = Clock()

    def hung(d: Record) -> str:
        clock.now += 4_000  # each call takes 4 s before it times out
        raise TimeoutError("no answer")

    stage = EnforceStage("webhook", {"remove": hung}, retries=3, batch_budget_s=5.0, clock=clock)
    batch = [Incoming("decisions", b"c", a_decision(content_id=f"c{i}"), 0, i, b"raw") for i in range(10)]
    retries = by_topic(stage.process(batch))["enforcement.retry"]
    assert len(retries) == 10 and clock.now == NOW + 8_000  # two calls, not ten
    tried, untried = retries[:2], retries[2:]
    assert all(r["attempt"] == 1 for r in tried)
    assert all(r["attempt"] == 0 and r["due_at"] == NOW + 8_000 and "budget" in r["last_error"] for r in untried)
