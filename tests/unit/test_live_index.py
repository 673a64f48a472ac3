"""LivePDQIndex rebuilds in the background while adds, removes and searches go on, and its
results stay exactly those of a brute-force scan of the live entries."""

from __future__ import annotations

import random
import threading
import time

import numpy as np

from pipeline.banks.pdq import LivePDQIndex
from pipeline.banks.pdq_index import MultiIndex, bits_to_hex, brute_force, hex_to_bits

RADIUS = 31


def random_hashes(rng: np.random.Generator, n: int) -> list[str]:
    return bits_to_hex(rng.integers(0, 256, (n, 32), dtype=np.uint8))


def near(rng: np.random.Generator, hex_hash: str, flips: int) -> str:
    row = hex_to_bits([hex_hash]).copy()
    for bit in rng.choice(256, flips, replace=False):
        row[0, bit // 8] ^= 1 << (bit % 8)
    return bits_to_hex(row)[0]


def brute(live: dict[str, str], queries: list[str]) -> list[list[tuple[str, int]]]:
    keys = list(live)
    want: list[list[tuple[str, int]]] = [[] for _ in queries]
    if keys:
        q, rows, dists = brute_force(hex_to_bits(list(live.values())), hex_to_bits(queries), RADIUS)
        for qi, row, dist in zip(q.tolist(), rows.tolist(), dists.tolist(), strict=True):
            want[qi].append((keys[row], dist))
    return [sorted(hits) for hits in want]


def queries_for(rng: np.random.Generator, live: dict[str, str], gone: list[str], n: int = 40) -> list[str]:
    """Near duplicates of live and of removed hashes (up to and beyond the radius), and noise."""
    pool = list(live.values()) + gone
    picks = [pool[i] for i in rng.integers(0, len(pool), n)] if pool else []
    return [near(rng, h, int(rng.integers(0, 40))) for h in picks] + random_hashes(rng, 5)


def check(index: LivePDQIndex, live: dict[str, str], queries: list[str]) -> None:
    assert [sorted(hits) for hits in index.search(queries, RADIUS)] == brute(live, queries)
    assert len(index) == len(live)


class GatedBuild:
    """A MultiIndex builder that waits for the test to open the gate, and notes its threads."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()
        self.threads: list[threading.Thread] = []

    def __call__(self, bits: np.ndarray) -> MultiIndex:
        self.threads.append(threading.current_thread())
        self.started.set()
        assert self.gate.wait(30), "the test never opened the gate"
        return MultiIndex(bits)


def test_adds_removes_and_searches_during_a_build() -> None:
    rng = np.random.default_rng(5)
    build = GatedBuild()
    index = LivePDQIndex(max_delta=200, build=build)
    live: dict[str, str] = {}
    gone: list[str] = []
    hashes = iter(random_hashes(rng, 2000))

    def add(key: str) -> None:
        live[key] = next(hashes)
        index.add(key, live[key])

    def remove(key: str) -> None:
        gone.append(live.pop(key))
        index.remove(key)

    for i in range(150):
        add(f"a{i}")
    remove("a3")
    check(index, live, queries_for(rng, live, gone))  # all in the delta, some masked
    for i in range(150, 260):  # the delta outgrows 200: a build starts, and waits at the gate
        add(f"a{i}")
    assert build.started.wait(10)
    assert index.builds == 0

    # While it is building: remove rows it is indexing, re-add keys, add and remove new rows.
    for i in range(10, 40):
        remove(f"a{i}")
    add("a12")  # removed above, back with a new hash
    live["a50"] = live["a51"]  # an existing key given another entry's hash
    index.add("a50", live["a50"])
    for i in range(300):
        add(f"b{i}")
    for i in range(0, 300, 7):
        remove(f"b{i}")
    add("b7")
    check(index, live, queries_for(rng, live, gone))  # searches neither wait nor build
    assert index.builds == 0, "an add, remove or search waited for the build"

    build.gate.set()
    assert index.wait_built(30)
    assert index.builds >= 2  # the delta had outgrown the limit again by the end of the first
    assert all(t is not threading.current_thread() for t in build.threads)
    check(index, live, queries_for(rng, live, gone))
    for key in list(live)[::3]:  # and the swapped-in generation follows further changes
        remove(key)
    add("c0")
    check(index, live, queries_for(rng, live, gone))


def test_removals_alone_trigger_a_build() -> None:
    rng = np.random.default_rng(9)
    index = LivePDQIndex(max_delta=50)
    live = dict(zip((f"k{i}" for i in range(400)), random_hashes(rng, 400), strict=True))
    for key, value in live.items():
        index.add(key, value)
    assert index.wait_built(30)
    builds = index.builds
    gone = []
    for key in list(live)[:200]:
        gone.append(live.pop(key))
        index.remove(key)
    assert index.wait_built(30)
    assert index.builds > builds
    check(index, live, queries_for(rng, live, gone))


def test_concurrent_writer_and_searcher_equal_brute_force() -> None:
    """As BankTable uses it: a follower thread writes and a match thread searches, under the
    table's lock, while builds run in the background without it."""
    rng = np.random.default_rng(13)
    written = [0]  # the writer's progress
    overlaps = []  # how far the writer went during each build

    def slow_build(bits: np.ndarray) -> MultiIndex:  # so that writes and searches overlap builds
        start = written[0]
        time.sleep(0.01)
        index = MultiIndex(bits)
        overlaps.append(written[0] - start)
        return index

    index = LivePDQIndex(max_delta=64, build=slow_build)
    table_lock = threading.Lock()
    live: dict[str, str] = {}
    gone: list[str] = []
    pool = random_hashes(rng, 3000)
    done = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        r = random.Random(1)
        try:
            for n in range(6000):
                with table_lock:
                    key = f"k{r.randrange(1500)}"
                    if key in live and r.random() < 0.4:
                        gone.append(live.pop(key))
                        index.remove(key)
                    else:
                        live[key] = pool[r.randrange(len(pool))] if r.random() < 0.2 else pool[n % len(pool)]
                        index.add(key, live[key])
                    written[0] = n + 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    searches = 0
    while not done.is_set() or searches < 5:
        with table_lock:
            queries = queries_for(rng, live, gone, 10)
            check(index, live, queries)
        searches += 1
    thread.join()
    assert not errors
    assert index.wait_built(30)
    assert index.builds > 0 and sum(1 for n in overlaps if n > 0) >= 2, overlaps
    check(index, live, queries_for(rng, live, gone))
