"""Benchmark: exact PDQ matching (Hamming distance <= 31), in one run, on the same hashes and queries:

- threatexchange PDQIndex, the index behind Meta's Hasher-Matcher-Actioner (faiss
  IndexBinaryMultiHash inside), queried one hash at a time through its API, as HMA does;
- faiss IndexBinaryMultiHash on its own (256 bits, 16 maps of 16 bits, one flip: exact at 31),
  all queries in one range_search call, one thread;
- modstream's MultiIndex, all queries in one call, one thread and two threads.

Two banks: uniform random hashes, and one shaped like real banks (near-duplicate variants, 1 to
20 bits away, of a few thousand base images: 333 per base). Queries: half near-duplicates of
banked hashes (0 to 40 bits flipped, so some fall beyond the threshold), half unrelated. Every
result set is asserted equal to a brute-force scan (threatexchange's on its first
--baseline-queries queries). Then the memory of modstream's index at 10M hashes (--big).

    python bench/matching.py [--size 1000000] [--queries 2000] [--baseline-queries 500] [--big 10000000]
    python bench/matching.py --quick    # 200,000 hashes, 1,000,000 for the memory line
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numba  # noqa: E402

from pipeline.banks.pdq_index import MultiIndex, bits_to_hex, brute_force  # noqa: E402

THRESHOLD = 31
MAX_THREADS = numba.get_num_threads()  # numba's default: all cores, unless NUMBA_NUM_THREADS says fewer
VARIANTS_PER_BASE = 333
Results = tuple[np.ndarray, np.ndarray, np.ndarray]  # (query, banked row, distance), sorted


# ---- data ---------------------------------------------------------------------------------
def flip_bits(rows: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of `rows` ((n, 32) uint8) with counts[i] distinct random bits of row i flipped."""
    out = rows.copy()
    index = np.arange(len(rows))
    chosen = np.full((len(rows), int(counts.max(initial=0))), -1, dtype=np.int64)
    for j in range(chosen.shape[1]):
        todo = np.nonzero(counts > j)[0]
        while len(todo):  # draw bit j of each row, again where it repeats an earlier one
            chosen[todo, j] = rng.integers(0, 256, len(todo))
            todo = todo[(chosen[todo, :j] == chosen[todo, j : j + 1]).any(axis=1)]
        rows_j = index[counts > j]
        bit = chosen[rows_j, j]
        out[rows_j, bit // 8] ^= (1 << (bit % 8)).astype(np.uint8)
    return out


def make_bank(size: int, clustered: bool, rng: np.random.Generator) -> np.ndarray:
    if not clustered:
        return rng.integers(0, 256, (size, 32), dtype=np.uint8)
    bases = rng.integers(0, 256, (max(1, size // VARIANTS_PER_BASE), 32), dtype=np.uint8)
    return flip_bits(bases[rng.integers(0, len(bases), size)], rng.integers(1, 21, size), rng)


def make_queries(bank: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    near = count // 2
    queries = np.concatenate(
        [
            flip_bits(bank[rng.integers(0, len(bank), near)], rng.integers(0, 41, near), rng),
            rng.integers(0, 256, (count - near, 32), dtype=np.uint8),
        ]
    )
    return queries[rng.permutation(count)]


# ---- measuring ----------------------------------------------------------------------------
def rss_bytes() -> int:
    """Resident memory of this process, after handing freed heap back to the system (so that a
    build's growth shows); 0 where /proc is missing."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # glibc only
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def timed(run: Callable[[], Results], repeat: int = 1) -> tuple[float, float, Results]:
    """Best wall seconds and best CPU seconds (this process) over `repeat` runs, and the results."""
    wall = cpu = float("inf")
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        results = run()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu, results


def canonical(q: np.ndarray, rows: np.ndarray, dists: np.ndarray) -> Results:
    q, rows, dists = np.asarray(q, np.int64), np.asarray(rows, np.int64), np.asarray(dists, np.int64)
    order = np.lexsort((rows, q))
    return q[order], rows[order], dists[order]


def assert_same(name: str, got: Results, want: Results) -> None:
    same = all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    assert same, f"{name}: results differ from brute force ({len(got[0])} vs {len(want[0])} matches)"


# ---- the indexes --------------------------------------------------------------------------
class Row:
    def __init__(self, name: str, build_s: float, memory: float, queries: int, wall: float, cpu: float) -> None:
        self.name, self.build_s, self.memory = name, build_s, memory
        self.qps, self.cpu_us = queries / wall, 1e6 * cpu / queries


def run_threatexchange(bank: np.ndarray, queries: np.ndarray, want: Results) -> Row:
    from threatexchange.signal_type.pdq.pdq_index import PDQIndex

    hexes, q_hex = bits_to_hex(bank), bits_to_hex(queries)
    rss, started = rss_bytes(), time.perf_counter()
    index = PDQIndex([(h, i) for i, h in enumerate(hexes)])
    build, memory = time.perf_counter() - started, (rss_bytes() - rss) / len(bank)

    def run() -> Results:
        found = [[(m.metadata, m.similarity_info.distance) for m in index.query(h)] for h in q_hex]
        q = [qi for qi, hits in enumerate(found) for _ in hits]
        return canonical(
            np.array(q), np.array([r for h in found for r, _ in h]), np.array([d for h in found for _, d in h])
        )

    wall, cpu, got = timed(run)
    assert_same("threatexchange PDQIndex", got, want)
    return Row("threatexchange PDQIndex (one query a call)", build, memory, len(queries), wall, cpu)


def run_faiss(bank: np.ndarray, queries: np.ndarray, want: Results) -> Row:
    import faiss

    faiss.omp_set_num_threads(1)
    rss, started = rss_bytes(), time.perf_counter()
    index = faiss.IndexBinaryMultiHash(256, 16, 16)
    index.add(bank)
    build, memory = time.perf_counter() - started, (rss_bytes() - rss) / len(bank)
    index.nflip = THRESHOLD // 16  # 16 maps, one flip each: a hash within 31 bits matches a map within 1

    def run() -> Results:
        lims, dists, ids = index.range_search(queries, THRESHOLD + 1)  # faiss keeps distances < radius
        return canonical(np.repeat(np.arange(len(queries)), np.diff(lims).astype(np.int64)), ids, dists)

    wall, cpu, got = timed(run)
    assert_same("faiss IndexBinaryMultiHash", got, want)
    return Row("faiss IndexBinaryMultiHash (batched, 1 thread)", build, memory, len(queries), wall, cpu)


def run_ours(bank: np.ndarray, queries: np.ndarray, want: Results) -> list[Row]:
    numba.set_num_threads(1)
    started = time.perf_counter()
    index = MultiIndex(bank)
    build, memory = time.perf_counter() - started, index.nbytes / len(bank)
    rows = []
    for threads in (1, 2):
        numba.set_num_threads(min(threads, MAX_THREADS))
        index.search(queries[:64], THRESHOLD)  # warm up
        wall, cpu, got = timed(lambda: canonical(*index.search(queries, THRESHOLD)), repeat=3)
        assert_same(f"modstream MultiIndex, {threads} threads", got, want)
        rows.append(
            Row(
                f"modstream MultiIndex (batched, {threads} thread{'s' if threads > 1 else ''})",
                build,
                memory,
                len(queries),
                wall,
                cpu,
            )
        )
    return rows


def brute_force_threads(bank: np.ndarray, queries: np.ndarray) -> Results:
    """brute_force on all cores (its kernel releases the GIL)."""
    bounds = np.linspace(0, len(queries), (os.cpu_count() or 1) + 1).astype(np.int64).tolist()
    with ThreadPoolExecutor(len(bounds) - 1) as pool:
        parts = list(pool.map(lambda a, b: brute_force(bank, queries[a:b], THRESHOLD), bounds[:-1], bounds[1:]))
    return canonical(
        *(np.concatenate([p[k] + (a if k == 0 else 0) for p, a in zip(parts, bounds, strict=False)]) for k in range(3))
    )


def bank_table(name: str, bank: np.ndarray, queries: np.ndarray, baseline: int) -> float:
    """Prints the bank's table; returns the bytes per hash of modstream's index."""
    started = time.perf_counter()
    want = brute_force_threads(bank, queries)
    brute_s = time.perf_counter() - started
    subset = want[0] < baseline
    want_subset: Results = (want[0][subset], want[1][subset], want[2][subset])
    print(
        f"\n{name} bank: {len(bank):,} hashes; {len(queries):,} queries (half near-duplicates), "
        f"{len(want[0]):,} matches within {THRESHOLD} (brute force: {brute_s:.1f} s)",
        flush=True,
    )
    rows = [run_threatexchange(bank, queries[:baseline], want_subset)]
    rows.append(run_faiss(bank, queries, want))
    rows += run_ours(bank, queries, want)
    header = (
        f"{'index':48} {'build s':>8} {'B/hash':>8} {'queries/s':>10} {'CPU us/query':>13} {'vs threatexchange':>18}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.name:48} {row.build_s:>8.1f} {row.memory:>8.1f} {row.qps:>10,.0f} {row.cpu_us:>13,.0f} "
            f"{row.qps / rows[0].qps:>17.1f}x"
        )
    print(
        f"all {len(rows)} result sets identical to brute force (threatexchange on its {baseline:,} queries): asserted"
    )
    print("B/hash: modstream, its arrays' nbytes / N; the others, the process's resident memory grown by the build / N")
    return rows[-1].memory


def big_line(size: int, queries: int, per_hash: float) -> None:
    """Builds modstream's index over `size` uniform hashes, or says what it would cost."""
    target = size if size > 0 else 10_000_000
    cost = f"at {per_hash:.1f} B/hash (as measured above) it would take {per_hash * target / 1e9:.2f} GB"
    if size <= 0:
        print(f"\nmodstream MultiIndex at {target:,}: not built (--big 0); {cost}")
        return
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if available < size * 200:  # the hashes, the index and the build's scratch, with room to spare
        print(f"\nmodstream MultiIndex at {size:,}: not built, {available / 1e9:.1f} GB free; {cost}")
        return
    rng = np.random.default_rng(10)
    bank = rng.integers(0, 256, (size, 32), dtype=np.uint8)
    query_bits = make_queries(bank, queries, rng)
    numba.set_num_threads(1)
    started = time.perf_counter()
    index = MultiIndex(bank)
    build = time.perf_counter() - started
    index.search(query_bits[:16], THRESHOLD)
    wall, cpu, got = timed(lambda: canonical(*index.search(query_bits, THRESHOLD)), repeat=2)
    check = min(queries, 200)
    want = brute_force_threads(bank, query_bits[:check])
    in_check = got[0] < check
    assert_same(f"modstream MultiIndex at {size:,}", (got[0][in_check], got[1][in_check], got[2][in_check]), want)
    print(
        f"\nmodstream MultiIndex at {size:,} uniform hashes: {index.nbytes / size:.1f} B/hash "
        f"({index.nbytes / 1e9:.2f} GB, the hashes included), build {build:.1f} s (1 thread), "
        f"{queries / wall:,.0f} queries/s batched on 1 thread ({1e6 * cpu / queries:,.0f} CPU us/query), "
        f"{len(got[0]):,} matches; the first {check} queries asserted equal to brute force"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--baseline-queries", type=int, default=500, help="threatexchange goes one at a time: fewer")
    parser.add_argument("--big", type=int, default=10_000_000, help="bank size for the memory line (0: skip)")
    parser.add_argument("--quick", action="store_true", help="200,000 hashes, 1,000 queries, 1,000,000 for --big")
    args = parser.parse_args()
    if args.quick:
        args.size, args.queries, args.baseline_queries, args.big = 200_000, 1000, 300, 1_000_000
    baseline = min(args.baseline_queries, args.queries)
    print(
        f"PDQ matching within {THRESHOLD} bits; {os.cpu_count()} cores (others may be busy: CPU us/query is "
        f"the steadier figure for one thread)",
        flush=True,
    )
    rng = np.random.default_rng(1)
    per_hash = []
    for name, clustered in (("uniform", False), ("clustered", True)):
        bank = make_bank(args.size, clustered, rng)
        queries = make_queries(bank, args.queries, rng)
        per_hash.append(bank_table(name, bank, queries, baseline))
    big_line(args.big, args.queries, per_hash[0])


if __name__ == "__main__":
    main()
