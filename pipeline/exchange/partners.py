"""The partner registry and the per-partner record of how their signals fared.

Partners live on the compacted `partners` topic (keyed by name), so every exchange process
follows the same registry (`PartnerTable`, applied by a TopicFollower). Counts live in Redis,
each counted once per id (the decision, or the signature it is about), so redeliveries do not
inflate them:

- modstream:partner:{name}            hash: imported, refused, confirmed, disputed, disputes_received
- modstream:partner:{name}:counted    set of "<what>:<id>" already counted
"""

from __future__ import annotations

import threading
from typing import Any

from pipeline.records import Record

TRUST_LEVELS = ("auto", "review", "ignore")
COUNTS = ("imported", "refused", "confirmed", "disputed", "disputes_received")
PREFIX = "modstream:partner:"
_COUNT_ONCE = """
if redis.call('SADD', KEYS[2], ARGV[1] .. ':' .. ARGV[2]) == 1 then redis.call('HINCRBY', KEYS[1], ARGV[1], 1) end
return 1
"""


def partner_bank(name: str, trust: str) -> str:
    """The local bank a partner's signals are imported into, by trust."""
    return f"partner.{name}" if trust == "auto" else f"partner-review.{name}"


def partner_of_bank(bank: str) -> str | None:
    """The partner a bank holds the signals of, or None for a local bank."""
    kind, _, name = bank.partition(".")
    return name if kind in ("partner", "partner-review") and name else None


class PartnerTable:
    """The latest Partner per name, and who signs as which platform id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._partners: dict[str, Record] = {}

    def apply(self, key: str, partner: Record | None) -> None:
        with self._lock:
            if partner is None:
                self._partners.pop(key, None)
            else:
                self._partners[key] = partner

    def by_platform(self, platform_id: str) -> Record | None:
        """The partner (active or removed) whose signals carry `platform_id`."""
        with self._lock:
            return next((p for p in self._partners.values() if p["platform_id"] == platform_id), None)

    def get(self, name: str) -> Record | None:
        with self._lock:
            return self._partners.get(name)

    def all(self) -> list[Record]:
        with self._lock:
            return sorted(self._partners.values(), key=lambda p: p["name"])


def trust_of(partner: Record, category: str) -> str:
    trust: str = (partner.get("category_trust") or {}).get(category) or partner["trust"]
    return trust


class RedisPartnerCounts:
    def __init__(self, client: Any) -> None:  # redis.Redis with decode_responses=True
        self.redis = client

    def count(self, name: str, what: str, ids: list[str]) -> None:
        """Counts `what` for partner `name` once per id."""
        if what not in COUNTS:
            raise ValueError(f"unknown count {what!r}")
        pipe = self.redis.pipeline(transaction=False)
        for one in ids:
            pipe.eval(_COUNT_ONCE, 2, PREFIX + name, PREFIX + name + ":counted", what, one)
        pipe.execute()

    def counts(self, names: list[str]) -> dict[str, dict[str, int]]:
        pipe = self.redis.pipeline(transaction=False)
        for name in names:
            pipe.hgetall(PREFIX + name)
        return {n: {c: int(v.get(c, 0)) for c in COUNTS} for n, v in zip(names, pipe.execute(), strict=True)}


_FIRST_SEEN = "redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) return redis.call('GET', KEYS[1])"


class RedisReplayGuard:
    """Where each signature was first seen on the exchange topic (partition/offset), kept for
    twice the signature's maximum age: the same signature at another place is a replay, while
    a redelivery of the same record (the same place) is not."""

    def __init__(self, client: Any, prefix: str = "modstream:exchange:seen:") -> None:
        self.redis = client
        self.prefix = prefix

    def first_seen(self, digests: list[tuple[str, str]], ttl_s: int) -> list[str]:
        pipe = self.redis.pipeline(transaction=False)
        for digest, position in digests:
            pipe.eval(_FIRST_SEEN, 1, self.prefix + digest, position, ttl_s)
        return [str(v) for v in pipe.execute()]
