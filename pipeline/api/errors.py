"""Errors as JSON, and the request size limit.

Every error the API answers is a JSON object with a `reason`; on the HMA-compatible paths
(`/m`, `/h`, `/c`) it also carries HMA's `message` key with the same text, so HMA clients
show it. The size limit refuses a body larger than the setting: at once when Content-Length
says so, else as soon as the bytes read pass it (chunked uploads).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

HMA_PREFIXES = ("/m/", "/h/", "/c/")
RETRY_AFTER_S = 5  # what a 503 for a store that does not answer asks the client to wait


class ApiError(Exception):
    """An answer other than 2xx: the status and the reason, for the client."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers
        self.extra = extra


class BodyTooLarge(ApiError):
    def __init__(self, limit: int, size: int | None = None) -> None:
        said = f"of {size} bytes " if size is not None else ""
        super().__init__(
            413, f"request body {said}exceeds the limit of {limit} bytes (MODSTREAM_API_MAX_REQUEST_BYTES)"
        )


def error_body(path: str, reason: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"reason": reason, **extra}
    if path.startswith(HMA_PREFIXES):
        body["message"] = reason  # HMA's ErrorResponse
    return body


def error_response(request: Request, status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(request.url.path, reason), status, headers=headers)


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(error_body(request.url.path, exc.reason, **exc.extra), exc.status, headers=exc.headers)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    reasons = {404: "no such endpoint", 405: f"method {request.method} not allowed here"}
    reason = reasons.get(exc.status_code, str(exc.detail))
    return error_response(request, exc.status_code, reason, headers=dict(exc.headers or {}))


async def on_unavailable(request: Request, exc: Exception) -> Response:
    """A store the endpoint needs (Redis) does not answer: not the client's fault, and worth a retry."""
    logger.error("%s %s: a store does not answer: %s", request.method, request.url.path, exc)
    reason = f"a store this needs does not answer ({type(exc).__name__}); try again shortly"
    return error_response(request, 503, reason, headers={"Retry-After": str(RETRY_AFTER_S)})


async def on_unexpected(request: Request, exc: Exception) -> Response:
    logger.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(request, 500, f"internal error ({type(exc).__name__}); see the server log")


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes raises BodyTooLarge (413) from the
    endpoint's read, or is refused before it is read when Content-Length announces it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            path = scope.get("path", "")
            reason = BodyTooLarge(self.limit, int(declared)).reason
            await JSONResponse(error_body(path, reason), 413, headers={"Connection": "close"})(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, limited, send)
