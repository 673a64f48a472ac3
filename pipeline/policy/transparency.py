"""The transparency report: what was actioned, how fast, and how many reported items within 24 hours.

Reads decisions, enforcement results and reports. For each (category, action): the count,
and the time from the upload (or, for a reported item, its first report) to the decision,
at p50/p90/p99. For reported items: how many got a final decision within 24 hours of their
first report, how many later, how many are still open.
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from pipeline.policy.engine import FINAL, UPHELD
from pipeline.records import Record
from pipeline.state.reports import DAY_MS


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def subject(env: Record) -> str:
    return env.get("content_id") or env.get("stream_id") or env["event_id"]


def build_report(
    decisions: Iterable[Record], reports: Iterable[Record], results: Iterable[Record], now: int
) -> dict[str, Any]:
    first_report: dict[str, int] = {}
    for r in reports:
        key = subject(r["envelope"])
        first_report[key] = min(first_report.get(key, r["envelope"]["occurred_at"]), r["envelope"]["occurred_at"])
    # One decision per event (redeliveries repeat decision ids).
    unique = {d["decision_id"]: d for d in decisions}.values()
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    final_at: dict[str, int] = {}
    for d in unique:
        key = subject(d["envelope"])
        counts[(d["category"] or "none", d["action"])] += 1
        if d["action"] in UPHELD:
            start = first_report.get(key, d["envelope"]["occurred_at"])
            if start > d["decided_at"]:
                start = d["envelope"]["occurred_at"]
            groups[(d["category"] or "none", d["action"])].append((d["decided_at"] - start) / 1000)
        if d["action"] in FINAL and key in first_report and d["decided_at"] >= first_report[key]:
            final_at[key] = min(final_at.get(key, d["decided_at"]), d["decided_at"])
    rows = []
    for (category, action), count in sorted(counts.items()):
        seconds = groups.get((category, action), [])
        rows.append(
            {
                "category": category,
                "action": action,
                "count": count,
                "p50_s": percentile(seconds, 50),
                "p90_s": percentile(seconds, 90),
                "p99_s": percentile(seconds, 99),
            }
        )
    within = sum(1 for k, t in final_at.items() if t - first_report[k] <= DAY_MS)
    late = sum(1 for k, t in final_at.items() if t - first_report[k] > DAY_MS)
    overdue_open = sum(1 for k, t in first_report.items() if k not in final_at and now - t > DAY_MS)
    still_open = sum(1 for k, t in first_report.items() if k not in final_at and now - t <= DAY_MS)
    enforced: dict[str, int] = defaultdict(int)
    for r in results:
        enforced[r["status"]] += 1
    reported = len(first_report)
    return {
        "rows": rows,
        "reported_items": reported,
        "reported_actioned_within_24h": within,
        "reported_actioned_after_24h": late,
        "reported_overdue_open": overdue_open,
        "reported_open_within_deadline": still_open,
        "share_within_24h": within / reported if reported else None,
        "enforcement_results": dict(enforced),
    }


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return (
        f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"
    )


def format_text(report: dict[str, Any]) -> str:
    lines = [f"{'category':20} {'action':11} {'count':>7} {'p50':>8} {'p90':>8} {'p99':>8}"]
    for r in report["rows"]:
        lines.append(
            f"{r['category']:20} {r['action']:11} {r['count']:>7} {_fmt(r['p50_s']):>8} "
            f"{_fmt(r['p90_s']):>8} {_fmt(r['p99_s']):>8}"
        )
    share = report["share_within_24h"]
    lines += [
        "",
        f"reported items: {report['reported_items']}",
        f"  decided within 24 h of the first report: {report['reported_actioned_within_24h']}"
        + (f" ({share:.1%})" if share is not None else ""),
        f"  decided after 24 h: {report['reported_actioned_after_24h']}",
        f"  undecided past the deadline: {report['reported_overdue_open']}",
        f"  undecided, deadline not reached: {report['reported_open_within_deadline']}",
        "enforcement results: "
        + (", ".join(f"{k} {v}" for k, v in sorted(report["enforcement_results"].items())) or "none"),
    ]
    return "\n".join(lines)


def format_html(report: dict[str, Any]) -> str:
    """A self-contained page: bars of counts per category and action, and the 24-hour share."""
    rows = report["rows"]
    top = max((r["count"] for r in rows), default=1) or 1
    bars = []
    for i, r in enumerate(rows):
        width = 500 * r["count"] / top
        y = 30 + i * 28
        bars.append(
            f'<text x="0" y="{y + 14}">{html.escape(r["category"])} / {html.escape(r["action"])}</text>'
            f'<rect x="260" y="{y}" width="{width:.0f}" height="20" fill="#36c"/>'
            f'<text x="{265 + width:.0f}" y="{y + 14}">{r["count"]} (p50 {_fmt(r["p50_s"])})</text>'
        )
    share = report["share_within_24h"]
    height = 40 + 28 * len(rows)
    return f"""<!doctype html><meta charset="utf-8"><title>modstream transparency report</title>
<h1>Transparency report</h1>
<p>Reported items: {report["reported_items"]}; decided within 24 hours of the first report:
{report["reported_actioned_within_24h"]}{f" ({share:.1%})" if share is not None else ""}.</p>
<svg width="900" height="{height}" font-family="sans-serif" font-size="13">
<text x="0" y="16" font-weight="bold">Decisions by category and action</text>{"".join(bars)}</svg>
<pre>{html.escape(format_text(report))}</pre>
"""
