"""Report aggregation, reporter trust, the 24-hour deadline, and the content store, in Redis.

Keys (all idempotent per event id, so redelivered reports count once):
- modstream:item:{content_id}            hash: first_reported_at, deadline, envelope (JSON),
                                         review_task (the event id of the report that owns the
                                         item's review task; set once), actioned_at, escalated
- modstream:item:{content_id}:reporters  set of reporter ids (distinct reporters)
- modstream:item:{content_id}:reasons    hash reason -> count
- modstream:item:{content_id}:events     set of report event ids already counted
- modstream:reporter:{reporter_id}       hash: total, upheld (verdicts on items they reported)
- modstream:deadlines                    sorted set content_id -> deadline (unresolved items)
- modstream:content-week:{week}          hash content_id -> the upload's signals and text (JSON),
                                         so a later report can be matched and classified again;
                                         one hash per week of remembering, expiring CONTENT_TTL_S
                                         after its week ends (a batch is one HSET, not a SET each).
                                         Recall also reads modstream:content:{content_id}, the
                                         key per upload that earlier versions wrote.
Trust of a reporter: (upheld + 1) / (total + 2), 0.5 for a newcomer; an item's trust is the
sum over its distinct reporters.

A report's time is its occurred_at, but never later than when it is counted: a platform clock
ahead of ours, or a malformed timestamp (2**63 - 1), must not push an item's deadline out of
reach (or out of an Avro long).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import orjson

from pipeline.records import Record, now_ms

DAY_MS = 24 * 3600 * 1000
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
CONTENT_TTL_S = 90 * 24 * 3600  # content is remembered at least this long
CONTENT_BUCKET_MS = 7 * DAY_MS
CONTENT_BUCKETS = CONTENT_TTL_S * 1000 // CONTENT_BUCKET_MS + 2  # the buckets a recall may find it in
# KEYS: the content buckets, newest first; ARGV: the prefix, then content ids. Answers each
# id's value or false.
_RECALL = """
local out = {}
for i = 2, #ARGV do
  local v = false
  for _, bucket in ipairs(KEYS) do
    v = redis.call('HGET', bucket, ARGV[i])
    if v then break end
  end
  out[i - 1] = v or redis.call('GET', ARGV[1] .. 'content:' .. ARGV[i])
end
return out
"""
# KEYS: the item's verdicts and reporters; ARGV: prefix, the verdict's event id, 1 if upheld.
# Counts the verdict for each reporter, once: the mark and the counts are one step, so a verdict
# interrupted before it is counted is counted when redone.
_VERDICT = """
if redis.call('SADD', KEYS[1], ARGV[2]) == 0 then return 0 end
for _, reporter in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  local key = ARGV[1] .. 'reporter:' .. reporter
  redis.call('HINCRBY', key, 'total', 1)
  if ARGV[3] == '1' then redis.call('HINCRBY', key, 'upheld', 1) end
end
return 1
"""
# ARGV: prefix, n, then n reports (content_id, event_id, first_reported_at, deadline, envelope,
# reporter_id, reason), then the items to answer. A report counts once per event id. Answers,
# per item: its reporters, its reasons (flat), its first_reported_at, deadline and actioned_at,
# and each reporter's total and upheld (flat, in the reporters' order).
_AGGREGATE = """
local prefix, n = ARGV[1], tonumber(ARGV[2])
for i = 0, n - 1 do
  local b = 3 + 7 * i
  local cid, item = ARGV[b], prefix .. 'item:' .. ARGV[b]
  if redis.call('SADD', item .. ':events', ARGV[b + 1]) == 1 then
    redis.call('SADD', item .. ':reporters', ARGV[b + 5])
    redis.call('HINCRBY', item .. ':reasons', ARGV[b + 6], 1)
  end
  if redis.call('HSETNX', item, 'first_reported_at', ARGV[b + 2]) == 1 then  -- the item's first report
    redis.call('HSET', item, 'deadline', ARGV[b + 3], 'envelope', ARGV[b + 4])
  end
  redis.call('ZADD', prefix .. 'deadlines', 'NX', ARGV[b + 3], cid)
end
local out = {}
for k = 3 + 7 * n, #ARGV do
  local item = prefix .. 'item:' .. ARGV[k]
  local reporters = redis.call('SMEMBERS', item .. ':reporters')
  local totals = {}
  for _, r in ipairs(reporters) do
    local tu = redis.call('HMGET', prefix .. 'reporter:' .. r, 'total', 'upheld')
    totals[#totals + 1] = tu[1] or '0'
    totals[#totals + 1] = tu[2] or '0'
  end
  local meta = redis.call('HMGET', item, 'first_reported_at', 'deadline', 'actioned_at')
  local reasons = redis.call('HGETALL', item .. ':reasons')
  out[#out + 1] = {reporters, reasons, {meta[1] or '0', meta[2] or '0', meta[3] or ''}, totals}
end
return out
"""
AT_RISK_MS = 20 * 3600 * 1000  # an item undecided this long after its first report is at risk


class Backlog(NamedTuple):
    """Reported items without a final decision: all, those first reported AT_RISK_MS ago or
    more, those past their deadline, and the first report of the oldest (None: no item)."""

    open: int
    at_risk: int
    overdue: int
    oldest_reported_at: int | None


def reported_at(occurred_at: int, now: int) -> int:
    """When a report counts as made: its occurred_at, or `now` if that lies in the future."""
    return max(min(occurred_at, now), LONG_MIN)


def deadline_of(first_reported_at: int) -> int:
    """The 24-hour deadline of an item first reported then, within the range of an Avro long."""
    return max(min(first_reported_at + DAY_MS, LONG_MAX), LONG_MIN)


class ReportStore(Protocol):
    def add_reports(self, reports: list[Record]) -> list[dict[str, Any]]: ...
    def claim_reviews(self, claims: Sequence[tuple[str, str]]) -> list[str]: ...
    def resolve(self, content_id: str, actioned_at: int) -> None: ...
    def verdict(self, content_id: str, upheld: bool, event_id: str) -> None: ...


class RedisReportStore:
    def __init__(self, client: Any, prefix: str = "modstream:") -> None:
        self.redis = client
        self.prefix = prefix
        self._script = client.register_script(_AGGREGATE)
        self._recall = client.register_script(_RECALL)
        self._verdict = client.register_script(_VERDICT)

    def _item(self, content_id: str) -> str:
        return f"{self.prefix}item:{content_id}"

    def add_reports(self, reports: list[Record]) -> list[dict[str, Any]]:
        """Counts each ReportEvent once; returns each report's item aggregate afterwards."""
        now = now_ms()
        adds: list[str | int | bytes] = []
        for r in reports:
            env = r["envelope"]
            first = reported_at(env["occurred_at"], now)
            adds += [env["content_id"], env["event_id"], first, deadline_of(first), orjson.dumps(env)]
            adds += [r["reporter_id"], r["reason"]]
        return self._aggregates(adds, [r["envelope"]["content_id"] for r in reports])

    def aggregate(self, content_id: str) -> dict[str, Any]:
        return self.aggregates([content_id])[0]

    def aggregates(self, content_ids: list[str]) -> list[dict[str, Any]]:
        return self._aggregates([], content_ids)

    def _aggregates(self, adds: list[str | int | bytes], content_ids: list[str]) -> list[dict[str, Any]]:
        """Adds the reports (7 values each, see _AGGREGATE) and answers each item's aggregate:
        one script call for the whole batch (a pipeline's per-command cost in redis-py was a
        quarter of the pipeline's CPU time on text posts and reports)."""
        if not content_ids:
            return []
        items = list(dict.fromkeys(content_ids))
        replies = self._script(args=[self.prefix, len(adds) // 7, *adds, *items])
        out = {}
        for content_id, (reporters, reasons, meta, totals) in zip(items, replies, strict=True):
            # summed in reporter order, so that a redelivery adds the same floats in the same order
            per_reporter = sorted(zip(reporters, totals[0::2], totals[1::2], strict=True))
            trust = sum((int(upheld or 0) + 1) / (int(total or 0) + 2) for _, total, upheld in per_reporter)
            first, deadline, actioned = meta
            out[content_id] = {
                "content_id": content_id,
                "distinct_reporters": len(reporters),
                "reporters": sorted(reporters),
                "trust": trust,
                "reasons": {reasons[i]: int(reasons[i + 1]) for i in range(0, len(reasons), 2)},
                "first_reported_at": _long(first),
                "deadline": _long(deadline),
                "actioned_at": int(actioned) if actioned else None,
            }
        return [out[c] for c in content_ids]

    def claim_reviews(self, claims: Sequence[tuple[str, str]]) -> list[str]:
        """For each (content_id, event_id): the event id that owns the item's review task.

        The first claim of an item wins for ever; every later claim, and a repeat of the
        winning one (a redelivery), is answered with the winner, so the winner's record can
        emit its task again while the others emit none.
        """
        if not claims:
            return []
        pipe = self.redis.pipeline(transaction=True)
        for content_id, event_id in claims:
            pipe.hsetnx(self._item(content_id), "review_task", event_id)
            pipe.hget(self._item(content_id), "review_task")
        replies = pipe.execute()
        return [str(owner) for owner in replies[1::2]]

    def resolve(self, content_id: str, actioned_at: int) -> None:
        """A reported item got a final decision: off the deadline list, actioned time kept."""
        item = self._item(content_id)
        if self.redis.exists(item):
            self.redis.hsetnx(item, "actioned_at", actioned_at)
            self.redis.zrem(f"{self.prefix}deadlines", content_id)

    def verdict(self, content_id: str, upheld: bool, event_id: str) -> None:
        """A reviewer's verdict on a reported item updates each reporter's record, once per verdict."""
        item = self._item(content_id)
        self._verdict(keys=[f"{item}:verdicts", f"{item}:reporters"], args=[self.prefix, event_id, int(upheld)])

    def due(self, before_ms: int) -> list[tuple[str, int, Record]]:
        """Unresolved, not yet escalated items whose deadline is before `before_ms`."""
        out = []
        due = self.redis.zrangebyscore(f"{self.prefix}deadlines", "-inf", before_ms, withscores=True)
        for content_id, score in due:
            meta = self.redis.hgetall(self._item(content_id))
            if meta.get("envelope") and not meta.get("escalated") and not meta.get("actioned_at"):
                # The hash holds the exact deadline; a score is a double.
                deadline = _long(meta.get("deadline")) if meta.get("deadline") else _long(int(score))
                out.append((content_id, deadline, orjson.loads(meta["envelope"])))
        return out

    def mark_escalated(self, content_id: str) -> bool:
        """Records that the item's urgent task is acknowledged; True the first time."""
        return bool(self.redis.hsetnx(self._item(content_id), "escalated", "1"))

    def backlog(self, now: int) -> Backlog:
        """How many reported items await a final decision, for the metrics of `modstream escalate`."""
        key = f"{self.prefix}deadlines"
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(key)
        pipe.zcount(key, "-inf", now + DAY_MS - AT_RISK_MS)  # first reported AT_RISK_MS ago or more
        pipe.zcount(key, "-inf", f"({now}")  # deadline passed
        pipe.zrange(key, 0, 0, withscores=True)
        total, at_risk, overdue, oldest = pipe.execute()
        return Backlog(int(total), int(at_risk), int(overdue), int(oldest[0][1]) - DAY_MS if oldest else None)

    # ---- content store ------------------------------------------------------------------
    def _bucket(self, week: int) -> str:
        return f"{self.prefix}content-week:{week}"

    def remember_content(self, records: list[Record]) -> None:
        """Remembers each upload's signals and text, by content id, for CONTENT_TTL_S or more.

        One HSET into this week's hash for the whole batch: a SET (with its own expiry) per
        upload cost Redis about seven times as much, in a script or a pipeline."""
        if not records:
            return
        fields: list[str | bytes] = []
        for r in records:
            upload = r["upload"] or {}
            value = {
                "signals": r["signals"],
                "given": upload.get("signals") or [],  # brought by the event, not computed
                "text": upload.get("text"),
                "user_id": r["envelope"]["user_id"],
            }
            fields += [r["envelope"]["content_id"], orjson.dumps(value)]
        week = now_ms() // CONTENT_BUCKET_MS
        bucket = self._bucket(week)
        pipe = self.redis.pipeline(transaction=True)  # never a bucket without its expiry
        pipe.hset(bucket, items=fields)
        pipe.expireat(bucket, ((week + 1) * CONTENT_BUCKET_MS) // 1000 + CONTENT_TTL_S)
        pipe.execute()

    def recall_content(self, content_ids: list[str]) -> list[dict[str, Any] | None]:
        """What `remember_content` kept of each content id, newest first; None if nothing."""
        if not content_ids:
            return []
        week = now_ms() // CONTENT_BUCKET_MS
        buckets = [self._bucket(week - i) for i in range(CONTENT_BUCKETS)]
        values = self._recall(keys=buckets, args=[self.prefix, *content_ids])
        return [orjson.loads(v) if v else None for v in values]


def _long(value: str | int | None) -> int:
    """A stored time as an int within the range of an Avro long (items stored before the
    clamp may hold more)."""
    return max(min(int(value or 0), LONG_MAX), LONG_MIN)
