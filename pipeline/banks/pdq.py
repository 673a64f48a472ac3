"""A PDQ index that follows live bank changes: an immutable multi-index over most entries,
a small brute-force delta for entries added since it was built, and a deletion mask.
It is rebuilt (at the next search) once the delta or the deleted rows outgrow `max_delta`.
Not thread-safe: BankTable serialises access."""

from __future__ import annotations

import numpy as np

from pipeline.banks.pdq_index import MultiIndex, as_words, hamming


class LivePDQIndex:
    def __init__(self, max_delta: int = 4096) -> None:
        self.max_delta = max_delta
        self._keys: list[str] = []  # row -> entry key
        self._rows: dict[str, int] = {}  # entry key -> row
        self._alive = bytearray()  # row -> 1 while its entry exists
        self._hashes: list[bytes] = []  # row -> 32 bytes, until the next rebuild
        self._bits = np.zeros((0, 32), dtype=np.uint8)  # rows [0, len(_bits)) as an array
        self._main = MultiIndex(self._bits)
        self._indexed = 0  # rows [0, _indexed) are in _main

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, key: str, hex_hash: str) -> None:
        self.remove(key)
        self._rows[key] = len(self._keys)
        self._keys.append(key)
        self._hashes.append(bytes.fromhex(hex_hash))
        self._alive.append(1)

    def remove(self, key: str) -> None:
        row = self._rows.pop(key, None)
        if row is not None:
            self._alive[row] = 0

    def _refresh(self) -> None:
        dead = len(self._keys) - len(self._rows)
        if len(self._keys) - self._indexed > self.max_delta or dead > max(self.max_delta, len(self._keys) // 4):
            live = [row for row, alive in enumerate(self._alive) if alive]
            self._keys = [self._keys[r] for r in live]
            self._hashes = [self._hashes[r] for r in live]
            self._rows = {k: i for i, k in enumerate(self._keys)}
            self._alive = bytearray(b"\x01" * len(live))
            self._bits = np.frombuffer(b"".join(self._hashes), dtype=np.uint8).reshape(-1, 32)
            self._main = MultiIndex(self._bits)
            self._indexed = len(live)
        elif len(self._bits) < len(self._hashes):
            self._bits = np.frombuffer(b"".join(self._hashes), dtype=np.uint8).reshape(-1, 32)

    def search(self, query_hex: list[str], radius: int) -> list[list[tuple[str, int]]]:
        """For each query, the (entry key, distance) of every live entry within radius."""
        out: list[list[tuple[str, int]]] = [[] for _ in query_hex]
        if not query_hex or not self._rows:
            return out
        self._refresh()
        queries = np.frombuffer(bytes.fromhex("".join(query_hex)), dtype=np.uint8).reshape(-1, 32)
        q_rows, rows, dists = self._main.search(queries, radius)
        found = [(q_rows.tolist(), rows.tolist(), dists.tolist())]
        delta = self._bits[self._indexed :]
        if len(delta):
            words, q_words = as_words(delta), as_words(queries)
            for qi in range(len(queries)):
                d = hamming(words, np.broadcast_to(q_words[qi], words.shape))
                hits = np.nonzero(d <= radius)[0]
                found.append(([qi] * len(hits), (hits + self._indexed).tolist(), d[hits].tolist()))
        for q_list, row_list, dist_list in found:
            for qi, row, dist in zip(q_list, row_list, dist_list, strict=True):
                if self._alive[row]:
                    out[qi].append((self._keys[row], dist))
        return out
