"""HTML for the console without a template engine: templates are files of `templates/` with
`$name` placeholders (string.Template), and every value put into one is escaped unless it is
`Markup`, HTML this module (or a template) built. So a content id, a note or a bank name can
never become markup, whatever it holds.

Every page is sent with a Content-Security-Policy that lets it load scripts, styles and
images from this server only (nothing external, no inline script), never be framed, and post
forms only here; pages and media are not cached.
"""

from __future__ import annotations

import html
import string
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

from starlette.responses import HTMLResponse

TEMPLATES = Path(__file__).parent / "templates"
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make browsers send Origin: null
    "Cache-Control": "no-store",
}


class Markup(str):
    """HTML that is safe to send as it is."""


def esc(value: object) -> Markup:
    if isinstance(value, Markup):
        return value
    return Markup(html.escape("" if value is None else str(value), quote=True))


def join(parts: Iterable[object], sep: str = "") -> Markup:
    return Markup(sep.join(esc(p) for p in parts))


@cache
def _template(name: str) -> string.Template:
    return string.Template((TEMPLATES / name).read_text())


def render(name: str, **values: object) -> Markup:
    """The template `name` with its placeholders filled, each value escaped unless Markup."""
    return Markup(_template(name).substitute({k: esc(v) for k, v in values.items()}))


def _attrs(attrs: dict[str, object]) -> str:
    """Attribute names use _ for - (data_x -> data-x), a trailing _ is dropped (class_ ->
    class); an attribute that is None or False is left out, one that is True has no value."""
    return "".join(
        f" {k.rstrip('_').replace('_', '-')}" + ("" if v is True else f'="{esc(v)}"')
        for k, v in attrs.items()
        if v is not None and v is not False
    )


def tag(element: str, content: object = "", /, **attrs: object) -> Markup:
    """<element attrs>content</element>, the content escaped unless Markup."""
    return Markup(f"<{element}{_attrs(attrs)}>{esc(content)}</{element}>")


def void(element: str, /, **attrs: object) -> Markup:
    """An element without content: <img ...>, <input ...>."""
    return Markup(f"<{element}{_attrs(attrs)}>")


def hidden(name: str, value: object) -> Markup:
    return void("input", type="hidden", name=name, value=value)


def page(title: str, body: Markup, reviewer: str | None, csrf: str = "", status: int = 200) -> HTMLResponse:
    """A whole page: the layout, with the navigation and sign-out when a reviewer is signed in."""
    nav = render("nav.html", reviewer=reviewer, csrf=csrf) if reviewer else Markup("")
    return HTMLResponse(render("base.html", title=title, nav=nav, body=body), status, headers=HEADERS)


def when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def duration(ms: float) -> str:
    """4d 3h, 3h 12m, 12m, or under a minute."""
    minutes = int(abs(ms) // 60_000)
    days, hours, mins = minutes // 1440, minutes // 60 % 24, minutes % 60
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {mins}m"
    return f"{mins}m" if mins else "under a minute"


def time_left(deadline_ms: int, now_ms: int) -> str:
    left = deadline_ms - now_ms
    return f"{duration(left)} left" if left >= 0 else f"overdue by {duration(left)}"
