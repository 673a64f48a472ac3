"""The pipeline end to end through the broker: decisions, dead letters, live bank updates."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.app import connect_redis
from pipeline.banks.table import BankTable
from pipeline.config import Settings
from pipeline.policy.engine import load_policy
from pipeline.records import now_ms, record_key
from pipeline.runtime.dlq import replay
from pipeline.runtime.follower import BankFollower
from pipeline.sdk import ModerationProducer
from pipeline.serde import Codec
from pipeline.stages.classify import ClassifyStage
from pipeline.stages.decide import DecideStage
from pipeline.stages.enrich import EnrichStage
from pipeline.stages.match import MatchStage
from pipeline.state.accounts import RedisAccountStore
from tests.media import encode, photo

from .helpers import collect, event_ids, running

pytestmark = pytest.mark.integration

BANNED = encode(photo(1001), quality=90)
CLEAN = encode(photo(1002), quality=90)


def bank(producer: ModerationProducer, media: bytes, bank_name: str = "tvec") -> None:
    entry = {
        "bank": bank_name,
        "signal_type": "sha256",
        "hash": hashlib.sha256(media).hexdigest(),
        "category": "terrorism",
        "severity": "critical",
        "source": "test",
        "added_at": now_ms(),
    }
    producer.send("banks", entry, key=record_key("banks", entry))
    producer.flush()


def pipeline_stages(settings: Settings, banks: BankTable) -> list[object]:
    # No classifier models here: classify passes records through (test_classify.py has them).
    accounts = RedisAccountStore(connect_redis(settings.redis_url))
    return [EnrichStage(accounts), MatchStage(banks), ClassifyStage([]), DecideStage(load_policy())]


@pytest.fixture
def banks(settings: Settings):  # type: ignore[no-untyped-def]
    table = BankTable()
    follower = BankFollower(settings, Codec(), table)
    follower.start()
    yield table, follower
    follower.stop()


def by_event(decisions: list[dict]) -> dict[str, dict]:  # type: ignore[type-arg]
    return {d["envelope"]["event_id"]: d for d in decisions}


def test_banned_upload_removed_clean_allowed(settings: Settings, banks) -> None:  # type: ignore[no-untyped-def]
    table, follower = banks
    producer = ModerationProducer(settings)
    bank(producer, BANNED)
    follower.wait_caught_up()
    with running(settings, pipeline_stages(settings, table)):
        banned = producer.send_upload("c-banned", "u1", media=BANNED)
        clean = producer.send_upload("c-clean", "u2", media=CLEAN, text="hello")
        producer.flush()
        decisions = by_event(collect(settings, "decisions", lambda ds: {banned, clean} <= set(event_ids(ds))))
    assert decisions[banned]["action"] == "remove"
    assert decisions[banned]["rule_id"] == "bank-match-severe"
    assert decisions[banned]["matches"][0]["bank"] == "tvec"
    assert decisions[banned]["category"] == "terrorism"
    assert decisions[clean]["action"] == "allow"
    assert decisions[clean]["matches"] == []


def test_separate_stages_hand_over_through_topics(settings: Settings, banks) -> None:  # type: ignore[no-untyped-def]
    table, follower = banks
    producer = ModerationProducer(settings)
    bank(producer, BANNED)
    follower.wait_caught_up()
    enrich, match, classify, decide = pipeline_stages(settings, table)
    with running(settings, [enrich], [match], [classify], [decide]):
        banned = producer.send_upload("c-banned", "u1", media=BANNED)
        producer.flush()
        decisions = by_event(collect(settings, "decisions", lambda ds: banned in event_ids(ds)))
        enriched = collect(settings, "matched", lambda rs: banned in event_ids(rs))
    assert decisions[banned]["action"] == "remove"
    assert enriched[-1]["stages"] == ["enrich", "match"]


def test_bank_entry_added_while_running_applies_to_later_events(settings: Settings, banks) -> None:  # type: ignore[no-untyped-def]
    table, follower = banks
    producer = ModerationProducer(settings)
    follower.wait_caught_up()
    with running(settings, pipeline_stages(settings, table)):
        before = producer.send_upload("c-1", "u1", media=BANNED)
        producer.flush()
        collect(settings, "decisions", lambda ds: before in event_ids(ds))
        bank(producer, BANNED)
        deadline = now_ms() + 5000
        while not table.match_exact("sha256", hashlib.sha256(BANNED).hexdigest()) and now_ms() < deadline:
            pass
        after = producer.send_upload("c-2", "u1", media=BANNED)
        producer.flush()
        decisions = by_event(collect(settings, "decisions", lambda ds: after in event_ids(ds)))
    assert decisions[before]["action"] == "allow"
    assert decisions[after]["action"] == "remove"
    # A tombstone deletes the entry again.
    producer.send_raw(
        "banks",
        record_key("banks", {"bank": "tvec", "signal_type": "sha256", "hash": hashlib.sha256(BANNED).hexdigest()}),
        None,
    )
    producer.flush()
    deadline = now_ms() + 5000

    def in_tvec() -> list[dict]:  # type: ignore[type-arg]
        return [m for m in table.match_exact("sha256", hashlib.sha256(BANNED).hexdigest()) if m["bank"] == "tvec"]

    while in_tvec() and now_ms() < deadline:
        pass
    assert in_tvec() == []


class ExplodingAccounts(RedisAccountStore):
    """A real account store that raises for one user, to make the stage fail on one record."""

    def get_many(self, user_ids):  # type: ignore[no-untyped-def]
        if "explode" in user_ids:
            raise RuntimeError("account store exploded for this user")
        return super().get_many(user_ids)


class ExplodingDecide(DecideStage):
    """decide, raising on one item: a later stage of the fused chain fails on a record that was
    handed over in memory."""

    def process(self, batch):  # type: ignore[no-untyped-def]
        if any(r.value["envelope"]["content_id"] == "c-late" for r in batch):
            raise RuntimeError("decide exploded on this item")
        return super().process(batch)


def test_bad_records_go_to_dlq_and_neighbours_are_processed(settings: Settings, banks) -> None:  # type: ignore[no-untyped-def]
    table, follower = banks
    follower.wait_caught_up()
    producer = ModerationProducer(settings)
    enrich = EnrichStage(ExplodingAccounts(connect_redis(settings.redis_url)))
    with running(settings, [enrich, MatchStage(table), ClassifyStage([]), ExplodingDecide(load_policy())]):
        first = producer.send_upload("c-1", "u1", media=CLEAN)
        producer.send_raw("uploads", b"c-garbage", b"this is not avro")
        producer.send_raw("uploads", b"c-json", b'{"envelope": "json is not the wire format"}')
        producer.send_raw("uploads", b"c-bad-id", b"\x00\x7f\x7f\x7f\x7f framed, unknown schema")
        boom = producer.send_upload("c-boom", "explode", media=CLEAN)
        late = producer.send_upload("c-late", "u4", media=CLEAN)
        last = producer.send_upload("c-3", "u3", media=CLEAN)
        producer.flush()
        decisions = by_event(collect(settings, "decisions", lambda ds: {first, last} <= set(event_ids(ds))))
        dead = collect(settings, "dlq", lambda ls: len(ls) >= 5)
    assert decisions[first]["action"] == "allow" and decisions[last]["action"] == "allow"
    assert boom not in decisions
    by_key = {d["key"]: d for d in dead}
    assert by_key[b"c-garbage"]["error_type"] == "decode"
    assert "magic byte" in by_key[b"c-garbage"]["error"]
    assert by_key[b"c-garbage"]["value"] == b"this is not avro"
    assert by_key[b"c-garbage"]["topic"] == settings.topic("uploads")
    assert by_key[b"c-json"]["error_type"] == "decode"
    assert "unknown schema id" in by_key[b"c-bad-id"]["error"]
    assert by_key[b"c-boom"]["error_type"] == "process"
    assert by_key[b"c-boom"]["stage"] == "enrich"
    assert "account store exploded" in by_key[b"c-boom"]["error"]
    assert by_key[b"c-boom"]["offset"] >= 0
    # Failed in decide, after enrich, match and classify handed it over in memory: the letter
    # is the upload as consumed, which can be replayed through the whole chain.
    assert late not in decisions
    assert by_key[b"c-late"]["stage"] == "decide" and "decide exploded" in by_key[b"c-late"]["error"]
    assert by_key[b"c-late"]["topic"] == settings.topic("uploads")
    assert Codec().decode("UploadEvent", by_key[b"c-late"]["value"])["envelope"]["event_id"] == late

    # decide fixed, the letter replayed: the item is decided.
    replayed = replay(settings, lambda letter: letter["stage"] == "decide")
    assert replayed.produced == {settings.topic("uploads"): 1}
    with running(settings, [enrich, MatchStage(table), ClassifyStage([]), DecideStage(load_policy())]):
        decisions = by_event(collect(settings, "decisions", lambda ds: late in event_ids(ds)))
    assert decisions[late]["action"] == "allow"


def test_account_context_is_read_from_redis(settings: Settings, banks) -> None:  # type: ignore[no-untyped-def]
    table, follower = banks
    follower.wait_caught_up()
    store = RedisAccountStore(connect_redis(settings.redis_url))
    user = f"verified-{settings.topic_prefix}"
    store.set_verified(user)
    store.add_strike(user, "evt-1")
    store.add_strike(user, "evt-1")  # idempotent per event
    producer = ModerationProducer(settings)
    with running(settings, [EnrichStage(store)]):
        eid = producer.send_upload("c-1", user, text="hi")
        producer.flush()
        enriched = collect(settings, "enriched", lambda rs: eid in event_ids(rs))
    account = enriched[-1]["account"]
    assert account == {"user_id": user, "identity_verified": True, "strikes": 1, "live_suspended": False}


def test_metrics_and_health_endpoints(settings: Settings, banks) -> None:  # type: ignore[no-untyped-def]
    import json
    import urllib.request

    from pipeline.dev.services import free_port
    from pipeline.enforce.consumer import EnforceStage
    from pipeline.enforce.logging_enforcer import handlers as logging_handlers

    table, follower = banks
    follower.wait_caught_up()
    port = free_port()
    settings = settings.with_(metrics_port=port)
    producer = ModerationProducer(settings)
    enforcer = EnforceStage("log", logging_handlers(), settings.topic_prefix)
    # Two runners in one process, as `run all` starts them, share one metrics server.
    with running(settings, pipeline_stages(settings, table), [enforcer]):
        eid = producer.send_upload("c-m", "u1", media=CLEAN)
        producer.flush()
        collect(settings, "decisions", lambda ds: eid in event_ids(ds))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            health = json.loads(r.read())
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    runners = {r["stage"]: r for r in health["runners"]}
    assert health["healthy"] is True and set(runners) == {"enrich+match+classify+decide", "enforce-log"}
    assert runners["enrich+match+classify+decide"]["assigned"]
    assert 'modstream_records_in_total{stage="enrich+match+classify+decide",topic="uploads"}' in text
    assert 'modstream_records_out_total{stage="enrich+match+classify+decide",topic="decisions"}' in text
    assert "modstream_end_to_end_seconds_bucket" in text
    assert "modstream_batch_seconds_count" in text
