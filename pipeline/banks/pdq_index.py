"""Exact radius search over 256-bit PDQ hashes by multi-index hashing, in under 100 bytes per hash.

Pigeonhole. The hash is cut into 11 disjoint chunks (3 of 24 bits, then 8 of 23). Chunk c gets
a threshold t_c with sum(t_c + 1) > radius: if two hashes are within `radius` bits, some chunk c
differs in at most t_c bits, else they would differ in sum(t_c + 1) bits or more. At radius 31,
t_c = 2 for ten chunks and 1 for the last. A banked hash is reported from the first chunk that
finds it, so once. Results equal a brute-force scan exactly (tests/unit/test_pdq_index.py and
bench/matching.py check it).

Layout, for N hashes and p bucket bits per chunk (p = 16 up to 2M hashes, then growing with N
up to 20, about 15 to 30 hashes per bucket):
- `words`: the hashes, (N, 4) uint64: 32 bytes per hash (a view of the caller's array);
- per chunk, `perm`: the rows sorted by the chunk's value, uint32: 4 bytes per hash;
- per chunk, `keys`: the value's last (width - p) bits, 7 or 8, in that order, uint8: 1 byte;
- per chunk, `offsets`: where each bucket (the value's first p bits) starts, uint32, 2**p + 1.
So 87 bytes per hash plus the offsets tables (2.9 MB at p=16). Measured (sum of the arrays'
nbytes / N): 89.9 bytes per hash at 1M hashes, 89.3 at 10M (p=19): 10M hashes take 0.89 GB.
A build needs 12 bytes per hash of scratch per build thread besides, freed when it ends.
The layout before took 360 bytes per hash at 1M: 16 chunks of 16 bits at t=1, each with its
permutation and a copy of every hash's first 128 bits in its order.

Search, compiled with numba, per block of queries and per chunk:
1. probes: each query's buckets within t_c bits of its own, with the flips left for the key
   (t_c minus the bucket's flips): 137 per query and chunk at radius 31 and p=16;
2. the block's probes are sorted by bucket (a counting sort on their top 12 bits), so that
   buckets are read in address order rather than at random, and are prefetched ahead;
3. each probed bucket's keys (one byte each, sequential) are compared with the query's: a row
   whose key is within the flips left differs in at most t_c bits of the chunk and "survives".
   Most probes leave no flips for the key: the key must be equal, found by binary search (keys
   ascend within a bucket);
4. survivors' rows and then full hashes are read, prefetched ahead; those within radius that
   no earlier chunk finds are reported.
A query has about 300 unrelated survivors per million banked hashes (the sum over chunks of
C(width, <= t) / 2**width), where 16 chunks of 16 bits at t=1 have about 4,000 candidates.
Query blocks run on numba.get_num_threads() threads, the kernels releasing the GIL.

Alternatives measured on uniform banks (2,000 queries at 1M, 1,000 at 10M, half near-duplicates;
one thread; queries per second of CPU time, as the shared 2-core machine was busy), bytes per
hash at 1M / 10M, queries/s at 1M / 10M:
- the layout before (16 chunks of 16 bits at t=1, permutation and 128-bit head copy per chunk):
  360 / 353 bytes, 11,300 / 4,060 queries/s;
- 16 chunks of 16 bits at t=1, permutation only, candidates read in `words`: 100.2 / 96.4 bytes,
  12,000 / 1,040 queries/s (4,000 random reads per query per million hashes);
- 8 chunks of 32 bits at t=3, permutation and a uint16 key: 82.1 / 80.2 bytes, 4,000 / 2,200
  queries/s (5,576 probes per query);
- this one (11 chunks of 23-24 bits at t=2, permutation and a uint8 key): 89.9 / 89.3 bytes,
  14,000-16,500 / 4,650-5,900 queries/s.
"""

from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

CHUNK_WIDTHS = np.array([24, 24, 24, 23, 23, 23, 23, 23, 23, 23, 23], dtype=np.int64)
CHUNK_STARTS = np.concatenate([[0], np.cumsum(CHUNK_WIDTHS)[:-1]]).astype(np.int64)
CHUNKS = len(CHUNK_WIDTHS)
MIN_PREFIX_BITS, MAX_PREFIX_BITS = 16, 20  # keys hold the chunk's other bits: at most 8 when p >= 16
SORT_BITS = 12  # probes are sorted into 2**12 bins of neighbouring buckets
PROBES_PER_BLOCK = 1 << 20  # bounds the probe arrays: the query blocks are cut to fit
PREFETCH_AHEAD = 16  # probes / survivors ahead whose memory is prefetched
MIN_QUERIES_PER_THREAD = 32


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


def prefix_bits(size: int) -> int:
    """Bucket bits per chunk: about 16 to 32 hashes per bucket, within [16, 20]."""
    return int(np.clip(size.bit_length() - 5, MIN_PREFIX_BITS, MAX_PREFIX_BITS))


def chunk_thresholds(radius: int) -> np.ndarray:
    """Per chunk, the most bits it may differ in (-1: not probed), with sum(t + 1) > radius."""
    base = radius // CHUNKS
    thresholds = np.full(CHUNKS, base, dtype=np.int64)
    spare = CHUNKS * (base + 1) - (radius + 1)  # chunks that can do with one flip less
    thresholds[CHUNKS - spare :] -= 1  # the 23-bit chunks: the more survivors a chunk lets through, the better
    return thresholds


@functools.lru_cache(maxsize=64)
def _masks(bits: int, max_flips: int) -> tuple[np.ndarray, np.ndarray]:
    """Every `bits`-bit mask of at most max_flips set bits, by number of set bits, and that number."""
    values = np.arange(1 << bits, dtype=np.int64)
    flips = np.bitwise_count(values).astype(np.int64)
    keep = np.nonzero(flips <= max_flips)[0]
    order = np.argsort(flips[keep], kind="stable")
    return values[keep][order], flips[keep][order]


class MultiIndex:
    """An immutable multi-index over `bits` ((N, 32) uint8); row i has id i."""

    def __init__(self, bits: np.ndarray) -> None:
        self.size = len(bits)
        if self.size >= 1 << 32:
            raise ValueError("at most 2**32 - 1 hashes per index")
        self.words = as_words(bits)
        self.prefix_bits = prefix_bits(self.size)
        self.perm = np.empty((CHUNKS, self.size), dtype=np.uint32)
        self.keys = np.empty((CHUNKS, self.size), dtype=np.uint8)
        self.offsets = np.empty((CHUNKS, (1 << self.prefix_bits) + 1), dtype=np.uint32)
        threads = max(1, min(numba.get_num_threads(), CHUNKS, self.size >> 16))
        scratch = [tuple(np.empty(self.size, dtype=np.uint32) for _ in range(3)) for _ in range(threads)]

        def build(thread: int) -> None:
            for c in range(thread, CHUNKS, threads):
                _build_chunk(
                    self.words,
                    CHUNK_STARTS[c],
                    CHUNK_WIDTHS[c],
                    self.prefix_bits,
                    self.perm[c],
                    self.keys[c],
                    self.offsets[c],
                    *scratch[thread],
                )

        if threads == 1:
            build(0)
        else:
            with ThreadPoolExecutor(threads, thread_name_prefix="pdq-build") as pool:
                list(pool.map(build, range(threads)))
        largest = int(np.diff(self.offsets, axis=1).max()) if self.size else 0
        self._buffer = max(8192, 2 * largest)  # survivors buffered before verifying; a whole bucket fits

    @property
    def nbytes(self) -> int:
        """Bytes held by the index's arrays, the hashes included."""
        return self.words.nbytes + self.perm.nbytes + self.keys.nbytes + self.offsets.nbytes

    def search(self, query_bits: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All (query row, index row, distance) with distance <= radius, sorted by query then row."""
        if self.size == 0 or len(query_bits) == 0 or radius < 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int16)
        queries = as_words(query_bits)
        radius = min(radius, 256)  # no two hashes differ in more: a larger radius changes nothing
        thresholds = chunk_thresholds(radius)
        per_chunk = [_masks(self.prefix_bits, int(t)) if t >= 0 else (np.zeros(0, np.int64),) * 2 for t in thresholds]
        width = max(len(m) for m, _ in per_chunk)
        masks = np.zeros((CHUNKS, width), dtype=np.int64)
        flips = np.zeros((CHUNKS, width), dtype=np.int64)
        counts = np.zeros(CHUNKS, dtype=np.int64)
        for c, (m, f) in enumerate(per_chunk):
            masks[c, : len(m)], flips[c, : len(f)], counts[c] = m, f, len(m)
        block = max(1, PROBES_PER_BLOCK // max(1, width))

        def run(start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            found_q, rows, dists = _search_kernel(
                (self.words, self.perm, self.keys, self.offsets),
                (CHUNK_STARTS, CHUNK_WIDTHS, thresholds),
                (self.prefix_bits, masks, flips, counts),
                queries[start:stop],
                radius,
                block,
                self._buffer,
            )
            return found_q.astype(np.int64) + start, rows, dists

        threads = min(numba.get_num_threads(), max(1, len(queries) // MIN_QUERIES_PER_THREAD))
        if threads <= 1:
            q_rows, rows, dists = run(0, len(queries))
        else:
            bounds = np.linspace(0, len(queries), threads + 1).astype(np.int64).tolist()
            parts = list(_pool().map(run, bounds[:-1], bounds[1:]))
            q_rows, rows, dists = (np.concatenate([p[i] for p in parts]) for i in range(3))
        order = np.lexsort((rows, q_rows))
        return q_rows[order], rows[order], dists[order]


_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="pdq-search")
        return _POOL


# ---- numba kernels -------------------------------------------------------------------------


@intrinsic
def _popcount(typingctx, x):  # type: ignore[no-untyped-def]  # numba intrinsic: the CPU's popcnt, as int64
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        count = builder.ctpop(args[0])
        width = x.bitwidth
        if width < 64:
            return builder.zext(count, ir.IntType(64))
        return count

    return types.int64(x), codegen


@intrinsic
def _prefetch(typingctx, array, i, j):  # type: ignore[no-untyped-def]  # numba intrinsic: prefetch array[i, j]
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        index = [context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 2)]
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, index)
        i8_pointer = builder.bitcast(pointer, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        function = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8_pointer.type, i32, i32, i32]), "llvm.prefetch"
        )
        builder.call(function, [i8_pointer, i32(0), i32(3), i32(1)])  # read, keep in all caches, data
        return context.get_dummy_value()

    return types.void(array, i, j), codegen


@numba.njit(cache=True)
def _chunk(w0, w1, w2, w3, start, width):  # type: ignore[no-untyped-def]
    """Bits [start, start + width) of the 256-bit little-endian value w0..w3 (width <= 32)."""
    word = start >> 6
    shift = start & 63
    if word == 0:
        low, high = w0, w1
    elif word == 1:
        low, high = w1, w2
    elif word == 2:
        low, high = w2, w3
    else:
        low, high = w3, np.uint64(0)
    value = low >> np.uint64(shift)
    if shift + width > 64:
        value |= high << np.uint64(64 - shift)
    return value & ((np.uint64(1) << np.uint64(width)) - np.uint64(1))


@numba.njit(nogil=True, cache=True)
def _build_chunk(words, start, width, p, perm, keys, offsets, values, sorted_values, sorted_rows):  # type: ignore[no-untyped-def]
    """One chunk's order: the rows sorted by the chunk's value (bucket, then key), then by row.
    An LSD radix sort in two passes of about 12 bits: one pass of 2**p bins would write all over
    memory."""
    n = words.shape[0]
    key_bits = np.uint32(width - p)
    key_mask = (np.uint32(1) << key_bits) - np.uint32(1)
    for b in range(offsets.shape[0]):
        offsets[b] = 0
    for i in range(n):
        value = np.uint32(_chunk(words[i, 0], words[i, 1], words[i, 2], words[i, 3], start, width))
        values[i] = value
        offsets[(value >> key_bits) + np.uint32(1)] += 1
    for b in range(offsets.shape[0] - 1):
        offsets[b + 1] += offsets[b]
    low_bits = np.uint32(width // 2)
    low_mask = (np.uint32(1) << low_bits) - np.uint32(1)
    bins = np.zeros((1 << (width - width // 2)) + 1, dtype=np.int64)
    # pass 1, by the value's low bits: values, rows -> sorted_values, sorted_rows
    for i in range(n):
        bins[(values[i] & low_mask) + np.uint32(1)] += 1
    for b in range(bins.shape[0] - 1):
        bins[b + 1] += bins[b]
    for i in range(n):
        digit = values[i] & low_mask
        pos = bins[digit]
        bins[digit] = pos + 1
        sorted_values[pos] = values[i]
        sorted_rows[pos] = i
    # pass 2, stable, by the value's high bits
    for b in range(bins.shape[0]):
        bins[b] = 0
    for i in range(n):
        bins[(sorted_values[i] >> low_bits) + np.uint32(1)] += 1
    for b in range(bins.shape[0] - 1):
        bins[b + 1] += bins[b]
    for i in range(n):
        digit = sorted_values[i] >> low_bits
        pos = bins[digit]
        bins[digit] = pos + 1
        perm[pos] = sorted_rows[i]
        keys[pos] = sorted_values[i] & key_mask


# A probe is one int64: bucket << 28 | query << 8 | key flips left (queries per block < 2**20).
_QUERY_SHIFT, _BUCKET_SHIFT = 8, 28


@numba.njit(nogil=True, cache=True)
def _probes(queries, c, starts, widths, p, thresholds, masks, flips, count, probes, query_keys):  # type: ignore[no-untyped-def]
    """Every probe of chunk c for `queries`; returns their number."""
    key_bits = np.uint64(widths[c] - p)
    key_mask = (np.uint64(1) << key_bits) - np.uint64(1)
    n = 0
    for q in range(queries.shape[0]):
        value = _chunk(queries[q, 0], queries[q, 1], queries[q, 2], queries[q, 3], starts[c], widths[c])
        query_keys[q] = np.int64(value & key_mask)
        prefix = np.int64(value >> key_bits)
        for j in range(count):
            bucket = prefix ^ masks[c, j]
            probes[n] = (bucket << _BUCKET_SHIFT) | (q << _QUERY_SHIFT) | (thresholds[c] - flips[c, j])
            n += 1
    return n


@numba.njit(nogil=True, cache=True)
def _sort_probes(probes, n, shift, bins, out):  # type: ignore[no-untyped-def]
    """Counting sort of the first n probes by bucket >> shift, into out."""
    shift += _BUCKET_SHIFT
    for b in range(bins.shape[0]):
        bins[b] = 0
    for i in range(n):
        bins[(probes[i] >> shift) + 1] += 1
    for b in range(bins.shape[0] - 1):
        bins[b + 1] += bins[b]
    for i in range(n):
        b = probes[i] >> shift
        pos = bins[b]
        bins[b] = pos + 1
        out[pos] = probes[i]


@numba.njit(nogil=True, cache=True)
def _sweep(keys, offsets, c, probes, n, i, query_keys, sv_query, sv_chunk, sv_pos, ns):  # type: ignore[no-untyped-def]
    """Reads the probed buckets from probe i on, appending survivors (query, chunk, position);
    stops before a bucket that might not fit in the survivor buffer. Returns (next probe,
    survivors buffered). No array is reassigned here: numba would count references in the
    innermost loop."""
    room = sv_pos.shape[0]
    while i < n:
        probe = probes[i]
        b = probe >> _BUCKET_SHIFT
        start = np.int64(offsets[c, b])
        end = np.int64(offsets[c, b + 1])
        if ns + (end - start) > room:
            break
        if i + 2 * PREFETCH_AHEAD < n:
            _prefetch(offsets, c, probes[i + 2 * PREFETCH_AHEAD] >> _BUCKET_SHIFT)
        if i + PREFETCH_AHEAD < n:
            _prefetch(keys, c, offsets[c, probes[i + PREFETCH_AHEAD] >> _BUCKET_SHIFT])
        q = (probe >> _QUERY_SHIFT) & 0xFFFFF
        allowed = probe & 0xFF
        query_key = query_keys[q]
        if allowed == 0 and end - start > 4:  # the key must match: binary search (keys ascend in a bucket)
            base, size = start, end - start
            while size > 1:
                half = size >> 1
                if np.int64(keys[c, base + half]) < query_key:
                    base += half
                size -= half
            if np.int64(keys[c, base]) < query_key:
                base += 1
            while base < end and np.int64(keys[c, base]) == query_key:
                sv_query[ns] = q
                sv_chunk[ns] = c
                sv_pos[ns] = base
                ns += 1
                base += 1
        else:
            for pos in range(start, end):
                if _popcount(np.int64(keys[c, pos]) ^ query_key) <= allowed:
                    sv_query[ns] = q
                    sv_chunk[ns] = c
                    sv_pos[ns] = pos
                    ns += 1
        i += 1
    return i, ns


@numba.njit(nogil=True, cache=True)
def _verify(words, perm, queries, q_base, geometry, radius, survivors, ns, out, nout):  # type: ignore[no-untyped-def]
    """Keeps the survivors within radius that no earlier chunk finds; `out` must have room for ns
    more. Survivors name queries by their row in `queries`, results by q_base + that row."""
    starts, widths, thresholds = geometry
    sv_query, sv_chunk, sv_pos = survivors
    out_q, out_r, out_d = out
    for i in range(ns):
        if i + 2 * PREFETCH_AHEAD < ns:
            _prefetch(perm, sv_chunk[i + 2 * PREFETCH_AHEAD], sv_pos[i + 2 * PREFETCH_AHEAD])
        if i + PREFETCH_AHEAD < ns:
            _prefetch(words, perm[sv_chunk[i + PREFETCH_AHEAD], sv_pos[i + PREFETCH_AHEAD]], 0)
        q = sv_query[i]
        row = np.int64(perm[sv_chunk[i], sv_pos[i]])
        x0 = words[row, 0] ^ queries[q, 0]
        x1 = words[row, 1] ^ queries[q, 1]
        x2 = words[row, 2] ^ queries[q, 2]
        x3 = words[row, 3] ^ queries[q, 3]
        d = _popcount(x0) + _popcount(x1) + _popcount(x2) + _popcount(x3)
        if d > radius:
            continue
        earlier = False  # would an earlier chunk have found it? then it is reported there
        for c2 in range(sv_chunk[i]):
            if thresholds[c2] >= 0 and _popcount(_chunk(x0, x1, x2, x3, starts[c2], widths[c2])) <= thresholds[c2]:
                earlier = True
                break
        if not earlier:
            out_q[nout] = q_base + q
            out_r[nout] = row
            out_d[nout] = d
            nout += 1
    return nout


@numba.njit(cache=True)
def _fit(array, size):  # type: ignore[no-untyped-def]
    if size <= array.shape[0]:
        return array
    out = np.empty(max(size, 2 * array.shape[0]), dtype=array.dtype)
    for i in range(array.shape[0]):  # a loop: slice assignment takes numba seconds to compile
        out[i] = array[i]
    return out


@numba.njit(nogil=True, cache=True)
def _search_kernel(index, geometry, probing, queries, radius, block, buffer):  # type: ignore[no-untyped-def]
    """(query row, index row, distance) of every match, unsorted. index: (words, perm, keys,
    offsets); geometry: (chunk starts, widths, thresholds); probing: (prefix bits, masks, flips,
    masks per chunk)."""
    words, perm, keys, offsets = index
    starts, widths, thresholds = geometry
    p, masks, flips, counts = probing
    nq = queries.shape[0]
    out = (np.empty(max(16, nq), np.int32), np.empty(max(16, nq), np.int64), np.empty(max(16, nq), np.int16))
    nout = np.int64(0)  # not a literal 0: numba would compile the callees for it too
    size = min(nq, block) * masks.shape[1]
    probes, sorted_probes = np.empty(size, np.int64), np.empty(size, np.int64)
    shift = max(0, p - SORT_BITS)
    bins = np.empty((1 << (p - shift)) + 1, dtype=np.int64)
    query_keys = np.empty(min(nq, block), dtype=np.int64)
    survivors = (np.empty(buffer, np.int32), np.empty(buffer, np.int64), np.empty(buffer, np.int64))
    sv_query, sv_chunk, sv_pos = survivors
    for q0 in range(0, nq, block):
        block_queries = queries[q0 : q0 + block]
        ns = np.int64(0)
        for c in range(starts.shape[0]):
            if thresholds[c] < 0:
                continue
            n = _probes(block_queries, c, starts, widths, p, thresholds, masks, flips, counts[c], probes, query_keys)
            if n >= bins.shape[0]:  # enough probes to be worth reading the buckets in address order
                _sort_probes(probes, n, shift, bins, sorted_probes)
                chunk_probes = sorted_probes
            else:
                chunk_probes = probes
            i = np.int64(0)
            while i < n:
                i, ns = _sweep(keys, offsets, c, chunk_probes, n, i, query_keys, sv_query, sv_chunk, sv_pos, ns)
                if i < n or ns > buffer // 2:  # the buffer is full, or half: verify its survivors
                    out = (_fit(out[0], nout + ns), _fit(out[1], nout + ns), _fit(out[2], nout + ns))
                    nout = _verify(words, perm, block_queries, q0, geometry, radius, survivors, ns, out, nout)
                    ns = np.int64(0)
        out = (_fit(out[0], nout + ns), _fit(out[1], nout + ns), _fit(out[2], nout + ns))
        nout = _verify(words, perm, block_queries, q0, geometry, radius, survivors, ns, out, nout)
    return out[0][:nout], out[1][:nout], out[2][:nout]


@numba.njit(nogil=True, cache=True)
def _brute_force_kernel(words, queries, radius, out_q, out_r, out_d):  # type: ignore[no-untyped-def]
    n = 0
    for q in range(queries.shape[0]):
        for row in range(words.shape[0]):
            d = (
                _popcount(words[row, 0] ^ queries[q, 0])
                + _popcount(words[row, 1] ^ queries[q, 1])
                + _popcount(words[row, 2] ^ queries[q, 2])
                + _popcount(words[row, 3] ^ queries[q, 3])
            )
            if d <= radius:
                if n == out_q.shape[0]:
                    return -1
                out_q[n] = q
                out_r[n] = row
                out_d[n] = d
                n += 1
    return n


def brute_force(bits: np.ndarray, query_bits: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference: every (query, row, distance) within radius, by scanning everything."""
    words, q_words = as_words(bits), as_words(query_bits)
    capacity = 4096
    while True:  # rarely more than once: few pairs are within radius
        out_q, out_r, out_d = np.empty(capacity, np.int64), np.empty(capacity, np.int64), np.empty(capacity, np.int16)
        n = _brute_force_kernel(words, q_words, radius, out_q, out_r, out_d)
        if n >= 0:
            return out_q[:n], out_r[:n], out_d[:n]
        capacity *= 16
