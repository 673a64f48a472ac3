"""The PDQ indexes return exactly what a brute-force scan returns."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.banks.pdq import LivePDQIndex
from pipeline.banks.pdq_index import MultiIndex, bits_to_hex, brute_force


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
            for q, hits in zip(queries, index.search(queries, 31), strict=True):
                assert {k for k, d in hits if d == 0} == {k for k, v in live.items() if v == q}
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
