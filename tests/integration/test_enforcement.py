"""The decision consumer SDK through the broker: handlers by action, results, scheduled
retries, dead letters, strikes."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.app import connect_redis
from pipeline.config import Settings
from pipeline.enforce.account import AccountEnforcer
from pipeline.enforce.consumer import EnforceStage
from pipeline.enforce.logging_enforcer import handlers as logging_handlers
from pipeline.enforce.webhook import WebhookEnforcer
from pipeline.policy.engine import load_policy
from pipeline.records import Incoming, Record, envelope, now_ms
from pipeline.sdk import ModerationProducer
from pipeline.stages.decide import decision
from pipeline.state.accounts import PREFIX, RedisAccountStore

from .helpers import collect, running

pytestmark = pytest.mark.integration


def a_decision(settings: Settings, action: str, content_id: str, user_id: str = "u1", **extra: object) -> Record:
    env = envelope(settings.platform_id, content_id=content_id, user_id=user_id)
    record = {"envelope": env, "kind": "upload", "signals": [], "matches": [], "scores": []}
    return decision(record, load_policy(), action, "test-rule", f"test {action}", **extra)


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
    assert "unreachable" in dead[0]["error"] and "after 3 attempt(s)" in dead[0]["error"]
    assert dead[0]["topic"] == settings.topic("enforcement.retry")  # the last retry, which carries the decision


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


class Platform(BaseHTTPRequestHandler):
    """A platform endpoint that honours Idempotency-Key and answers 503 to the first
    `failures[key]` tries of a decision."""

    failures: dict[str, int] = {}
    tries: dict[str, list[float]] = {}  # decision id -> when each try came
    effective: dict[str, int] = {}  # decision id -> actions applied
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802
        key = self.headers["Idempotency-Key"]
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            tries = self.tries.setdefault(key, [])
            tries.append(time.monotonic())
            fail = len(tries) <= self.failures.get(key, 0)
            if not fail and key not in self.effective:
                self.effective[key] = 1  # a repeat of an applied action is acknowledged, not applied
        self.send_response(503 if fail else 200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def platform() -> Iterator[str]:
    Platform.failures, Platform.tries, Platform.effective = {}, {}, {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Platform)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/moderation"
    httpd.shutdown()
    httpd.server_close()


def test_a_failing_webhook_is_retried_later_without_holding_up_other_decisions(
    settings: Settings, platform: str
) -> None:
    flaky = [a_decision(settings, "remove", f"c-flaky-{i}") for i in range(5)]
    healthy = a_decision(settings, "remove", "c-healthy")
    Platform.failures = {d["decision_id"]: 2 for d in flaky}  # 503, 503, then it recovers
    everything = {d["decision_id"] for d in [*flaky, healthy]}
    backoff_s = 1.0
    stage = EnforceStage(
        "webhook", {"remove": WebhookEnforcer(platform, timeout_s=5)}, settings.topic_prefix, 5, backoff_s
    )
    producer = ModerationProducer(settings)
    with running(settings, [stage], group=settings.group_id("enforcer.webhook")):
        for d in flaky:
            producer.send("decisions", d)
        producer.flush()
        deadline = time.monotonic() + 60
        while len(Platform.tries) < len(flaky) and time.monotonic() < deadline:
            time.sleep(0.05)
        producer.send("decisions", healthy)  # while the flaky ones wait for their retries
        producer.flush()
        results = collect(settings, "enforcement.results", lambda rs: {r["decision_id"] for r in rs} >= everything)
        time.sleep(1.0)  # lets any extra (wrong) result show up
        results = collect(settings, "enforcement.results", lambda rs: len(rs) > len(everything), timeout_s=3)
        retries = collect(settings, "enforcement.retry", lambda rs: len(rs) >= 2 * len(flaky))
    assert sorted(r["decision_id"] for r in results) == sorted(everything)  # one result per decision
    by_id = {r["decision_id"]: r for r in results}
    assert all(r["status"] == "succeeded" for r in results)
    assert {by_id[d["decision_id"]]["attempts"] for d in flaky} == {3} and by_id[healthy["decision_id"]][
        "attempts"
    ] == 1
    assert by_id[healthy["decision_id"]]["acted_at"] < min(by_id[d["decision_id"]]["acted_at"] for d in flaky)
    assert Platform.effective == dict.fromkeys(everything, 1)  # exactly one effective action per decision
    assert sorted((r["decision"]["decision_id"], r["attempt"], r["enforcer"]) for r in retries) == sorted(
        (d["decision_id"], n, "webhook") for d in flaky for n in (1, 2)
    )
    for d in flaky:  # each retry waited for its backoff: 1 s, then 2 s
        first, second, third = Platform.tries[d["decision_id"]]
        assert second - first >= 0.9 * backoff_s and third - second >= 0.9 * 2 * backoff_s


def test_a_redelivered_or_retried_decision_strikes_once(redis_url: str) -> None:
    client = connect_redis(redis_url)
    accounts = RedisAccountStore(client)
    user = f"striker-{uuid.uuid4().hex[:8]}"
    stage = EnforceStage("account", {"remove": AccountEnforcer(accounts)})
    d = a_decision(Settings(), "remove", "c-strike", user_id=user, effects=["strike", "suspend_live"])
    retry = {"decision": d, "enforcer": "account", "attempt": 1, "due_at": now_ms(), "last_error": ""}
    try:
        for _ in range(2):  # the decision, then its redelivery
            stage.process([Incoming("decisions", None, d)])
        [out] = stage.process([Incoming("enforcement.retry", None, retry)])  # and a stray retry of it
        assert accounts.get_many([user])[user] == {
            "user_id": user,
            "identity_verified": False,
            "strikes": 1,
            "live_suspended": True,
        }
        assert out.value is not None and out.value["detail"] == f"{user}: 1 strike(s); live access suspended"
    finally:
        client.delete(PREFIX + user, PREFIX + user + ":strike_events")
