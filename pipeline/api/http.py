"""Request helpers shared by the endpoints: the scope an endpoint needs, JSON and multipart
bodies read into plain values (or a 400/415 with the reason)."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from pipeline.api.auth import Principal, TokenTable
from pipeline.api.errors import ApiError

Handler = Callable[[Request, Principal], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


def scoped(scope: str) -> Callable[[Handler], Endpoint]:
    """An endpoint that needs `scope`: it gets the request's principal (401/403 otherwise)."""

    def wrap(handler: Handler) -> Endpoint:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            tokens: TokenTable = request.app.state.tokens
            principal = tokens.authorize(request.headers.get("authorization"), scope)
            return await handler(request, principal)

        return endpoint

    return wrap


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


def is_json(request: Request) -> bool:
    kind = request.headers.get("content-type", "").lower().split(";")[0].strip()
    return kind == "application/json" or kind.endswith("+json")


async def read_json(request: Request) -> Any:
    if not is_json(request):
        raise ApiError(415, "send Content-Type: application/json")
    body = await request.body()
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc}") from None


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: list[tuple[str, bytes, str | None]] = field(default_factory=list)  # field name, bytes, content type


async def read_form(request: Request, max_files: int = 1) -> Form:
    """A multipart form's text fields and files. A field given twice, or more files than
    `max_files`, is a 400."""
    form = await request.form(max_files=max_files, max_fields=64)
    out = Form()
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                out.files.append((name, await value.read(), value.content_type))
            elif name in out.fields:
                raise ApiError(400, f"form field {name!r} given more than once")
            else:
                out.fields[name] = value
    finally:
        await form.close()
    return out
