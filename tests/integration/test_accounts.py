"""Accounts through the broker and Redis: AccountEvents from the SDK applied by the accounts
stage (identity, suspension, lift, expiry, redelivery), suspensions by the account enforcer,
the webhook's confirmation of a cut stream, and the live counts of `modstream report`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipeline.app import connect_redis
from pipeline.config import Settings
from pipeline.enforce.account import AccountEnforcer
from pipeline.enforce.consumer import EnforceStage
from pipeline.enforce.webhook import WebhookEnforcer
from pipeline.policy.engine import load_policy
from pipeline.records import Incoming, Record, envelope, now_ms
from pipeline.runtime.reader import read_topic
from pipeline.sdk import ModerationProducer
from pipeline.stages.accounts import AccountsStage
from pipeline.stages.decide import decision
from pipeline.state.accounts import PREFIX, AccountChange, RedisAccountStore

from .helpers import collect, running
from .test_cli import cli

pytestmark = pytest.mark.integration
HOUR = 3600 * 1000


@pytest.fixture
def redis(settings: Settings) -> Iterator[Any]:
    """Redis; the test's accounts are named after its topic prefix and deleted after it."""
    client = connect_redis(settings.redis_url)
    yield client
    left = list(client.scan_iter(PREFIX + settings.topic_prefix + "*"))
    if left:
        client.delete(*left)


def wait_for(done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def applied(redis: Any, sent: dict[str, list[str]]) -> Callable[[], bool]:
    """True once every event id sent (user -> event ids) is applied."""
    return lambda: all(redis.sismember(PREFIX + u + ":events", e) for u, ids in sent.items() for e in ids)


def test_account_events_from_the_sdk_set_identity_and_live_access_once_each(settings: Settings, redis: Any) -> None:
    store = RedisAccountStore(redis)
    producer = ModerationProducer(settings)
    u = {name: f"{settings.topic_prefix}{name}" for name in ("carol", "dave", "erin", "frank", "gina")}
    now = now_ms()
    sent: dict[str, list[str]] = {user: [] for user in u.values()}

    def send(name: str, kind: str, **fields: Any) -> str:
        event_id = producer.send_account_update(u[name], kind, **fields)
        sent[u[name]].append(event_id)
        return event_id

    with running(settings, [AccountsStage(store, settings.topic_prefix)]):
        send("carol", "identity_verified", actor="kyc-service", reason="passport checked")
        send("dave", "identity_verified", actor="kyc-service")
        send("dave", "identity_unverified", actor="kyc-service", reason="document expired")
        send("erin", "live_suspended", actor="moderator-7", reason="appeal pending", until=now + HOUR)
        frank_suspended = send("frank", "live_suspended", actor="moderator-7", reason="threats on stream")
        send("frank", "live_lifted", actor="moderator-9", reason="appeal granted")
        send("gina", "live_suspended", actor="moderator-7", until=now - 1000)  # already over
        producer.send_account_update("", "identity_verified")  # no account: dead-lettered
        producer.flush()
        wait_for(applied(redis, sent))
        [dead] = collect(settings, "dlq", lambda rs: len(rs) >= 1)
    assert dead["stage"] == "accounts" and "envelope.user_id" in dead["error"]

    def states() -> dict[str, Record]:
        return store.get_many(u.values())

    first = states()
    assert {name: (first[user]["identity_verified"], first[user]["live_suspended"]) for name, user in u.items()} == {
        "carol": (True, False),
        "dave": (False, False),
        "erin": (False, True),
        "frank": (False, False),
        "gina": (False, False),
    }
    assert not RedisAccountStore(redis, clock=lambda: now + HOUR).get_many([u["erin"]])[u["erin"]]["live_suspended"]
    erin = redis.hgetall(PREFIX + u["erin"])
    assert (erin["live_suspended_by"], erin["live_suspended_reason"], erin["live_suspended_until"]) == (
        "moderator-7",
        "appeal pending",
        str(now + HOUR),
    )
    assert redis.hgetall(PREFIX + u["carol"])["identity_by"] == "kyc-service"
    frank = redis.hgetall(PREFIX + u["frank"])
    assert (frank["live_suspended"], frank["live_lifted_by"], frank["live_suspensions"]) == ("0", "moderator-9", "1")
    [entry] = store.suspensions(u["frank"])
    assert (entry["event_id"], entry["source"], entry["actor"], entry["until"]) == (
        frank_suspended,
        "account_event",
        "moderator-7",
        None,
    )

    # Redelivery: a new consumer group reads every event again; a marker per account (on its
    # partition, after its events) says when the replay has passed them. Nothing changes twice.
    markers: dict[str, list[str]] = {}
    with running(settings, [AccountsStage(store, settings.topic_prefix)], group=settings.group_id("accounts-replay")):
        for name, user in u.items():
            kind = "identity_verified" if name == "carol" else "identity_unverified"
            markers[user] = [producer.send_account_update(user, kind, actor="marker")]
        producer.flush()
        wait_for(applied(redis, markers))
    assert states() == first
    assert redis.hget(PREFIX + u["frank"], "live_suspensions") == "1" and len(store.suspensions(u["frank"])) == 1
    assert redis.scard(PREFIX + u["dave"] + ":events") == 3  # two events and the marker

    # A lone redelivery of frank's suspension, after its lift, does not suspend him again.
    events = collect(settings, "accounts", lambda rs: frank_suspended in {r["envelope"]["event_id"] for r in rs})
    [suspension] = [r for r in events if r["envelope"]["event_id"] == frank_suspended]
    assert AccountsStage(store).process([Incoming("accounts", u["frank"].encode(), suspension)]) == []
    assert not states()[u["frank"]]["live_suspended"]


def live_decision(user: str, stream: str, decided_at: int, effects: list[str]) -> Record:
    record = {
        "envelope": envelope("p", stream_id=stream, user_id=user, occurred_at=decided_at - 1000),
        "kind": "live",
        "signals": [],
        "matches": [],
        "scores": [],
    }
    return decision(record, load_policy(), "end_stream", "bank-match-live", "", effects=effects, decided_at=decided_at)


def test_the_enforcer_suspends_for_the_policy_duration_once_per_offence(settings: Settings, redis: Any) -> None:
    now = now_ms()
    store = RedisAccountStore(redis, clock=lambda: now)
    later = RedisAccountStore(redis, clock=lambda: now + HOUR + 1)
    enforcer = AccountEnforcer(store, live_suspension_s=3600)
    ann, bob, cy, dee = (f"{settings.topic_prefix}{n}" for n in ("ann", "bob", "cy", "dee"))
    effects = ["strike", "suspend_live"]

    d = live_decision(ann, "s-ann", now, effects)
    for _ in range(2):  # a decision and its redelivery
        enforcer(d)
    assert store.get_many([ann])[ann] == {
        "user_id": ann,
        "identity_verified": False,
        "strikes": 1,
        "live_suspended": True,
    }
    assert not later.get_many([ann])[ann]["live_suspended"]  # an hour after the decision
    assert redis.hget(PREFIX + ann, "live_suspended_until") == str(now + HOUR)
    [entry] = store.suspensions(ann)
    assert (entry["event_id"], entry["source"], entry["actor"], entry["until"]) == (
        "offence:s-ann",  # the stream: one strike however many decisions name it
        "decision",
        "enforce-account",
        now + HOUR,
    )
    assert redis.hget(PREFIX + ann, "live_suspensions") == "1"

    # A decision enforced late, after its suspension would have ended: a strike, no suspension.
    enforcer(live_decision(bob, "s-bob", now - 2 * HOUR, effects))
    assert store.get_many([bob])[bob]["strikes"] == 1 and not store.get_many([bob])[bob]["live_suspended"]

    # A suspension never shortens one in force: the platform's (until lifted) stands.
    assert store.apply([AccountChange(cy, "cy-1", "live_suspended", now - 1000, "moderator", "ban")]) == ["applied"]
    enforcer(live_decision(cy, "s-cy", now, effects))
    assert later.get_many([cy])[cy]["live_suspended"] and redis.hget(PREFIX + cy, "live_suspended_until") == ""
    assert redis.hget(PREFIX + cy, "live_suspensions") == "2"
    assert store.apply([AccountChange(cy, "cy-2", "live_lifted", now + 1, "moderator", "appeal")]) == ["applied"]
    assert not later.get_many([cy])[cy]["live_suspended"]

    # A lift issued before a newer suspension began leaves that suspension in force.
    enforcer(live_decision(dee, "s-dee", now, effects))
    assert store.apply([AccountChange(dee, "dee-1", "live_lifted", now - 60_000, "moderator", "old appeal")]) == [
        "kept"
    ]
    assert store.get_many([dee])[dee]["live_suspended"]


class Platform(BaseHTTPRequestHandler):
    """Answers each decision by its stream: a cut, a cut with its time, or a bare 200."""

    answers = {
        "s-cut": b'{"status": "cut"}',
        "s-timed": b'{"status": "cut", "confirmed_at": 1700000000123}',
        "s-ack": b"",
    }

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answer = self.answers[body["envelope"]["stream_id"]]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def platform() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Platform)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/moderation"
    httpd.shutdown()
    httpd.server_close()


def test_the_webhook_result_says_when_the_platform_cut_the_stream(settings: Settings, platform: str) -> None:
    now = now_ms()
    decisions = {s: live_decision("u1", s, now, []) for s in Platform.answers}
    stage = EnforceStage("webhook", {"end_stream": WebhookEnforcer(platform, timeout_s=5)}, settings.topic_prefix)
    producer = ModerationProducer(settings)
    with running(settings, [stage], group=settings.group_id("enforcer.webhook")):
        for d in decisions.values():
            producer.send("decisions", d)
        producer.flush()
        results = collect(settings, "enforcement.results", lambda rs: len(rs) >= len(decisions))
    by_stream = {r["envelope"]["stream_id"]: r for r in results}
    assert all(r["status"] == "succeeded" for r in results)
    assert by_stream["s-timed"]["confirmed_at"] == 1_700_000_000_123
    assert now <= by_stream["s-cut"]["confirmed_at"] <= by_stream["s-cut"]["acted_at"]
    assert by_stream["s-ack"]["confirmed_at"] is None
    assert by_stream["s-cut"]["detail"].startswith("HTTP 200 from ") and "confirmed at" in by_stream["s-cut"]["detail"]


def test_the_report_counts_ended_streams_and_live_suspensions(settings: Settings) -> None:
    producer = ModerationProducer(settings)
    now = now_ms()
    violent = live_decision("u1", "s1", now, ["bank", "share", "strike", "suspend_live"])
    producer.send("decisions", violent)
    producer.send("decisions", violent)  # redelivered: counts once
    producer.send(
        "enforcement.results",
        {
            "decision_id": violent["decision_id"],
            "envelope": violent["envelope"],
            "action": "end_stream",
            "enforcer": "webhook",
            "status": "succeeded",
            "attempts": 1,
            "detail": "",
            "acted_at": now + 200,
            "confirmed_at": now + 1_000,  # 2 s after the violating frame
        },
    )
    producer.send_account_update("u2", "live_suspended", actor="moderator", reason="threats")
    producer.send_account_update("u2", "live_lifted", actor="moderator")
    producer.send_account_update("u3", "identity_verified", actor="kyc-service")
    producer.flush()
    out = cli(settings, "report", "--format", "json")
    assert out.returncode == 0, out.stderr
    live = json.loads(out.stdout)["live"]
    assert (live["streams_ended"], live["streams_cut_confirmed"], live["cut_p50_s"]) == (1, 1, 2.0)
    assert (live["live_suspensions_by_policy"], live["live_suspensions_by_platform"]) == (1, 1)
    assert (live["live_suspended_accounts"], live["live_suspensions_lifted"]) == (2, 1)
    assert "live streams ended: 1 (bank-match-live 1)" in cli(settings, "report").stdout


def test_modstream_produce_accounts_fills_the_envelope_and_keys_by_user(settings: Settings) -> None:
    lines = [
        '{"envelope":{"user_id":"carol"},"kind":"identity_verified","actor":"kyc-service"}',
        '{"envelope":{"user_id":"carol"},"kind":"live_suspended","actor":"moderator-7","until":1700000000000}',
    ]
    out = cli(settings, "produce", "accounts", stdin="\n".join(lines) + "\n")
    assert out.returncode == 0, out.stderr
    records = list(read_topic(settings, "accounts", max_records=2, idle_timeout_s=30))
    assert [key for key, _ in records] == ["carol", "carol"]
    verified, suspended = (value for _, value in records)
    assert verified is not None and suspended is not None
    assert verified["envelope"]["event_id"] and verified["envelope"]["platform_id"] == settings.platform_id
    assert (verified["kind"], verified["actor"], verified["reason"], verified["until"]) == (
        "identity_verified",
        "kyc-service",
        "",
        None,
    )
    assert (suspended["kind"], suspended["until"]) == ("live_suspended", 1_700_000_000_000)
