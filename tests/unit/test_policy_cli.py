"""`modstream policy check` and `modstream policy test` (no broker needed)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import main
from pipeline.policy.engine import DEFAULT_POLICY

ENV = {"envelope": {"event_id": "e", "platform_id": "p", "occurred_at": 1, "content_id": "c"}, "kind": "upload"}


def test_policy_check_accepts_the_default_and_rejects_a_broken_file(tmp_path: Path) -> None:
    ok = CliRunner().invoke(main, ["policy", "check", str(DEFAULT_POLICY)])
    assert ok.exit_code == 0 and "ok: policy default version 5" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("policy_id: x\nversion: '1'\ndefault: {action: allow}\nrules:\n  - {id: r, action: nuke}\n")
    out = CliRunner().invoke(main, ["policy", "check", str(bad)])
    assert out.exit_code != 0 and "action 'nuke' is not one of" in out.output


def test_policy_test_runs_cases(tmp_path: Path) -> None:
    match = {
        "bank": "b",
        "signal_type": "sha256",
        "hash": "h",
        "distance": 0,
        "category": "terrorism",
        "severity": "critical",
        "source": "",
    }
    cases = [
        {
            "name": "known terrorist image",
            "record": {**ENV, "matches": [match]},
            "expect": {"action": "remove", "rule": "bank-match-severe"},
        },
        {
            "name": "report burst",
            "record": {**ENV, "kind": "report"},
            "reports": {"distinct_reporters": 4, "trust": 2.0, "reasons": {"hate": 4}},
            "expect": {"action": "review"},
        },
        {"name": "plain post", "record": ENV, "expect": {"action": "remove"}},  # wrong on purpose
    ]
    path = tmp_path / "cases.jsonl"
    path.write_text("\n".join(json.dumps(c) for c in cases))
    out = CliRunner().invoke(main, ["policy", "test", str(DEFAULT_POLICY), str(path)])
    assert out.exit_code == 1
    assert "PASS known terrorist image" in out.output and "PASS report burst" in out.output
    assert "FAIL plain post: allow by rule default-allow" in out.output
    assert "2 passed, 1 failed" in out.output
