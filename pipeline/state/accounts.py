"""Account state in Redis: identity verification, strikes, live-access suspension.

One hash per account, `modstream:account:{user_id}`, shared by every process.
Writes are idempotent per event: a strike records the event id that caused it,
so a redelivered decision does not strike twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from pipeline.records import Record

PREFIX = "modstream:account:"


class AccountStore(Protocol):
    def get_many(self, user_ids: Iterable[str]) -> dict[str, Record]: ...


def account_context(user_id: str, fields: dict[str, Any]) -> Record:
    return {
        "user_id": user_id,
        "identity_verified": str(fields.get("identity_verified", "0")) == "1",
        "strikes": int(fields.get("strikes", 0)),
        "live_suspended": str(fields.get("live_suspended", "0")) == "1",
    }


class RedisAccountStore:
    def __init__(self, client: Any) -> None:  # a redis.Redis with decode_responses=True
        self.redis = client

    def get_many(self, user_ids: Iterable[str]) -> dict[str, Record]:
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        pipe = self.redis.pipeline(transaction=False)
        for uid in ids:
            pipe.hgetall(PREFIX + uid)
        return {uid: account_context(uid, fields or {}) for uid, fields in zip(ids, pipe.execute(), strict=True)}

    def set_verified(self, user_id: str, verified: bool = True) -> None:
        self.redis.hset(PREFIX + user_id, "identity_verified", "1" if verified else "0")

    def add_strike(self, user_id: str, event_id: str, suspend_live: bool = False) -> int:
        """Adds one strike for `event_id` (once, however often called); returns the strike count."""
        key = PREFIX + user_id
        script = """
        if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
          redis.call('HINCRBY', KEYS[1], 'strikes', 1)
          if ARGV[2] == '1' then redis.call('HSET', KEYS[1], 'live_suspended', '1') end
        end
        return tonumber(redis.call('HGET', KEYS[1], 'strikes') or '0')
        """
        return int(self.redis.eval(script, 2, key, key + ":strike_events", event_id, "1" if suspend_live else "0"))
