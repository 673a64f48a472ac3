"""The review console of `modstream serve`, under /console: server-rendered pages for
trust-and-safety reviewers, with a little vanilla JavaScript and nothing loaded from elsewhere.

- Sign-in with an API token holding the `review` scope; a signed, HttpOnly, SameSite=Strict
  session cookie afterwards; every form post checks the session's CSRF token (session.py).
- The review queue, most urgent first (the one `modstream review list` shows), the time left
  to each deadline; an item page with the decision's evidence, the reports and the media,
  blurred and grey until the reviewer reveals it; verdicts by button or key, produced by the
  CLI's own code (pipeline.policy.review.decide), or an escalation to urgent (pages.py).
- Banks (search by hash, near PDQ hashes too, disable an entry), incidents (declare, accept a
  proposed one, add seed media, close) and the transparency report with inline SVG charts
  (ops.py).
- Every write is audited: an AuditRecord on the `audit` topic and a JSON log line (audit.py).

Settings (`ConsoleSettings.from_env`): MODSTREAM_CONSOLE_SECRET, at least 32 characters,
signs the session cookies; every serve process behind one load balancer needs the same one.
Unset, a random secret is made at start, so sessions end when the process does.
MODSTREAM_CONSOLE_SESSION_S (default 28800, 8 hours) is how long a session lasts.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from pipeline.api.auth import TokenTable
from pipeline.api.console import ops, pages
from pipeline.api.console.backend import Backend
from pipeline.api.console.guard import Console
from pipeline.api.console.session import Sessions

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"


@dataclass(frozen=True)
class ConsoleSettings:
    secret: bytes
    session_s: int = 8 * 3600

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ConsoleSettings:
        env = dict(os.environ if env is None else env)
        secret = env.get("MODSTREAM_CONSOLE_SECRET", "")
        if secret and len(secret) < 32:
            raise ValueError("MODSTREAM_CONSOLE_SECRET must be at least 32 characters")
        if not secret:
            logger.warning("MODSTREAM_CONSOLE_SECRET is not set: console sessions end when this process does")
        session_s = int(env.get("MODSTREAM_CONSOLE_SESSION_S", "28800"))
        if session_s < 60:
            raise ValueError("MODSTREAM_CONSOLE_SESSION_S must be at least 60")
        return cls(secret.encode() if secret else secrets.token_bytes(32), session_s)


def build(backend: Backend, tokens: TokenTable, settings: ConsoleSettings) -> Console:
    return Console(backend, Sessions(settings.secret, settings.session_s), tokens)


def routes() -> list[BaseRoute]:
    """Mounted at /console by pipeline.api.app.create_app."""
    return [
        Route("/", pages.home, methods=["GET"]),
        Route("/login", pages.login_form, methods=["GET"]),
        Route("/login", pages.login, methods=["POST"]),
        Route("/logout", pages.logout, methods=["POST"]),
        Route("/queue", pages.queue, methods=["GET"]),
        Route("/item/{task_id}", pages.item, methods=["GET"]),
        Route("/item/{task_id}/verdict", pages.verdict, methods=["POST"]),
        Route("/media/{digest}", pages.media, methods=["GET"]),
        Route("/banks", ops.banks, methods=["GET"]),
        Route("/banks/disable", ops.disable, methods=["POST"]),
        Route("/incidents", ops.incidents, methods=["GET"]),
        Route("/incidents/declare", ops.declare, methods=["POST"]),
        Route("/incidents/{incident_id}/close", ops.close, methods=["POST"]),
        Route("/incidents/{incident_id}/accept", ops.accept, methods=["POST"]),
        Route("/incidents/{incident_id}/media", ops.add_media, methods=["POST"]),
        Route("/report", ops.report, methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="console-static"),
    ]


__all__ = ["Console", "ConsoleSettings", "build", "routes"]
