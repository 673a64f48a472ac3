"""enrich: turns upload, report and live events into ModerationRecords with account
context and the signals of their media (exact hashes, PDQ, per-frame video PDQ).

enrich is the first stage, so it also refuses events whose envelope is absurd (an empty
event id, a time before 1970, more than a day ahead or past the year 9999, ids of more
than 512 characters): each such event is dead-lettered alone, with the reason, and the
rest of its batch goes on.

Media comes inline or by reference (fetched in parallel for the batch, within a batch
budget: a fetch still running when it runs out gives its record a media_error and the
batch goes on without it). Media that cannot be fetched or hashed does not fail the
record: it carries `media_error`, the explicit "unhashable" signal, with the reason, and
its exact hashes if any. Present but empty media is such an error, not "no media".

With a media store, the media bytes are kept there once, by content, and the record
carries only their reference (`media_ref`); the inline bytes are removed from the record
it emits, so records between stages stay small whatever the size of the media.

With a content store, an upload's signals and text are remembered, and a report on it
gets them back (as `signals` and a text-only `upload`), so match and classify judge
the reported item itself: an item the banks or models condemn is removed at once.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any, Protocol

from pipeline.records import (
    HASH_FORMATS,
    Incoming,
    Output,
    Record,
    StageError,
    dead_letter,
    media_of,
    now_ms,
    subject_key,
)
from pipeline.signals.media import MediaError, MediaLimits, media_signals
from pipeline.state.accounts import AccountStore, account_context
from pipeline.state.media import MediaStore, without_inline_media

logger = logging.getLogger(__name__)

KINDS = {"uploads": "upload", "reports": "report", "live": "live"}
MAX_ID_CHARS = 512
MAX_FUTURE_MS = 24 * 3600 * 1000  # clocks drift, but not by a day
MAX_OCCURRED_AT = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
ID_FIELDS = ("event_id", "platform_id", "content_id", "stream_id", "user_id")
EMPTY = "media is empty (0 bytes)"


class Fetcher(Protocol):
    def fetch(self, uri: str) -> bytes: ...


class ContentStore(Protocol):
    def remember_content(self, records: list[Record]) -> None: ...
    def recall_content(self, content_ids: list[str]) -> list[dict[str, Any] | None]: ...


def moderation_record(topic: str, event: Record) -> Record:
    kind = KINDS[topic]
    return {
        "envelope": event["envelope"],
        "kind": kind,
        "upload": event if kind == "upload" else None,
        "report": event if kind == "report" else None,
        "live": event if kind == "live" else None,
        "account": None,
        "signals": [],
        "media_error": None,
        "media_ref": None,
        "matches": [],
        "scores": [],
        "stages": [],
    }


def given_signals(event: Record) -> list[Record]:
    """The ready hashes an upload event brings; raises StageError on one of an unknown type
    or not in its type's form (lower-case hex of the right length)."""
    given = event.get("signals") or []  # only an UploadEvent has the field
    for n, s in enumerate(given):
        form = HASH_FORMATS.get(s["signal_type"])
        if form is None:
            raise StageError(
                f"signals[{n}]: unknown signal type {s['signal_type']!r}; known: {', '.join(HASH_FORMATS)}"
            )
        if not form.fullmatch(s["value"]):
            raise StageError(f"signals[{n}]: {s['value'][:80]!r} is not a {s['signal_type']} hash in lower-case hex")
    perceptual = ("pdq", "video_pdq")  # without a quality, trusted as good, as POST /v1/check does
    return [{**s, "quality": 100} if s["signal_type"] in perceptual and s["quality"] is None else s for s in given]


def check_envelope(event: Record, now: int | None = None) -> None:
    """Raises StageError if the event's envelope (or a report's reporter id) is absurd."""
    env = event["envelope"]
    if not env["event_id"].strip():
        raise StageError("envelope.event_id is empty")
    for name in ID_FIELDS:
        value = env.get(name)
        if value is not None and len(value) > MAX_ID_CHARS:
            raise StageError(f"envelope.{name} is {len(value)} characters long; the limit is {MAX_ID_CHARS}")
    reporter = event.get("reporter_id")
    if reporter is not None and len(reporter) > MAX_ID_CHARS:
        raise StageError(f"reporter_id is {len(reporter)} characters long; the limit is {MAX_ID_CHARS}")
    occurred = env["occurred_at"]
    if occurred < 0:
        raise StageError(f"envelope.occurred_at {occurred} is negative (before 1970)")
    if occurred > MAX_OCCURRED_AT:
        raise StageError(f"envelope.occurred_at {occurred} is beyond the year 9999")
    ahead = occurred - (now_ms() if now is None else now)
    if ahead > MAX_FUTURE_MS:
        raise StageError(f"envelope.occurred_at {occurred} is {ahead // 1000} s in the future (more than a day)")


class EnrichStage:
    name = "enrich"
    inputs = ("uploads", "reports")  # live events take the live path (pipeline.stages.live)
    outputs = ("enriched",)

    def __init__(
        self,
        accounts: AccountStore,
        fetcher: Fetcher | None = None,
        limits: MediaLimits | None = None,
        content: ContentStore | None = None,
        fetch_workers: int = 32,
        media: MediaStore | None = None,
        batch_budget_s: float = 10.0,
        topic_prefix: str = "mod.",
    ) -> None:
        """`media`: where media bytes are kept between the stages (None: not kept, and the
        records carry none). `fetch_workers` bounds the fetches in flight; it is larger than
        a batch needs so that fetches still running after a batch's budget (each ends at its
        own deadline) do not hold up the next batch."""
        self.accounts = accounts
        self.fetcher = fetcher
        self.limits = limits or MediaLimits()
        self.content = content
        self.media = media
        self.batch_budget_s = batch_budget_s
        self.topic_prefix = topic_prefix
        self._pool = ThreadPoolExecutor(fetch_workers, thread_name_prefix="fetch")

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        valid, given, refused = [], [], []
        now = now_ms()
        for incoming in batch:
            try:
                check_envelope(incoming.value, now)
                given.append(given_signals(incoming.value))
            except StageError as exc:
                logger.warning("enrich refuses %s[%d]@%d: %s", incoming.topic, incoming.partition, incoming.offset, exc)
                refused.append(dead_letter(incoming, self.name, "process", f"StageError: {exc}", self.topic_prefix))
            else:
                valid.append(incoming)
        users = {r.value["envelope"]["user_id"] for r in valid if r.value["envelope"].get("user_id")}
        accounts = self.accounts.get_many(users)
        records = [moderation_record(r.topic, r.value) for r in valid]
        media = self._media(records)
        for i, (record, data) in enumerate(zip(records, media, strict=True)):
            user_id = record["envelope"].get("user_id")
            if user_id:
                record["account"] = accounts.get(user_id) or account_context(user_id, {})
            if isinstance(data, MediaError):
                record["media_error"] = str(data)
            elif data is not None:
                try:
                    record["signals"] = media_signals(data, self.limits)
                except MediaError as exc:
                    record["signals"] = getattr(exc, "signals", [])
                    record["media_error"] = str(exc)
                if self.media is not None and 0 < len(data) <= self.limits.max_bytes:
                    record["media_ref"] = self.media.put(data)
            record["signals"] += given[i]
            record["stages"] = ["enrich"]
            records[i] = without_inline_media(record)
        if self.content is not None:
            self._content(self.content, records)
        return [Output("enriched", subject_key(r["envelope"]), r) for r in records] + refused

    def _media(self, records: list[Record]) -> list[bytes | MediaError | None]:
        """Each record's media: inline, fetched by reference, or why not. Fetches run in
        parallel; those not done within the batch budget give a MediaError."""
        media: list[bytes | MediaError | None] = []
        fetches: dict[Future[bytes], int] = {}
        for i, record in enumerate(records):
            inline = media_of(record)
            uri = (record["upload"] or {}).get("media_uri")
            if inline is not None:
                media.append(inline if inline else MediaError(EMPTY))
            elif not uri:
                media.append(None)
            elif self.fetcher is None:
                media.append(MediaError("media_uri given but fetching by reference is not configured"))
            else:
                media.append(None)
                fetches[self._pool.submit(self.fetcher.fetch, uri)] = i
        if not fetches:
            return media
        done, late = wait(fetches, timeout=self.batch_budget_s)
        for future in done:
            try:
                data = future.result()
            except MediaError as exc:
                media[fetches[future]] = exc
            else:
                media[fetches[future]] = data if data else MediaError(EMPTY)
        for future in late:
            future.cancel()  # not started yet: never will; running: ends at its own deadline
            media[fetches[future]] = MediaError(
                f"fetch did not finish within the batch budget of {self.batch_budget_s:g} s"
            )
        return media

    @staticmethod
    def _content(store: ContentStore, records: list[Record]) -> None:
        store.remember_content([r for r in records if r["kind"] == "upload" and r["envelope"]["content_id"]])
        reports = [r for r in records if r["kind"] == "report"]
        recalled = store.recall_content([r["envelope"]["content_id"] for r in reports])
        for record, stored in zip(reports, recalled, strict=True):
            if stored is None:
                continue
            if not record["envelope"].get("user_id") and stored.get("user_id"):  # the owner, from the upload
                record["envelope"] = {**record["envelope"], "user_id": stored["user_id"]}
            record["signals"] = stored["signals"]
            record["upload"] = {
                "envelope": record["envelope"],
                "media_b64": None,
                "media_uri": None,
                "media_type": None,
                "text": stored["text"],
                "signals": stored.get("given") or None,
            }
