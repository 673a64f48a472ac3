"""`modstream report` on a generated day of traffic, checked against the known input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.policy.engine import load_policy
from pipeline.records import envelope, now_ms
from pipeline.sdk import ModerationProducer
from pipeline.stages.decide import decision

from .test_cli import cli

pytestmark = pytest.mark.integration
HOUR = 3600 * 1000


def test_transparency_report_on_a_generated_day(settings: Settings, tmp_path: Path) -> None:
    policy, producer = load_policy(), ModerationProducer(settings)
    now = now_ms()
    day = now - 48 * HOUR

    def send_decision(content_id: str, occurred: int, decided: int, action: str, category: str | None) -> dict:  # type: ignore[type-arg]
        record = {
            "envelope": envelope("p", content_id=content_id, occurred_at=occurred),
            "kind": "upload",
            "signals": [],
            "matches": [],
            "scores": [],
        }
        d = decision(record, policy, action, "generated", "generated", category=category)
        d["decided_at"] = decided
        producer.send("decisions", d)
        return d

    # 100 uploads removed at upload, 1 to 10 seconds after they were made.
    for i in range(100):
        occurred = day + i * 600_000
        d = send_decision(f"up-{i}", occurred, occurred + (i % 10 + 1) * 1000, "remove", "terrorism")
        if i < 5:  # a redelivered decision counts once
            producer.send("decisions", d)
    # 50 uploads allowed.
    for i in range(50):
        send_decision(f"ok-{i}", day + i * 1000, day + i * 1000 + 500, "allow", None)
    # 20 reported items: 15 actioned within 24 h (after 1..15 h), 3 after 30 h, 2 never (reported 30 h ago).
    for j in range(20):
        first = day + j * HOUR if j < 18 else now - 30 * HOUR
        for reporter in ("a", "b"):
            producer.send_report(f"rep-{j}", reporter, "hate", occurred_at=first + (0 if reporter == "a" else 60_000))
        send_decision(
            f"rep-{j}", first - HOUR, first - HOUR + 500, "allow", None
        )  # allowed at upload, before the reports
        if j < 15:
            send_decision(f"rep-{j}", first - HOUR, first + (j + 1) * HOUR, "remove", "hate")
        elif j < 18:
            send_decision(f"rep-{j}", first - HOUR, first + 30 * HOUR, "remove", "hate")
    producer.send(
        "enforcement.results",
        {
            "decision_id": "x",
            "envelope": envelope("p", content_id="up-0"),
            "action": "remove",
            "enforcer": "log",
            "status": "succeeded",
            "attempts": 1,
            "detail": "",
            "acted_at": now,
        },
    )
    producer.flush()

    out = cli(settings, "report", "--format", "json", "--chart", str(tmp_path / "report.html"))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    rows = {(r["category"], r["action"]): r for r in report["rows"]}
    assert rows[("terrorism", "remove")]["count"] == 100
    assert (
        rows[("terrorism", "remove")]["p50_s"],
        rows[("terrorism", "remove")]["p90_s"],
        rows[("terrorism", "remove")]["p99_s"],
    ) == (5.0, 9.0, 10.0)
    assert rows[("none", "allow")]["count"] == 50 + 20 and rows[("none", "allow")]["p50_s"] is None
    hate = rows[("hate", "remove")]
    assert hate["count"] == 18
    assert hate["p50_s"] == 9 * 3600 and hate["p99_s"] == 30 * 3600  # from the first report, not the upload
    assert report["reported_items"] == 20
    assert report["reported_actioned_within_24h"] == 15 and report["reported_actioned_after_24h"] == 3
    assert report["reported_overdue_open"] == 2 and report["reported_open_within_deadline"] == 0
    assert report["share_within_24h"] == 0.75
    assert report["enforcement_results"] == {"succeeded": 1}
    chart = (tmp_path / "report.html").read_text()
    assert "<svg" in chart and "terrorism / remove" in chart and "75.0%" in chart
    text = cli(settings, "report").stdout
    assert "decided within 24 h of the first report: 15 (75.0%)" in text
