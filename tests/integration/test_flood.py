"""Flood detection through the broker and Redis: 25 distinct accounts uploading one new image
within a minute are quarantined (a `restrict` decision for every copy, the earlier ones
included), with one urgent review task and one proposed incident carrying the image's hashes,
which `accept` declares; 25 uploads of another new image by one account are not a flood. The
stages run as `modstream run enrich flood` builds them (App.runners: enrich, then flood in its
own consumer group on mod.enriched). The Redis flood store is also tested alone: near-duplicate
clustering across calls and within one pipeline, a cluster carried into the next generation,
claims, and two stage instances sharing one Redis."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pipeline.app import connect_redis
from pipeline.config import Settings
from pipeline.policy.crisis import accept
from pipeline.records import Incoming, Record, envelope, signal, stable_id
from pipeline.runtime.reader import read_all
from pipeline.sdk import ModerationProducer
from pipeline.signals.media import MediaLimits, media_signals
from pipeline.stages.flood import FloodStage
from pipeline.state.floods import PREFIX, Copy, Limits, RedisFloodStore
from tests.media import encode, photo

from .helpers import collect, committed_through, end_offsets, services, wait_for

pytestmark = pytest.mark.integration

T0 = 1_700_000_000_000


@pytest.fixture
def redis(settings: Settings) -> Iterator[Any]:
    client = connect_redis(settings.redis_url)
    yield client
    left = list(client.scan_iter(PREFIX + settings.topic_prefix + "*", count=10_000))
    if left:
        client.delete(*left)


@pytest.fixture
def store(settings: Settings, redis: Any) -> RedisFloodStore:
    return RedisFloodStore(redis, distance=8, window_s=600, prefix=PREFIX + settings.topic_prefix)


def flip(pdq: str, bits: list[int]) -> str:
    value = int(pdq, 16)
    for b in bits:
        value ^= 1 << b
    return f"{value:064x}"


# ---- the store alone ------------------------------------------------------------------------------
def test_near_duplicates_share_a_representative_within_one_pipeline_and_across_calls(store: RedisFloodStore) -> None:
    rng = random.Random(3)
    base = f"{rng.getrandbits(256):064x}"
    near = [flip(base, rng.sample(range(256), 8)) for _ in range(5)]
    far = flip(base, list(range(0, 256, 28)))  # 10 bits away
    assert store.representatives([(base, T0), *[(n, T0) for n in near[:2]], (far, T0)]) == [base, base, base, far]
    assert store.representatives([(n, T0 + 1000) for n in near[2:]]) == [base] * 3


def test_a_cluster_still_seeing_copies_lives_on_into_the_next_generation(store: RedisFloodStore) -> None:
    rng = random.Random(4)
    base = f"{rng.getrandbits(256):064x}"
    window_ms = 600_000
    assert store.representatives([(base, T0)]) == [base]
    later = flip(base, [1, 2, 3])
    assert store.representatives([(later, T0 + window_ms)]) == [base]  # previous generation, carried forward
    assert store.representatives([(flip(base, [5]), T0 + 2 * window_ms)]) == [base]


def test_the_claim_goes_to_the_copy_that_crosses_and_comes_back_to_it(store: RedisFloodStore) -> None:
    limits = Limits(window_s=600, accounts=3)

    def copy(i: int, user: str) -> Copy:
        env = {"event_id": f"e{i}", "content_id": f"c{i}", "user_id": user, "occurred_at": T0 + i}
        return Copy("cluster-a", f"e{i}", user, T0 + i, {"envelope": env, "kind": "upload", "signals": []})

    copies = [copy(0, "a"), copy(1, "a"), copy(0, "a"), copy(2, "b"), copy(3, "c"), copy(4, "d")]  # e0 twice
    seen = store.record(copies, limits)
    assert [(s.status, s.count) for s in seen] == [
        ("counting", 1),
        ("counting", 1),
        ("counting", 1),
        ("counting", 2),
        ("owner", 3),
        ("flooded", 4),
    ]
    claim = seen[4].claim
    assert claim is not None and seen[4].fresh
    assert [c["envelope"]["event_id"] for c in claim["copies"]] == ["e0", "e1", "e2", "e3"]
    assert claim["copies"][0] == copies[0].record
    again = store.record([copies[4]], limits)[0]
    assert (again.status, again.fresh, again.claim) == ("owner", False, claim)
    assert seen[5].claim == {k: v for k, v in claim.items() if k != "copies"}


def test_two_processes_sharing_redis_declare_one_flood(settings: Settings, redis: Any) -> None:
    """Copies of one image (near-duplicates) split between two stage instances, batch by batch:
    one claim, one task, one proposal, and every copy quarantined once."""
    prefix = PREFIX + settings.topic_prefix
    stages = [FloodStage(RedisFloodStore(redis, prefix=prefix)) for _ in range(2)]
    rng = random.Random(5)
    base = f"{rng.getrandbits(256):064x}"
    now = int(time.time() * 1000)

    def copy(i: int) -> Incoming:
        pdq = base if i == 0 else flip(base, rng.sample(range(256), 3))
        env = envelope("p", content_id=f"c{i}", user_id=f"u{i}", occurred_at=now + i)
        signals = [signal("sha256", f"{i:064x}"), signal("pdq", pdq, 100)]
        record = {"envelope": env, "kind": "upload", "signals": signals, "matches": [], "scores": []}
        return Incoming("enriched", None, record)

    uploads = [copy(i) for i in range(25)]
    out = [o for n in range(0, 25, 3) for o in stages[(n // 3) % 2].process(uploads[n : n + 3])]
    topics = [o.topic for o in out]
    assert (topics.count("review"), topics.count("incidents")) == (1, 1)
    decided = [o.value["envelope"]["content_id"] for o in out if o.topic == "decisions" and o.value]
    assert sorted(decided) == sorted(f"c{i}" for i in range(25))


# ---- through the broker ---------------------------------------------------------------------------
def committed_all(settings: Settings, group: str, topic: str, records: int) -> Callable[[], bool]:
    """True once `topic` holds `records` records and `group` has committed all of them."""

    def done() -> bool:
        ends = end_offsets(settings, topic)
        return sum(ends.values()) >= records and committed_through(settings, group, topic, ends)

    return done


def restricted(decisions: list[Record], content_ids: set[str]) -> list[Record]:
    return [d for d in decisions if d["action"] == "restrict" and d["envelope"]["content_id"] in content_ids]


def test_25_accounts_uploading_one_new_image_are_quarantined_and_one_account_is_no_flood(settings: Settings) -> None:
    tag = uuid.uuid4().hex[:8]
    flood_image = encode(photo(random.randrange(10**9)), quality=85)
    lone_image = encode(photo(random.randrange(10**9)), quality=85)
    flood_ids = [f"{tag}-flood-{i}" for i in range(25)]
    lone_ids = [f"{tag}-lone-{i}" for i in range(25)]
    with services(settings, "enrich", "flood"), ModerationProducer(settings) as producer:
        for i, cid in enumerate(flood_ids):  # within a minute, 25 distinct accounts
            producer.send_upload(cid, f"{tag}-user-{i}", media=flood_image, media_type="image/jpeg")
        for cid in lone_ids:
            producer.send_upload(cid, f"{tag}-lone-user", media=lone_image, media_type="image/jpeg")
        producer.flush()
        decisions = collect(settings, "decisions", lambda rs: len(restricted(rs, set(flood_ids))) >= 25, timeout_s=120)
        wait_for(committed_all(settings, settings.group_id("flood"), "enriched", 50), what="flood caught up")
        incidents = collect(settings, "incidents", lambda rs: len(rs) >= 1, timeout_s=30)
        tasks = collect(settings, "review", lambda rs: len(rs) >= 1, timeout_s=30)
    decisions = read_all(settings, "decisions")

    quarantined = restricted(decisions, set(flood_ids))
    assert sorted({d["envelope"]["content_id"] for d in quarantined}) == sorted(flood_ids)  # earlier copies too
    assert {d["rule_id"] for d in quarantined} == {"flood-quarantine"}
    assert len({d["decision_id"] for d in quarantined}) == 25
    assert all("distinct accounts" in d["explanation"] and "10 minutes" in d["explanation"] for d in quarantined)
    assert restricted(decisions, set(lone_ids)) == []  # one account, 25 times: no flood

    [incident] = incidents
    assert incident["status"] == "proposed"
    assert incident["title"].startswith("possible flood: ") and incident["title"].endswith(" in 10 minutes")
    hashes = {(s["signal_type"], s["value"]) for s in media_signals(flood_image, MediaLimits())}
    proposed = {(s["signal_type"], s["value"]) for s in incident["signals"]}
    assert proposed and proposed <= hashes and {t for t, _ in proposed} == {"sha256", "pdq"}
    assert incident["incident_id"].startswith("inc-flood-")
    [task] = [t for t in tasks if t["envelope"]["content_id"] in flood_ids]
    assert task["priority"] == 100
    # what the proposal carries is enough to declare it: `modstream incident accept ID`
    declared, banked = accept(settings, incident["incident_id"])
    assert (declared["status"], banked) == ("active", len(proposed))

    pdq = next(s["value"] for s in media_signals(lone_image, MediaLimits()) if s["signal_type"] == "pdq")
    client = connect_redis(settings.redis_url)
    lone = f"{PREFIX}c:{stable_id('pdq', pdq)}"
    assert client.zcard(lone + ":u") == 1 and client.llen(lone + ":x") == 25
