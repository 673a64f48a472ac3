"""The operators' pages: banks (search by hash, disable an entry), incidents (list, declare,
close) and the transparency report with its charts. Writes reuse the CLI's code
(pipeline.banks.admin, pipeline.policy.crisis) and are audited once they succeed."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.api.console import charts
from pipeline.api.console.guard import Console, refused, signed_in
from pipeline.api.console.html import Markup, hidden, join, page, render, tag, when
from pipeline.api.console.pages import message
from pipeline.api.console.session import Session
from pipeline.api.http import Form
from pipeline.banks.admin import HASH_FORMATS, SEVERITIES, BankInputError
from pipeline.records import now_ms
from pipeline.signals.media import MediaError

DONE = {
    "disabled": "Entry disabled: match processes drop it within a second.",
    "declared": "Incident declared: its hashes are banked and shared, and the policy is tightened.",
    "closed": "Incident closed: the policy relaxes; its bank stays.",
}


def _csrf_field(session: Session) -> Markup:
    return hidden("csrf", session.csrf)


def _done(request: Request) -> Markup:
    text = DONE.get(request.query_params.get("done", ""))
    return message(text) if text else Markup("")


# ---- banks ------------------------------------------------------------------------------------
@signed_in
async def banks(request: Request, console: Console, session: Session, form: Form) -> Response:
    value = request.query_params.get("hash", "").strip().lower()
    results = Markup("")
    if value:
        found = await run_in_threadpool(console.backend.bank_entries, value)
        rows = [
            tag(
                "tr",
                join(
                    [
                        tag("td", e["bank"]),
                        tag("td", e["signal_type"]),
                        tag("td", e["category"]),
                        tag("td", e["severity"]),
                        tag("td", e["source"]),
                        tag("td", when(e["added_at"])),
                        tag(
                            "td",
                            tag(
                                "form",
                                join(
                                    [
                                        _csrf_field(session),
                                        hidden("bank", e["bank"]),
                                        hidden("signal_type", e["signal_type"]),
                                        hidden("hash", e["hash"]),
                                        tag("button", "Disable", type="submit", class_="danger"),
                                    ]
                                ),
                                method="post",
                                action="/console/banks/disable",
                            ),
                        ),
                    ]
                ),
                data_bank=e["bank"],
            )
            for e in found
        ]
        head = tag("tr", join(tag("th", h) for h in ("Bank", "Signal", "Category", "Severity", "Source", "Added", "")))
        results = (
            tag("table", join([tag("thead", head), tag("tbody", join(rows))]), id="bank-results")
            if rows
            else tag("p", f"No bank holds {value}.", id="bank-results")
        )
    counts = await run_in_threadpool(console.backend.bank_counts)
    chart = charts.bars([(k, n, "") for k, n in sorted(counts.items())], "Entries per bank and signal type")
    body = render("banks.html", message=_done(request), hash=value, results=results, counts=chart)
    return page("Banks", body, session.name, session.csrf)


@signed_in
async def disable(request: Request, console: Console, session: Session, form: Form) -> Response:
    bank, kind, value = (form.fields.get(k, "").strip() for k in ("bank", "signal_type", "hash"))
    if not bank or kind not in HASH_FORMATS or not HASH_FORMATS[kind].fullmatch(value.lower()):
        return refused("Give a bank, a signal type and a valid hash.", 400)
    await run_in_threadpool(console.backend.disable, bank, kind, value.lower())
    await run_in_threadpool(
        console.backend.audit, session.name, "bank.disable", "console", bank=bank, signal_type=kind, hash=value.lower()
    )
    return RedirectResponse("/console/banks?" + urlencode({"hash": value.lower(), "done": "disabled"}), 303)


# ---- incidents --------------------------------------------------------------------------------
@signed_in
async def incidents(request: Request, console: Console, session: Session, form: Form) -> Response:
    found = await run_in_threadpool(console.backend.incidents)
    rows = []
    for i in found:
        close = (
            tag(
                "form",
                join([_csrf_field(session), tag("button", "Close", type="submit")]),
                method="post",
                action=f"/console/incidents/{i['incident_id']}/close",
            )
            if i["status"] == "active"
            else ""
        )
        cells = [
            i["incident_id"],
            i["status"],
            i["title"],
            i["category"],
            i["severity"],
            when(i["declared_at"]),
            when(i["closed_at"]),
            len(i["signals"]),
            close,
        ]
        rows.append(
            tag("tr", join(tag("td", c) for c in cells), data_incident=i["incident_id"], data_status=i["status"])
        )
    body = render("incidents.html", message=_done(request), rows=join(rows, "\n"), csrf=session.csrf)
    return page("Incidents", body, session.name, session.csrf)


def _hashes(text: str) -> list[tuple[str, str]]:
    """`signal_type,hash` (or separated by spaces) per line; blank lines and # comments left out."""
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split("#", 1)[0].replace(",", " ").split()
        if not parts:
            continue
        if len(parts) != 2:
            raise BankInputError(f"seed hashes line {n}: expected signal_type,hash")
        pairs.append((parts[0], parts[1]))
    return pairs


@signed_in
async def declare(request: Request, console: Console, session: Session, form: Form) -> Response:
    f = form.fields
    title, category, reason = (f.get(k, "").strip() for k in ("title", "category", "reason"))
    severity = f.get("severity", "critical")
    if not title or not category or severity not in SEVERITIES:
        return refused("An incident needs a title, a category and a known severity.", 400)
    with tempfile.TemporaryDirectory(prefix="modstream-incident-") as tmp:
        media = []
        for n, (_, data, _) in enumerate(form.files):
            if data:  # an empty file input sends an empty part
                media.append(Path(tmp) / f"seed-{n}")
                media[-1].write_bytes(data)
        try:
            hashes = _hashes(f.get("hashes", ""))
            incident, count = await run_in_threadpool(
                console.backend.declare, title, category, severity, media, hashes, reason
            )
        except (BankInputError, MediaError) as exc:
            return refused(f"Not declared: {exc}", 400)
    await run_in_threadpool(
        console.backend.audit,
        session.name,
        "incident.declare",
        "console",
        incident_id=incident["incident_id"],
        title=title,
        category=category,
        severity=severity,
        hashes=count,
        reason=reason,
    )
    return RedirectResponse("/console/incidents?done=declared", 303)


@signed_in
async def close(request: Request, console: Console, session: Session, form: Form) -> Response:
    incident_id = request.path_params["incident_id"]
    try:
        await run_in_threadpool(console.backend.close_incident, incident_id)
    except KeyError:
        return refused(f"No incident {incident_id}.", 404)
    await run_in_threadpool(console.backend.audit, session.name, "incident.close", "console", incident_id=incident_id)
    return RedirectResponse("/console/incidents?done=closed", 303)


# ---- the transparency report ------------------------------------------------------------------
def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min" if value < 7200 else f"{value / 3600:.1f} h"


def report_body(data: dict[str, Any]) -> Markup:
    deadline = charts.stacked(
        [
            ("decided within 24 h", data["reported_actioned_within_24h"]),
            ("decided after 24 h", data["reported_actioned_after_24h"]),
            ("undecided past the deadline", data["reported_overdue_open"]),
            ("undecided, deadline ahead", data["reported_open_within_deadline"]),
        ],
        "Reported items by outcome against the 24-hour deadline",
    )
    rows = data["rows"]
    actions = charts.bars(
        [
            (
                f"{r['category']} / {r['action']}",
                r["count"],
                "" if r["p50_s"] is None else f"p50 {_seconds(r['p50_s'])}",
            )
            for r in rows
        ],
        "Decisions by category and action",
    )
    table = [
        tag(
            "tr",
            join(
                tag("td", c)
                for c in (
                    r["category"],
                    r["action"],
                    r["count"],
                    *(_seconds(r[p]) for p in ("p50_s", "p90_s", "p99_s")),
                )
            ),
        )
        for r in rows
    ]
    live = data.get("live") or {}
    live_facts = tag(
        "p",
        f"{live.get('streams_ended', 0)} stream(s) ended, {live.get('streams_cut_confirmed', 0)} cut(s) confirmed "
        f"(p50 {_seconds(live.get('cut_p50_s'))}); {live.get('live_suspensions', 0)} live-access suspension(s), "
        f"{live.get('live_suspensions_lifted', 0)} lifted.",
    )
    incidents = [
        tag(
            "li",
            f"{i['incident_id']} ({i['status']}, {i['category']}): {i['title']}: "
            f"{i['items_actioned']} item(s) actioned, "
            f"last {_seconds(i['since_declaration_max_s'])} after the declaration; "
            f"{i['blocked_at_upload']} cop(ies) blocked at upload",
        )
        for i in data.get("incidents") or []
    ]
    enforced = ", ".join(f"{k} {v}" for k, v in sorted(data["enforcement_results"].items())) or "none"
    return render(
        "report.html",
        now=when(now_ms()),
        deadline_chart=deadline,
        actions_chart=actions,
        rows=join(table, "\n"),
        live=live_facts,
        incidents=tag("ul", join(incidents)) if incidents else tag("p", "No incidents."),
        enforcement=tag("p", enforced),
    )


@signed_in
async def report(request: Request, console: Console, session: Session, form: Form) -> Response:
    data = await run_in_threadpool(console.backend.report)
    return page("Transparency report", report_body(data), session.name, session.csrf)
