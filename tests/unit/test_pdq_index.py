"""The PDQ indexes return exactly what a brute-force scan returns."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from pipeline.banks.pdq import LivePDQIndex
from pipeline.banks.pdq_index import (
    CHUNK_STARTS,
    CHUNK_WIDTHS,
    CHUNKS,
    MultiIndex,
    bits_to_hex,
    brute_force,
    chunk_thresholds,
    prefix_bits,
)


def near(rng: np.random.Generator, base: np.ndarray, max_flips: int) -> np.ndarray:
    out = base.copy()
    for row in out:
        for bit in rng.choice(256, rng.integers(0, max_flips + 1), replace=False):
            row[bit // 8] ^= 1 << (bit % 8)
    return out


@pytest.fixture(scope="module")
def bank() -> np.ndarray:
    rng = np.random.default_rng(7)
    base = rng.integers(0, 256, (20000, 32), dtype=np.uint8)
    base[1000:1100] = near(rng, base[:100], 20)  # clusters of near duplicates inside the bank
    return base


@pytest.mark.parametrize("radius", [0, 10, 31, 40, 63])
def test_multi_index_equals_brute_force(bank: np.ndarray, radius: int) -> None:
    rng = np.random.default_rng(radius)
    queries = np.concatenate(
        [
            near(rng, bank[rng.integers(0, len(bank), 150)], 45),  # near duplicates, some beyond radius
            rng.integers(0, 256, (50, 32), dtype=np.uint8),  # unrelated
        ]
    )
    index = MultiIndex(bank)
    got = index.search(queries, radius)
    want = brute_force(bank, queries, radius)
    order = np.lexsort((want[1], want[0]))
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w[order])
    assert len(got[0]) > (100 if radius >= 31 else 0)  # the near duplicates were found


def test_live_index_follows_adds_and_removes() -> None:
    rng = np.random.default_rng(3)
    hashes = bits_to_hex(rng.integers(0, 256, (3000, 32), dtype=np.uint8))
    index = LivePDQIndex(max_delta=500)
    live: dict[str, str] = {}
    for i, h in enumerate(hashes):
        index.add(f"k{i}", h)
        live[f"k{i}"] = h
        if i % 7 == 0 and i:
            index.remove(f"k{i - 3}")
            live.pop(f"k{i - 3}")
        if i % 400 == 0:  # searches interleaved with updates exercise delta, mask and rebuilds
            queries = [live[k] for k in list(live)[-5:]]
            for query, hits in zip(queries, index.search(queries, 31), strict=True):
                assert {k for k, d in hits if d == 0} == {k for k, v in live.items() if v == query}
    queries = bits_to_hex(
        near(rng, np.frombuffer(bytes.fromhex("".join(live.values())), np.uint8).reshape(-1, 32)[:200], 35)
    )
    keys = list(live)
    bits = np.frombuffer(bytes.fromhex("".join(live.values())), np.uint8).reshape(-1, 32)
    qbits = np.frombuffer(bytes.fromhex("".join(queries)), np.uint8).reshape(-1, 32)
    q, rows, dists = brute_force(bits, qbits, 31)
    want = [
        sorted((keys[r], d) for qq, r, d in zip(q, rows, dists, strict=True) if qq == i) for i in range(len(queries))
    ]
    got = [sorted(hits) for hits in index.search(queries, 31)]
    assert got == want
    assert len(index) == len(live)


def test_query_near_more_hashes_than_the_first_result_capacity() -> None:
    rng = np.random.default_rng(11)
    base = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    bank = np.concatenate(
        [near(rng, np.repeat(base, 700, axis=0), 12), rng.integers(0, 256, (5000, 32), dtype=np.uint8)]
    )
    got = MultiIndex(bank).search(base, 31)
    want = brute_force(bank, base, 31)
    assert len(got[0]) >= 700
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)


def assert_equals_brute_force(bank: np.ndarray, queries: np.ndarray, radius: int) -> int:
    got = MultiIndex(bank).search(queries, radius)
    want = brute_force(bank, queries, radius)
    order = np.lexsort((want[1], want[0]))
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w[order])
    return len(got[0])


def test_chunk_thresholds_cover_every_radius() -> None:
    """Pigeonhole: a hash within radius differs in at most t bits in some chunk."""
    assert sum(CHUNK_WIDTHS) == 256 and CHUNK_STARTS[0] == 0 and len(CHUNK_WIDTHS) == CHUNKS
    for radius in range(256):
        t = chunk_thresholds(radius)
        assert int((t + 1).sum()) == radius + 1
        assert t.min() >= -1
    assert chunk_thresholds(31).tolist() == [2] * 10 + [1]


@pytest.mark.parametrize("radius", [20, 31, 40])
def test_spread_flips_at_the_radius(radius: int) -> None:
    """Flips spread so that every chunk but one is just beyond its threshold: the hash is within
    radius and only that chunk can find it; one flip more puts it beyond radius."""
    rng = np.random.default_rng(radius)
    thresholds = chunk_thresholds(radius)
    bank = rng.integers(0, 256, (3000, 32), dtype=np.uint8)
    queries = []
    for target in range(CHUNKS):
        for extra in (0, 1):  # distance radius, then radius + 1
            row = bank[rng.integers(len(bank))].copy()
            for c in range(CHUNKS):
                flips = thresholds[c] + 1 - (c == target and not extra)
                for bit in CHUNK_STARTS[c] + rng.choice(CHUNK_WIDTHS[c], max(0, flips), replace=False):
                    row[bit // 8] ^= 1 << (bit % 8)
            queries.append(row)
    found = assert_equals_brute_force(bank, np.array(queries), radius)
    assert found == CHUNKS  # each query at distance radius, none at radius + 1


def test_clusters_of_near_duplicates() -> None:
    """Banks shaped like real ones: many hashes share buckets and keys (binary searched)."""
    rng = np.random.default_rng(5)
    bases = rng.integers(0, 256, (40, 32), dtype=np.uint8)
    bank = near(rng, bases[rng.integers(0, len(bases), 12000)], 20)
    bank = np.concatenate([bank, bank[:500], rng.integers(0, 256, (4000, 32), dtype=np.uint8)])  # exact repeats
    queries = np.concatenate([near(rng, bank[rng.integers(0, len(bank), 60)], 40), bases[:5]])
    assert assert_equals_brute_force(bank, queries, 31) > 1000


def test_one_hash_banked_many_times() -> None:
    """A bucket larger than the survivor buffer's default and many results for one query."""
    rng = np.random.default_rng(9)
    base = rng.integers(0, 256, (1, 32), dtype=np.uint8)
    bank = np.concatenate([np.repeat(base, 20000, axis=0), rng.integers(0, 256, (3000, 32), dtype=np.uint8)])
    assert assert_equals_brute_force(bank, np.concatenate([base, near(rng, base, 30)]), 31) >= 20000


def test_threads_and_batches_give_the_same_results(bank: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    queries = np.concatenate([near(rng, bank[rng.integers(0, len(bank), 300)], 40), bank[:100]])
    index = MultiIndex(bank)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = index.search(queries, 31)
        numba.set_num_threads(min(2, previous))
        two = index.search(queries, 31)
    finally:
        numba.set_num_threads(previous)
    pieces = [index.search(queries[i : i + 7], 31) for i in range(0, len(queries), 7)]
    joined = tuple(np.concatenate([p[k] + (7 * i if k == 0 else 0) for i, p in enumerate(pieces)]) for k in range(3))
    for a, b, c in zip(one, two, joined, strict=True):
        assert np.array_equal(a, b) and np.array_equal(a, c)


def test_edges() -> None:
    rng = np.random.default_rng(1)
    bank = rng.integers(0, 256, (100, 32), dtype=np.uint8)
    empty = np.zeros((0, 32), dtype=np.uint8)
    assert all(len(a) == 0 for a in MultiIndex(empty).search(bank[:3], 31))
    assert all(len(a) == 0 for a in MultiIndex(bank).search(empty, 31))
    assert all(len(a) == 0 for a in MultiIndex(bank).search(bank[:3], -1))
    q, rows, dists = MultiIndex(bank).search(bank[:3], 256)  # everything
    assert len(q) == 300 and np.array_equal(rows[:100], np.arange(100))
    assert_equals_brute_force(bank, bank[:5], 0)


def test_memory_per_hash() -> None:
    """Per hash: the hash (32 bytes), and per chunk a uint32 row and a uint8 key; plus the
    offsets tables, whose size depends on the bank's size only: under 100 bytes per hash from
    1M hashes on, so that 10M hashes take under 1 GB."""
    rng = np.random.default_rng(2)
    n = 1 << 16
    index = MultiIndex(rng.integers(0, 256, (n, 32), dtype=np.uint8))
    assert (index.nbytes - index.offsets.nbytes) / n == 32 + CHUNKS * (4 + 1)
    for size in (1_000_000, 2_000_000, 5_000_000, 10_000_000, 50_000_000):
        offsets = CHUNKS * ((1 << prefix_bits(size)) + 1) * 4
        assert 32 + CHUNKS * 5 + offsets / size < 100, size
    assert prefix_bits(1_000_000) == 16 and prefix_bits(10_000_000) == 19
