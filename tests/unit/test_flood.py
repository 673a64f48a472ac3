"""The flood stage with an in-memory flood store: distinct accounts past the threshold
quarantine every copy in the window (earlier ones included) and every later one, with one
review task and one proposed incident per cluster; one account uploading 25 times is no
flood; PDQ near-duplicates join one cluster; a redelivery repeats the same records."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.records import Incoming, Output, Record, envelope, signal
from pipeline.stages.flood import FloodConfig, FloodStage, cluster_signal
from pipeline.state.floods import Copy, Limits, Seen, chunks

T0 = 1_700_000_000_000


def _distance(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


class MemoryFloods:
    """The FloodStore contract in memory (the Redis one is tested against Redis)."""

    def __init__(self, distance: int = 8) -> None:
        self.distance = distance
        self.reps: list[str] = []
        self.accounts: dict[str, dict[str, int]] = {}
        self.copies: dict[str, dict[str, tuple[int, Record]]] = {}
        self.clusters: dict[str, dict[str, Any]] = {}

    def representatives(self, pdqs: list[tuple[str, int]]) -> list[str]:
        out = []
        for pdq, _ in pdqs:
            near = [(_distance(pdq, r), i) for i, r in enumerate(self.reps) if _distance(pdq, r) <= self.distance]
            if near:
                out.append(self.reps[min(near)[1]])
            else:
                self.reps.append(pdq)
                out.append(pdq)
        return out

    def record(self, copies: list[Copy], limits: Limits) -> list[Seen]:
        out = []
        per_category = dict(limits.category_accounts)
        for c in copies:
            floor = c.at - limits.window_s * 1000
            users = self.accounts.setdefault(c.cluster, {})
            if c.account:
                users[c.account] = max(users.get(c.account, 0), c.at)
            for u in [u for u, t in users.items() if t < floor]:
                del users[u]
            count = len(users)
            state = self.clusters.setdefault(c.cluster, {})
            if c.category:
                state.setdefault("category", c.category)
            category = state.get("category")
            threshold = per_category.get(category or "", limits.accounts)
            if "by" in state:
                if state["by"] == c.event_id:
                    out.append(Seen("owner", count, threshold, category, state["claim"], False))
                else:
                    out.append(Seen("flooded", count, threshold, category, state["head"]))
                continue
            kept = self.copies.setdefault(c.cluster, {})
            kept[c.event_id] = (c.at, c.record)
            for e in [e for e, (t, _) in kept.items() if t < floor]:
                del kept[e]
            if count < threshold:
                out.append(Seen("counting", count, threshold, category))
                continue
            head = {"by": c.event_id, "at": c.at, "count": count, "threshold": threshold, "category": category or ""}
            ordered = [r for _, r in sorted(kept.values(), key=lambda tr: tr[0])]
            state.update(by=c.event_id, head=head, claim={**head, "copies": ordered})
            del self.copies[c.cluster]
            out.append(Seen("owner", count, threshold, category, state["claim"], True))
        return out


def upload(user: str, media: bytes, at: int, *, pdq: str | None = None, content: str | None = None) -> Incoming:
    content_id = content or f"c-{user}-{at}-{random.random()}"
    sigs = [signal("md5", hashlib.md5(media).hexdigest()), signal("sha256", hashlib.sha256(media).hexdigest())]
    if pdq:
        sigs.append(signal("pdq", pdq, 100))
    record = {
        "envelope": envelope("local", content_id=content_id, user_id=user, occurred_at=at),
        "kind": "upload",
        "upload": {"media_b64": None, "media_uri": "file:///x", "media_type": None, "text": None},
        "report": None,
        "live": None,
        "account": None,
        "signals": sigs,
        "media_error": None,
        "media_ref": None,
        "matches": [],
        "scores": [],
        "stages": ["enrich"],
    }
    return Incoming("enriched", content_id.encode(), record)


def by_topic(out: list[Output]) -> dict[str, list[Record]]:
    grouped: dict[str, list[Record]] = {}
    for o in out:
        assert o.value is not None
        grouped.setdefault(o.topic, []).append(o.value)
    return grouped


def flip(pdq: str, bits: list[int]) -> str:
    value = int(pdq, 16)
    for b in bits:
        value ^= 1 << b
    return f"{value:064x}"


MEDIA = b"the same new file, uploaded by many"


def test_distinct_accounts_past_the_threshold_quarantine_every_copy() -> None:
    stage = FloodStage(MemoryFloods())
    uploads = [upload(f"u{i}", MEDIA, T0 + i * 1000) for i in range(25)]
    before = [stage.process([u]) for u in uploads[:19]]
    assert before == [[]] * 19
    crossing = by_topic(stage.process([uploads[19]]))
    decisions = crossing["decisions"]
    assert [d["envelope"]["event_id"] for d in decisions] == [u.value["envelope"]["event_id"] for u in uploads[:20]]
    assert {d["action"] for d in decisions} == {"restrict"}
    assert {d["rule_id"] for d in decisions} == {"flood-quarantine"}
    assert "20 distinct accounts" in decisions[0]["explanation"]
    assert "10 minutes" in decisions[0]["explanation"]
    assert decisions[0]["effects"] == []  # no strike: a reviewer decides
    [task] = crossing["review"]
    assert task["priority"] == 100
    assert task["envelope"] == uploads[19].value["envelope"]
    [incident] = crossing["incidents"]
    assert incident["status"] == "proposed"
    assert incident["title"] == "possible flood: 20 accounts uploaded the same content in 10 minutes"
    assert incident["signals"] == [signal("sha256", hashlib.sha256(MEDIA).hexdigest())]
    assert incident["category"] == "unknown"
    later = [by_topic(stage.process([u])) for u in uploads[20:]]
    assert all(list(x) == ["decisions"] and len(x["decisions"]) == 1 for x in later)
    assert "25 distinct accounts" in later[-1]["decisions"][0]["explanation"]


def test_one_batch_of_25_copies_quarantines_all_with_one_task_and_one_proposal() -> None:
    stage = FloodStage(MemoryFloods())
    uploads = [upload(f"u{i}", MEDIA, T0 + i) for i in range(25)]
    out = by_topic(stage.process(uploads))
    assert sorted(d["envelope"]["event_id"] for d in out["decisions"]) == sorted(
        u.value["envelope"]["event_id"] for u in uploads
    )
    assert len(out["review"]) == 1 and len(out["incidents"]) == 1


def test_25_uploads_by_one_account_are_no_flood() -> None:
    stage = FloodStage(MemoryFloods())
    assert stage.process([upload("same-user", MEDIA, T0 + i) for i in range(25)]) == []


def test_accounts_spread_beyond_the_window_are_no_flood() -> None:
    stage = FloodStage(MemoryFloods(), FloodConfig(accounts=20, window_s=600))
    # one account a minute: never more than 11 in any 10 minutes
    assert [o for i in range(30) for o in stage.process([upload(f"u{i}", MEDIA, T0 + i * 60_000)])] == []


def test_redelivery_of_the_crossing_batch_repeats_the_same_records() -> None:
    stage = FloodStage(MemoryFloods(), FloodConfig(accounts=3))
    uploads = [upload(f"u{i}", MEDIA, T0 + i) for i in range(3)]
    stage.process(uploads[:2])
    first = by_topic(stage.process(uploads[2:]))
    again = by_topic(stage.process(uploads[2:]))
    assert [d["decision_id"] for d in again["decisions"]] == [d["decision_id"] for d in first["decisions"]]
    assert again["review"][0]["task_id"] == first["review"][0]["task_id"]
    assert again["incidents"] == first["incidents"]
    # an earlier copy redelivered now gets its own decision, with the same id as in the backfill
    [d] = by_topic(stage.process(uploads[:1]))["decisions"]
    assert d["decision_id"] == first["decisions"][0]["decision_id"]


def test_pdq_near_duplicates_join_one_cluster_and_far_ones_do_not() -> None:
    rng = random.Random(7)
    base = f"{rng.getrandbits(256):064x}"
    stage = FloodStage(MemoryFloods(), FloodConfig(accounts=5))
    first = upload("u0", b"original", T0, pdq=base)  # the cluster's representative
    near = [upload(f"u{i}", b"variant %d" % i, T0 + i, pdq=flip(base, rng.sample(range(256), 8))) for i in (1, 2, 3)]
    far = upload("u9", b"other", T0 + 10, pdq=flip(base, list(range(9))))  # 9 bits from it
    assert stage.process([first, *near, far]) == []
    fifth = upload("u5", b"variant 5", T0 + 20, pdq=flip(base, [100, 200]))
    out = by_topic(stage.process([fifth]))
    assert len(out["decisions"]) == 5
    assert far.value["envelope"]["event_id"] not in {d["envelope"]["event_id"] for d in out["decisions"]}
    assert {s["signal_type"] for s in out["incidents"][0]["signals"]} == {"sha256", "pdq"}
    assert len(out["incidents"][0]["signals"]) == 10  # five files: five SHA-256, five PDQ


def test_a_low_quality_pdq_clusters_by_sha256() -> None:
    sigs = [signal("sha256", "ab" * 32), signal("pdq", "00" * 32, 10)]
    assert cluster_signal(sigs, 50) == sigs[0]
    assert cluster_signal([*sigs[:1], signal("pdq", "11" * 32, 80)], 50)["signal_type"] == "pdq"  # type: ignore[index]


def test_a_category_threshold_applies_to_its_category() -> None:
    config = FloodConfig(accounts=20, category_accounts=(("terrorism", 10),))
    stage = FloodStage(MemoryFloods(), config)
    uploads = [upload(f"u{i}", MEDIA, T0 + i) for i in range(10)]
    uploads[0].value["matches"] = [
        {"bank": "b", "signal_type": "pdq", "hash": "0" * 64, "category": "terrorism", "severity": "high"}
    ]
    out = by_topic(stage.process(uploads))
    assert len(out["decisions"]) == 10
    [incident] = out["incidents"]
    assert (incident["category"], incident["severity"]) == ("terrorism", "high")
    assert "category terrorism" in out["decisions"][0]["explanation"]


def test_a_classifier_label_named_in_the_thresholds_is_the_category() -> None:
    config = FloodConfig(accounts=20, category_accounts=(("spam", 3),))
    stage = FloodStage(MemoryFloods(), config)
    uploads = [upload(f"u{i}", MEDIA, T0 + i) for i in range(3)]
    for u in uploads:
        u.value["scores"] = [{"model": "m", "label": "spam", "score": 0.8}, {"model": "m", "label": "x", "score": 0.9}]
    assert by_topic(stage.process(uploads))["incidents"][0]["category"] == "spam"


def test_uploads_without_an_account_are_quarantined_but_not_counted() -> None:
    stage = FloodStage(MemoryFloods(), FloodConfig(accounts=3))
    anonymous = upload("x", MEDIA, T0)
    anonymous.value["envelope"]["user_id"] = None
    assert stage.process([anonymous, upload("a", MEDIA, T0 + 1), upload("b", MEDIA, T0 + 2)]) == []
    out = by_topic(stage.process([upload("c", MEDIA, T0 + 3)]))
    assert len(out["decisions"]) == 4


def test_text_posts_reports_and_live_events_are_not_looked_at() -> None:
    stage = FloodStage(MemoryFloods(), FloodConfig(accounts=2))
    text = [upload(f"u{i}", MEDIA, T0 + i) for i in range(3)]
    for t in text:
        t.value["signals"] = []
    reports = [upload(f"r{i}", MEDIA, T0 + i) for i in range(3)]
    for r in reports:
        r.value["kind"] = "report"
    assert stage.process(text + reports) == []


def test_chunks_cover_the_radius() -> None:
    rng = random.Random(1)
    for _ in range(200):
        a = f"{rng.getrandbits(256):064x}"
        b = flip(a, rng.sample(range(256), 8))
        assert any(x == y for x, y in zip(chunks(a, 8), chunks(b, 8), strict=True))


def test_settings_read_the_flood_thresholds() -> None:
    s = Settings.from_env(
        {
            "MODSTREAM_FLOOD_ACCOUNTS": "30",
            "MODSTREAM_FLOOD_WINDOW_S": "300",
            "MODSTREAM_FLOOD_CATEGORY_THRESHOLDS": "terrorism=10,spam=50",
        }
    )
    assert (s.flood_accounts, s.flood_window_s, s.flood_pdq_distance) == (30, 300, 8)
    assert s.flood_category_thresholds == {"terrorism": 10, "spam": 50}
    with pytest.raises(ValueError):
        Settings.from_env({"MODSTREAM_FLOOD_PDQ_DISTANCE": "16"})
    with pytest.raises(ValueError):
        Settings.from_env({"MODSTREAM_FLOOD_CATEGORY_THRESHOLDS": "spam=0"})
