"""Stages called directly, with fakes for what they are given: no broker, no Redis."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from pipeline.banks.table import BankTable
from pipeline.policy.engine import load_policy
from pipeline.records import Incoming, Record, envelope, now_ms
from pipeline.stages.decide import DecideStage
from pipeline.stages.enrich import EnrichStage
from pipeline.stages.match import MatchStage
from pipeline.state.accounts import account_context
from pipeline.state.reports import deadline_of, reported_at
from tests.media import encode, photo

MEDIA = encode(photo(1, (160, 120)))
POLICY = load_policy()


class FakeAccounts:
    def get_many(self, user_ids: Iterable[str]) -> dict[str, Record]:
        return {u: account_context(u, {"identity_verified": "1", "strikes": "2"}) for u in user_ids}


def upload(media: bytes | None = MEDIA, **kw: object) -> Incoming:
    env = envelope("p", content_id="c1", user_id="u1")
    return Incoming(
        "uploads",
        b"c1",
        {
            "envelope": env,
            "media_b64": media,
            "media_uri": kw.get("uri"),
            "media_type": None,
            "text": None,
            "signals": kw.get("signals"),
        },
    )


def report(reporter: str = "r1", content_id: str = "c1") -> Incoming:
    env = envelope("p", content_id=content_id, user_id="owner")
    return Incoming("reports", b"c1", {"envelope": env, "reporter_id": reporter, "reason": "terrorism", "text": None})


def bank() -> BankTable:
    table = BankTable()
    table.load(
        [
            {
                "bank": "b",
                "signal_type": "sha256",
                "hash": hashlib.sha256(MEDIA).hexdigest().upper(),
                "category": "terrorism",
                "severity": "critical",
                "source": "s",
                "added_at": 0,
            }
        ]
    )
    return table


def through(*stages: object, record: Incoming, topic: str | None = None) -> list[Record]:
    """Runs the record through the stages (outputs of each feed the next); returns the last
    stage's output values, only those for `topic` if given."""
    batch = [record]
    outputs = []
    for stage in stages:
        outputs = stage.process(batch)  # type: ignore[attr-defined]
        batch = [Incoming(o.topic, None, o.value) for o in outputs]
    return [o.value for o in outputs if topic is None or o.topic == topic]


def test_enrich_adds_account_and_hashes() -> None:
    [record] = through(EnrichStage(FakeAccounts()), record=upload())
    assert record["account"]["identity_verified"] is True and record["account"]["strikes"] == 2
    by_type = {s["signal_type"]: s["value"] for s in record["signals"]}
    assert by_type["md5"] == hashlib.md5(MEDIA).hexdigest()
    assert by_type["sha256"] == hashlib.sha256(MEDIA).hexdigest()
    assert len(by_type["pdq"]) == 64 and record["media_error"] is None
    assert record["kind"] == "upload" and record["stages"] == ["enrich"]
    assert record["upload"]["media_b64"] is None and record["media_ref"] is None  # no media store: bytes not kept


def test_enrich_adds_the_hashes_an_upload_brings_and_refuses_malformed_ones() -> None:
    given = [{"signal_type": "pdq", "value": "ab" * 32, "quality": 100, "frame": None}]
    [record] = through(EnrichStage(FakeAccounts()), record=upload(media=None, signals=given))
    assert record["signals"] == given and record["media_error"] is None
    unrated = [{**given[0], "quality": None}]  # a PDQ without a quality is trusted as good, as the API does
    [record] = through(EnrichStage(FakeAccounts()), record=upload(media=None, signals=unrated))
    assert record["signals"] == given
    [decision] = through(
        EnrichStage(FakeAccounts()),
        MatchStage(bank()),
        DecideStage(POLICY),
        record=upload(
            media=None,
            signals=[
                {"signal_type": "sha256", "value": hashlib.sha256(MEDIA).hexdigest(), "quality": None, "frame": None}
            ],
        ),
        topic="decisions",
    )
    assert decision["action"] == "remove" and decision["matches"][0]["bank"] == "b"
    for bad, why in (("md4", "unknown signal type 'md4'"), ("pdq", "is not a pdq hash")):
        bad_signal = [{"signal_type": bad, "value": "AB" * 32, "quality": None, "frame": None}]
        [dead] = EnrichStage(FakeAccounts()).process([upload(media=None, signals=bad_signal)])
        assert dead.topic == "dlq" and why in dead.value["error"]


def test_hashes_an_upload_brings_are_matched_but_never_banked_or_shared() -> None:
    claimed = {"signal_type": "sha256", "value": "cd" * 32, "quality": None, "frame": None}  # someone else's file
    stages = (EnrichStage(FakeAccounts()), MatchStage(bank()), DecideStage(POLICY))
    outputs = through(*stages, record=upload(signals=[claimed]))
    [d] = [o for o in outputs if "rule_id" in o]
    assert d["action"] == "remove" and claimed in d["signals"]  # evidence, as given
    banked = [o["hash"] for o in outputs if "bank" in o and "hash" in o and "rule_id" not in o]
    shared = [o["hash"] for o in outputs if "source_platform" in o]
    assert hashlib.sha256(MEDIA).hexdigest() in banked and hashlib.sha256(MEDIA).hexdigest() in shared
    assert claimed["value"] not in banked + shared


def test_enrich_says_why_media_by_reference_is_unhashed() -> None:
    [record] = through(EnrichStage(FakeAccounts()), record=upload(media=None, uri="https://x/y.jpg"))
    assert record["signals"] == [] and "media_uri" in record["media_error"]


def test_banned_media_is_removed_with_its_evidence() -> None:
    stages = (EnrichStage(FakeAccounts()), MatchStage(bank()), DecideStage(POLICY))
    [d] = through(*stages, record=upload(), topic="decisions")
    assert d["action"] == "remove" and d["rule_id"] == "bank-match-severe"
    assert d["effects"] == ["bank", "share", "strike", "suspend_live"]
    assert d["matches"][0]["bank"] == "b" and d["category"] == "terrorism" and d["severity"] == "critical"
    assert d["policy_id"] and d["policy_version"] and "bank 'b'" in d["explanation"]
    [again] = through(*stages, record=upload(), topic="decisions")
    assert again["decision_id"] != d["decision_id"]  # a new event, a new decision


def test_removal_banks_the_hashes_of_the_removed_item() -> None:
    stages = (EnrichStage(FakeAccounts()), MatchStage(bank()), DecideStage(POLICY, removed_bank="gone"))
    entries = through(*stages, record=upload(), topic="banks")
    assert {(e["bank"], e["signal_type"]) for e in entries} == {
        ("gone", "md5"),
        ("gone", "sha256"),
        ("gone", "pdq"),
    }
    assert all(e["category"] == "terrorism" and e["source"].startswith("p:decision:") for e in entries)


def test_clean_media_allowed_and_decision_id_is_stable_per_event() -> None:
    stages = (EnrichStage(FakeAccounts()), MatchStage(bank()), DecideStage(POLICY))
    record = upload(media=encode(photo(2, (160, 120))))
    [d1] = through(*stages, record=record, topic="decisions")
    [d2] = through(*stages, record=record, topic="decisions")
    assert d1["action"] == "allow" and d1["decision_id"] == d2["decision_id"]


def test_single_report_without_evidence_is_pending() -> None:
    [decision] = through(EnrichStage(FakeAccounts()), MatchStage(bank()), DecideStage(POLICY), record=report())
    assert decision["action"] == "pending" and decision["rule_id"] == "report-pending"


def test_bank_table_latest_wins_and_tombstones() -> None:
    table = bank()
    h = hashlib.sha256(MEDIA).hexdigest()
    key = f"b/sha256/{h}"
    assert table.match_exact("sha256", h)[0]["severity"] == "critical"
    table.apply(
        key,
        {
            "bank": "b",
            "signal_type": "sha256",
            "hash": h,
            "category": "terrorism",
            "severity": "low",
            "source": "s",
            "added_at": 1,
        },
    )
    assert [m["severity"] for m in table.match_exact("sha256", h)] == ["low"]
    table.apply(key, None)
    assert table.match_exact("sha256", h) == [] and len(table) == 0


class FakeReports:
    """The ReportStore contract in memory (the Redis one is tested through the broker)."""

    def __init__(self) -> None:
        self.reporters: dict[str, set[str]] = {}
        self.events: set[str] = set()
        self.owners: dict[str, str] = {}  # content_id -> event id owning its review task
        self.resolved: dict[str, int] = {}
        self.verdicts: set[str] = set()

    def add_reports(self, reports: list[Record]) -> list[dict]:  # type: ignore[type-arg]
        out = []
        for r in reports:
            cid = r["envelope"]["content_id"]
            if r["envelope"]["event_id"] not in self.events:
                self.events.add(r["envelope"]["event_id"])
                self.reporters.setdefault(cid, set()).add(r["reporter_id"])
            n = len(self.reporters[cid])
            out.append(
                {
                    "distinct_reporters": n,
                    "trust": 0.5 * n,
                    "reasons": {r["reason"]: n},
                    "deadline": deadline_of(reported_at(r["envelope"]["occurred_at"], now_ms())),
                }
            )
        return out

    def claim_reviews(self, claims: list[tuple[str, str]]) -> list[str]:
        return [self.owners.setdefault(content_id, event_id) for content_id, event_id in claims]

    def resolve(self, content_id: str, actioned_at: int) -> None:
        self.resolved.setdefault(content_id, actioned_at)

    def verdict(self, content_id: str, upheld: bool, event_id: str) -> None:
        self.verdicts.add(event_id)


def decide_reports(stage: DecideStage, reports: list[Incoming]) -> list[tuple[str, Record]]:
    enriched = EnrichStage(FakeAccounts()).process(reports)
    outputs = stage.process([Incoming("classified", None, o.value) for o in enriched])
    return [(o.topic, o.value) for o in outputs]  # type: ignore[misc]


def test_a_burst_of_distinct_reporters_creates_one_prioritised_review_task() -> None:
    stage = DecideStage(POLICY, FakeReports())
    outputs = decide_reports(stage, [report(f"r{i}") for i in range(5)])
    tasks = [v for t, v in outputs if t == "review"]
    actions = [v["action"] for t, v in outputs if t == "decisions"]
    assert actions == ["pending", "pending", "review", "review", "review"]
    assert len(tasks) == 1 and tasks[0]["priority"] == 8
    assert tasks[0]["deadline"] - tasks[0]["envelope"]["occurred_at"] == 24 * 3600 * 1000


def test_the_same_burst_from_one_reporter_counts_once() -> None:
    stage = DecideStage(POLICY, FakeReports())
    outputs = decide_reports(stage, [report("r1") for _ in range(5)])
    assert [t for t, _ in outputs] == ["decisions"] * 5
    assert {v["action"] for _, v in outputs} == {"pending"}


def test_a_removal_on_a_classifier_score_alone_neither_banks_nor_shares() -> None:
    from pipeline.models.registry import Threshold
    from pipeline.policy.engine import DEFAULT_POLICY
    from pipeline.stages.enrich import moderation_record

    record = moderation_record("uploads", {"envelope": envelope("p", content_id="c9", user_id="u9"), "text": "x"})
    record["signals"] = [{"signal_type": "sha256", "value": "a" * 64, "quality": None, "frame": None}]
    record["scores"] = [{"model": "text-default", "label": "violent_extremism", "score": 0.99}]
    policy = load_policy(DEFAULT_POLICY, {("text-default", "violent_extremism"): Threshold(review=0.5, remove=0.9)})
    out = DecideStage(policy).process([Incoming("classified", b"c9", record)])
    [d] = [o.value for o in out if o.topic == "decisions"]
    assert d is not None and (d["action"], d["rule_id"]) == ("remove", "classifier-remove")
    assert {o.topic for o in out} == {"decisions"}  # no bank entry, no shared signal
