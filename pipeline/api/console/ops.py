"""The operators' pages: banks (search by hash, near PDQ hashes too, disable an entry),
incidents (list, declare, accept a proposed one, add seed media, close) and the transparency
report with its charts. Writes reuse the CLI's code (pipeline.banks.admin,
pipeline.policy.crisis) and are audited once they succeed."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.api.console import charts
from pipeline.api.console.guard import Console, refused, signed_in, writes_banks
from pipeline.api.console.html import Markup, hidden, join, page, render, tag, void, when
from pipeline.api.console.pages import message
from pipeline.api.console.session import Session
from pipeline.api.http import Form
from pipeline.banks.admin import HASH_FORMATS, SEVERITIES, BankInputError
from pipeline.banks.table import EXACT_TYPES
from pipeline.records import Record, now_ms
from pipeline.signals.media import MediaError

DONE = {
    "disabled": "Entry disabled: match processes drop it within a second.",
    "declared": "Incident declared: its hashes are banked and shared, and the policy is tightened.",
    "accepted": "Incident accepted: its hashes are banked and shared, and the policy is tightened.",
    "media": "Seed media added: its hashes are banked and shared.",
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
                        tag("td", "-" if e["signal_type"] in EXACT_TYPES else e["distance"], class_="num"),
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
                data_hash=e["hash"],
                data_distance=e["distance"],
            )
            for e in found
        ]
        headers = ("Bank", "Signal", "Distance", "Category", "Severity", "Source", "Added", "")
        head = tag("tr", join(tag("th", h) for h in headers))
        near = " or a PDQ hash within its threshold of it" if HASH_FORMATS["pdq"].fullmatch(value) else ""
        results = (
            tag("table", join([tag("thead", head), tag("tbody", join(rows))]), id="bank-results")
            if rows
            else tag("p", f"No bank holds {value}{near}.", id="bank-results")
        )
    counts = await run_in_threadpool(console.backend.bank_counts)
    chart = charts.bars([(k, n, "") for k, n in sorted(counts.items())], "Entries per bank and signal type")
    body = render("banks.html", message=_done(request), hash=value, results=results, counts=chart)
    return page("Banks", body, session.name, session.csrf)


@writes_banks
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
def _active_forms(session: Session, incident_id: str) -> Markup:
    """An active incident's writes: more seed media, and closing it."""
    add = tag(
        "details",
        join(
            [
                tag("summary", "Add media"),
                tag(
                    "form",
                    join(
                        [
                            _csrf_field(session),
                            void("input", type="file", name="media", multiple=True, required=True),
                            tag("button", "Add", type="submit"),
                        ]
                    ),
                    method="post",
                    action=f"/console/incidents/{incident_id}/media",
                    enctype="multipart/form-data",
                    class_="add-media",
                ),
            ]
        ),
    )
    close = tag(
        "form",
        join([_csrf_field(session), tag("button", "Close", type="submit")]),
        method="post",
        action=f"/console/incidents/{incident_id}/close",
        class_="close",
    )
    return join([add, close])


def _proposed(session: Session, found: list[dict[str, Any]]) -> Markup:
    """Flood detection's proposals, each with its Accept form."""
    if not found:
        return tag("p", "No proposed incidents.", id="proposed")
    rows = []
    for i in found:
        accept = tag(
            "form",
            join(
                [
                    _csrf_field(session),
                    void("input", name="reason", maxlength=500, placeholder="reason (optional)", aria_label="Reason"),
                    tag("button", "Accept", type="submit", class_="primary"),
                ]
            ),
            method="post",
            action=f"/console/incidents/{i['incident_id']}/accept",
            class_="accept",
        )
        cells = [i["incident_id"], i["title"], i["category"], i["severity"], when(i["declared_at"])]
        cells += [len(i["signals"]), tag("span", i["reason"], class_="reason"), accept]
        rows.append(
            tag("tr", join(tag("td", c) for c in cells), data_incident=i["incident_id"], data_status="proposed")
        )
    headers = ("Incident", "Title", "Category", "Severity", "Proposed", "Hashes", "Reason", "")
    head = tag("thead", tag("tr", join(tag("th", h) for h in headers)))
    return tag("table", join([head, tag("tbody", join(rows, "\n"))]), class_="incidents proposed", id="proposed")


@signed_in
async def incidents(request: Request, console: Console, session: Session, form: Form) -> Response:
    found = await run_in_threadpool(console.backend.incidents)
    rows = []
    for i in found:
        if i["status"] == "proposed":
            continue
        forms = _active_forms(session, i["incident_id"]) if i["status"] == "active" else ""
        cells = [
            i["incident_id"],
            i["status"],
            i["title"],
            i["category"],
            i["severity"],
            when(i["declared_at"]),
            when(i["closed_at"]),
            len(i["signals"]),
            forms,
        ]
        rows.append(
            tag("tr", join(tag("td", c) for c in cells), data_incident=i["incident_id"], data_status=i["status"])
        )
    proposed = _proposed(session, [i for i in found if i["status"] == "proposed"])
    body = render("incidents.html", message=_done(request), proposed=proposed, rows=join(rows, "\n"), csrf=session.csrf)
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


@contextmanager
def _saved_media(form: Form) -> Iterator[list[Path]]:
    """The form's files in a temporary folder, for the crisis code, which reads seed media from
    paths. Each is named by its content's digest: a video's frames are banked under the
    incident and the file's name, so media added later must not reuse an earlier name."""
    with tempfile.TemporaryDirectory(prefix="modstream-incident-") as tmp:
        media: list[Path] = []
        for _, data, _ in form.files:
            path = Path(tmp) / f"seed-{hashlib.sha256(data).hexdigest()}"
            if data and path not in media:  # an empty file input sends an empty part
                path.write_bytes(data)
                media.append(path)
        yield media


@writes_banks
async def declare(request: Request, console: Console, session: Session, form: Form) -> Response:
    f = form.fields
    title, category, reason = (f.get(k, "").strip() for k in ("title", "category", "reason"))
    severity = f.get("severity", "critical")
    if not title or not category or severity not in SEVERITIES:
        return refused("An incident needs a title, a category and a known severity.", 400)
    with _saved_media(form) as media:
        try:
            hashes = _hashes(f.get("hashes", ""))
            incident, count = await run_in_threadpool(
                console.backend.declare, title, category, severity, media, hashes, reason
            )
        except (BankInputError, MediaError) as exc:
            return refused(f"Not declared: {exc}", 400)
    await _audit_incident(console, session, "incident.declare", incident, count)
    return RedirectResponse("/console/incidents?done=declared", 303)


async def _audit_incident(console: Console, session: Session, action: str, incident: Record, hashes: int) -> None:
    """An incident declared or accepted, on the audit topic: what it is and how many hashes it banked."""
    await run_in_threadpool(
        console.backend.audit,
        session.name,
        action,
        "console",
        incident_id=incident["incident_id"],
        title=incident["title"],
        category=incident["category"],
        severity=incident["severity"],
        hashes=hashes,
        reason=incident["reason"],
    )


@writes_banks
async def close(request: Request, console: Console, session: Session, form: Form) -> Response:
    incident_id = request.path_params["incident_id"]
    try:
        await run_in_threadpool(console.backend.close_incident, incident_id)
    except KeyError:
        return refused(f"No incident {incident_id}.", 404)
    await run_in_threadpool(console.backend.audit, session.name, "incident.close", "console", incident_id=incident_id)
    return RedirectResponse("/console/incidents?done=closed", 303)


@writes_banks
async def accept(request: Request, console: Console, session: Session, form: Form) -> Response:
    """A proposed incident declared, as `modstream incident accept` does it."""
    incident_id = request.path_params["incident_id"]
    reason = form.fields.get("reason", "").strip()[:500]
    try:
        incident, count = await run_in_threadpool(console.backend.accept, incident_id, reason)
    except KeyError:
        return refused(f"No incident {incident_id}.", 404)
    except ValueError as exc:
        return refused(f"Not accepted: {exc}.", 409)
    await _audit_incident(console, session, "incident.accept", incident, count)
    return RedirectResponse("/console/incidents?done=accepted", 303)


@writes_banks
async def add_media(request: Request, console: Console, session: Session, form: Form) -> Response:
    """More seed media for an active incident, as `modstream incident add-media` banks it."""
    incident_id = request.path_params["incident_id"]
    with _saved_media(form) as media:
        if not media:
            return refused("Choose at least one file of seed media.", 400)
        try:
            count = await run_in_threadpool(console.backend.add_media, incident_id, media)
        except KeyError:
            return refused(f"No incident {incident_id}.", 404)
        except MediaError as exc:
            return refused(f"Not added: {exc}", 400)
        except ValueError as exc:  # not active
            return refused(f"Not added: {exc}.", 409)
    digests = [p.name.removeprefix("seed-") for p in media]
    await run_in_threadpool(
        console.backend.audit,
        session.name,
        "incident.add_media",
        "console",
        incident_id=incident_id,
        media_sha256=digests,
        hashes=count,
    )
    return RedirectResponse("/console/incidents?done=media", 303)


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
