"""The transparency report: what was actioned, how fast, and how many reported items within 24 hours.

Reads decisions, enforcement results and reports. For each (category, action): the count,
and the time from the upload (or, for a reported item, its first report) to the decision,
at p50/p90/p99. For reported items: how many got a final decision within 24 hours of their
first report, how many later, how many are still open.

Live streaming, from decisions, results and (optionally) AccountEvents: how many streams were
ended (by the rule that ended each), how many cuts the platform confirmed and how long from
the violating event to the confirmed cut; how many live-access suspensions there were, by
policy (upheld decisions with the `suspend_live` effect) and by the platform (AccountEvents
`live_suspended`), on how many accounts, and how many were lifted.
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
    decisions: Iterable[Record],
    reports: Iterable[Record],
    results: Iterable[Record],
    now: int,
    accounts: Iterable[Record] = (),
    incidents: Iterable[Record] = (),
) -> dict[str, Any]:
    """`accounts`: the AccountEvents, for the suspensions and lifts the platforms made;
    `incidents`: the Incident records, for a section per incident."""
    first_report: dict[str, int] = {}
    for r in reports:
        key = subject(r["envelope"])
        first_report[key] = min(first_report.get(key, r["envelope"]["occurred_at"]), r["envelope"]["occurred_at"])
    # One decision per event (redeliveries repeat decision ids).
    unique = list({d["decision_id"]: d for d in decisions}.values())
    results = list(results)
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
        "live": live_report(unique, results, accounts),
        "incidents": incident_report(unique, incidents),
    }


def incident_report(decisions: list[Record], incidents: Iterable[Record]) -> list[dict[str, Any]]:
    """Per declared incident: the items actioned under it, the time from the declaration to
    each action, and the share of its copies blocked at upload (not taken down afterwards by
    retroactive matching or review)."""
    latest = {i["incident_id"]: i for i in incidents if i["status"] != "proposed"}
    out = []
    for incident_id, incident in sorted(latest.items(), key=lambda kv: kv[1]["declared_at"]):
        actioned = [d for d in decisions if d.get("incident_id") == incident_id and d["action"] in UPHELD]
        after = [(d["decided_at"] - incident["declared_at"]) / 1000 for d in actioned]
        at_upload = [
            d for d in actioned if d["kind"] == "upload" and d["rule_id"] not in ("retroactive-match", "human-review")
        ]
        out.append(
            {
                "incident_id": incident_id,
                "title": incident["title"],
                "status": incident["status"],
                "category": incident["category"],
                "items_actioned": len({subject(d["envelope"]) for d in actioned}),
                "since_declaration_p50_s": percentile(after, 50),
                "since_declaration_p90_s": percentile(after, 90),
                "since_declaration_max_s": max(after, default=None),
                "blocked_at_upload": len(at_upload),
                "share_blocked_at_upload": len(at_upload) / len(actioned) if actioned else None,
            }
        )
    return out


def live_report(decisions: Iterable[Record], results: Iterable[Record], accounts: Iterable[Record]) -> dict[str, Any]:
    """Streams ended and live-access suspensions (decisions already deduplicated)."""
    ended: dict[str, Record] = {}  # stream -> its first end_stream decision
    started: dict[str, int] = {}  # stream -> when its first violating event occurred
    suspended_users: set[str] = set()
    by_policy = 0
    for d in decisions:
        env = d["envelope"]
        if d["action"] == "end_stream":
            stream = subject(env)
            if stream not in ended or d["decided_at"] < ended[stream]["decided_at"]:
                ended[stream] = d
            started[stream] = min(started.get(stream, env["occurred_at"]), env["occurred_at"])
        if d["action"] in UPHELD and "suspend_live" in (d.get("effects") or ()) and env.get("user_id"):
            by_policy += 1
            suspended_users.add(env["user_id"])
    confirmed: dict[str, int] = {}  # stream -> first confirmation of its cut
    for r in results:
        if r["action"] == "end_stream" and r["status"] == "succeeded" and r.get("confirmed_at") is not None:
            stream = subject(r["envelope"])
            confirmed[stream] = min(confirmed.get(stream, r["confirmed_at"]), r["confirmed_at"])
    platform: dict[str, dict[str, Record]] = defaultdict(dict)  # kind -> event id -> event
    for event in accounts:
        platform[event["kind"]][event["envelope"]["event_id"]] = event
    for event in platform["live_suspended"].values():
        if event["envelope"].get("user_id"):
            suspended_users.add(event["envelope"]["user_id"])
    by_rule: dict[str, int] = defaultdict(int)
    for d in ended.values():
        by_rule[d["rule_id"]] += 1
    to_cut = [(t - started[s]) / 1000 for s, t in confirmed.items() if s in started and t >= started[s]]
    return {
        "streams_ended": len(ended),
        "streams_ended_by_rule": dict(sorted(by_rule.items())),
        "streams_cut_confirmed": len(confirmed),
        "cut_p50_s": percentile(to_cut, 50),
        "cut_p90_s": percentile(to_cut, 90),
        "cut_p99_s": percentile(to_cut, 99),
        "live_suspensions": by_policy + len(platform["live_suspended"]),
        "live_suspensions_by_policy": by_policy,
        "live_suspensions_by_platform": len(platform["live_suspended"]),
        "live_suspended_accounts": len(suspended_users),
        "live_suspensions_lifted": len(platform["live_lifted"]),
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
    live = report.get("live")
    if live:
        rules = ", ".join(f"{k} {v}" for k, v in live["streams_ended_by_rule"].items())
        lines += [
            f"live streams ended: {live['streams_ended']}" + (f" ({rules})" if rules else ""),
            f"  cut confirmed by the platform: {live['streams_cut_confirmed']}, from the violating event "
            f"p50 {_fmt(live['cut_p50_s'])}, p90 {_fmt(live['cut_p90_s'])}, p99 {_fmt(live['cut_p99_s'])}",
            f"live-access suspensions: {live['live_suspensions']} (by policy {live['live_suspensions_by_policy']}, "
            f"by the platform {live['live_suspensions_by_platform']}) on {live['live_suspended_accounts']} "
            f"account(s); lifted: {live['live_suspensions_lifted']}",
        ]
    for i in report.get("incidents") or []:
        share = i["share_blocked_at_upload"]
        lines += [
            f"incident {i['incident_id']} ({i['status']}, {i['category']}): {i['title']}",
            f"  items actioned: {i['items_actioned']}; since the declaration p50 {_fmt(i['since_declaration_p50_s'])}, "
            f"p90 {_fmt(i['since_declaration_p90_s'])}, last {_fmt(i['since_declaration_max_s'])}",
            f"  copies blocked at upload: {i['blocked_at_upload']}" + (f" ({share:.1%})" if share is not None else ""),
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
