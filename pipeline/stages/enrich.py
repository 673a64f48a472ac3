"""enrich: turns upload, report and live events into ModerationRecords with account
context and the signals of their media (exact hashes, PDQ, per-frame video PDQ).

Media comes inline or by reference (fetched in parallel for the batch). Media that
cannot be fetched or hashed does not fail the record: it carries `media_error`,
the explicit "unhashable" signal, with the reason, and its exact hashes if any.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from pipeline.records import Incoming, Output, Record, media_of, subject_key
from pipeline.signals.media import MediaError, MediaLimits, media_signals
from pipeline.state.accounts import AccountStore, account_context

KINDS = {"uploads": "upload", "reports": "report", "live": "live"}


class Fetcher(Protocol):
    def fetch(self, uri: str) -> bytes: ...


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

    def __init__(
        self,
        accounts: AccountStore,
        fetcher: Fetcher | None = None,
        limits: MediaLimits | None = None,
        fetch_workers: int = 8,
    ) -> None:
        self.accounts = accounts
        self.fetcher = fetcher
        self.limits = limits or MediaLimits()
        self._pool = ThreadPoolExecutor(fetch_workers, thread_name_prefix="fetch")

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        users = {r.value["envelope"]["user_id"] for r in batch if r.value["envelope"].get("user_id")}
        accounts = self.accounts.get_many(users)
        records = [moderation_record(r.topic, r.value) for r in batch]
        media = list(self._pool.map(self._media, records))
        out = []
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
            out.append(Output("enriched", subject_key(record["envelope"]), record))
        return out

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
