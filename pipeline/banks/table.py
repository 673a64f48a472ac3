"""The in-memory bank table: every live BankEntry, latest-wins by key, with per-type indexes.

The table is fed by `BankFollower` (from the topic) or directly in tests. It is
read by the match stage's thread and written by the follower's, so every
access takes the lock; lookups are dictionary reads and stay cheap.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from pipeline.records import Record, record_key

EXACT_TYPES = frozenset({"md5", "sha256"})


def bank_match(entry: Record, distance: int = 0) -> Record:
    return {
        "bank": entry["bank"],
        "signal_type": entry["signal_type"],
        "hash": entry["hash"],
        "distance": distance,
        "category": entry["category"],
        "severity": entry["severity"],
        "source": entry.get("source", ""),
    }


class BankTable:
    """Latest BankEntry per key; exact lookups by (signal_type, hash)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, Record] = {}
        self._exact: dict[tuple[str, str], dict[str, Record]] = {}
        self.version = 0  # bumps on every change; lets readers notice updates

    def __len__(self) -> int:
        return len(self._entries)

    def apply(self, key: str, entry: Record | None) -> None:
        """Applies one record of the topic: an entry replaces its key's, None deletes it."""
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._index_remove(key, old)
            if entry is not None:
                entry = {**entry, "hash": entry["hash"].lower()}
                self._entries[key] = entry
                self._index_add(key, entry)
            self.version += 1

    def load(self, entries: Iterable[Record]) -> None:
        for entry in entries:
            self.apply(record_key("banks", entry), entry)

    def _index_add(self, key: str, entry: Record) -> None:
        self._exact.setdefault((entry["signal_type"], entry["hash"]), {})[key] = entry

    def _index_remove(self, key: str, entry: Record) -> None:
        slot = self._exact.get((entry["signal_type"], entry["hash"]))
        if slot is not None:
            slot.pop(key, None)
            if not slot:
                del self._exact[(entry["signal_type"], entry["hash"])]

    def match_exact(self, signal_type: str, value: str) -> list[Record]:
        with self._lock:
            slot = self._exact.get((signal_type, value.lower()))
            return [bank_match(e) for e in slot.values()] if slot else []

    def entries(self) -> list[Record]:
        with self._lock:
            return list(self._entries.values())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts: dict[str, int] = {}
            for e in self._entries.values():
                counts[f"{e['bank']}/{e['signal_type']}"] = (
                    counts.get(f"{e['bank']}/{e['signal_type']}", 0) + 1
                )
            return counts
