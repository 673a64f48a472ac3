"""Report aggregation, reporter trust, the 24-hour deadline, and the content store, in Redis.

Keys (all idempotent per event id, so redelivered reports count once):
- modstream:item:{content_id}            hash: first_reported_at, deadline, envelope (JSON),
                                         review_task (set once), actioned_at, escalated
- modstream:item:{content_id}:reporters  set of reporter ids (distinct reporters)
- modstream:item:{content_id}:reasons    hash reason -> count
- modstream:item:{content_id}:events     set of report event ids already counted
- modstream:reporter:{reporter_id}       hash: total, upheld (verdicts on items they reported)
- modstream:deadlines                    sorted set content_id -> deadline (unresolved items)
- modstream:content:{content_id}         the upload's signals and text (JSON), so a later
                                         report can be matched and classified again
Trust of a reporter: (upheld + 1) / (total + 2), 0.5 for a newcomer; an item's trust is the
sum over its distinct reporters.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from pipeline.records import Record

DAY_MS = 24 * 3600 * 1000
_SET_ALL_EX = "for i = 1, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 1], 'EX', ARGV[1]) end"
CONTENT_TTL_S = 90 * 24 * 3600


class ReportStore(Protocol):
    def add_reports(self, reports: list[Record]) -> list[dict[str, Any]]: ...
    def claim_review(self, content_id: str) -> bool: ...
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
        pipe = self.redis.pipeline(transaction=True)
        for r, is_new in zip(reports, fresh, strict=True):
            env, item = r["envelope"], self._item(r["envelope"]["content_id"])
            pipe.hsetnx(item, "first_reported_at", env["occurred_at"])
            pipe.hsetnx(item, "deadline", env["occurred_at"] + DAY_MS)
            pipe.hsetnx(item, "envelope", json.dumps(env))
            pipe.zadd(f"{self.prefix}deadlines", {env["content_id"]: env["occurred_at"] + DAY_MS}, nx=True)
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
                "first_reported_at": int(meta.get("first_reported_at", 0)),
                "deadline": int(meta.get("deadline", 0)),
                "actioned_at": int(meta["actioned_at"]) if meta.get("actioned_at") else None,
            }
        return [out[c] for c in content_ids]

    def claim_review(self, content_id: str) -> bool:
        """True once per item: the first caller creates its review task."""
        return bool(self.redis.hsetnx(self._item(content_id), "review_task", "1"))

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
        for content_id, deadline in self.redis.zrangebyscore(f"{self.prefix}deadlines", 0, before_ms, withscores=True):
            meta = self.redis.hgetall(self._item(content_id))
            if not meta.get("escalated") and not meta.get("actioned_at"):
                out.append((content_id, int(deadline), json.loads(meta["envelope"])))
        return out

    def mark_escalated(self, content_id: str) -> bool:
        return bool(self.redis.hsetnx(self._item(content_id), "escalated", "1"))

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
