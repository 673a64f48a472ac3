"""Live stream state in Redis, shared by every process of the live path.

Keys, per stream (all idempotent, so a redelivered batch writes the same values again):
- modstream:stream:{stream_id}          hash: user_id, started_at, status (live, ended, closed),
                                        last_pdq (the last kept frame, for de-duplication),
                                        end_by / end (the event that ended the stream and
                                        its Decision as JSON), review_by / review (the same for
                                        its one review task), closed_at
- modstream:stream:{stream_id}:frames   hash frame_index -> PDQ of each kept frame (frames seen)
- modstream:stream:{stream_id}:hits     hash frame_index -> JSON [[bank, item_id, distance, hash, category,
                                        severity], ...]
                                        the banked videos each kept frame is near (frames matched)

A claim (`claim`) records which event took it and what it emitted, so that a redelivery of
that event re-emits the same record instead of nothing, and any other event emits nothing.
An `ended` event closes the stream; its keys expire after `ttl_s`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.records import Record

PREFIX = "modstream:stream:"

# KEYS[1] the stream hash; ARGV: field for the owner, field for the record, event id, record JSON,
# status to set. Returns [owner event id, record JSON] after the claim.
_CLAIM = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 1 then
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
  if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[5]) end
end
return {redis.call('HGET', KEYS[1], ARGV[1]), redis.call('HGET', KEYS[1], ARGV[2])}
"""


@dataclass
class StreamState:
    stream_id: str
    status: str = ""  # "" (unknown), live, ended (a decision ended it), closed (the platform ended it)
    user_id: str | None = None
    last_pdq: str | None = None
    ended_by: str | None = None
    review_by: str | None = None
    frames: int = 0  # kept frames seen
    # frame_index -> the banked videos the frame is near: [[bank, item_id, distance, hash, category, severity]]
    hits: dict[int, list[list[Any]]] = field(default_factory=dict)
    end: Record | None = None  # the Decision that ended the stream
    review: Record | None = None  # {"d": its review Decision, "t": its ReviewTask}

    @property
    def over(self) -> bool:
        return self.status in ("ended", "closed")


class StreamStore(Protocol):
    def load(self, stream_ids: list[str]) -> dict[str, StreamState]: ...
    def save(
        self, states: list[StreamState], frames: dict[str, dict[int, str]], started_at: dict[str, int]
    ) -> None: ...
    def claim(
        self, stream_id: str, what: str, event_id: str, record: Record, status: str = ""
    ) -> tuple[str, Record]: ...
    def close(self, stream_id: str, closed_at: int) -> None: ...


class RedisStreamStore:
    def __init__(self, client: Any, ttl_s: int = 3600, window: int = 30) -> None:  # redis.Redis, decode_responses
        self.redis = client
        self.ttl_s = ttl_s
        self.window = window  # hits older than this many frames before the newest are not loaded

    def load(self, stream_ids: list[str]) -> dict[str, StreamState]:
        ids = list(dict.fromkeys(stream_ids))
        pipe = self.redis.pipeline(transaction=False)
        for sid in ids:
            pipe.hgetall(PREFIX + sid)
            pipe.hlen(PREFIX + sid + ":frames")
            pipe.hgetall(PREFIX + sid + ":hits")
        replies = pipe.execute()
        out = {}
        for i, sid in enumerate(ids):
            meta, frames, hits = replies[3 * i], replies[3 * i + 1], replies[3 * i + 2]
            decoded = {int(k): json.loads(v) for k, v in hits.items()}
            newest = max(decoded, default=0)
            out[sid] = StreamState(
                stream_id=sid,
                status=meta.get("status", ""),
                user_id=meta.get("user_id"),
                last_pdq=meta.get("last_pdq"),
                ended_by=meta.get("end_by"),
                review_by=meta.get("review_by"),
                end=json.loads(meta["end"]) if meta.get("end") else None,
                review=json.loads(meta["review"]) if meta.get("review") else None,
                frames=int(frames),
                hits={k: v for k, v in decoded.items() if k > newest - 4 * self.window},
            )
        return out

    def save(self, states: list[StreamState], frames: dict[str, dict[int, str]], started_at: dict[str, int]) -> None:
        """Writes what a batch learnt: status, user, last kept frame, kept frames and their hits."""
        pipe = self.redis.pipeline(transaction=False)
        for st in states:
            key = PREFIX + st.stream_id
            fields = {"status": st.status} if st.status == "live" else {}
            if st.user_id:
                fields["user_id"] = st.user_id
            if st.last_pdq:
                fields["last_pdq"] = st.last_pdq
            if fields:
                if st.status == "live":  # never reopen a stream that a concurrent batch ended
                    pipe.eval(_SET_UNLESS_OVER, 1, key, *[x for kv in fields.items() for x in kv])
                else:
                    pipe.hset(key, mapping=fields)
            if st.stream_id in started_at:
                pipe.hsetnx(key, "started_at", started_at[st.stream_id])
            if frames.get(st.stream_id):
                pipe.hset(key + ":frames", mapping={str(k): v for k, v in frames[st.stream_id].items()})
            hits = {str(k): json.dumps(v) for k, v in st.hits.items() if v}
            if hits:
                pipe.hset(key + ":hits", mapping=hits)
            for suffix in ("", ":frames", ":hits"):
                pipe.expire(key + suffix, self.ttl_s * 24)  # a live stream's state outlives it by a day at most
        pipe.execute()

    def claim(self, stream_id: str, what: str, event_id: str, record: Record, status: str = "") -> tuple[str, Record]:
        """Claims the stream's one `what` (end, review) for `event_id`; returns the owner and its record."""
        owner, stored = self.redis.eval(
            _CLAIM, 1, PREFIX + stream_id, f"{what}_by", what, event_id, json.dumps(record), status
        )
        return owner, json.loads(stored)

    def close(self, stream_id: str, closed_at: int) -> None:
        key = PREFIX + stream_id
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(key, "closed_at", closed_at)
        pipe.eval(_CLOSE, 1, key)
        for suffix in ("", ":frames", ":hits"):
            pipe.expire(key + suffix, self.ttl_s)
        pipe.execute()


# Sets fields unless the stream is already over (ended or closed by another event).
_SET_UNLESS_OVER = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'ended' or status == 'closed' then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""
# An `ended` event closes a stream that no decision ended (an ended one stays "ended").
_CLOSE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'ended' then redis.call('HSET', KEYS[1], 'status', 'closed') end
return 1
"""
