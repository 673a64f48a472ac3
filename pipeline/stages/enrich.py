"""enrich: turns upload, report and live events into ModerationRecords with account
context and the exact hashes of their media."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.records import Incoming, Output, Record, media_of, subject_key
from pipeline.signals.exact import exact_signals
from pipeline.state.accounts import AccountStore, account_context

KINDS = {"uploads": "upload", "reports": "report", "live": "live"}


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

    def __init__(self, accounts: AccountStore) -> None:
        self.accounts = accounts

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        users = {r.value["envelope"]["user_id"] for r in batch if r.value["envelope"].get("user_id")}
        accounts = self.accounts.get_many(users)
        out = []
        for incoming in batch:
            record = moderation_record(incoming.topic, incoming.value)
            user_id = record["envelope"].get("user_id")
            if user_id:
                record["account"] = accounts.get(user_id) or account_context(user_id, {})
            media = media_of(record)
            if media:
                record["signals"] = exact_signals(media)
            elif record["upload"] and record["upload"].get("media_uri"):
                record["media_error"] = "media_uri given but fetching by reference is not enabled"
            record["stages"] = ["enrich"]
            out.append(Output("enriched", subject_key(record["envelope"]), record))
        return out
