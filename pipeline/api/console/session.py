"""Reviewer sessions of the console: a signed cookie, and the checks every form post passes.

A reviewer signs in with an API token that holds the `review` scope; the console then keeps
only a cookie, `NAME|TOKEN DIGEST|CSRF|EXPIRES` signed with HMAC-SHA256 under
MODSTREAM_CONSOLE_SECRET: the reviewer's name (as audit records show it), the SHA-256 of the
token (never the token; the guard looks its scopes up on every request, so a token removed
from the configuration, or stripped of a scope, loses its sessions' rights at once), a
random CSRF token and the end of the session. The cookie is HttpOnly (no script reads it), SameSite=Strict (no other
site's page sends it), limited to /console, and Secure when the console is reached by HTTPS.

A form post is accepted only with a valid session, the session's CSRF token in its `csrf`
field, and no Origin (or Sec-Fetch-Site) saying it came from another site; the sign-in form,
which has no session yet, gets the Origin check. To end one reviewer's sessions, remove or
change their token; rotating the secret ends them all.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

COOKIE = "modstream_console"
PATH = "/console"


@dataclass(frozen=True)
class Session:
    name: str  # the reviewer, as audit records name them
    token: str  # the SHA-256 of the token signed in with, to look its scopes up
    csrf: str
    expires: int  # seconds since the epoch


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Sessions:
    """Issues and reads signed session cookies."""

    def __init__(self, secret: bytes, ttl_s: int) -> None:
        if len(secret) < 32:
            raise ValueError("the console's session secret must be at least 32 bytes")
        self._secret = secret
        self.ttl_s = ttl_s

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def issue(self, name: str, token: str, now: float | None = None) -> tuple[Session, str]:
        """A new session for `name`, signed in with the token whose SHA-256 is `token`, and its
        cookie value."""
        session = Session(name, token, secrets.token_urlsafe(24), int((now or time.time()) + self.ttl_s))
        payload = _b64(json.dumps([session.name, session.token, session.csrf, session.expires]).encode())
        return session, f"{payload}.{self._sign(payload)}"

    def read(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session of a cookie value; None if it is missing, tampered with or expired."""
        payload, _, signature = (cookie or "").partition(".")
        if not payload or not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        try:
            name, token, csrf, expires = json.loads(_unb64(payload))
        except ValueError:
            return None
        if expires <= (now or time.time()):
            return None
        return Session(str(name), str(token), str(csrf), int(expires))


def cross_site(request: Request) -> bool:
    """Whether the browser says the request comes from another site's page."""
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return True
    origin = request.headers.get("origin")
    return origin is not None and urlsplit(origin).netloc != request.headers.get("host")


def csrf_ok(session: Session, sent: str | None) -> bool:
    return sent is not None and hmac.compare_digest(sent.encode(), session.csrf.encode())
