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
- modstream:content:{content_id}         the upload's signals and text (JSON), so a later
                                         report can be matched and classified again
Trust of a reporter: (upheld + 1) / (total + 2), 0.5 for a newcomer; an item's trust is the
sum over its distinct reporters.

A report's time is its occurred_at, but never later than when it is counted: a platform clock
ahead of ours, or a malformed timestamp (2**63 - 1), must not push an item's deadline out of
reach (or out of an Avro long).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from pipeline.records import Record, now_ms

DAY_MS = 24 * 3600 * 1000
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
_SET_ALL_EX = "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[1]) end"
CONTENT_TTL_S = 90 * 24 * 3600
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

    def _item(self, content_id: str) -> str:
        return f"{self.prefix}item:{content_id}"

    def add_reports(self, reports: list[Record]) -> list[dict[str, Any]]:
        """Counts each ReportEvent once; returns each report's item aggregate afterwards."""
        pipe = self.redis.pipeline(transaction=False)
        for r in reports:
            env, item = r["envelope"], self._item(r["envelope"]["content_id"])
            pipe.sadd(f"{item}:events", env["event_id"])
        fresh = pipe.execute()
        now = now_ms()
        pipe = self.redis.pipeline(transaction=True)
        for r, is_new in zip(reports, fresh, strict=True):
            env, item = r["envelope"], self._item(r["envelope"]["content_id"])
            first = reported_at(env["occurred_at"], now)
            pipe.hsetnx(item, "first_reported_at", first)
            pipe.hsetnx(item, "deadline", deadline_of(first))
            pipe.hsetnx(item, "envelope", json.dumps(env))
            pipe.zadd(f"{self.prefix}deadlines", {env["content_id"]: deadline_of(first)}, nx=True)
            if is_new:
                pipe.sadd(f"{item}:reporters", r["reporter_id"])
                pipe.hincrby(f"{item}:reasons", r["reason"], 1)
        pipe.execute()
        return self.aggregates([r["envelope"]["content_id"] for r in reports])

    def aggregate(self, content_id: str) -> dict[str, Any]:
        return self.aggregates([content_id])[0]

    def aggregates(self, content_ids: list[str]) -> list[dict[str, Any]]:
        """Each item's aggregate, in two round trips for the whole batch."""
        items = list(dict.fromkeys(content_ids))
        pipe = self.redis.pipeline(transaction=False)
        for content_id in items:
            item = self._item(content_id)
            pipe.smembers(f"{item}:reporters")
            pipe.hgetall(f"{item}:reasons")
            pipe.hgetall(item)
        replies = pipe.execute()
        reporters = {cid: sorted(replies[3 * i]) for i, cid in enumerate(items)}
        everyone = sorted({r for rs in reporters.values() for r in rs})
        pipe = self.redis.pipeline(transaction=False)
        for reporter in everyone:
            pipe.hmget(f"{self.prefix}reporter:{reporter}", "total", "upheld")
        trust = {r: (int(u or 0) + 1) / (int(t or 0) + 2) for r, (t, u) in zip(everyone, pipe.execute(), strict=True)}
        out = {}
        for i, content_id in enumerate(items):
            meta = replies[3 * i + 2]
            out[content_id] = {
                "content_id": content_id,
                "distinct_reporters": len(reporters[content_id]),
                "reporters": reporters[content_id],
                "trust": sum(trust[r] for r in reporters[content_id]),
                "reasons": {k: int(v) for k, v in replies[3 * i + 1].items()},
                "first_reported_at": _long(meta.get("first_reported_at")),
                "deadline": _long(meta.get("deadline")),
                "actioned_at": int(meta["actioned_at"]) if meta.get("actioned_at") else None,
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
        if not self.redis.sadd(f"{item}:verdicts", event_id):
            return
        pipe = self.redis.pipeline(transaction=True)
        for reporter in self.redis.smembers(f"{item}:reporters"):
            pipe.hincrby(f"{self.prefix}reporter:{reporter}", "total", 1)
            if upheld:
                pipe.hincrby(f"{self.prefix}reporter:{reporter}", "upheld", 1)
        pipe.execute()

    def due(self, before_ms: int) -> list[tuple[str, int, Record]]:
        """Unresolved, not yet escalated items whose deadline is before `before_ms`."""
        out = []
        due = self.redis.zrangebyscore(f"{self.prefix}deadlines", "-inf", before_ms, withscores=True)
        for content_id, score in due:
            meta = self.redis.hgetall(self._item(content_id))
            if meta.get("envelope") and not meta.get("escalated") and not meta.get("actioned_at"):
                # The hash holds the exact deadline; a score is a double.
                deadline = _long(meta.get("deadline")) if meta.get("deadline") else _long(int(score))
                out.append((content_id, deadline, json.loads(meta["envelope"])))
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
    def remember_content(self, records: list[Record]) -> None:
        if not records:
            return
        keys = [f"{self.prefix}content:{r['envelope']['content_id']}" for r in records]
        values = [
            json.dumps(
                {"signals": r["signals"], "text": (r["upload"] or {}).get("text"), "user_id": r["envelope"]["user_id"]}
            )
            for r in records
        ]
        # One command for the batch: redis-py's per-command cost dominates a pipeline of SETs.
        self.redis.eval(_SET_ALL_EX, len(keys), *keys, CONTENT_TTL_S, *values)

    def recall_content(self, content_ids: list[str]) -> list[dict[str, Any] | None]:
        if not content_ids:
            return []
        values = self.redis.mget([f"{self.prefix}content:{c}" for c in content_ids])
        return [json.loads(v) if v else None for v in values]


def _long(value: str | int | None) -> int:
    """A stored time as an int within the range of an Avro long (items stored before the
    clamp may hold more)."""
    return max(min(int(value or 0), LONG_MAX), LONG_MIN)
