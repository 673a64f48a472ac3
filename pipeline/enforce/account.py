"""The account enforcer: strikes and live-access suspension in Redis, which enrich reads.

A decision whose rule has the `strike` effect adds one strike to the account, once per
offence: the offending item (its content id, or for a live stream its stream id), however
many decisions name it (redeliveries, a later policy version, a reviewer confirming an
automatic removal, every violating frame of a stream). `suspend_live` also suspends its
live access (one strike for a serious violation is enough). The live policy then ends any stream the account starts. The
suspension lasts `live_suspension_s` from the decision (`decided_at`), or, with 0, until
the platform lifts it (an AccountEvent `live_lifted`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from pipeline.records import Record, subject_key


class Strikes(Protocol):
    def add_strike(self, user_id: str, event_id: str, suspend_live: bool = False, until: int | None = None) -> int: ...


class AccountEnforcer:
    def __init__(self, accounts: Strikes, live_suspension_s: int = 0) -> None:
        if live_suspension_s < 0:
            raise ValueError(f"live_suspension_s must be 0 (until lifted) or more, not {live_suspension_s}")
        self.accounts = accounts
        self.live_suspension_ms = live_suspension_s * 1000

    def __call__(self, decision: Record) -> str:
        user_id = decision["envelope"].get("user_id")
        effects = set(decision.get("effects") or ())
        if not user_id or not effects & {"strike", "suspend_live"}:
            return "no account action"
        suspend = "suspend_live" in effects
        offence = "offence:" + subject_key(decision["envelope"])
        if suspend and self.live_suspension_ms:
            until = decision["decided_at"] + self.live_suspension_ms
            strikes = self.accounts.add_strike(user_id, offence, suspend_live=True, until=until)
            ends = datetime.fromtimestamp(until / 1000, UTC).isoformat(timespec="seconds")
            return f"{user_id}: {strikes} strike(s); live access suspended until {ends}"
        strikes = self.accounts.add_strike(user_id, offence, suspend_live=suspend)
        return f"{user_id}: {strikes} strike(s)" + ("; live access suspended" if suspend else "")
