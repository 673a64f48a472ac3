"""Accounts without a broker: the accounts stage on an in-memory store, suspension ends by
time, the account enforcer's suspension length, webhook confirmations, and the live counts
of the transparency report."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from pipeline.enforce.account import AccountEnforcer
from pipeline.enforce.consumer import EnforceStage, Outcome
from pipeline.enforce.webhook import confirmation
from pipeline.policy.transparency import build_report, format_text
from pipeline.records import Incoming, Record, envelope
from pipeline.stages.accounts import AccountsStage
from pipeline.stages.decide import decision
from pipeline.state.accounts import AccountChange, Applied, account_context
from tests.unit.test_stages import POLICY

NOW = 1_700_000_000_000


class Store:
    """The account store in memory: each event id applies once, in the order given."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.applied: list[AccountChange] = []
        self.calls = 0

    def apply(self, changes: Sequence[AccountChange]) -> list[Applied]:
        self.calls += 1
        out: list[Applied] = []
        for c in changes:
            if c.event_id in self.seen:
                out.append("duplicate")
            else:
                self.seen.add(c.event_id)
                self.applied.append(c)
                out.append("applied")
        return out


def account_event(user_id: str | None, kind: str, event_id: str, **fields: object) -> Record:
    env = envelope("p", user_id=user_id, event_id=event_id, occurred_at=NOW)
    return {"envelope": env, "kind": kind, "actor": "", "reason": "", "until": None, **fields}


def incoming(event: Record, offset: int = 0) -> Incoming:
    return Incoming("accounts", (event["envelope"]["user_id"] or "").encode(), event, 0, offset, b"raw")


def test_the_stage_applies_account_events_in_order_once_each() -> None:
    store = Store()
    stage = AccountsStage(store)
    events = [
        account_event("carol", "identity_verified", "e1", actor="kyc-service"),
        account_event("carol", "live_suspended", "e2", actor="moderator-7", reason="appeal pending", until=NOW + 1),
        account_event("carol", "live_lifted", "e3", actor="moderator-7"),
    ]
    batch = [incoming(e, i) for i, e in enumerate(events)]
    assert stage.process(batch) == []
    assert stage.process(batch[1:2]) == []  # a redelivery of the suspension
    assert [(c.event_id, c.kind) for c in store.applied] == [
        ("e1", "identity_verified"),
        ("e2", "live_suspended"),
        ("e3", "live_lifted"),
    ]
    suspension = store.applied[1]
    assert (suspension.user_id, suspension.actor, suspension.reason, suspension.until, suspension.at) == (
        "carol",
        "moderator-7",
        "appeal pending",
        NOW + 1,
        NOW,
    )
    assert stage.name == "accounts" and stage.inputs == ("accounts",) and stage.outputs == ("dlq",)


def test_an_event_without_a_user_is_dead_lettered_and_the_rest_applied() -> None:
    store = Store()
    stage = AccountsStage(store, topic_prefix="mod.")
    out = stage.process(
        [
            incoming(account_event(None, "identity_verified", "e1")),
            incoming(account_event("dan", "identity_verified", "e2"), 1),
        ]
    )
    [dead] = out
    assert dead.topic == "dlq" and dead.value is not None
    assert dead.value["topic"] == "mod.accounts" and dead.value["stage"] == "accounts"
    assert "envelope.user_id" in dead.value["error"]
    assert [c.user_id for c in store.applied] == ["dan"]


@pytest.mark.parametrize(
    "fields, now, suspended",
    [
        ({"live_suspended": "1"}, NOW, True),  # until lifted
        ({"live_suspended": "1", "live_suspended_until": ""}, NOW, True),
        ({"live_suspended": "1", "live_suspended_until": str(NOW + 1)}, NOW, True),
        ({"live_suspended": "1", "live_suspended_until": str(NOW)}, NOW, False),  # ended
        ({"live_suspended": "1", "live_suspended_until": str(NOW - 60_000)}, NOW, False),
        ({"live_suspended": "0", "live_suspended_until": str(NOW + 1)}, NOW, False),  # lifted
        ({}, NOW, False),
    ],
)
def test_a_suspension_whose_end_has_passed_reads_as_not_suspended(
    fields: dict[str, str], now: int, suspended: bool
) -> None:
    context = account_context("u", {"identity_verified": "1", "strikes": "2", **fields}, now)
    assert context == {"user_id": "u", "identity_verified": True, "strikes": 2, "live_suspended": suspended}


def test_account_context_compares_with_the_current_time_by_default() -> None:
    assert account_context("u", {"live_suspended": "1", "live_suspended_until": "1"})["live_suspended"] is False
    assert account_context("u", {"live_suspended": "1", "live_suspended_until": str(2**62)})["live_suspended"] is True


class Strikes:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, bool, int | None]] = []

    def add_strike(self, user_id: str, event_id: str, suspend_live: bool = False, until: int | None = None) -> int:
        self.calls.append((user_id, event_id, suspend_live, until))
        return 1


def a_decision(effects: tuple[str, ...], action: str = "end_stream", decided_at: int = NOW) -> Record:
    record = {
        "envelope": envelope("p", stream_id="s1", user_id="u1", occurred_at=decided_at - 2_000),
        "kind": "live",
        "signals": [],
        "matches": [],
        "scores": [],
    }
    return decision(record, POLICY, action, "bank-match-live", "test", effects=list(effects), decided_at=decided_at)


def test_the_account_enforcer_suspends_for_the_policy_set_duration() -> None:
    strikes = Strikes()
    d = a_decision(("strike", "suspend_live"))
    detail = AccountEnforcer(strikes, live_suspension_s=7 * 24 * 3600)(d)
    assert strikes.calls == [("u1", "offence:s1", True, NOW + 7 * 24 * 3600 * 1000)]  # one strike per stream
    assert detail == "u1: 1 strike(s); live access suspended until 2023-11-21T22:13:20+00:00"


def test_without_a_duration_the_suspension_lasts_until_lifted() -> None:
    strikes = Strikes()
    d = a_decision(("strike", "suspend_live"))
    assert AccountEnforcer(strikes)(d) == "u1: 1 strike(s); live access suspended"
    struck = a_decision(("strike",))
    assert AccountEnforcer(strikes, live_suspension_s=60)(struck) == "u1: 1 strike(s)"
    assert strikes.calls == [("u1", "offence:s1", True, None), ("u1", "offence:s1", False, None)]
    with pytest.raises(ValueError, match="live_suspension_s"):
        AccountEnforcer(strikes, live_suspension_s=-1)


@pytest.mark.parametrize(
    "answer, action, confirmed",
    [
        (b'{"confirmed_at": 1700000000123}', "end_stream", 1_700_000_000_123),
        (b'{"confirmed_at": 1700000000123}', "remove", 1_700_000_000_123),
        (b'{"status": "cut"}', "end_stream", NOW),
        (b'{"status": "cut"}', "remove", None),  # "cut" confirms a stream's end only
        (b'{"status": "received"}', "end_stream", None),
        (b'{"confirmed_at": true}', "end_stream", None),
        (b'{"confirmed_at": "soon"}', "end_stream", None),
        (b'{"confirmed_at": -5}', "end_stream", None),
        (b"[1, 2]", "end_stream", None),
        (b"ok", "end_stream", None),
        (b"\xff\xfe", "end_stream", None),
        (b"", "end_stream", None),
    ],
)
def test_a_platform_answer_confirms_the_action(answer: bytes, action: str, confirmed: int | None) -> None:
    assert confirmation(answer, action, NOW) == confirmed


def test_a_handler_may_return_an_outcome_with_a_confirmation() -> None:
    def cut(d: Record) -> Outcome:
        return Outcome("stream cut", confirmed_at=NOW + 5)

    def plain(d: Record) -> str:
        return "noted"

    d = a_decision(())
    [cut_result] = EnforceStage("cutter", {"end_stream": cut}, clock=lambda: NOW).process(
        [Incoming("decisions", b"s1", d)]
    )
    [plain_result] = EnforceStage("plain", {"end_stream": plain}, clock=lambda: NOW).process(
        [Incoming("decisions", b"s1", d)]
    )
    assert cut_result.value is not None and plain_result.value is not None
    assert (cut_result.value["detail"], cut_result.value["confirmed_at"]) == ("stream cut", NOW + 5)
    assert (plain_result.value["detail"], plain_result.value["confirmed_at"]) == ("noted", None)


def test_the_transparency_report_counts_ended_streams_and_suspensions() -> None:
    def live_decision(stream: str, user: str, occurred: int, rule: str, effects: tuple[str, ...] = ()) -> Record:
        env = envelope("p", stream_id=stream, user_id=user, occurred_at=occurred)
        record = {"envelope": env, "kind": "live", "signals": [], "matches": [], "scores": []}
        return decision(record, POLICY, "end_stream", rule, "", effects=list(effects), decided_at=occurred + 500)

    violent = live_decision("s1", "u1", NOW, "bank-match-live", ("bank", "share", "strike", "suspend_live"))
    later_frame = live_decision("s1", "u1", NOW + 1_000, "live-suspended")  # the same stream, a later frame
    unverified = [live_decision(f"s-u{i}", f"anon{i}", NOW, "live-unverified") for i in range(3)]
    removed = decision(
        {
            "envelope": envelope("p", content_id="c1", user_id="u2", occurred_at=NOW),
            "kind": "upload",
            "signals": [],
            "matches": [],
            "scores": [],
        },
        POLICY,
        "remove",
        "bank-match-severe",
        "",
        effects=["bank", "share", "strike", "suspend_live"],
        decided_at=NOW + 100,
    )
    reviewed = decision(  # not upheld: suspends nothing
        {
            "envelope": envelope("p", content_id="c2", user_id="u3"),
            "kind": "upload",
            "signals": [],
            "matches": [],
            "scores": [],
        },
        POLICY,
        "review",
        "x",
        "",
        effects=["suspend_live"],
    )
    decisions = [violent, violent, later_frame, *unverified, removed, reviewed]  # `violent` redelivered

    def result(d: Record, confirmed_at: int | None, status: str = "succeeded") -> Record:
        return {
            "decision_id": d["decision_id"],
            "envelope": d["envelope"],
            "action": d["action"],
            "enforcer": "webhook",
            "status": status,
            "attempts": 1,
            "detail": "",
            "acted_at": d["decided_at"] + 100,
            "confirmed_at": confirmed_at,
        }

    results = [
        result(violent, NOW + 3_000),
        result(later_frame, NOW + 4_000),  # the stream's first confirmation counts
        result(unverified[0], NOW + 1_500),
        result(unverified[1], None),  # acknowledged, not confirmed
        result(unverified[2], NOW + 9_000, "failed"),
    ]
    accounts = [
        account_event("u4", "live_suspended", "a1", actor="moderator"),
        account_event("u4", "live_suspended", "a1", actor="moderator"),  # redelivered
        account_event("u1", "live_suspended", "a2"),
        account_event("u4", "live_lifted", "a3"),
        account_event("u5", "identity_verified", "a4"),
    ]
    report = build_report(decisions, [], results, NOW + 60_000, accounts=accounts)
    assert report["live"] == {
        "streams_ended": 4,
        "streams_ended_by_rule": {"bank-match-live": 1, "live-unverified": 3},
        "streams_cut_confirmed": 2,
        "cut_p50_s": 1.5,
        "cut_p90_s": 3.0,
        "cut_p99_s": 3.0,
        "live_suspensions": 4,
        "live_suspensions_by_policy": 2,
        "live_suspensions_by_platform": 2,
        "live_suspended_accounts": 3,
        "live_suspensions_lifted": 1,
    }
    text = format_text(report)
    assert "live streams ended: 4 (bank-match-live 1, live-unverified 3)" in text
    assert "live-access suspensions: 4 (by policy 2, by the platform 2) on 3 account(s); lifted: 1" in text
    assert build_report([], [], [], NOW)["live"]["live_suspensions"] == 0  # accounts are optional
