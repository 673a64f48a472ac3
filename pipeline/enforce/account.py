"""The account enforcer: strikes and live-access suspension in Redis, which enrich reads.

A decision whose rule has the `strike` effect adds one strike to the account (once per
decision); `suspend_live` also suspends its live access (one strike for a serious
violation is enough). The live policy then ends any stream the account starts.
"""

from __future__ import annotations

from typing import Protocol

from pipeline.records import Record


class Strikes(Protocol):
    def add_strike(self, user_id: str, event_id: str, suspend_live: bool = False) -> int: ...


class AccountEnforcer:
    def __init__(self, accounts: Strikes) -> None:
        self.accounts = accounts

    def __call__(self, decision: Record) -> str:
        user_id = decision["envelope"].get("user_id")
        effects = set(decision.get("effects") or ())
        if not user_id or not effects & {"strike", "suspend_live"}:
            return "no account action"
        suspend = "suspend_live" in effects
        strikes = self.accounts.add_strike(user_id, decision["decision_id"], suspend_live=suspend)
        return f"{user_id}: {strikes} strike(s)" + ("; live access suspended" if suspend else "")
