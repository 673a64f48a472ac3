"""Exact radius search over 256-bit PDQ hashes by multi-index hashing.

Each hash is cut into 16 chunks of 16 bits. If two hashes are within Hamming
distance d, then by the pigeonhole principle at least one chunk differs in at
most floor(d / 16) bits. So for each chunk we probe the buckets of the query's
chunk value with up to that many bits flipped, collect the hashes found there
as candidates, and keep those whose full distance is within d. Nothing within
d is missed: results equal a brute-force scan.

Buckets are kept as one sorted permutation per chunk plus an offsets table
(65,537 entries per chunk), so a probe is two array reads and everything runs
as whole-batch numpy operations: queries are meant to come in batches.

The index is immutable; `PDQIndex` in banks/table.py adds a small brute-force
delta for live additions and a deletion mask, and rebuilds when they grow.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

CHUNKS = 16
CHUNK_BITS = 16
BUCKETS = 1 << CHUNK_BITS


def hex_to_bits(hashes: list[str]) -> np.ndarray:
    """PDQ hex strings (64 hex digits) -> (N, 32) uint8."""
    if not hashes:
        return np.zeros((0, 32), dtype=np.uint8)
    return np.frombuffer(bytes.fromhex("".join(hashes)), dtype=np.uint8).reshape(-1, 32)


def bits_to_hex(bits: np.ndarray) -> list[str]:
    return [row.tobytes().hex() for row in bits]


def as_words(bits: np.ndarray) -> np.ndarray:
    """(N, 32) uint8 -> (N, 4) uint64, for Hamming distances by popcount."""
    return np.ascontiguousarray(bits).view(np.uint64).reshape(-1, 4)


def hamming(a_words: np.ndarray, b_words: np.ndarray) -> np.ndarray:
    """Row-wise Hamming distance of two (N, 4) uint64 arrays (or (4, N) with `columns`)."""
    return hamming_columns(a_words.T, b_words.T)


def hamming_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances of (4, N) uint64 word columns: four 1-D popcounts, summed.
    (A row-wise sum over a 4-wide axis is several times slower in numpy.)"""
    total = np.bitwise_count(a[0] ^ b[0]).astype(np.int16)
    for w in range(1, 4):
        total += np.bitwise_count(a[w] ^ b[w])
    return total


def _flip_masks(max_flips: int) -> np.ndarray:
    masks = [0]
    for f in range(1, max_flips + 1):
        masks += [sum(1 << b for b in bits) for bits in combinations(range(CHUNK_BITS), f)]
    return np.array(masks, dtype=np.int64)


class MultiIndex:
    """An immutable multi-index over `bits` ((N, 32) uint8); row i has id i."""

    def __init__(self, bits: np.ndarray) -> None:
        self.size = len(bits)
        self.columns = np.ascontiguousarray(as_words(bits).T)  # (4, N): gathered one word at a time
        chunks = np.ascontiguousarray(bits).view(np.uint16).reshape(-1, CHUNKS)  # (N, 16)
        self.order = np.empty((CHUNKS, self.size), dtype=np.int32)
        self.offsets = np.empty((CHUNKS, BUCKETS + 1), dtype=np.int64)
        for c in range(CHUNKS):
            column = chunks[:, c]
            self.order[c] = np.argsort(column, kind="stable")
            self.offsets[c, 0] = 0
            np.cumsum(np.bincount(column, minlength=BUCKETS), out=self.offsets[c, 1:])
        self._flat_order = self.order.ravel()

    def search(self, query_bits: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (query row, index row, distance) with distance <= radius, sorted by query then row."""
        empty = np.zeros(0, dtype=np.int64)
        if self.size == 0 or len(query_bits) == 0:
            return empty, empty, empty.astype(np.int32)
        masks = _flip_masks(radius // CHUNKS)
        q_chunks = np.ascontiguousarray(query_bits).view(np.uint16).reshape(-1, CHUNKS).astype(np.int64)
        keys = q_chunks[:, :, None] ^ masks[None, None, :]  # (Q, 16, M) bucket ids
        chunk_ids = np.broadcast_to(np.arange(CHUNKS)[None, :, None], keys.shape)
        lo = self.offsets[chunk_ids, keys].ravel()
        counts = self.offsets[chunk_ids, keys + 1].ravel() - lo
        total = int(counts.sum())
        if total == 0:
            return empty, empty, empty.astype(np.int32)
        # Expand every probe's bucket [lo, lo + count) into positions in the flat order array.
        chunk_base = (chunk_ids.ravel() * self.size).astype(np.int64)
        starts = np.cumsum(counts) - counts
        flat_position = np.repeat(lo + chunk_base - starts, counts) + np.arange(total)
        candidates = self._flat_order[flat_position]
        queries = np.repeat(np.arange(len(lo)) // (CHUNKS * len(masks)), counts)
        q_columns = as_words(query_bits).T
        # Two steps: the distance over the first 128 bits already rules out nearly every
        # random candidate, so the other two words are read only for the few left.
        partial = np.bitwise_count(self.columns[0][candidates] ^ q_columns[0][queries]).astype(np.int16)
        partial += np.bitwise_count(self.columns[1][candidates] ^ q_columns[1][queries])
        keep = partial <= radius
        queries, candidates, partial = queries[keep], candidates[keep], partial[keep]
        for w in (2, 3):
            partial += np.bitwise_count(self.columns[w][candidates] ^ q_columns[w][queries])
        keep = partial <= radius
        queries, candidates, distances = queries[keep], candidates[keep], partial[keep]
        # A near hash is found through several chunks: keep each (query, row) once.
        pair = queries.astype(np.int64) * self.size + candidates
        pair, first = np.unique(pair, return_index=True)
        return pair // self.size, pair % self.size, distances[first]


def brute_force(
    bits: np.ndarray, query_bits: np.ndarray, radius: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference: every (query, row, distance) within radius, by scanning everything."""
    words, q_words = as_words(bits), as_words(query_bits)
    out_q, out_r, out_d = [], [], []
    for qi in range(len(q_words)):
        d = hamming(words, q_words[qi][None, :])
        rows = np.nonzero(d <= radius)[0]
        out_q.append(np.full(len(rows), qi))
        out_r.append(rows)
        out_d.append(d[rows])
    if not out_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32)
    return np.concatenate(out_q), np.concatenate(out_r), np.concatenate(out_d)
