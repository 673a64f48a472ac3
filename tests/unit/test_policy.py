"""The policy engine: validation, rule order, conditions, explanations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.models.registry import Threshold
from pipeline.policy.engine import DEFAULT_POLICY, Facts, PolicyError, load_policy, parse_policy
from pipeline.records import envelope
from pipeline.stages.enrich import moderation_record


def record(kind: str = "upload", **fields: Any) -> dict[str, Any]:
    """A ModerationRecord of `kind` with no event attached unless `fields` gives one."""
    base = moderation_record("uploads", {"envelope": envelope("p", content_id="c")})
    return {**base, "kind": kind, "upload": None, **fields}


def match(severity: str = "critical", category: str = "terrorism", distance: int = 0) -> dict[str, Any]:
    return {
        "bank": "b",
        "signal_type": "pdq",
        "hash": "0" * 64,
        "distance": distance,
        "category": category,
        "severity": severity,
        "source": "",
        "item_id": None,
        "score": None,
    }


REGISTRY = {("text-default", "violent_extremism"): Threshold(0.5, 0.9)}


def test_default_policy_loads_and_is_versioned() -> None:
    policy = load_policy(DEFAULT_POLICY, REGISTRY)
    assert policy.policy_id == "default" and policy.version
    assert policy.evaluate(Facts(record())).rule.id == "default-allow"


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"rules": [{"id": "x", "action": "obliterate"}]}, "action 'obliterate'"),
        ({"rules": [{"id": "x", "action": "remove", "effects": ["email"]}]}, "unknown effects"),
        ({"rules": [{"id": "x", "action": "remove", "when": {"moon_phase": "full"}}]}, "unknown conditions"),
        (
            {"rules": [{"id": "x", "action": "remove", "when": {"score": {"label": "hate"}}}]},
            "needs a label and at_least",
        ),
        ({"rules": [{"id": "x", "action": "remove", "when": {"bank_match": {"colour": ["red"]}}}]}, "bank_match takes"),
        ({"rules": [{"id": "x", "action": "remove"}, {"id": "x", "action": "allow"}]}, "unique"),
        ({"version": None, "policy_id": "p"}, None),
        ({"surprise": 1}, "unknown keys"),
    ],
)
def test_invalid_policies_are_refused(change: dict[str, Any], reason: str | None) -> None:
    doc = {**yaml.safe_load(DEFAULT_POLICY.read_text()), **change}
    if reason is None:
        del doc["version"]
        reason = "missing 'version'"
    with pytest.raises(PolicyError, match=reason):
        parse_policy(doc)


def test_rules_first_match_and_priority() -> None:
    doc = {
        "policy_id": "t",
        "version": "2",
        "default": {"id": "allow", "action": "allow"},
        "rules": [
            {"id": "any-match", "when": {"bank_match": {}}, "action": "review"},
            {"id": "critical", "when": {"bank_match": {"severity": ["critical"]}}, "action": "remove", "priority": 10},
        ],
    }
    policy = parse_policy(doc)
    assert policy.evaluate(Facts(record(matches=[match("critical")]))).rule.id == "critical"
    assert policy.evaluate(Facts(record(matches=[match("low")]))).rule.id == "any-match"


def test_conditions_and_explanations() -> None:
    policy = load_policy(DEFAULT_POLICY, REGISTRY)
    scored = record(scores=[{"model": "text-default", "label": "violent_extremism", "score": 0.95}])
    outcome = policy.evaluate(Facts(scored))
    assert outcome.rule.id == "classifier-remove" and outcome.thresholds == {"text-default/violent_extremism": 0.9}
    assert "scored violent_extremism 0.95 >= 0.9" in outcome.explanation
    review = policy.evaluate(
        Facts(record(scores=[{"model": "text-default", "label": "violent_extremism", "score": 0.6}]))
    )
    assert review.rule.id == "classifier-review-extremism" and review.rule.review_priority == 5
    severe = policy.evaluate(Facts(record(matches=[match("critical")])))
    assert severe.rule.action == "remove" and "suspend_live" in severe.rule.effects and severe.category == "terrorism"
    live = {
        "envelope": envelope("p", stream_id="s"),
        "kind": "started",
        "frame_index": None,
        "frame_b64": None,
        "text": None,
    }
    unverified = {"user_id": "u", "identity_verified": False, "strikes": 0, "live_suspended": False}
    assert policy.evaluate(Facts(record("live", live=live, account=unverified))).rule.id == "live-unverified"
    suspended = {**unverified, "identity_verified": True, "live_suspended": True}
    assert policy.evaluate(Facts(record("live", live=live, account=suspended))).rule.id == "live-suspended"
    verified = {**unverified, "identity_verified": True}
    assert policy.evaluate(Facts(record("live", live=live, account=verified))).rule.id == "default-allow"
    burst = {"distinct_reporters": 3, "trust": 1.5, "reasons": {"terrorism": 3}}
    outcome = policy.evaluate(Facts(record("report"), burst))
    assert outcome.rule.id == "report-burst" and outcome.category == "terrorism"
    one = {"distinct_reporters": 1, "trust": 0.5, "reasons": {"terrorism": 5}}
    assert policy.evaluate(Facts(record("report"), one)).rule.id == "report-pending"


def test_policy_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("rules: [")
    with pytest.raises(PolicyError, match="cannot read policy"):
        load_policy(bad)


def test_rules_a_record_cannot_satisfy_are_skipped_without_changing_any_outcome() -> None:
    """The engine tries only the rules whose conditions the record can meet (no bank match
    condition without matches, and so on); on random records it decides exactly as trying
    every rule of the policy in order does."""
    import random

    from pipeline.policy.engine import _fires, _outcome, incident_of

    policy = load_policy(DEFAULT_POLICY, REGISTRY)
    rng = random.Random(5)
    banks = ["b", "benign.news", "partner-review.x", "removed"]
    incidents = ({"incident_id": "i1", "category": "terrorism"},)
    live = {"envelope": envelope("p", stream_id="s"), "kind": "frame", "frame_index": 1, "frame_b64": None}
    seen = set()
    for _ in range(3000):
        kind = rng.choice(["upload", "report", "live"])
        matches = [
            {
                **match(rng.choice(["critical", "high", "low"]), rng.choice(["terrorism", "hate"]), rng.randrange(40)),
                "bank": rng.choice(banks),
                "signal_type": rng.choice(["pdq", "sha256"]),
            }
            for _ in range(rng.choice([0, 0, 1, 2]))
        ]
        scores = [
            {"model": "text-default", "label": rng.choice(["violent_extremism", "hate"]), "score": rng.random()}
            for _ in range(rng.choice([0, 0, 1]))
        ]
        account = rng.choice(
            [None, {"user_id": "u", "identity_verified": rng.random() < 0.5, "strikes": 1, "live_suspended": False}]
        )
        r = record(
            kind,
            matches=matches,
            scores=scores,
            account=account,
            media_error=rng.choice([None, None, "too big"]),
            live=live if kind == "live" else None,
        )
        agg = rng.choice([None, {"distinct_reporters": rng.randrange(1, 5), "trust": 1.0, "reasons": {"terrorism": 2}}])
        active = rng.random() < 0.3
        facts = Facts(r, agg, active, incidents if active else ())
        expected = next(
            (
                _outcome(rule, ev, incident_of(rule, facts))
                for rule in policy.rules
                if (ev := _fires(rule, facts, REGISTRY)) is not None
            ),
            None,
        ) or _outcome(policy.default, [], incident_of(policy.default, facts))
        got = policy.evaluate(Facts(r, agg, active, incidents if active else ()))
        assert got == expected
        seen.add(got.rule.id)
    assert len(seen) >= 12  # most rules fired somewhere
