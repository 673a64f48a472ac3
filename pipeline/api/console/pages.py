"""The reviewer's pages: sign-in and sign-out, the queue, an item with its evidence, its
media and the verdict."""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.api.auth import digest
from pipeline.api.console.backend import Backend
from pipeline.api.console.guard import Console, console_of, refused, session_of, signed_in
from pipeline.api.console.html import HEADERS, Markup, join, page, render, tag, time_left, void, when
from pipeline.api.console.session import COOKIE, PATH, Session, cross_site
from pipeline.api.errors import ApiError
from pipeline.api.http import Form, read_form
from pipeline.records import Record, now_ms, subject_key
from pipeline.state.media import REF_SCHEME

logger = logging.getLogger(__name__)

# Verdicts as ReviewVerdict actions (the CLI's choices), with their keys; end_stream for streams only.
VERDICTS = (("remove", "r", "Remove"), ("allow", "a", "Allow (keep)"), ("restrict", "t", "Restrict"))
END_STREAM = ("end_stream", "x", "End the stream")
ESCALATE = ("escalate", "e", "Escalate to urgent")
DIGEST = re.compile(r"[0-9a-f]{64}")
# Media served to reviewers, by its first bytes; anything else (SVG, HTML...) is not served.
MEDIA_TYPES = (
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"GIF8", "image/gif"),
    (8, b"WEBP", "image/webp"),
    (4, b"ftyp", "video/mp4"),
    (0, b"\x1a\x45\xdf\xa3", "video/webm"),
)
DONE = {"verdict": "Verdict recorded", "escalate": "Task escalated to urgent"}


def media_type(data: bytes) -> str | None:
    return next((kind for at, magic, kind in MEDIA_TYPES if data[at : at + len(magic)] == magic), None)


def message(text: str, error: bool = False) -> Markup:
    return tag("p", text, class_="message error" if error else "message", role="status")


# ---- signing in and out ----------------------------------------------------------------
async def home(request: Request) -> Response:
    return RedirectResponse("/console/queue", 303)


async def login_form(request: Request) -> Response:
    if session_of(request) is not None:
        return RedirectResponse("/console/queue", 303)
    return page("Sign in", render("login.html", message=""), None)


async def login(request: Request) -> Response:
    def again(reason: str, status: int) -> Response:
        return page("Sign in", render("login.html", message=message(reason, error=True)), None, status=status)

    if cross_site(request):
        return again("This form was sent from another site's page.", 403)
    console = console_of(request)
    token = (await read_form(request, max_files=0)).fields.get("token", "").strip()
    try:
        if not token:
            raise ApiError(401, "no token")
        principal = console.tokens.authenticate(f"Bearer {token}")
    except ApiError:
        return again("Unknown token.", 401)
    if "review" not in principal.scopes:
        await run_in_threadpool(console.backend.audit, principal.name, "console.sign_in_refused", "console")
        return again(f"{principal.name} lacks the review scope the console needs.", 403)
    session, cookie = console.sessions.issue(principal.name, digest(token))
    await run_in_threadpool(console.backend.audit, principal.name, "console.sign_in", "console")
    response = RedirectResponse("/console/queue", 303)
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=console.sessions.ttl_s,
        path=PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@signed_in
async def logout(request: Request, console: Console, session: Session, form: Form) -> Response:
    await run_in_threadpool(console.backend.audit, session.name, "console.sign_out", "console")
    response = RedirectResponse("/console/login", 303)
    response.delete_cookie(COOKIE, path=PATH, httponly=True, samesite="strict")
    return response


# ---- the queue and an item ---------------------------------------------------------------
def subject(env: Record) -> str:
    return str(env.get("content_id") or env.get("stream_id") or env["event_id"])


@signed_in
async def queue(request: Request, console: Console, session: Session, form: Form) -> Response:
    tasks = await run_in_threadpool(console.backend.open_tasks)
    now = now_ms()
    rows = []
    for t in tasks:
        late = t["deadline"] < now
        rows.append(
            tag(
                "tr",
                join(
                    [
                        tag("td", t["priority"], class_="num"),
                        tag(
                            "td", tag("time", time_left(t["deadline"], now), class_="left", data_deadline=t["deadline"])
                        ),
                        tag("td", when(t["deadline"])),
                        tag("td", tag("a", subject(t["envelope"]), href=f"/console/item/{t['task_id']}")),
                        tag("td", t["reason"]),
                    ]
                ),
                class_=" ".join(c for c in ("overdue" if late else "", "urgent" if t["priority"] >= 90 else "") if c)
                or None,
                data_task=t["task_id"],
            )
        )
    done = DONE.get(request.query_params.get("done", ""))
    body = join([message(done) if done else "", render("queue.html", count=len(tasks), rows=join(rows, "\n"))])
    return page("Review queue", body, session.name, session.csrf)


def evidence(backend: Backend, task: Record) -> dict[str, Any]:
    """What the item page shows beside the task: its decision, reports, stored text and media."""
    content_id = task["envelope"].get("content_id")
    decision = backend.decision(task["decision_id"], task["created_at"]) if task["decision_id"] else None
    stored = backend.content(content_id) if content_id else None
    signals = (decision or {}).get("signals") or (stored or {}).get("signals") or []
    digest = next((s["value"] for s in signals if s["signal_type"] == "sha256"), None)
    data = backend.media(REF_SCHEME + digest) if digest else None
    return {
        "decision": decision,
        "reports": backend.reports(content_id) if content_id else None,
        "text": (stored or {}).get("text"),
        "digest": digest,
        "media_type": media_type(data) if data else None,
    }


def _table(headers: list[str], rows: list[list[object]], empty: str) -> Markup:
    if not rows:
        return tag("p", empty)
    head = tag("thead", tag("tr", join(tag("th", h) for h in headers)))
    body = tag("tbody", join(tag("tr", join(tag("td", c) for c in row)) for row in rows))
    return tag("table", join([head, body]))


def _facts(pairs: list[tuple[str, object]]) -> Markup:
    return tag("dl", join(join([tag("dt", k), tag("dd", v)]) for k, v in pairs), class_="facts")


def _media(ev: dict[str, Any]) -> Markup:
    if not ev["media_type"]:
        reason = "no media" if not ev["digest"] else "its media is not in the media store (expired, or not kept)"
        return tag("p", f"Nothing to show: {reason}.")
    src = f"/console/media/{ev['digest']}"
    if ev["media_type"].startswith("video/"):
        shown = tag("video", "", src=src, controls=True, preload="metadata", muted=True)
    else:
        shown = void("img", src=src, alt="the item's media")
    button = tag("button", "Reveal media (v)", type="button", id="reveal", aria_pressed="false", data_key="v")
    return tag("figure", join([shown, tag("figcaption", button)]), class_="media veiled", id="media")


def item_body(task: Record, ev: dict[str, Any], session: Session) -> Markup:
    env, d, reports = task["envelope"], ev["decision"], ev["reports"]
    decision = (
        _facts(
            [
                ("Action", d["action"]),
                ("Rule", d["rule_id"]),
                ("Policy", f"{d['policy_id']} version {d['policy_version']}"),
                ("Explanation", d["explanation"]),
                ("Category", d["category"] or "-"),
                ("Severity", d["severity"] or "-"),
                ("Thresholds", ", ".join(f"{k} {v:g}" for k, v in sorted(d["thresholds"].items())) or "-"),
                ("Incident", d.get("incident_id") or "-"),
                ("Decided", when(d["decided_at"])),
            ]
        )
        if d
        else tag("p", "The task names no decision (an item escalated near its deadline).")
    )
    matches = [
        [
            m["bank"],
            m["signal_type"],
            tag("span", m["hash"], class_="hash"),
            m["distance"],
            m["category"],
            m["severity"],
        ]
        for m in (d or {}).get("matches", [])
    ]
    scores = [[s["model"], s["label"], f"{s['score']:.3f}"] for s in (d or {}).get("scores", [])]
    reported = (
        _facts(
            [
                ("Distinct reporters", reports["distinct_reporters"]),
                ("Reporters' trust", f"{reports['trust']:.2f}"),
                ("Reasons", ", ".join(f"{k} ×{v}" for k, v in sorted(reports["reasons"].items()))),
                ("First report", when(reports["first_reported_at"])),
            ]
        )
        if reports
        else tag("p", "No reports on this item.")
    )
    verdicts = [*VERDICTS, END_STREAM] if env.get("stream_id") else list(VERDICTS)
    buttons = [
        tag(
            "button",
            join([tag("kbd", key), f" {label}"]),
            type="submit",
            name="action",
            value=action,
            data_key=key,
            class_="danger" if action in ("remove", "end_stream") else None,
        )
        for action, key, label in [*verdicts, ESCALATE]
    ]
    keys = " · ".join(f"{key} {label.lower()}" for _, key, label in [*verdicts, ESCALATE])
    reasons = sorted((reports or {}).get("reasons", {}).items(), key=lambda kv: -kv[1])
    category = (d or {}).get("category") or (reasons[0][0] if reasons else "")
    return render(
        "item.html",
        subject=subject(env),
        user=env.get("user_id") or "-",
        priority=task["priority"],
        deadline=when(task["deadline"]),
        left=time_left(task["deadline"], now_ms()),
        reason=task["reason"],
        media=_media(ev),
        text=tag("blockquote", ev["text"], class_="text") if ev["text"] else "",
        decision=decision,
        matches=_table(["Bank", "Signal", "Hash", "Distance", "Category", "Severity"], matches, "No bank matched."),
        scores=_table(["Model", "Label", "Score"], scores, "No classifier scores."),
        reports=reported,
        task_id=task["task_id"],
        csrf=session.csrf,
        category=category,
        buttons=join(buttons, "\n"),
        keys=keys,
    )


def _open_task(backend: Backend, task_id: str) -> Record | None:
    return next((t for t in backend.open_tasks() if t["task_id"] == task_id), None)


@signed_in
async def item(request: Request, console: Console, session: Session, form: Form) -> Response:
    task = await run_in_threadpool(_open_task, console.backend, request.path_params["task_id"])
    if task is None:
        body = tag("p", "No open task with this id: it may have been decided already.", class_="message error")
        return page(
            "Not in the queue",
            join([body, tag("a", "Back to the queue", href="/console/queue")]),
            session.name,
            session.csrf,
            404,
        )
    ev = await run_in_threadpool(evidence, console.backend, task)
    return page(f"Review {subject(task['envelope'])}", item_body(task, ev, session), session.name, session.csrf)


@signed_in
async def verdict(request: Request, console: Console, session: Session, form: Form) -> Response:
    """A verdict, as `modstream review decide` records it, or an escalation; audited once done."""
    backend, task_id = console.backend, request.path_params["task_id"]
    action = form.fields.get("action", "")
    note = form.fields.get("note", "").strip()[:500]
    category = form.fields.get("category", "").strip() or None
    if action not in {a for a, _, _ in [*VERDICTS, END_STREAM, ESCALATE]}:
        return refused(f"Unknown verdict {action!r}.", 400)
    task = await run_in_threadpool(_open_task, backend, task_id)
    if task is None:
        return refused("No open task with this id: it may have been decided already.", 409)
    who, item_id = session.name, subject_key(task["envelope"])
    if action == "escalate":
        await run_in_threadpool(backend.escalate, task, who, note)
        await run_in_threadpool(backend.audit, who, "review.escalate", "console", item_id, task_id=task_id, note=note)
        return RedirectResponse("/console/queue?done=escalate", 303)
    await run_in_threadpool(backend.decide, task_id, action, who, category, note)
    await run_in_threadpool(
        backend.audit,
        who,
        "review.verdict",
        "console",
        item_id,
        task_id=task_id,
        verdict=action,
        category=category,
        note=note,
    )
    return RedirectResponse("/console/queue?done=verdict", 303)


@signed_in
async def media(request: Request, console: Console, session: Session, form: Form) -> Response:
    """An item's media from the media store, only if it is an image or a video."""
    digest = request.path_params["digest"]
    data = await run_in_threadpool(console.backend.media, REF_SCHEME + digest) if DIGEST.fullmatch(digest) else None
    kind = media_type(data) if data else None
    if data is None or kind is None:
        return Response("no such media", 404, media_type="text/plain", headers=HEADERS)
    return Response(data, media_type=kind, headers={**HEADERS, "Cache-Control": "private, no-store"})
