"""Benchmark: PDQ matching at 1,000,000 banked hashes, modstream's multi-index beside
threatexchange's PDQIndex (the index behind Meta's Hasher-Matcher-Actioner), on the same
hashes and queries, in one run.

Queries: half near-duplicates of banked hashes (0-40 bits flipped, so some fall beyond the
threshold), half unrelated. Results must be identical: the same (entry, distance) pairs
within distance 31 for every query.

    python bench/matching.py [--size 1000000] [--queries 4000] [--baseline-queries 1000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import numba  # noqa: E402

from pipeline.banks.pdq_index import MultiIndex, bits_to_hex  # noqa: E402

THRESHOLD = 31


def make_data(size: int, queries: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    bank = rng.integers(0, 256, (size, 32), dtype=np.uint8)
    q = bank[rng.integers(0, size, queries)].copy()
    for row in q[: queries // 2]:
        for bit in rng.choice(256, rng.integers(0, 41), replace=False):
            row[bit // 8] ^= 1 << (bit % 8)
    q[queries // 2 :] = rng.integers(0, 256, (queries - queries // 2, 32), dtype=np.uint8)
    rng.shuffle(q)
    return bank, q


def ours(bank: np.ndarray, queries: np.ndarray, threads: int) -> tuple[float, float, list[list[tuple[int, int]]]]:
    numba.set_num_threads(threads)
    started = time.perf_counter()
    index = MultiIndex(bank)
    build = time.perf_counter() - started
    index.search(queries[:256], THRESHOLD)  # warm the thread pool
    started = time.perf_counter()
    q_rows, rows, dists = index.search(queries, THRESHOLD)
    qps = len(queries) / (time.perf_counter() - started)
    results: list[list[tuple[int, int]]] = [[] for _ in queries]
    for q, r, d in zip(q_rows.tolist(), rows.tolist(), dists.tolist(), strict=True):
        results[q].append((r, d))
    return build, qps, [sorted(r) for r in results]


def threatexchange(bank: np.ndarray, queries: np.ndarray) -> tuple[float, float, list[list[tuple[int, int]]]]:
    from threatexchange.signal_type.pdq.pdq_index import PDQIndex

    hexes = bits_to_hex(bank)
    started = time.perf_counter()
    index = PDQIndex([(h, i) for i, h in enumerate(hexes)])
    build = time.perf_counter() - started
    q_hex = bits_to_hex(queries)
    started = time.perf_counter()
    results = [sorted((m.metadata, m.similarity_info.distance) for m in index.query(h)) for h in q_hex]
    qps = len(queries) / (time.perf_counter() - started)
    return build, qps, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=4000)
    parser.add_argument("--baseline-queries", type=int, default=1000, help="threatexchange is slower: fewer queries")
    args = parser.parse_args()

    bank, queries = make_data(args.size, args.queries)
    print(
        f"{args.size:,} banked PDQ hashes, {args.queries:,} queries (half near-duplicates), "
        f"threshold {THRESHOLD}, {os.cpu_count()} cores",
        flush=True,
    )
    te_build, te_qps, te_results = threatexchange(bank, queries[: args.baseline_queries])
    print(
        f"threatexchange PDQIndex: build {te_build:.1f} s, {te_qps:,.0f} queries/s (one at a time, its API)",
        flush=True,
    )
    rows = []
    for threads in (1, os.cpu_count() or 1):
        build, qps, results = ours(bank, queries, threads)
        same = results[: args.baseline_queries] == te_results
        matches = sum(len(r) for r in results[: args.baseline_queries])
        rows.append((threads, build, qps, same, matches))
        print(
            f"modstream MultiIndex, {threads} thread(s): build {build:.1f} s, {qps:,.0f} queries/s, "
            f"identical results: {same}",
            flush=True,
        )
        if threads == (os.cpu_count() or 1):
            break
    print()
    print(f"{'index':40} {'build s':>8} {'queries/s':>10} {'vs threatexchange':>18}")
    print(f"{'threatexchange PDQIndex':40} {te_build:>8.1f} {te_qps:>10,.0f} {'1.0x':>18}")
    for threads, build, qps, _, _ in rows:
        name = f"modstream MultiIndex ({threads} thread{'s' if threads > 1 else ''})"
        print(f"{name:40} {build:>8.1f} {qps:>10,.0f} {qps / te_qps:>17.1f}x")
    print(
        f"\nresults identical on the {args.baseline_queries:,} shared queries "
        f"({rows[0][4]} matches): {all(r[3] for r in rows)}"
    )


if __name__ == "__main__":
    main()
