"""The decision consumer SDK through the broker: handlers by action, results, retries, dead letters."""

from __future__ import annotations

import pytest

from pipeline.config import Settings
from pipeline.enforce.consumer import EnforceStage
from pipeline.enforce.logging_enforcer import handlers as logging_handlers
from pipeline.policy.engine import load_policy
from pipeline.records import Record, envelope
from pipeline.sdk import ModerationProducer
from pipeline.stages.decide import decision

from .helpers import collect, running

pytestmark = pytest.mark.integration


def a_decision(settings: Settings, action: str, content_id: str) -> Record:
    env = envelope(settings.platform_id, content_id=content_id, user_id="u1")
    record = {"envelope": env, "kind": "upload", "signals": [], "matches": [], "scores": []}
    return decision(record, load_policy(), action, "test-rule", f"test {action}")


def test_handlers_by_action_publish_results_and_dead_letter_failures(settings: Settings) -> None:
    calls: dict[str, int] = {}

    def take_down(d: Record) -> str:
        calls[d["decision_id"]] = calls.get(d["decision_id"], 0) + 1
        if d["envelope"]["content_id"] == "c-unreachable":
            raise ConnectionError("platform endpoint unreachable")
        return "taken down"

    stage = EnforceStage("takedown", {"remove": take_down}, settings.topic_prefix, retries=3, backoff_s=0.01)
    producer = ModerationProducer(settings)
    removed = a_decision(settings, "remove", "c-1")
    allowed = a_decision(settings, "allow", "c-2")
    failing = a_decision(settings, "remove", "c-unreachable")
    with running(settings, [stage], group=settings.group_id("enforcer.takedown")):
        for d in (removed, allowed, failing):
            producer.send("decisions", d)
        producer.flush()
        results = collect(settings, "enforcement.results", lambda rs: len(rs) >= 2)
        dead = collect(settings, "dlq", lambda ls: len(ls) >= 1)
    by_decision = {r["decision_id"]: r for r in results}
    assert by_decision[removed["decision_id"]]["status"] == "succeeded"
    assert by_decision[removed["decision_id"]]["detail"] == "taken down"
    assert allowed["decision_id"] not in by_decision  # not subscribed to "allow"
    assert by_decision[failing["decision_id"]]["status"] == "failed"
    assert by_decision[failing["decision_id"]]["attempts"] == 3
    assert calls[failing["decision_id"]] == 3
    assert dead[0]["error_type"] == "enforce"
    assert "unreachable" in dead[0]["error"]
    assert dead[0]["topic"] == settings.topic("decisions")


def test_logging_enforcer_reports_every_decision(settings: Settings) -> None:
    stage = EnforceStage("log", logging_handlers(), settings.topic_prefix)
    producer = ModerationProducer(settings)
    sent = [a_decision(settings, action, f"c-{action}") for action in ("allow", "remove", "review")]
    with running(settings, [stage]):
        for d in sent:
            producer.send("decisions", d)
        producer.flush()
        results = collect(settings, "enforcement.results", lambda rs: len(rs) >= 3)
    assert {r["action"] for r in results} == {"allow", "remove", "review"}
    assert {r["enforcer"] for r in results} == {"log"}
    assert all(r["status"] == "succeeded" for r in results)
