"""What every console page shares: the `Console` (app.state.console) and the `signed_in`
guard. A page gets the reviewer's session or sends the browser to the sign-in page; a form
post is refused (403) without a valid session, with a CSRF token that is not the session's,
or from another site's page. The session's token is looked up on every request: it must
still be configured and hold `review`, and a page that writes banks or incidents also needs
`banks:write` (the same scope the API's bank writes need): a reviewer's token alone can give
verdicts, not disable bank entries or declare incidents."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pipeline.api.auth import TokenTable
from pipeline.api.console.backend import Backend
from pipeline.api.console.html import Markup, page, tag
from pipeline.api.console.session import COOKIE, Session, Sessions, cross_site, csrf_ok
from pipeline.api.http import Form, read_form

MAX_FILES = 8  # seed media of one incident declaration


@dataclass
class Console:
    backend: Backend
    sessions: Sessions
    tokens: TokenTable


Handler = Callable[[Request, Console, Session, Form], Awaitable[Response]]


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


def session_of(request: Request) -> Session | None:
    """The request's session, if its cookie is valid and its token is still configured with
    the review scope."""
    console = console_of(request)
    session = console.sessions.read(request.cookies.get(COOKIE))
    if session is None:
        return None
    principal = console.tokens.of_digest(session.token)
    return session if principal is not None and "review" in principal.scopes else None


def holds(request: Request, session: Session, scope: str) -> bool:
    principal = console_of(request).tokens.of_digest(session.token)
    return principal is not None and scope in principal.scopes


def refused(reason: str, status: int = 403) -> Response:
    return page("Refused", Markup(tag("p", reason, class_="message error")), None, status=status)


def signed_in(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page for signed-in reviewers; on POST, the form is read and checked first."""
    return _guarded(handler, None)


def writes_banks(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A form post that writes banks or incidents: signed in, and the token holds banks:write."""
    return _guarded(handler, "banks:write")


def _guarded(handler: Handler, scope: str | None) -> Callable[[Request], Awaitable[Response]]:
    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        session = session_of(request)
        if request.method == "GET":
            if session is None:
                return RedirectResponse("/console/login", 303)
            return await handler(request, console_of(request), session, Form())
        if cross_site(request):
            return refused("This form was sent from another site's page.")
        if session is None:
            return refused("Your session has ended or is not valid: sign in again.")
        if scope is not None and not holds(request, session, scope):
            return refused(f"{session.name} lacks the {scope} scope this action needs.")
        form = await read_form(request, max_files=MAX_FILES)
        if not csrf_ok(session, form.fields.get("csrf")):
            return refused("The form's CSRF token is not your session's: reload the page and try again.")
        return await handler(request, console_of(request), session, form)

    return endpoint
