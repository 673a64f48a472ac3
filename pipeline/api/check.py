"""`POST /v1/check`: the synchronous pre-publication check.

A check is an upload event judged at once the way the pipeline judges it: the media's
signals (pipeline.signals.media, within the media limits), the ready hashes it was given,
every bank (BankTable.match_batch), the registry's models (ClassifyStage) and the policy
with the active incidents (DecideStage, whose decision id derives from the event id and
the policy version, as in the pipeline). The same event is produced to `mod.uploads`, so
the asynchronous path, the audit trail and the transparency report see it too; the check
answers once the broker has acknowledged it.

Idempotency: a request names its event by `event_id` (or an `Idempotency-Key` header, from
which the event id derives); a retry with the same id is the same event, and the pipeline's
decision for it has the same id. A process does not produce again an event it already had
acknowledged.

Ready hashes go into the verdict and travel in the UploadEvent's `signals`; enrich adds them to
the media's, so the pipeline's decision on a hash-only check sees the same hashes.

Hashing, matching, classifying and deciding run in a thread pool, fetching by URI in another,
so the event loop only parses, routes and waits.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from pipeline.api.errors import ApiError
from pipeline.api.publish import Publisher
from pipeline.banks.admin import HASH_FORMATS
from pipeline.records import Incoming, Record, StageError, envelope, new_id, signal, stable_id
from pipeline.sdk import DeliveryError, RecordTooLarge
from pipeline.signals.media import MediaError, MediaLimits, media_signals
from pipeline.stages.classify import ClassifyStage
from pipeline.stages.decide import DecideStage
from pipeline.stages.enrich import Fetcher, check_envelope, moderation_record
from pipeline.stages.match import BankLookup
from pipeline.state.accounts import AccountStore, account_context

logger = logging.getLogger(__name__)

# HMA's names of exact hashes (python-threatexchange's VideoMD5Signal, VideoSHA256Signal)
ALIASES = {"video_md5": "md5", "video_sha256": "sha256"}
TEXT_FIELDS = ("event_id", "content_id", "user_id", "platform_id", "media_b64", "media_uri", "media_type", "text")
FIELDS = frozenset({*TEXT_FIELDS, "occurred_at", "hashes"})
ACKED_REMEMBERED = 100_000  # event ids this process knows the broker has


@dataclass
class CheckInput:
    event: Record  # the UploadEvent, as produced
    media: bytes | None  # inline media (also in the event)
    hashes: list[Record]  # ready signals


def parse_hashes(raw: Any) -> list[Record]:
    """Signals from `{"pdq": HEX, ...}` or `[{"signal_type", "value", "quality"?, "frame"?}]`.
    A PDQ hash given without a quality is trusted as good (100)."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        raw = [{"signal_type": k, "value": v} for k, v in raw.items()]
    if not isinstance(raw, list):
        raise ApiError(400, "hashes must be an object {signal_type: hash} or a list of {signal_type, value}")
    out = []
    for n, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("signal_type"), str):
            raise ApiError(400, f"hashes[{n}] must be an object with a signal_type and a value")
        kind = ALIASES.get(item["signal_type"].strip().lower(), item["signal_type"].strip().lower())
        value = item.get("value")
        if kind not in HASH_FORMATS:
            raise ApiError(400, f"hashes[{n}]: unknown signal type {item['signal_type']!r}; known: {known_types()}")
        if not isinstance(value, str) or not HASH_FORMATS[kind].fullmatch(value.strip().lower()):
            raise ApiError(400, f"hashes[{n}]: {value!r} is not a valid {kind} hash")
        quality, frame = item.get("quality"), item.get("frame")
        if quality is not None and (
            not isinstance(quality, int) or isinstance(quality, bool) or not 0 <= quality <= 100
        ):
            raise ApiError(400, f"hashes[{n}]: quality must be an integer from 0 to 100")
        if frame is not None and (not isinstance(frame, int) or isinstance(frame, bool) or frame < 0):
            raise ApiError(400, f"hashes[{n}]: frame must be a non-negative integer")
        perceptual = kind in ("pdq", "video_pdq")
        out.append(
            signal(kind, value.strip().lower(), quality if quality is not None or not perceptual else 100, frame)
        )
    return out


def known_types() -> str:
    return ", ".join([*HASH_FORMATS, *ALIASES])


def parse_check(
    fields: Mapping[str, Any],
    platform_id: str,
    upload: tuple[bytes, str | None] | None = None,
    idempotency_key: str | None = None,
) -> CheckInput:
    """A check from its fields (the JSON body, or the multipart form's text fields with the
    uploaded file as `upload`: bytes and content type). Raises ApiError 400."""
    unknown = sorted(set(fields) - FIELDS)
    if unknown:
        raise ApiError(400, f"unknown fields: {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")
    for name in TEXT_FIELDS:
        if fields.get(name) is not None and not isinstance(fields[name], str):
            raise ApiError(400, f"{name} must be a string")
    occurred = fields.get("occurred_at")
    if isinstance(occurred, str) and occurred.isdigit():
        occurred = int(occurred)
    if occurred is not None and (not isinstance(occurred, int) or isinstance(occurred, bool)):
        raise ApiError(400, "occurred_at must be an integer (ms since the epoch)")
    media, media_type = None, fields.get("media_type")
    if fields.get("media_b64") is not None:
        try:
            media = base64.b64decode(fields["media_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "media_b64 is not valid base64") from None
    if upload is not None:
        if media is not None:
            raise ApiError(400, "give the media once: media_b64 or an uploaded file, not both")
        media, media_type = upload[0], media_type or upload[1]
    if media is not None and fields.get("media_uri"):
        raise ApiError(400, "give the media once: inline or by media_uri, not both")
    hashes = parse_hashes(fields.get("hashes"))
    text = fields.get("text")
    if media is None and not fields.get("media_uri") and not text and not hashes:
        raise ApiError(400, "nothing to check: give media (media_b64 or a file), media_uri, text or hashes")
    pid = fields.get("platform_id") or platform_id
    event_id = fields.get("event_id") or (stable_id("api-check", pid, idempotency_key) if idempotency_key else new_id())
    event = {
        "envelope": envelope(
            pid,
            content_id=fields.get("content_id"),
            user_id=fields.get("user_id"),
            event_id=event_id,
            occurred_at=occurred,
        ),
        "media_b64": media,
        "media_uri": fields.get("media_uri"),
        "media_type": media_type,
        "text": text,
        "signals": hashes or None,
    }
    try:
        check_envelope(event)
    except StageError as exc:
        raise ApiError(400, str(exc)) from None
    return CheckInput(event, media, hashes)


class Checker:
    """Judges checks and publishes their events. Thread-safe: `judge` runs in the pool."""

    def __init__(
        self,
        banks: BankLookup,
        classify: ClassifyStage,
        decide: DecideStage,
        limits: MediaLimits,
        publisher: Publisher,
        cpu: Executor,
        io: Executor,
        fetcher: Fetcher | None = None,
        accounts: AccountStore | None = None,
        publish_timeout_s: float = 5.0,
        threads: int = 2,
        queue_budget_s: float = 0.5,
    ) -> None:
        """`threads`: the size of the `cpu` pool; a check that finds none of them free within
        `queue_budget_s` is refused (503) before anything is produced."""
        self.banks = banks
        self.classify = classify
        self.decide = decide
        self.limits = limits
        self.publisher = publisher
        self.cpu = cpu
        self.io = io
        self.fetcher = fetcher
        self.accounts = accounts
        self.publish_timeout_s = publish_timeout_s
        self.queue_budget_s = queue_budget_s
        self._threads = asyncio.Semaphore(threads)
        self._acked: OrderedDict[str, None] = OrderedDict()  # touched on the event loop only

    async def check(self, item: CheckInput, timings: dict[str, float] | None = None) -> Record:
        """The verdict; raises ApiError 413 (event over the message limit) or 503 (no hashing
        thread free within the queue budget, or the broker did not acknowledge the event: then
        the verdict comes in the error body; retry with the same event_id). `timings` gets the ms
        spent fetching, waiting for a thread, judging and waiting for the broker."""
        loop = asyncio.get_running_loop()
        timings = {} if timings is None else timings
        event_id = item.event["envelope"]["event_id"]
        if item.media is not None and len(item.media) > self.limits.max_bytes:
            raise ApiError(413, f"media of {len(item.media)} bytes exceeds the limit of {self.limits.max_bytes}")
        media: bytes | MediaError | None = item.media
        mark = time.perf_counter()
        if media is None and item.event["media_uri"]:
            media = await loop.run_in_executor(self.io, self._fetch, item.event["media_uri"])
            timings["fetch"], mark = 1000 * (time.perf_counter() - mark), time.perf_counter()
        await self._thread()
        try:
            timings["queue"], mark = 1000 * (time.perf_counter() - mark), time.perf_counter()
            delivery = self._publish(item.event)  # acknowledged while the check is judged
            verdict = await loop.run_in_executor(self.cpu, self.judge, item, media)
            timings["judge"], mark = 1000 * (time.perf_counter() - mark), time.perf_counter()
        finally:
            self._threads.release()
        if delivery is not None:
            try:
                await asyncio.wait_for(delivery, self.publish_timeout_s)
                timings["ack"] = 1000 * (time.perf_counter() - mark)
            except (TimeoutError, DeliveryError) as exc:
                why = "not acknowledged" if isinstance(exc, TimeoutError) else f"refused: {exc}"
                logger.warning("check %s: the upload event was %s", event_id, why)
                raise ApiError(
                    503,
                    f"the upload event was {why} by Kafka; retry with the same event_id",
                    verdict={**verdict, "published": False},
                ) from None
            self._remember(event_id)
        return verdict

    async def _thread(self) -> None:
        """Takes one of the hashing threads, waiting at most the queue budget; else 503."""
        if not self._threads.locked():
            await self._threads.acquire()
            return
        busy = ApiError(
            503, f"no hashing thread free within {self.queue_budget_s:g} s; retry shortly", {"Retry-After": "1"}
        )
        if self.queue_budget_s <= 0:
            raise busy
        try:
            await asyncio.wait_for(self._threads.acquire(), self.queue_budget_s)
        except TimeoutError:
            raise busy from None

    def _publish(self, event: Record) -> asyncio.Future[None] | None:
        """Sends the upload event, unless this process already had it acknowledged."""
        if event["envelope"]["event_id"] in self._acked:
            return None
        try:
            delivery = self.publisher.submit("uploads", event)
        except RecordTooLarge as exc:
            raise ApiError(413, f"{exc}; or raise MODSTREAM_MESSAGE_MAX_BYTES with the broker's limit") from None
        except DeliveryError as exc:
            raise ApiError(503, f"the upload event was refused: {exc}") from None
        delivery.add_done_callback(_retrieve)
        return delivery

    def _remember(self, event_id: str) -> None:
        self._acked[event_id] = None
        if len(self._acked) > ACKED_REMEMBERED:
            self._acked.popitem(last=False)

    def _fetch(self, uri: str) -> bytes | MediaError:
        if self.fetcher is None:
            return MediaError("media_uri given but fetching by reference is not configured")
        try:
            data = self.fetcher.fetch(uri)
        except MediaError as exc:
            return exc
        return data if data else MediaError("media is empty (0 bytes)")

    def judge(self, item: CheckInput, media: bytes | MediaError | None) -> Record:
        """Signals, matches, scores and the decision of one check, as the pipeline's stages
        make them. Blocking: runs in the pool."""
        record = moderation_record("uploads", item.event)
        env = record["envelope"]
        if self.accounts is not None and env.get("user_id"):
            found = self.accounts.get_many([env["user_id"]])
            record["account"] = found.get(env["user_id"]) or account_context(env["user_id"], {})
        signals: list[Record] = []
        if isinstance(media, MediaError):
            record["media_error"] = str(media)
        elif media is not None:
            record["upload"] = {**record["upload"], "media_b64": media}  # fetched media, for image models
            try:
                signals = media_signals(media, self.limits)
            except MediaError as exc:
                signals = list(getattr(exc, "signals", []))
                record["media_error"] = str(exc)
        record["signals"] = signals + item.hashes
        record["matches"] = self.banks.match_batch([record["signals"]])[0]
        record["stages"] = ["api"]
        [classified] = self.classify.process([Incoming("matched", None, record)])
        assert classified.value is not None
        outputs = self.decide.process([Incoming("classified", None, classified.value)])
        decision = next(o.value for o in outputs if o.topic == "decisions" and o.value is not None)
        return verdict(decision, record)


def verdict(decision: Record, record: Record) -> Record:
    frames = sum(1 for s in record["signals"] if s["signal_type"] == "video_pdq")
    return {
        "event_id": decision["envelope"]["event_id"],
        "decision_id": decision["decision_id"],
        "action": decision["action"],
        "rule": decision["rule_id"],
        "explanation": decision["explanation"],
        "category": decision["category"],
        "severity": decision["severity"],
        "incident_id": decision.get("incident_id"),
        "policy_id": decision["policy_id"],
        "policy_version": decision["policy_version"],
        "effects": decision["effects"],
        "thresholds": decision["thresholds"],
        "matches": decision["matches"],
        "scores": decision["scores"],
        "signals": [s for s in record["signals"] if s["signal_type"] != "video_pdq"],
        "video_frames": frames,
        "media_error": record["media_error"],
        "decided_at": decision["decided_at"],
        "published": True,
    }


def _retrieve(future: asyncio.Future[None]) -> None:
    """Marks a delivery's exception as seen when no request awaits it any more."""
    if not future.cancelled():
        future.exception()
