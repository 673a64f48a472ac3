"""Exact radius search over 256-bit PDQ hashes by multi-index hashing.

Each hash is cut into 16 chunks of 16 bits. If two hashes are within Hamming
distance d, then by the pigeonhole principle at least one chunk differs in at
most floor(d / 16) bits. So for each chunk we probe the buckets of the query's
chunk value with up to that many bits flipped, and keep the hashes found there
whose full distance is within d. Nothing within d is missed: results equal a
brute-force scan (tests/unit/test_pdq_index.py checks it).

Layout, chosen because the search is bound by memory reads, not arithmetic:
- per chunk, a permutation sorting the hashes by that chunk, and an offsets
  table (65,537 entries) giving each bucket's range in it;
- per chunk, the first 128 bits of every hash in that chunk's order, so a
  bucket's candidates are read sequentially. Their distance over 128 bits
  already rules out nearly every random candidate; only the few left are
  looked up at random for the other 128 bits.
Memory: about 330 bytes per banked hash (330 MB for a million).

A hash found through several chunks is reported once, from the first chunk
that finds it. The kernel is compiled with numba and runs queries in parallel.
"""

from __future__ import annotations

import numba
import numpy as np

CHUNKS = 16
CHUNK_BITS = 16
BUCKETS = 1 << CHUNK_BITS
RESULTS_PER_QUERY = 256  # initial result capacity; queries with more are searched again


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
    """Row-wise Hamming distances of two (N, 4) uint64 arrays."""
    total = np.bitwise_count(a_words[:, 0] ^ b_words[:, 0]).astype(np.int16)
    for w in range(1, 4):
        total += np.bitwise_count(a_words[:, w] ^ b_words[:, w])
    return total


def _flip_masks(max_flips: int) -> np.ndarray:
    from itertools import combinations

    masks = [0]
    for f in range(1, max_flips + 1):
        masks += [sum(1 << b for b in bits) for bits in combinations(range(CHUNK_BITS), f)]
    return np.array(masks, dtype=np.uint64)


class MultiIndex:
    """An immutable multi-index over `bits` ((N, 32) uint8); row i has id i."""

    def __init__(self, bits: np.ndarray) -> None:
        self.size = len(bits)
        self.words = as_words(bits)
        chunks = np.ascontiguousarray(bits).view(np.uint16).reshape(-1, CHUNKS)  # (N, 16)
        self.order = np.empty((CHUNKS, self.size), dtype=np.int32)
        self.offsets = np.empty((CHUNKS, BUCKETS + 1), dtype=np.int64)
        self.head = np.empty((CHUNKS, self.size, 2), dtype=np.uint64)
        for c in range(CHUNKS):
            column = chunks[:, c]
            self.order[c] = np.argsort(column, kind="stable")
            self.offsets[c, 0] = 0
            np.cumsum(np.bincount(column, minlength=BUCKETS), out=self.offsets[c, 1:])
            self.head[c] = self.words[self.order[c], :2]

    def search(self, query_bits: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (query row, index row, distance) with distance <= radius, sorted by query then row."""
        if self.size == 0 or len(query_bits) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16)
        queries = as_words(query_bits)
        masks = _flip_masks(radius // CHUNKS)
        rows, dists, counts = self._run(queries, masks, radius, RESULTS_PER_QUERY)
        overflow = np.nonzero(counts > RESULTS_PER_QUERY)[0]
        if len(overflow):  # rare: a query near very many banked hashes
            more_rows, more_dists, _ = self._run(queries[overflow], masks, radius, int(counts.max()))
            rows, dists = _widen(rows, more_rows.shape[1]), _widen(dists, more_rows.shape[1])
            rows[overflow], dists[overflow] = more_rows, more_dists
        valid = np.arange(rows.shape[1])[None, :] < counts[:, None]
        q_rows = np.nonzero(valid)[0]
        found_rows, found_dists = rows[valid].astype(np.int64), dists[valid]
        order = np.lexsort((found_rows, q_rows))
        return q_rows[order], found_rows[order], found_dists[order]

    def _run(self, queries: np.ndarray, masks: np.ndarray, radius: int, cap: int) -> tuple[np.ndarray, ...]:
        rows = np.empty((len(queries), cap), dtype=np.int32)
        dists = np.empty((len(queries), cap), dtype=np.int16)
        counts = np.empty(len(queries), dtype=np.int64)
        _search_kernel(
            self.words,
            self.head,
            self.order,
            self.offsets,
            queries,
            masks,
            radius,
            radius // CHUNKS,
            rows,
            dists,
            counts,
        )
        return rows, dists, counts


def _widen(array: np.ndarray, width: int) -> np.ndarray:
    out = np.empty((array.shape[0], width), dtype=array.dtype)
    out[:, : array.shape[1]] = array
    return out


@numba.njit(inline="always")
def _popcount(x: np.uint64) -> int:
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return int((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


@numba.njit(parallel=True, nogil=True, cache=True)
def _search_kernel(  # type: ignore[no-untyped-def]  # numba infers the types of the arrays
    words, head, order, offsets, queries, masks, radius, max_flips, out_rows, out_dists, out_counts
):
    cap = out_rows.shape[1]
    for q in numba.prange(queries.shape[0]):
        found = 0
        for c in range(CHUNKS):
            query_chunk = (queries[q, c // 4] >> np.uint64(16 * (c % 4))) & np.uint64(0xFFFF)
            for mask in masks:
                bucket = int(query_chunk ^ mask)
                for pos in range(offsets[c, bucket], offsets[c, bucket + 1]):
                    d = _popcount(head[c, pos, 0] ^ queries[q, 0]) + _popcount(head[c, pos, 1] ^ queries[q, 1])
                    if d > radius:
                        continue
                    row = order[c, pos]
                    d += _popcount(words[row, 2] ^ queries[q, 2]) + _popcount(words[row, 3] ^ queries[q, 3])
                    if d > radius:
                        continue
                    earlier = False  # would an earlier chunk have found it? then it is reported there
                    for c2 in range(c):
                        diff = (words[row, c2 // 4] ^ queries[q, c2 // 4]) >> np.uint64(16 * (c2 % 4))
                        if _popcount(diff & np.uint64(0xFFFF)) <= max_flips:
                            earlier = True
                            break
                    if earlier:
                        continue
                    if found < cap:
                        out_rows[q, found] = row
                        out_dists[q, found] = d
                    found += 1
        out_counts[q] = found


def brute_force(bits: np.ndarray, query_bits: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference: every (query, row, distance) within radius, by scanning everything."""
    words, q_words = as_words(bits), as_words(query_bits)
    out_q, out_r, out_d = [], [], []
    for qi in range(len(q_words)):
        d = hamming(words, np.broadcast_to(q_words[qi], words.shape))
        rows = np.nonzero(d <= radius)[0]
        out_q.append(np.full(len(rows), qi))
        out_r.append(rows)
        out_d.append(d[rows])
    if not out_q:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16)
    return np.concatenate(out_q), np.concatenate(out_r), np.concatenate(out_d)
