"""Account state in Redis: identity verification, strikes, live-access suspension.

One hash per account, `modstream:account:{user_id}`, shared by every process. Its fields:
`identity_verified` ("1"/"0") with `identity_by`, `identity_reason`, `identity_at`;
`strikes`; `live_suspended` ("1"/"0") with `live_suspended_until` (ms; empty: until
lifted), `live_suspended_at`, `live_suspended_by`, `live_suspended_reason`;
`live_suspensions` (how many suspensions the account ever had) and `live_lifted_at`,
`live_lifted_by`, `live_lifted_reason`. Every suspension is also appended, as JSON, to the
list `modstream:account:{user_id}:suspensions` (the latest `SUSPENSIONS_KEPT`).

Writes are idempotent per event and atomic (one Lua script each): a strike records the
decision id that caused it (set `...:strike_events`), an AccountEvent its event id (set
`...:events`), so a redelivered decision or event applies once. A suspension never
shortens one in force: the later end wins, and "until lifted" beats any end. A lift ends
the suspension in force unless that suspension started after the lift was issued (a newer
offence stands). A suspension whose `until` has passed reads as not suspended.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pipeline.records import Record, now_ms

PREFIX = "modstream:account:"
SUSPENSIONS_KEPT = 100
ENFORCER_ACTOR = "enforce-account"

# What applying an AccountEvent did: changed the state, nothing (its event id was applied
# before), or nothing because a newer suspension stands against a lift.
Applied = Literal["applied", "duplicate", "kept"]
_APPLIED: dict[int, Applied] = {1: "applied", 0: "duplicate", 2: "kept"}


class AccountStore(Protocol):
    def get_many(self, user_ids: Iterable[str]) -> dict[str, Record]: ...


@dataclass(frozen=True, slots=True)
class AccountChange:
    """One AccountEvent, as the store applies it. `at` is when it occurred (ms)."""

    user_id: str
    event_id: str
    kind: str  # identity_verified, identity_unverified, live_suspended, live_lifted
    at: int
    actor: str = ""
    reason: str = ""
    until: int | None = None  # live_suspended only: when it ends by itself; None: until lifted


def account_context(user_id: str, fields: dict[str, Any], now: int | None = None) -> Record:
    """The AccountContext of an account hash. A suspension whose `until` is at or before
    `now` (default: the current time) has ended."""
    suspended = str(fields.get("live_suspended", "0")) == "1"
    until = str(fields.get("live_suspended_until") or "")
    if suspended and until:
        suspended = int(until) > (now_ms() if now is None else now)
    return {
        "user_id": user_id,
        "identity_verified": str(fields.get("identity_verified", "0")) == "1",
        "strikes": int(fields.get("strikes", 0)),
        "live_suspended": suspended,
    }


# suspend(hash, list, until, at, by, reason, entry, now, keep): sets the suspension, never
# shortening one in force, counts it and appends its entry to the account's list.
_SUSPEND = """
local function suspend(hash, list, until_, at, by, reason, entry, now, keep)
  local cur = redis.call('HMGET', hash, 'live_suspended', 'live_suspended_until', 'live_suspended_at')
  local cur_until = cur[2] or ''
  if cur[1] == '1' and (cur_until == '' or tonumber(cur_until) > tonumber(now)) then
    if cur_until == '' or until_ == '' then
      until_ = ''
    elseif tonumber(cur_until) > tonumber(until_) then
      until_ = cur_until
    end
    if cur[3] and tonumber(cur[3]) > tonumber(at) then at = cur[3] end
  end
  redis.call('HSET', hash, 'live_suspended', '1', 'live_suspended_until', until_, 'live_suspended_at', at,
             'live_suspended_by', by, 'live_suspended_reason', reason)
  redis.call('HINCRBY', hash, 'live_suspensions', 1)
  redis.call('RPUSH', list, entry)
  redis.call('LTRIM', list, -tonumber(keep), -1)
end
"""

# Every account of a batch in one call: redis-py's per-command cost dominated a pipeline of HGETALLs.
_GET_ALL = "local out = {} for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end return out"

# KEYS: hash, strike_events, suspensions. ARGV: event_id, suspend ('1'/'0'), until ('' =
# until lifted), at, by, reason, entry, now, keep. Returns the strike count.
_STRIKE = (
    _SUSPEND
    + """
if redis.call('SADD', KEYS[2], ARGV[1]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'strikes', 1)
  if ARGV[2] == '1' then suspend(KEYS[1], KEYS[3], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]) end
end
return tonumber(redis.call('HGET', KEYS[1], 'strikes') or '0')
"""
)

# KEYS: hash, events, suspensions. ARGV: event_id, kind, until, at, by, reason, entry, now,
# keep. Returns 1 (applied), 0 (event applied before) or 2 (lift refused: newer suspension).
_APPLY = (
    _SUSPEND
    + """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
local kind = ARGV[2]
if kind == 'identity_verified' or kind == 'identity_unverified' then
  local verified = '0'
  if kind == 'identity_verified' then verified = '1' end
  redis.call('HSET', KEYS[1], 'identity_verified', verified, 'identity_by', ARGV[5], 'identity_reason', ARGV[6],
             'identity_at', ARGV[4])
elseif kind == 'live_suspended' then
  suspend(KEYS[1], KEYS[3], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
elseif kind == 'live_lifted' then
  local cur = redis.call('HMGET', KEYS[1], 'live_suspended', 'live_suspended_at')
  if cur[1] == '1' and cur[2] and tonumber(cur[2]) > tonumber(ARGV[4]) then return 2 end
  redis.call('HSET', KEYS[1], 'live_suspended', '0', 'live_suspended_until', '', 'live_lifted_at', ARGV[4],
             'live_lifted_by', ARGV[5], 'live_lifted_reason', ARGV[6])
else
  return redis.error_reply('unknown account event kind ' .. kind)
end
return 1
"""
)


def _entry(event_id: str, source: str, at: int, until: int | None, actor: str, reason: str) -> str:
    return json.dumps(
        {"event_id": event_id, "source": source, "at": at, "until": until, "actor": actor, "reason": reason},
        separators=(",", ":"),
    )


class RedisAccountStore:
    """Account state in Redis. `clock` gives the time in ms (suspension ends are compared to it)."""

    def __init__(self, client: Any, clock: Callable[[], int] = now_ms) -> None:
        self.redis = client  # a redis.Redis with decode_responses=True
        self.clock = clock
        self._strike = client.register_script(_STRIKE)
        self._apply = client.register_script(_APPLY)
        self._get_all = client.register_script(_GET_ALL)

    def get_many(self, user_ids: Iterable[str]) -> dict[str, Record]:
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        replies = self._get_all(keys=[PREFIX + uid for uid in ids])
        now = self.clock()
        return {
            uid: account_context(uid, dict(zip(flat[::2], flat[1::2], strict=True)), now)
            for uid, flat in zip(ids, replies, strict=True)
        }

    def set_verified(self, user_id: str, verified: bool = True) -> None:
        self.redis.hset(PREFIX + user_id, "identity_verified", "1" if verified else "0")

    def add_strike(
        self,
        user_id: str,
        event_id: str,
        suspend_live: bool = False,
        until: int | None = None,
        actor: str = ENFORCER_ACTOR,
        reason: str = "",
    ) -> int:
        """Adds one strike for `event_id` (once, however often called); returns the strike count.
        With `suspend_live`, also suspends live access until `until` (ms; None: until lifted)."""
        key = PREFIX + user_id
        now = self.clock()
        entry = _entry(event_id, "decision", now, until, actor, reason)
        args = [event_id, "1" if suspend_live else "0", _ms(until), now, actor, reason, entry, now, SUSPENSIONS_KEPT]
        return int(self._strike(keys=[key, key + ":strike_events", key + ":suspensions"], args=args))

    def apply(self, changes: Sequence[AccountChange]) -> list[Applied]:
        """Applies AccountEvents in order (one round trip), each once per event id."""
        if not changes:
            return []
        pipe = self.redis.pipeline(transaction=False)
        now = self.clock()
        for c in changes:
            key = PREFIX + c.user_id
            until = c.until if c.kind == "live_suspended" else None
            entry = _entry(c.event_id, "account_event", c.at, until, c.actor, c.reason)
            args = [c.event_id, c.kind, _ms(until), c.at, c.actor, c.reason, entry, now, SUSPENSIONS_KEPT]
            self._apply(keys=[key, key + ":events", key + ":suspensions"], args=args, client=pipe)
        return [_APPLIED[int(r)] for r in pipe.execute()]

    def suspensions(self, user_id: str) -> list[Record]:
        """The account's recorded suspensions, oldest first (the latest `SUSPENSIONS_KEPT`)."""
        return [json.loads(e) for e in self.redis.lrange(PREFIX + user_id + ":suspensions", 0, -1)]


def _ms(value: int | None) -> str:
    return "" if value is None else str(int(value))
