"""accounts: applies the platforms' AccountEvents to the shared account state.

A platform tells modstream that an account's owner is identified (`identity_verified`,
`identity_unverified`), or suspends or lifts its live access (`live_suspended`, with an
optional `until`, and `live_lifted`), on topic `accounts` keyed by user_id. This stage
writes each change to the account store, which enrich and the live stage read. It outputs
nothing but dead letters (an event without `envelope.user_id` or `envelope.event_id`).

Each event applies once, keyed by its event id (the store claims the id and makes the
change in one atomic step), so a redelivered batch changes nothing. The events of one
account share a partition and are applied in their order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from pipeline.records import Incoming, Output, dead_letter
from pipeline.state.accounts import AccountChange, Applied

logger = logging.getLogger(__name__)


class AccountUpdates(Protocol):
    def apply(self, changes: Sequence[AccountChange]) -> list[Applied]:
        """Applies the changes in order, each once per event id."""
        ...


class AccountsStage:
    name = "accounts"
    inputs = ("accounts",)
    outputs = ("dlq",)

    def __init__(self, accounts: AccountUpdates, topic_prefix: str = "mod.") -> None:
        self.accounts = accounts
        self.topic_prefix = topic_prefix

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        out: list[Output] = []
        changes: list[AccountChange] = []
        for incoming in batch:
            event = incoming.value
            env = event["envelope"]
            missing = [f"envelope.{f}" for f in ("user_id", "event_id") if not env.get(f)]
            if missing:
                error = f"StageError: an AccountEvent needs {' and '.join(missing)}"
                out.append(dead_letter(incoming, self.name, "process", error, self.topic_prefix))
                continue
            changes.append(
                AccountChange(
                    user_id=env["user_id"],
                    event_id=env["event_id"],
                    kind=event["kind"],
                    at=env["occurred_at"],
                    actor=event.get("actor") or "",
                    reason=event.get("reason") or "",
                    until=event.get("until"),
                )
            )
        for change, applied in zip(changes, self.accounts.apply(changes), strict=True):
            if applied == "kept":
                logger.warning(
                    "account %s: %s by %r (event %s) left live access suspended: a newer suspension stands",
                    change.user_id,
                    change.kind,
                    change.actor,
                    change.event_id,
                )
            elif applied == "applied" and change.kind.startswith("live_"):
                logger.info(
                    "account %s: %s by %r%s",
                    change.user_id,
                    change.kind,
                    change.actor,
                    f" until {change.until}" if change.kind == "live_suspended" and change.until is not None else "",
                )
        return out
