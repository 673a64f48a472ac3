"""Retroactive matching with no broker: the recent-uploads store (exact PDQ search, exact
hashes, the window, shards, memory) and the retro stage called directly."""

from __future__ import annotations

import hashlib
from functools import cache

import numpy as np
import pytest

from pipeline.banks.pdq_index import brute_force
from pipeline.banks.table import MatchConfig
from pipeline.policy.engine import load_policy, parse_policy
from pipeline.records import Incoming, Record, envelope, record_key
from pipeline.serde import Codec
from pipeline.stages.retro import BankCodec, RetroStage
from pipeline.state.recent import DAY_MS, RecentStore, _search_rows

NOW = 1_700_000_000_000
POLICY = load_policy()
RNG = np.random.default_rng(7)


class Clock:
    def __init__(self, now: int = NOW) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@cache
def pdq(seed: int) -> str:
    return np.random.default_rng(seed).integers(0, 256, 32, dtype=np.uint8).tobytes().hex()


def flip(hex_hash: str, bits: int, seed: int = 0) -> str:
    raw = bytearray(bytes.fromhex(hex_hash))
    for bit in np.random.default_rng(seed).choice(256, bits, replace=False):
        raw[bit // 8] ^= 1 << (bit % 8)
    return raw.hex()


def sha(data: str) -> str:
    return hashlib.sha256(data.encode()).hexdigest()


def upload(content_id: str, pdq_hash: str | None, at: int = NOW - 3600_000, user: str = "u1", **hashes: str) -> Record:
    signals = [{"signal_type": "pdq", "value": pdq_hash, "quality": 90, "frame": None}] if pdq_hash else []
    signals += [{"signal_type": k, "value": v, "quality": None, "frame": None} for k, v in hashes.items()]
    return {
        "envelope": envelope("p1", content_id=content_id, user_id=user, occurred_at=at),
        "kind": "upload",
        "signals": signals,
        "matches": [],
    }


def entry(
    hash_: str,
    bank: str = "tvec",
    signal_type: str = "pdq",
    added_at: int = NOW - 1000,
    **extra: object,
) -> Incoming:
    value = {
        "bank": bank,
        "signal_type": signal_type,
        "hash": hash_,
        "category": "terrorism",
        "severity": "high",
        "source": "ops",
        "added_at": added_at,
        "item_id": None,
        "incident_id": None,
        "signed_at": None,
        **extra,
    }
    return Incoming("banks", record_key("banks", value).encode(), value)


def stage(store: RecentStore, **kw: object) -> RetroStage:
    return RetroStage(store, kw.pop("policy", POLICY), MatchConfig(), clock=store.clock, **kw)  # type: ignore[arg-type]


def store_with(*records: Record, **kw: object) -> RecentStore:
    store = RecentStore(clock=Clock(), **kw)  # type: ignore[arg-type]
    for r in records:
        store.add(r)
    return store


def verdict(content_id: str, action: str, matches: list[Record] | None = None, decision_id: str = "") -> Record:
    """A Decision as `decisions` carries it, with what the store reads."""
    return {
        "decision_id": decision_id or f"d-{content_id}",
        "envelope": envelope("p1", content_id=content_id),
        "action": action,
        "rule_id": "some-rule",
        "matches": matches or [],
        "decided_at": NOW,
    }


def decided(outputs: list) -> dict[str, Record]:  # type: ignore[type-arg]
    return {o.value["envelope"]["content_id"]: o.value for o in outputs if o.topic == "decisions"}


# ---- the store ----------------------------------------------------------------------
@pytest.mark.parametrize(("queries", "radius"), [(5, 31), (100, 31), (100, 40), (40, 63)])
def test_search_finds_exactly_what_a_scan_finds(queries: int, radius: int) -> None:
    bits = RNG.integers(0, 256, (20_000, 32), dtype=np.uint8)
    q = bits[RNG.integers(0, len(bits), queries)].copy()
    for row in q[: queries // 2]:
        for bit in RNG.choice(256, RNG.integers(0, radius + 10), replace=False):
            row[bit // 8] ^= 1 << (bit % 8)
    at = np.full(len(bits), NOW, dtype=np.int64)
    at[::5] = 0  # outside the window: never found
    words = bits.view(np.uint64).reshape(-1, 4)
    found = _search_rows(words, np.arange(len(bits), dtype=np.int32), at, 1, q.view(np.uint64).reshape(-1, 4), radius)
    want_q, want_r, want_d = brute_force(bits, q, radius)
    keep = at[want_r] >= 1
    for got, want in zip(found, (want_q[keep], want_r[keep], want_d[keep]), strict=True):
        assert got.tolist() == want.tolist()
    assert len(found[0]) >= queries // 4


def test_store_keeps_ids_and_finds_by_pdq_and_exact_hash() -> None:
    h = pdq(1)
    store = store_with(
        upload("c-1", h, user="u-1", md5=hashlib.md5(b"x").hexdigest(), sha256=sha("x")),
        upload("c-2", pdq(2), user=""),
        upload("c-3", None, sha256=sha("video")),  # no PDQ (a video): found by its exact hash
        {**upload("c-4", pdq(4)), "kind": "report"},  # not an upload
    )
    assert len(store) == 3
    hits = store.search([("pdq", flip(h, 20)), ("sha256", sha("video")), ("md5", hashlib.md5(b"x").hexdigest())], 31)
    by_query = {hit.query: hit for hit in hits}
    assert by_query[0].item.content_id == "c-1" and by_query[0].item.user_id == "u-1"
    assert by_query[0].distance == 20 and by_query[0].signal == {
        "signal_type": "pdq",
        "value": h,
        "quality": None,
        "frame": None,
    }
    assert by_query[1].item.content_id == "c-3" and by_query[1].item.platform_id == "p1"
    assert by_query[2].item.content_id == "c-1"
    assert store.search([("pdq", flip(h, 40))], 31) == []
    assert store.search([("pdq", pdq(2))], 31)[0].item.user_id is None


def test_low_quality_hashes_are_not_kept_and_dihedral_variants_only_when_asked() -> None:
    low = upload("c-low", pdq(5))
    low["signals"][0]["quality"] = 10
    mirrored = upload("c-img", pdq(6))
    mirrored["signals"].append({"signal_type": "pdq_dihedral", "value": pdq(7), "quality": 90, "frame": None})
    assert not store_with(low).search([("pdq", pdq(5))], 31)
    assert store_with(mirrored).search([("pdq", pdq(7))], 31) == []
    [hit] = store_with(mirrored, dihedral=True).search([("pdq", pdq(7))], 31)
    assert hit.item.content_id == "c-img" and hit.signal["signal_type"] == "pdq_dihedral"


def test_old_uploads_are_dropped_and_the_rest_keep_their_ids() -> None:
    clock = Clock()
    store = RecentStore(window_ms=DAY_MS, clock=clock)
    for i in range(20_000):  # the first half a day old, the second half new
        at = NOW - DAY_MS // 2 if i < 10_000 else NOW
        store.add(
            upload(f"content-{i}", pdq(100 + i % 50) if i % 3 else None, at=at, user=f"user-{i}", sha256=sha(str(i)))
        )
    assert store.stats()["items"] == 20_000
    clock.now = NOW + DAY_MS * 3 // 4  # the first half is now outside the window
    assert store.search([("sha256", sha("5"))], 31) == []  # not found, even before it is dropped
    store.add(upload("late", pdq(1), at=clock.now))
    for i in range(8192):
        store.add(upload(f"more-{i}", None, at=clock.now, sha256=sha(f"m{i}")))
    assert store.stats()["items"] == 10_000 + 1 + 8192
    [hit] = store.search([("sha256", sha("15001"))], 31)
    assert hit.item == hit.item.__class__("content-15001", "user-15001", "p1", NOW)
    assert {h.item.content_id for h in store.search([("pdq", pdq(100 + 15001 % 50))], 0)} == {
        f"content-{i}" for i in range(10_000, 20_000) if i % 3 and i % 50 == 15001 % 50
    }
    assert store.search([("pdq", pdq(1))], 0)[0].item.content_id == "late"
    assert not store.add(upload("ancient", pdq(3), at=NOW - 2 * DAY_MS))


def test_shards_split_the_uploads() -> None:
    shards = [store_with(*(upload(f"c{i}", pdq(i)) for i in range(200)), shard=(i, 3)) for i in range(3)]
    assert sum(len(s) for s in shards) == 200
    assert all(40 < len(s) < 90 for s in shards)


def test_under_100_bytes_per_upload() -> None:
    store = store_with(
        *(
            upload(f"c{i:07d}", pdq(i % 97), user=f"u{i % 5000:05d}", md5="ab" * 16, sha256=sha(str(i)))
            for i in range(5000)
        )
    )
    stats = store.stats()
    assert stats["bytes_used"] / stats["items"] < 100


# ---- the stage ----------------------------------------------------------------------
def test_a_new_hash_removes_an_earlier_upload_once() -> None:
    h = pdq(10)
    store = store_with(upload("c-early", flip(h, 12)), upload("c-other", pdq(11)))
    retro = stage(store)
    new = entry(h, incident_id="inc-1")
    [out] = retro.process([new])
    d = out.value
    assert out.topic == "decisions" and out.key == "c-early"
    assert d["action"] == "remove" and d["rule_id"] == "retroactive-match"
    assert d["effects"] == ["strike"] and d["incident_id"] == "inc-1"
    assert d["envelope"]["content_id"] == "c-early" and d["envelope"]["user_id"] == "u1"
    assert d["envelope"]["occurred_at"] == NOW - 3600_000 and d["envelope"]["event_id"] == d["decision_id"]
    assert [(m["bank"], m["hash"], m["distance"]) for m in d["matches"]] == [("tvec", h, 12)]
    for word in ("tvec", h, "terrorism", "distance 12", "threshold 31", "bank-match"):
        assert word in d["explanation"]
    assert d["thresholds"] == {"pdq_distance": 31.0} and d["policy_id"] == POLICY.policy_id
    # Redelivered: the same decision again, not nothing.
    assert [o.value["decision_id"] for o in retro.process([new])] == [d["decision_id"]]
    # Another entry near the same upload: it has its retroactive decision already.
    assert retro.process([entry(flip(h, 3, seed=1), bank="other")]) == []


def test_exact_hashes_and_thresholds() -> None:
    h = pdq(20)
    store = store_with(upload("c-exact", None, md5=hashlib.md5(b"a").hexdigest()), upload("c-far", flip(h, 25)))
    strict = RetroStage(store, POLICY, MatchConfig(bank_thresholds={"strict": 20}), clock=store.clock)
    assert strict.process([entry(h, bank="strict")]) == []  # 25 bits: beyond that bank's 20
    [d] = decided(strict.process([entry(hashlib.md5(b"a").hexdigest().upper(), signal_type="md5")])).values()
    assert d["envelope"]["content_id"] == "c-exact" and d["thresholds"] == {} and "exactly" in d["explanation"]
    assert d["matches"][0]["hash"] == hashlib.md5(b"a").hexdigest()


def test_items_already_actioned_are_left_alone() -> None:
    h = pdq(30)
    store = store_with(upload("c-removed", flip(h, 5)), upload("c-allowed", flip(h, 6, seed=2)))
    feed = store.feed("decisions")
    for cid, action in (("c-removed", "remove"), ("c-allowed", "allow")):
        feed.apply(cid, verdict(cid, action))
    assert set(decided(stage(store).process([entry(h)]))) == {"c-allowed"}


def test_one_decision_per_item_from_the_nearest_entry_and_the_owner_keeps_it() -> None:
    h = pdq(40)
    store = store_with(upload("c-1", h))
    near, far = entry(flip(h, 2), bank="b-near"), entry(flip(h, 9, seed=3), bank="b-far")
    retro = stage(store)
    [d] = decided(retro.process([far, near])).values()
    assert d["matches"][0]["bank"] == "b-near"
    # Redelivered in another grouping: the owner's decision, never the other entry's.
    assert retro.process([far]) == []
    assert [o.value["decision_id"] for o in retro.process([near])] == [d["decision_id"]]


def test_after_a_restart_the_owner_is_known_from_the_decisions() -> None:
    h = pdq(45)
    first = store_with(upload("c-1", h))
    [out] = stage(first).process([entry(h)])
    again = store_with(upload("c-1", h))  # rebuilt from enriched and decisions
    again.feed("decisions").apply("c-1", out.value)
    assert [o.value["decision_id"] for o in stage(again).process([entry(h)])] == [out.value["decision_id"]]
    assert stage(again).process([entry(h, bank="another")]) == []


def test_the_policy_decides_whether_a_match_removes() -> None:
    h = pdq(50)
    store = store_with(upload("c-1", h), upload("c-benign", flip(h, 4, seed=5)))
    # Partners trusted for review only: no removal after the fact either.
    assert stage(store).process([entry(h, bank="partner-review.acme")]) == []
    # An earlier benign-bank match overrides a perceptual one, as at upload time.
    policy = parse_policy(
        {
            "policy_id": "t",
            "version": "1",
            "rules": [
                {"id": "benign", "when": {"bank_match": {"bank": ["benign.*"]}}, "action": "review"},
                {"id": "bank", "when": {"bank_match": {"overridden_by": ["benign.*"]}}, "action": "remove"},
            ],
            "default": {"id": "allow", "action": "allow"},
        }
    )
    benign = {**entry(h, bank="benign.news").value, "distance": 4, "score": None}
    store.feed("decisions").apply("c-benign", verdict("c-benign", "review", [benign]))
    out = decided(stage(store, policy=policy).process([entry(h)]))
    assert set(out) == {"c-1"} and out["c-1"]["effects"] == []  # the rule asks for no strike


def test_skips_tombstones_old_entries_and_video_and_dead_letters_bad_hashes() -> None:
    h = pdq(60)
    store = store_with(upload("c-1", h))
    retro = stage(store)
    tombstone = Incoming("banks", b"tvec/pdq/" + h.encode(), {})
    old = entry(h, added_at=NOW - 8 * DAY_MS)
    video = entry(h, signal_type="video_pdq")
    bad = entry("zz" * 32)
    [letter] = retro.process([tombstone, old, video, bad])
    assert letter.topic == "dlq" and "not hexadecimal" in letter.value["error"]
    assert BankCodec().decode("BankEntry", None) == {}
    with pytest.raises(Exception, match="empty value"):
        Codec().decode("BankEntry", None)


def test_entries_wait_for_the_store_and_for_the_decision_behind_them() -> None:
    store = store_with()
    loaded = {"ready": False}
    retro = stage(store, ready=lambda: loaded["ready"])
    new = entry(pdq(1))
    assert retro.not_before(new) == NOW + 500  # the store is still loading
    assert retro.not_before(Incoming("decisions", b"c", verdict("c", "allow"))) is None  # never held
    loaded["ready"] = True
    assert retro.not_before(new) is None
    removal = entry(pdq(1), bank="removed", source="p1:decision:d-9", added_at=NOW - 1000)
    assert retro.not_before(removal) == NOW + 100  # waits for decision d-9
    store.feed("decisions").apply("c-9", verdict("c-9", "remove", decision_id="d-9"))
    assert retro.not_before(removal) is None
    assert retro.not_before(entry(pdq(1), source="p1:decision:d-lost", added_at=NOW - 31_000)) is None  # gave up
    assert retro.not_before(Incoming("banks", b"k", {})) is None


def decision_of(record: Record, action: str = "allow") -> Incoming:
    """The Decision of an upload (as decide writes it: envelope, kind and signals)."""
    d = {**verdict(record["envelope"]["content_id"], action), **record, "action": action, "rule_id": "default-allow"}
    return Incoming("decisions", d["envelope"]["content_id"].encode(), d)


def test_uploads_decided_after_an_entry_was_searched_are_checked_against_it() -> None:
    h = pdq(70)
    store = store_with()
    retro = stage(store)
    new = entry(h)
    assert retro.process([new]) == []  # nothing near yet
    # Checked by the match stage before the entry reached it, decided only now.
    late = upload("c-late", flip(h, 7))
    mirrored = upload("c-mirrored", pdq(71))
    mirrored["signals"].append({"signal_type": "pdq_dihedral", "value": flip(h, 3), "quality": 90, "frame": None})
    removed = upload("c-removed", flip(h, 1))
    out = decided(retro.process([decision_of(late), decision_of(mirrored), decision_of(removed, "remove")]))
    assert set(out) == {"c-late", "c-mirrored"}
    assert out["c-late"]["matches"][0]["distance"] == 7 and out["c-mirrored"]["signals"][0]["signal_type"] == (
        "pdq_dihedral"
    )
    # Decided before the entry, not yet in the store (its follower lags): found beside it.
    other = pdq(72)
    assert retro.process([decision_of(upload("c-early", flip(other, 5)))]) == []
    assert set(decided(retro.process([entry(other)]))) == {"c-early"}
    assert len(store) == 0


def test_entries_are_kept_for_rechecks_only_for_a_while() -> None:
    h = pdq(80)
    clock = Clock()
    store = RecentStore(clock=clock)
    retro = stage(store)
    retro.process([entry(h)])
    clock.now += 16 * 60_000
    retro.process([entry(pdq(81), added_at=clock.now)])  # forgets the first entry
    assert retro.process([decision_of(upload("c-late", h, at=clock.now))]) == []
    assert len(retro.recent_entries) == 1


def test_settings() -> None:
    from pipeline.config import Settings

    s = Settings.from_env(
        {"MODSTREAM_RETRO_DAYS": "3", "MODSTREAM_RETRO_DIHEDRAL": "1", "MODSTREAM_RETRO_SHARD": "1/4"}
    )
    assert (s.retro_days, s.retro_dihedral, s.retro_shard) == (3, True, (1, 4))
    assert Settings.from_env({}).retro_shard == (0, 1)
    for bad in ("4/4", "1", "a/b"):
        with pytest.raises(ValueError, match="MODSTREAM_RETRO_SHARD"):
            Settings.from_env({"MODSTREAM_RETRO_SHARD": bad})
