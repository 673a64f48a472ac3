"""The Starlette application of `modstream serve`, and its wiring from an App.

Endpoints (the scope each needs in brackets):
- `POST /v1/check` [check]: the synchronous pre-publication check (pipeline.api.check).
- `GET /m/lookup`, `POST /m/lookup`, `GET|POST /m/raw_lookup`, `GET|POST /h/hash` [check],
  `GET /c/banks`, `GET /c/bank/NAME` [banks:read], `POST /c/bank/NAME/content`,
  `POST /c/bank/NAME/signal` [banks:write]: the HMA-compatible API (pipeline.api.hma).
- `GET /openapi.json`, `GET /healthz`: no token needed.
- `/console/...`: the review console (pipeline.api.console), for reviewers who signed in with a
  token holding the `review` scope.
Every write (bank entries through the API; verdicts, escalations, bank disables, incidents
through the console) is audited on the `audit` topic, besides the `pipeline.api.audit` log line.

A process follows the bank and incident topics (App.banks(), App.incidents()) and answers
from memory; everything it is asked to write goes to Kafka. Hashing, matching and
classifying run in a thread pool of MODSTREAM_API_HASH_THREADS, fetches in another, so
the event loop stays free. Overload is refused fast rather than queued: a check that finds no
hashing thread free within MODSTREAM_API_QUEUE_BUDGET_MS, or that arrives while
MODSTREAM_API_MAX_IN_FLIGHT checks are in progress (default: 32 per hashing thread), gets 503
with Retry-After, before anything is produced.

"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from pipeline.api import console, hma
from pipeline.api.auth import Principal
from pipeline.api.check import Checker, parse_check
from pipeline.api.errors import ApiError, BodyLimit, on_api_error, on_http_error, on_unavailable, on_unexpected
from pipeline.api.http import is_json, is_multipart, read_form, read_json, scoped
from pipeline.api.openapi import schema_generator
from pipeline.api.publish import BankWriter, Publisher
from pipeline.api.settings import ApiSettings
from pipeline.banks.table import BankTable
from pipeline.records import Record
from pipeline.runtime.runner import UNAVAILABLE
from pipeline.signals.media import MediaLimits
from pipeline.stages.enrich import Fetcher

logger = logging.getLogger(__name__)


@dataclass
class Services:
    """What the endpoints use. Built from an App by `from_app`, or by hand in tests."""

    api: ApiSettings
    platform_id: str
    banks: BankTable
    checker: Checker
    write_banks: BankWriter
    limits: MediaLimits
    cpu: ThreadPoolExecutor
    io: ThreadPoolExecutor
    fetcher: Fetcher | None = None
    incidents: Callable[[], list[Record]] = list
    close: Callable[[], None] = lambda: None
    bank_names_cache: tuple[int, list[str]] | None = None
    in_flight: int = field(default=0)
    console: console.Console | None = None
    unavailable: tuple[type[BaseException], ...] = UNAVAILABLE  # answered with 503 (the runners redo)


def build_services(
    api: ApiSettings,
    platform_id: str,
    banks: BankTable,
    publisher: Publisher,
    write_banks: BankWriter,
    limits: MediaLimits,
    classify: Any,
    decide: Any,
    fetcher: Fetcher | None = None,
    accounts: Any = None,
    incidents: Callable[[], list[Record]] = list,
) -> Services:
    cpu = ThreadPoolExecutor(api.threads, thread_name_prefix="api-hash")
    io = ThreadPoolExecutor(api.fetch_threads, thread_name_prefix="api-fetch")
    checker = Checker(
        banks,
        classify,
        decide,
        limits,
        publisher,
        cpu,
        io,
        fetcher,
        accounts,
        api.publish_timeout_s,
        api.threads,
        api.queue_budget_ms / 1000,
    )

    def close() -> None:
        publisher.close()
        cpu.shutdown(wait=False, cancel_futures=True)
        io.shutdown(wait=False, cancel_futures=True)

    return Services(api, platform_id, banks, checker, write_banks, limits, cpu, io, fetcher, incidents, close)


def from_app(app: Any, api: ApiSettings, console_settings: console.ConsoleSettings | None = None) -> Services:
    """Services from a pipeline.app.App: its banks and incidents followed live, its policy,
    models, media limits and fetcher, a producer for the upload events, an auditor, and the
    review console (when `console_settings` are given)."""
    from pipeline.api.console.audit import TopicAuditor, audited_bank_writer
    from pipeline.api.console.backend import KafkaBackend
    from pipeline.api.publish import KafkaPublisher, bank_writer
    from pipeline.app import REDIS_UNAVAILABLE
    from pipeline.stages.classify import ClassifyStage
    from pipeline.stages.decide import DecideStage
    from pipeline.state.accounts import RedisAccountStore
    from pipeline.state.reports import RedisReportStore

    s = app.settings
    incidents = app.incidents().active_incidents
    auditor = TopicAuditor(s, app.codec)
    services = build_services(
        api,
        s.platform_id,
        app.banks(),
        # a check waits for its event's acknowledgement: batch for 1 ms, not the default 5 (the user's setting wins)
        KafkaPublisher(s.with_(kafka_extra={"linger.ms": "1", **s.kafka_extra}), app.codec),
        audited_bank_writer(bank_writer(s), auditor),
        app.media_limits(),
        ClassifyStage(app.models(), s.classify_skip_matched, s.classify_skip_distance),
        DecideStage(app.policy(), None, removed_bank=s.removed_bank, incidents=incidents),
        fetcher=app.fetcher(),
        accounts=RedisAccountStore(app.redis) if s.redis_url else None,
        incidents=incidents,
    )
    services.unavailable = REDIS_UNAVAILABLE
    if console_settings is not None:
        media = app.media_store() if s.redis_url or s.media_store != "redis" else None
        reports = RedisReportStore(app.redis) if s.redis_url else None
        backend = KafkaBackend(s, services.banks, auditor, reports, media, app.codec, app.review_queue())
        services.console = console.build(backend, api.tokens, console_settings)
    return services


# ---- endpoints ------------------------------------------------------------------------------
@scoped("check")
async def check(request: Request, principal: Principal) -> Response:
    """Check content before it is published: hash, match every bank, classify, apply the policy.
    ---
    tags: [Check]
    parameters:
      - name: Idempotency-Key
        in: header
        schema: {type: string}
        description: without an event_id, the event id derives from it, so a retry is the same event
    requestBody:
      required: true
      content:
        application/json:
          schema: {$ref: '#/components/schemas/CheckRequest'}
        multipart/form-data:
          schema:
            type: object
            description: the fields of CheckRequest as form fields (hashes as JSON), the media as a file named media
            properties:
              media: {type: string, format: binary}
    responses:
      200:
        description: the verdict
        content: {application/json: {schema: {$ref: '#/components/schemas/Verdict'}}}
      400: {$ref: '#/components/responses/Error'}
      401: {$ref: '#/components/responses/Error'}
      403: {$ref: '#/components/responses/Error'}
      413: {$ref: '#/components/responses/Error'}
      503:
        description: Kafka did not acknowledge the upload event (the verdict is in `verdict`); retry, same event_id
        content: {application/json: {schema: {$ref: '#/components/schemas/Error'}}}
    """
    services: Services = request.app.state.services
    if services.in_flight >= services.api.in_flight_limit:
        raise ApiError(503, f"{services.in_flight} checks in progress already; retry shortly", {"Retry-After": "1"})
    services.in_flight += 1
    try:
        upload = None
        if is_multipart(request):
            form = await read_form(request, max_files=1)
            fields: Any = form.fields
            if form.files:
                name, data, content_type = form.files[0]
                if name != "media":
                    raise ApiError(400, f"the file field must be named media, not {name!r}")
                upload = (data, content_type)
            if "hashes" in fields:
                fields["hashes"] = _json_field(fields["hashes"], "hashes")
        elif is_json(request):
            fields = await read_json(request)
            if not isinstance(fields, dict):
                raise ApiError(400, "the body must be a JSON object")
        else:
            raise ApiError(415, "send application/json or multipart/form-data")
        item = parse_check(fields, services.platform_id, upload, request.headers.get("idempotency-key"))
        timings: dict[str, float] = {}
        verdict = await services.checker.check(item, timings)
    finally:
        services.in_flight -= 1
    logger.debug("check %s by %s: %s (%s)", verdict["event_id"], principal.name, verdict["action"], verdict["rule"])
    timing = ", ".join(f"{name};dur={ms:.1f}" for name, ms in timings.items())
    return JSONResponse(verdict, headers={"Server-Timing": timing})


def _json_field(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the {name} field is not valid JSON: {exc}") from None


async def health(request: Request) -> Response:
    """Liveness and what this process holds.
    ---
    tags: [Operations]
    responses:
      200: {description: "{status, banks: entries held, incidents: active incidents}"}
    """
    services: Services = request.app.state.services
    return JSONResponse(
        {"status": "ok", "bank_entries": len(services.banks), "active_incidents": len(services.incidents())}
    )


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.schemas.get_schema(request.app.routes))


def routes() -> list[BaseRoute]:
    return [
        Route("/v1/check", check, methods=["POST"]),
        Route("/m/lookup", hma.lookup_get, methods=["GET"]),
        Route("/m/lookup", hma.lookup_post, methods=["POST"]),
        Route("/m/raw_lookup", hma.raw_lookup, methods=["GET", "POST"]),
        Route("/h/hash", hma.hash_endpoint, methods=["GET", "POST"]),
        Route("/c/banks", hma.banks_index, methods=["GET"]),
        Route("/c/bank/{name}", hma.bank_show, methods=["GET"]),
        Route("/c/bank/{name}/content", hma.bank_add_content, methods=["POST"]),
        Route("/c/bank/{name}/signal", hma.bank_add_signal, methods=["POST"]),
        Route("/healthz", health, methods=["GET"], include_in_schema=False),
        Route("/openapi.json", openapi, methods=["GET"], include_in_schema=False),
    ]


def create_app(services: Services) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        services.close()

    app = Starlette(
        routes=routes() + ([Mount("/console", routes=console.routes())] if services.console else []),
        middleware=[Middleware(BodyLimit, limit=services.api.max_request_bytes)],
        exception_handlers={
            ApiError: on_api_error,
            HTTPException: on_http_error,
            **dict.fromkeys(services.unavailable, on_unavailable),
            Exception: on_unexpected,
        },
        lifespan=lifespan,
    )
    app.state.services = services
    app.state.tokens = services.api.tokens
    app.state.schemas = schema_generator()
    app.state.console = services.console
    return app


def warm_up(services: Services) -> None:
    """Compiles and loads what the first check would otherwise wait for (the PDQ search kernel,
    the image decoders and hashers, the models) by judging a sample, without publishing it."""
    import numpy as np

    from pipeline.banks.pdq_index import MultiIndex
    from pipeline.dev.samples import encode, photo

    bits = np.zeros((1, 32), dtype=np.uint8)
    MultiIndex(bits).search(bits, 31)  # whatever the banks hold yet
    sample = parse_check({"text": "warm-up", "hashes": {"pdq": "0" * 64}}, services.platform_id)
    services.checker.judge(sample, encode(photo(0, (320, 240))))


def serve(app: Any, api: ApiSettings, host: str, port: int, access_log: bool = True) -> None:
    """Runs the API on uvicorn until interrupted. `app` is a pipeline.app.App."""
    import uvicorn

    if not len(api.tokens) and api.tokens.anonymous is None:
        logger.warning(
            "no API tokens configured (MODSTREAM_API_TOKENS, MODSTREAM_API_TOKENS_FILE): every request gets 401"
        )
    started = time.monotonic()
    services = from_app(app, api, console.ConsoleSettings.from_env())
    warm_up(services)
    logger.info(
        "serving on %s:%d: %d bank entries, %d active incidents, loaded in %.1f s",
        host,
        port,
        len(services.banks),
        len(services.incidents()),
        time.monotonic() - started,
    )
    config = uvicorn.Config(
        create_app(services),
        host=host,
        port=port,
        log_config=None,  # the CLI configured logging
        access_log=access_log,
        timeout_graceful_shutdown=10,
    )
    uvicorn.Server(config).run()  # on uvloop and httptools where installed
