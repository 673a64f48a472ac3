"""enrich: turns upload, report and live events into ModerationRecords with account
context and the signals of their media (exact hashes, PDQ, per-frame video PDQ).

Media comes inline or by reference (fetched in parallel for the batch). Media that
cannot be fetched or hashed does not fail the record: it carries `media_error`,
the explicit "unhashable" signal, with the reason, and its exact hashes if any.

With a content store, an upload's signals and text are remembered, and a report on it
gets them back (as `signals` and a text-only `upload`), so match and classify judge
the reported item itself: an item the banks or models condemn is removed at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from pipeline.records import Incoming, Output, Record, media_of, subject_key
from pipeline.signals.media import MediaError, MediaLimits, media_signals
from pipeline.state.accounts import AccountStore, account_context

KINDS = {"uploads": "upload", "reports": "report", "live": "live"}


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
        "matches": [],
        "scores": [],
        "stages": [],
    }


class EnrichStage:
    name = "enrich"
    inputs = ("uploads", "reports", "live")
    outputs = ("enriched",)

    def __init__(
        self,
        accounts: AccountStore,
        fetcher: Fetcher | None = None,
        limits: MediaLimits | None = None,
        content: ContentStore | None = None,
        fetch_workers: int = 8,
    ) -> None:
        self.accounts = accounts
        self.fetcher = fetcher
        self.limits = limits or MediaLimits()
        self.content = content
        self._pool = ThreadPoolExecutor(fetch_workers, thread_name_prefix="fetch")

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        users = {r.value["envelope"]["user_id"] for r in batch if r.value["envelope"].get("user_id")}
        accounts = self.accounts.get_many(users)
        records = [moderation_record(r.topic, r.value) for r in batch]
        media = list(self._pool.map(self._media, records))
        for record, data in zip(records, media, strict=True):
            user_id = record["envelope"].get("user_id")
            if user_id:
                record["account"] = accounts.get(user_id) or account_context(user_id, {})
            if isinstance(data, MediaError):
                record["media_error"] = str(data)
            elif data:
                try:
                    record["signals"] = media_signals(data, self.limits)
                except MediaError as exc:
                    record["signals"] = getattr(exc, "signals", [])
                    record["media_error"] = str(exc)
            record["stages"] = ["enrich"]
        if self.content is not None:
            self._content(self.content, records)
        return [Output("enriched", subject_key(r["envelope"]), r) for r in records]

    def _media(self, record: Record) -> bytes | MediaError | None:
        inline = media_of(record)
        if inline:
            return inline
        uri = (record["upload"] or {}).get("media_uri")
        if not uri:
            return None
        if self.fetcher is None:
            return MediaError("media_uri given but fetching by reference is not configured")
        try:
            return self.fetcher.fetch(uri)
        except MediaError as exc:
            return exc

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
            }
