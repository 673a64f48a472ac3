"""A PDQ index that follows live bank changes without ever stopping to rebuild.

Every added entry gets a new id, never reused; an entry is live while its id maps to its
key. A search covers an immutable MultiIndex over the rows present when it was built (the
base) and a brute-force scan of the rows added since (the delta), and keeps the hits whose
id is still live: removing an entry only drops its id, which masks its row wherever it is.
Results are exactly those of a brute-force scan of the live entries.

Concurrency. Callers (BankTable) may add, remove and search from any threads; each call
takes the index's own short lock. Once the delta or the dead rows outgrow `max_delta`, an
add or remove starts one background builder thread, which
1. under the lock, notes the base and the delta's length (`cut`): rows below it never change;
2. without the lock, drops the rows whose id is dead and builds a new MultiIndex over the
   rest (seconds at a million hashes, while adds, removes and searches go on). A row whose
   entry is removed during the build may be kept: its dead id masks it later;
3. under the lock, swaps in the new base, with the rows added since `cut` as the new delta;
4. builds again if the limits are still exceeded, else exits.
Searches never build, and the caller's lock is never held during a build. While a build
runs, two bases are in memory (about 90 bytes per hash each).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from pipeline.banks.pdq_index import MultiIndex, as_words, hamming

logger = logging.getLogger(__name__)

_SLICE = 1 << 16  # ids checked per slice during a build, so the GIL is released in between


class LivePDQIndex:
    """Entry key -> PDQ hash, searchable by Hamming radius; thread-safe (see the module doc)."""

    def __init__(self, max_delta: int = 4096, build: Callable[[np.ndarray], MultiIndex] = MultiIndex) -> None:
        self.max_delta = max_delta
        self._build = build  # tests slow it down to act during a build
        self._lock = threading.Lock()
        self._builder: threading.Thread | None = None
        self.builds = 0  # completed rebuilds
        # Entries, kept across rebuilds.
        self._ids: dict[str, int] = {}  # key -> id of its live row
        self._keys: dict[int, str] = {}  # live id -> key
        self._next_id = 0
        # The current base and delta, swapped by a rebuild.
        self._base_bits = np.zeros((0, 32), dtype=np.uint8)
        self._base_ids = np.zeros(0, dtype=np.int64)  # base row -> id
        self._main = MultiIndex(self._base_bits)
        self._delta = np.empty((64, 32), dtype=np.uint8)  # rows [0, _delta_len) used; grows by doubling
        self._delta_ids = np.empty(64, dtype=np.int64)
        self._delta_len = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    # ---- updates -------------------------------------------------------------
    def add(self, key: str, hex_hash: str) -> None:
        """Adds or replaces the hash of `key`."""
        with self._lock:
            self._remove(key)
            if self._delta_len == len(self._delta):
                # New buffers: a builder may be reading the old ones, which stay as they are.
                self._delta = _grown(self._delta, self._delta_len)
                self._delta_ids = _grown(self._delta_ids, self._delta_len)
            row_id, self._next_id = self._next_id, self._next_id + 1
            self._delta[self._delta_len] = np.frombuffer(bytes.fromhex(hex_hash), dtype=np.uint8)
            self._delta_ids[self._delta_len] = row_id
            self._delta_len += 1
            self._ids[key] = row_id
            self._keys[row_id] = key
            self._maybe_build()

    def remove(self, key: str) -> None:
        with self._lock:
            self._remove(key)
            self._maybe_build()

    def _remove(self, key: str) -> None:
        row_id = self._ids.pop(key, None)
        if row_id is not None:
            del self._keys[row_id]

    def _needs_build(self) -> bool:
        rows = len(self._base_ids) + self._delta_len
        return self._delta_len > self.max_delta or rows - len(self._ids) > max(self.max_delta, rows // 4)

    def _maybe_build(self) -> None:
        if self._builder is None and self._needs_build():
            self._builder = threading.Thread(target=self._build_loop, name="pdq-index-build", daemon=True)
            self._builder.start()

    def wait_built(self, timeout_s: float | None = None) -> bool:
        """Waits for the running build, if any, to finish; false on timeout."""
        builder = self._builder
        if builder is not None:
            builder.join(timeout_s)
            return not builder.is_alive()
        return True

    # ---- the background build --------------------------------------------------
    def _build_loop(self) -> None:
        try:
            while True:
                self._rebuild()
                with self._lock:
                    if not self._needs_build():
                        return
        finally:
            with self._lock:
                self._builder = None

    def _rebuild(self) -> None:
        # 1. What to build from: rows below `cut` are written and never change.
        with self._lock:
            cut, keys = self._delta_len, self._keys
            base_bits, base_ids, delta, delta_ids = self._base_bits, self._base_ids, self._delta, self._delta_ids
        # 2. Build, without the lock. An id found dead stays dead, so this is safe unlocked.
        bits = np.concatenate([base_bits, delta[:cut]])
        ids = np.concatenate([base_ids, delta_ids[:cut]])
        alive = np.zeros(len(ids), dtype=bool)
        for start in range(0, len(ids), _SLICE):
            alive[start : start + _SLICE] = [i in keys for i in ids[start : start + _SLICE].tolist()]
        bits, ids = bits[alive], ids[alive]
        main = self._build(bits)
        # 3. Swap: the rows added during the build become the delta.
        with self._lock:
            added = self._delta_len - cut
            delta = np.empty((max(64, 2 * added), 32), dtype=np.uint8)
            delta_ids = np.empty(len(delta), dtype=np.int64)
            delta[:added] = self._delta[cut : self._delta_len]
            delta_ids[:added] = self._delta_ids[cut : self._delta_len]
            self._main, self._base_bits, self._base_ids = main, bits, ids
            self._delta, self._delta_ids, self._delta_len = delta, delta_ids, added
            self.builds += 1
        logger.debug("PDQ index rebuilt: %d rows, %d added during the build", len(ids), added)

    # ---- search ------------------------------------------------------------------
    def search(self, query_hex: list[str], radius: int) -> list[list[tuple[str, int]]]:
        """For each query, the (entry key, distance) of every live entry within radius."""
        out: list[list[tuple[str, int]]] = [[] for _ in query_hex]
        if not query_hex:
            return out
        queries = np.frombuffer(bytes.fromhex("".join(query_hex)), dtype=np.uint8).reshape(-1, 32)
        with self._lock:
            if not self._ids:
                return out
            q_rows, rows, dists = self._main.search(queries, radius)
            found = [(q_rows.tolist(), self._base_ids[rows].tolist(), dists.tolist())]
            if self._delta_len:
                words, q_words = as_words(self._delta[: self._delta_len]), as_words(queries)
                for qi in range(len(queries)):
                    d = hamming(words, np.broadcast_to(q_words[qi], words.shape))
                    hits = np.nonzero(d <= radius)[0]
                    found.append(([qi] * len(hits), self._delta_ids[hits].tolist(), d[hits].tolist()))
            for q_list, id_list, dist_list in found:
                for qi, row_id, dist in zip(q_list, id_list, dist_list, strict=True):
                    key = self._keys.get(row_id)
                    if key is not None:
                        out[qi].append((key, dist))
        return out


def _grown(array: np.ndarray, used: int) -> np.ndarray:
    out = np.empty((2 * len(array), *array.shape[1:]), dtype=array.dtype)
    out[:used] = array[:used]
    return out
