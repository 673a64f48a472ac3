"""Flood detection state in Redis, shared by every process of the flood stage: which content
cluster an upload belongs to, and per cluster a sliding window of the distinct accounts that
uploaded it, the copies seen before a flood was declared, and the claim of the flood.

Keys (`prefix` is modstream:flood:, D the PDQ distance):
- {prefix}pdq{D}:{gen}:reps          hash id -> PDQ: the representatives of the PDQ clusters
                                      first seen in one generation (`window_s` long), by a
                                      numeric id ({prefix}pdq{D}:seq counts them).
- {prefix}pdq{D}:{gen}:idx           hash chunk -> space-separated representative ids: the
                                      index for radius-D search. A PDQ hash is cut into D+1
                                      chunks (hex substrings, the field is the chunk's position
                                      and value); two hashes within D bits share at least one
                                      chunk exactly (pigeonhole), so a lookup reads D+1 fields
                                      of the current and of the previous generation. A
                                      representative found only in the previous one is carried
                                      into the current one, so a cluster lives as long as copies
                                      keep coming. A generation's two hashes are unlinked (freed
                                      in the background) two generations on, else they expire.
- {prefix}c:{cluster}:u              sorted set account -> time of its last upload (ms), trimmed
                                      to the window: the distinct accounts.
- {prefix}c:{cluster}:x              list of "time|copy" (copy: compact JSON of kind, envelope,
                                      signals): the copies not yet quarantined, trimmed to the
                                      window and to `max_copies`; dropped once the flood is claimed.
- {prefix}c:{cluster}                hash: category (the first one seen), and the flood's claim:
                                      by (the event that crossed the threshold), head (JSON: by,
                                      at, count, threshold, category), claim (head plus the copies
                                      it quarantined).
Every key of a cluster expires `window_s` (plus a minute) after its last copy, so a flood lasts
until a whole window passes with no copy.

Both steps are Lua scripts, so that what they read and write is atomic across processes: two
near-duplicates seen at once by two processes join one cluster, and every copy is either in
the claim's copies or sees the claim. A redelivered copy counts once (accounts are a set, and
a copy listed twice is quarantined once); the event that owns a claim gets the stored claim
back, so it re-emits the same records.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.records import Record, signal

PREFIX = "modstream:flood:"
MAX_COPIES = 1000  # copies of one cluster kept for quarantine before its flood is declared
TTL_MARGIN_S = 60

CALL_SIZE = 50  # queries or copies per script call: Redis runs nothing else during one

# Assigns PDQ hashes to representatives, in order. KEYS: the index and the representatives of
# the current generation, the same of the previous one, the id counter. ARGV: max distance, the
# keys' ttl (s), D+1, chunk length, then the queries. Returns per query {representative,
# where}: where is "new" (the query starts a cluster), "cur" (found in the current generation)
# or "prev" (found only in the previous one: carry it forward). Two reads and one write per
# query: Redis time, the scarce resource of a shared server, over memory.
_ASSIGN = """
local maxd, ttl, m, size = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local idx_cur, reps_cur, idx_prev, reps_prev, seq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local function dist(a, b)
  local d = 0
  for i = 1, 64, 6 do
    local x = bit.bxor(tonumber(string.sub(a, i, i + 5), 16), tonumber(string.sub(b, i, i + 5), 16))
    while x ~= 0 do
      x = bit.band(x, x - 1)
      d = d + 1
    end
    if d > maxd then return d end
  end
  return d
end
local wrote = false
local hex, sub = {}, string.sub
for i = 0, m - 1 do hex[i + 1] = string.format('%x', i) end
local function assign(q)
  local fields = {}
  for i = 1, m do fields[i] = hex[i] .. sub(q, (i - 1) * size + 1, i * size) end
  local found = {redis.call('HMGET', idx_cur, unpack(fields)), redis.call('HMGET', idx_prev, unpack(fields))}
  local best, best_id, best_d, best_cur = nil, nil, maxd + 1, false
  for g = 1, 2 do
    for k = 1, m do
      if found[g][k] then
        for id in string.gmatch(found[g][k], '%d+') do
          local rep = redis.call('HGET', g == 1 and reps_cur or reps_prev, id)
          if rep then
            local d = dist(q, rep)
            if d < best_d or (d == best_d and g == 1 and not best_cur) then
              best, best_id, best_d, best_cur = rep, id, d, g == 1
            end
          end
        end
      end
    end
  end
  if best ~= nil and (best_cur or best ~= q) then return best, best_cur and 'cur' or 'prev' end
  local id = best_id or tostring(redis.call('INCR', seq))
  local set = {}
  for k = 1, m do
    local ids = found[1][k]
    if not ids then
      table.insert(set, fields[k])
      table.insert(set, id)
    elseif not string.find(' ' .. ids .. ' ', ' ' .. id .. ' ', 1, true) then
      table.insert(set, fields[k])
      table.insert(set, ids .. ' ' .. id)
    end
  end
  if #set > 0 then redis.call('HSET', idx_cur, unpack(set)) end
  redis.call('HSET', reps_cur, id, q)
  wrote = true
  return q, best == nil and 'new' or 'cur'
end
local out = {}
for j = 5, #ARGV do
  local rep, where = assign(ARGV[j])
  out[#out + 1] = rep
  out[#out + 1] = where
end
if wrote and redis.call('TTL', idx_cur) < 0 then
  redis.call('EXPIRE', idx_cur, ttl)
  redis.call('EXPIRE', reps_cur, ttl)
end
return out
"""

# Adds copies to their clusters' windows, in order. KEYS: per copy its cluster's accounts,
# copies and cluster keys. ARGV: window (ms), ttl (s), max copies, default threshold, the
# number P of category/threshold pairs, the P pairs, then per copy: account ('' for none),
# time, copy JSON, event id, category ('' for none). Returns per copy {status, count,
# threshold, category, claim JSON or false, fresh}. A copy is kept as "time|JSON" at the end
# of a list, so the list is trimmed from its head by time.
_RECORD = """
local window, ttl, maxc, default = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local pairs_n = tonumber(ARGV[5])
local thresholds = {}
for i = 6, 5 + 2 * pairs_n, 2 do thresholds[ARGV[i]] = tonumber(ARGV[i + 1]) end
local function record(ku, kx, kc, account, t, copy, eid, given)
  local floor = t - window
  if account ~= '' then redis.call('ZADD', ku, 'GT', t, account) end
  redis.call('ZREMRANGEBYSCORE', ku, '-inf', '(' .. floor)
  local count = redis.call('ZCOUNT', ku, floor, '+inf')
  redis.call('EXPIRE', ku, ttl)
  if given ~= '' then
    redis.call('HSETNX', kc, 'category', given)
    redis.call('EXPIRE', kc, ttl)
  end
  local found = redis.call('HMGET', kc, 'by', 'category')
  local by, category = found[1], found[2] or ''
  local threshold = thresholds[category] or default
  if by then
    redis.call('EXPIRE', kc, ttl)
    if by == eid then return {'owner', count, threshold, category, redis.call('HGET', kc, 'claim'), 0} end
    return {'flooded', count, threshold, category, redis.call('HGET', kc, 'head'), 0}
  end
  local listed = redis.call('RPUSH', kx, t .. '|' .. copy)
  while listed > 1 do
    local first = redis.call('LINDEX', kx, 0)
    if tonumber(string.match(first, '^(%-?%d+)|')) >= floor then break end
    redis.call('LPOP', kx)
    listed = listed - 1
  end
  if listed > maxc then redis.call('LTRIM', kx, -maxc, -1) end
  redis.call('EXPIRE', kx, ttl)
  if count < threshold then return {'counting', count, threshold, category, false, 0} end
  local head = {by = eid, at = t, count = count, threshold = threshold, category = category}
  local encoded_head = cjson.encode(head)
  local copies = {}
  for _, item in ipairs(redis.call('LRANGE', kx, 0, -1)) do
    local at, body = string.match(item, '^(%-?%d+)|(.*)$')
    if tonumber(at) >= floor then table.insert(copies, body) end
  end
  head['copies'] = copies
  local claim = cjson.encode(head)
  redis.call('HSET', kc, 'by', eid, 'head', encoded_head, 'claim', claim)
  redis.call('EXPIRE', kc, ttl)
  redis.call('DEL', kx)
  return {'owner', count, threshold, category, claim, 1}
end
local out = {}
local first = 6 + 2 * pairs_n
for j = 0, (#ARGV - first + 1) / 5 - 1 do
  local a = first + 5 * j
  local r = record(KEYS[3 * j + 1], KEYS[3 * j + 2], KEYS[3 * j + 3],
    ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2], ARGV[a + 3], ARGV[a + 4])
  for i = 1, 6 do out[#out + 1] = r[i] end
end
return out
"""


@dataclass(frozen=True)
class Copy:
    """One upload of a cluster's content, as the window keeps it."""

    cluster: str
    event_id: str
    account: str | None  # the uploader; None: quarantined with its cluster, never counted
    at: int  # ms since the epoch
    record: Record  # what a quarantine decision needs: envelope, kind, signals
    category: str | None = None


@dataclass(frozen=True)
class Seen:
    """What recording a copy found. `status`: counting (no flood), flooded (an earlier copy
    declared the flood: `claim` is its head) or owner (this copy declared it: `claim` holds
    the copies it quarantined; `fresh` is False when a redelivery found the stored claim)."""

    status: str
    count: int  # distinct accounts in the window, this copy's included
    threshold: int
    category: str | None
    claim: Record | None = None
    fresh: bool = False


@dataclass(frozen=True)
class Limits:
    window_s: int = 600
    accounts: int = 20  # distinct accounts in the window that make a flood
    category_accounts: tuple[tuple[str, int], ...] = ()  # per category, instead of `accounts`
    max_copies: int = MAX_COPIES


class FloodStore(Protocol):
    def representatives(self, pdqs: list[tuple[str, int]]) -> list[str]:
        """For each (PDQ hash, time in ms), the representative of its cluster: an earlier PDQ
        within the store's distance, else the hash itself (a new cluster)."""
        ...

    def record(self, copies: list[Copy], limits: Limits) -> list[Seen]:
        """Adds each copy to its cluster's window, in order, and claims the cluster's flood for
        the first copy that brings it to its threshold."""
        ...


def chunks(pdq: str, distance: int) -> list[str]:
    """The `distance + 1` hex substrings of a PDQ hash that radius-`distance` search looks up."""
    size = 64 // (distance + 1)
    return [pdq[i * size : (i + 1) * size] for i in range(distance + 1)]


def pack(copy: Record) -> str:
    """A copy as the window keeps it: compact JSON of its kind, envelope and signals."""
    signals = [[x["signal_type"], x["value"], x.get("quality")] for x in copy["signals"]]
    return json.dumps([copy["kind"], copy["envelope"], signals], sort_keys=True, separators=(",", ":"))


def unpack(packed: str) -> Record:
    kind, env, signals = json.loads(packed)
    return {"kind": kind, "envelope": env, "signals": [signal(t, v, q) for t, v, q in signals]}


class RedisFloodStore:
    def __init__(self, client: Any, distance: int = 8, window_s: int = 600, prefix: str = PREFIX) -> None:
        """`client`: redis.Redis with decode_responses. `distance`: the PDQ radius of a cluster
        (0 to 15); `window_s`: the generation length of the representatives."""
        if not 0 <= distance <= 15:
            raise ValueError(f"PDQ distance must be 0 to 15, not {distance}")
        self.redis = client
        self.distance = distance
        self.window_s = max(1, window_s)
        self.base = f"{prefix}pdq{distance}:"
        self.prefix = prefix
        self._assign = client.register_script(_ASSIGN)
        self._record = client.register_script(_RECORD)
        self._newest = 0  # the newest generation seen; the representatives two before it are dropped

    def _keys(self, gen: int) -> list[str]:
        return [
            f"{self.base}{gen}:idx",
            f"{self.base}{gen}:reps",
            f"{self.base}{gen - 1}:idx",
            f"{self.base}{gen - 1}:reps",
            f"{self.base}seq",
        ]

    def representatives(self, pdqs: list[tuple[str, int]]) -> list[str]:
        if not pdqs:
            return []
        pipe = self.redis.pipeline(transaction=False)
        newest = max(at for _, at in pdqs) // 1000 // self.window_s
        if newest > self._newest:
            # A generation makes two large hashes: free them in the background (UNLINK) once no
            # lookup reads them, rather than by a blocking expiry.
            old = range(max(self._newest - 1, newest - 4), newest - 1)
            pipe.unlink(*(f"{self.base}{g}:{what}" for g in old for what in ("idx", "reps")))
            self._newest = newest
        queries = [(pdq.lower(), at // 1000 // self.window_s) for pdq, at in pdqs]
        calls = self._assign_calls(pipe, queries)
        replies = [x for reply in pipe.execute()[-calls:] for x in reply]
        found = list(zip(replies[::2], replies[1::2], strict=True))
        forward = [(rep, gen) for (rep, where), (_, gen) in zip(found, queries, strict=True) if where == "prev"]
        if forward:  # a cluster still seeing copies moves into the current generation
            pipe = self.redis.pipeline(transaction=False)
            self._assign_calls(pipe, list(dict.fromkeys(forward)))
            pipe.execute()
        return [rep for rep, _ in found]

    def _assign_calls(self, pipe: Any, queries: list[tuple[str, int]]) -> int:
        """Queues the script calls that assign `queries` (pdq, generation) in order; returns how many."""
        ttl = 3 * self.window_s + TTL_MARGIN_S  # from its first write; unlinked two generations on
        size = 64 // (self.distance + 1)
        calls, i = 0, 0
        while i < len(queries):
            gen = queries[i][1]
            group = queries[i : i + CALL_SIZE]
            group = group[: next((n for n, q in enumerate(group) if q[1] != gen), len(group))]
            args = [self.distance, ttl, self.distance + 1, size, *(pdq for pdq, _ in group)]
            self._assign(keys=self._keys(gen), args=args, client=pipe)
            calls, i = calls + 1, i + len(group)
        return calls

    def record(self, copies: list[Copy], limits: Limits) -> list[Seen]:
        if not copies:
            return []
        ttl = limits.window_s + TTL_MARGIN_S
        pairs = [x for name, n in limits.category_accounts for x in (name, n)]
        head = [limits.window_s * 1000, ttl, limits.max_copies, limits.accounts, len(limits.category_accounts), *pairs]
        pipe = self.redis.pipeline(transaction=False)
        for i in range(0, len(copies), CALL_SIZE):
            keys: list[str] = []
            args: list[Any] = list(head)
            for c in copies[i : i + CALL_SIZE]:
                key = f"{self.prefix}c:{c.cluster}"
                keys += [key + ":u", key + ":x", key]
                args += [c.account or "", c.at, pack(c.record), c.event_id, c.category or ""]
            self._record(keys=keys, args=args, client=pipe)
        flat = [x for reply in pipe.execute() for x in reply]
        out = []
        for j in range(0, len(flat), 6):
            status, count, threshold, category, claim, fresh = flat[j : j + 6]
            decoded = json.loads(claim) if claim else None
            if decoded is not None and "copies" in decoded:
                kept: dict[str, Record] = {}  # a redelivered copy is in the list twice
                for packed in decoded["copies"]:
                    copy = unpack(packed)
                    kept.setdefault(copy["envelope"]["event_id"], copy)
                decoded["copies"] = list(kept.values())
            out.append(Seen(status, int(count), int(threshold), category or None, decoded, bool(fresh)))
        return out
