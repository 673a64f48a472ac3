"""Benchmark: retroactive matching at 1,000,000 recent uploads, in one run.

The retro stage's `process()` is driven directly (no broker): the time measured is the
stage's own, from a bank entry being handed to it to its decisions being returned.

- The store: --items uploads (random PDQ, MD5 and SHA-256; ids like production's short ids)
  arrive as their Decisions do, through `feed("decisions")`, over the last 6 days. Measured:
  the rate it is rebuilt at (the follower's work without the broker: applying, and decoding
  a Decision from Avro beside it), and memory per upload: the store's arrays (used and
  allocated) and the process's resident memory.
- Burst: --entries new PDQ bank entries (default 1,000) arrive at once, --near of them
  (default 500) near a stored upload (0 to 40 bits flipped, so some fall beyond the
  threshold of 31), the others unrelated; the stage takes them in runner batches of --batch
  (default 500, MODSTREAM_BATCH_SIZE). Per new hash: the time from the burst's arrival to
  the return of its batch's decisions, p50/p99; and the time until every decision is out.
  The decisions are checked: exactly one per upload within 31 bits of a new hash.
- Trickle: --trickle entries (default 300, another --near share) arrive at --rate per second
  (default 100); each batch takes what has arrived. Per new hash: arrival to decision.
- The search alone (the numba scan), 1,000 hashes against every stored upload.
- The recheck of uploads decided after an entry: a batch of --batch upload decisions
  against the entries kept.
Wall times depend on the cores free; CPU-seconds (all threads) are printed beside them: the
scan is split over numba's threads by blocks of stored rows, so wall time is about CPU-seconds
divided by the cores it gets.

    python bench/retro.py [--items 1000000] [--entries 1000] [--near 500] [--batch 500]
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

import pipeline.state.recent as recent  # noqa: E402
from pipeline.banks.table import MatchConfig  # noqa: E402
from pipeline.policy.engine import load_policy  # noqa: E402
from pipeline.records import Incoming, Record, record_key  # noqa: E402
from pipeline.serde import Codec  # noqa: E402
from pipeline.stages.retro import RetroStage  # noqa: E402
from pipeline.state.recent import DAY_MS, RecentStore  # noqa: E402

THRESHOLD = 31


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def decision_of(i: int, pdq: bytes, md5: bytes, sha: bytes, at: int) -> Record:
    """The Decision an allowed upload gets, as `decisions` carries it."""
    return {
        "decision_id": f"d{i:08x}",
        "envelope": {
            "event_id": f"e{i:031x}",
            "platform_id": "p1",
            "occurred_at": at,
            "content_id": f"c{i:07d}",
            "stream_id": None,
            "user_id": f"u{i % 200_000:06d}",
        },
        "kind": "upload",
        "action": "allow",
        "decided_at": at + 200,
        "policy_id": "default",
        "policy_version": "4",
        "rule_id": "default-allow",
        "explanation": "allow by rule default-allow: no other rule applied",
        "category": None,
        "severity": None,
        "signals": [
            {"signal_type": "md5", "value": md5.hex(), "quality": None, "frame": None},
            {"signal_type": "sha256", "value": sha.hex(), "quality": None, "frame": None},
            {"signal_type": "pdq", "value": pdq.hex(), "quality": 90, "frame": None},
        ],
        "matches": [],
        "scores": [],
        "thresholds": {},
        "effects": [],
        "incident_id": None,
    }


def entry(pdq: bytes, n: int, now: int) -> Incoming:
    value = {
        "bank": "tvec",
        "signal_type": "pdq",
        "hash": pdq.hex(),
        "category": "terrorism",
        "severity": "high",
        "source": f"bench:{n}",
        "added_at": now,
        "item_id": None,
        "incident_id": None,
        "signed_at": None,
    }
    return Incoming("banks", record_key("banks", value).encode(), value)


def near_entries(
    bits: np.ndarray, count: int, rows: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, set[int]]:
    """`count` hashes, one 0-40 bits from each of the stored uploads `rows`, the others
    unrelated; and the uploads within 31 bits of one."""
    out = rng.integers(0, 256, (count, 32), dtype=np.uint8)
    expected = set()
    for n, row in enumerate(rows):
        out[n] = bits[row]
        flips = int(rng.integers(0, 41))
        for bit in rng.choice(256, flips, replace=False):
            out[n, bit // 8] ^= 1 << (bit % 8)
        if flips <= THRESHOLD:
            expected.add(int(row))
    order = rng.permutation(count)
    return out[order], expected


def build(args: argparse.Namespace, now: int) -> tuple[RecentStore, np.ndarray, dict[str, float]]:
    rng = np.random.default_rng(args.seed)
    store = RecentStore(window_ms=7 * DAY_MS, clock=lambda: now)
    feed = store.feed("decisions")
    bits = rng.integers(0, 256, (args.items, 32), dtype=np.uint8)
    md5 = rng.integers(0, 256, (args.items, 16), dtype=np.uint8)
    sha = rng.integers(0, 256, (args.items, 32), dtype=np.uint8)
    ats = np.sort(now - rng.integers(0, 6 * DAY_MS, args.items))
    rss_before = rss_bytes()
    applying = 0.0
    chunk = 5_000  # records made a few at a time, so that resident memory shows the store's
    for start in range(0, args.items, chunk):
        records = [
            decision_of(i, bits[i].tobytes(), md5[i].tobytes(), sha[i].tobytes(), int(ats[i]))
            for i in range(start, min(args.items, start + chunk))
        ]
        t = time.perf_counter()
        for r in records:
            feed.apply(r["envelope"]["content_id"], r)
        applying += time.perf_counter() - t
    stats = store.stats()
    rss_after = rss_bytes()
    # Decoding a Decision from Avro, as the follower does before applying it.
    codec = Codec()
    raw = codec.encode("Decision", decision_of(1, bits[1].tobytes(), md5[1].tobytes(), sha[1].tobytes(), now))
    t = time.perf_counter()
    for _ in range(20_000):
        codec.decode("Decision", raw)
    decode_s = (time.perf_counter() - t) / 20_000
    return (
        store,
        bits,
        {
            "apply_s": applying / args.items,
            "decode_s": decode_s,
            "used": stats["bytes_used"] / stats["items"],
            "allocated": stats["bytes_allocated"] / stats["items"],
            "rss": (rss_after - rss_before) / stats["items"],
            "items": stats["items"],
        },
    )


def burst(stage: RetroStage, entries: list[Incoming], batch: int) -> tuple[list[float], list[Record], float, float]:
    """Per hash: arrival to its batch's return; the decisions; wall and CPU seconds in all."""
    started, cpu = time.perf_counter(), time.process_time()
    latencies: list[float] = []
    decisions: list[Record] = []
    for i in range(0, len(entries), batch):
        part = entries[i : i + batch]
        out = stage.process(part)
        done = time.perf_counter() - started
        latencies += [done] * len(part)
        decisions += [o.value for o in out if o.topic == "decisions" and o.value]
    return latencies, decisions, time.perf_counter() - started, time.process_time() - cpu


def trickle(stage: RetroStage, entries: list[Incoming], rate: float, batch: int) -> tuple[list[float], list[Record]]:
    started = time.perf_counter()
    arrivals = [started + n / rate for n in range(len(entries))]
    latencies: list[float] = []
    decisions: list[Record] = []
    taken = 0
    while taken < len(entries):
        now = time.perf_counter()
        if arrivals[taken] > now:
            time.sleep(arrivals[taken] - now)
            continue
        upto = taken
        while upto < len(entries) and upto - taken < batch and arrivals[upto] <= now:
            upto += 1
        out = stage.process(entries[taken:upto])
        done = time.perf_counter()
        latencies += [done - arrivals[n] for n in range(taken, upto)]
        decisions += [o.value for o in out if o.topic == "decisions" and o.value]
        taken = upto
    return latencies, decisions


def scan(store: RecentStore, queries: np.ndarray) -> tuple[float, float]:
    """The search alone: wall and CPU seconds for `queries` against every stored upload."""
    words = store._words[: store._rows]
    q = np.ascontiguousarray(queries).view(np.uint64).reshape(-1, 4)
    t, cpu = time.perf_counter(), time.process_time()
    recent._search_rows(words, store._row_item, store._at, 0, q, THRESHOLD)
    return time.perf_counter() - t, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--near", type=int, default=500)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--trickle", type=int, default=300)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    now = int(time.time() * 1000)
    print(
        f"{os.cpu_count()} CPUs, numba threads {numba.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )

    store, bits, built = build(args, now)
    print(
        f"\nstore: {built['items']:,} uploads; rebuilt at {1 / built['apply_s']:,.0f} decisions/s applied "
        f"({built['apply_s'] * 1e6:.1f} us each), {1 / built['decode_s']:,.0f}/s decoded "
        f"({built['decode_s'] * 1e6:.1f} us each): {1 / (built['apply_s'] + built['decode_s']):,.0f}/s together"
    )
    print(
        f"memory per upload: {built['used']:.1f} B used by the arrays, {built['allocated']:.1f} B allocated, "
        f"{built['rss']:.1f} B of resident memory (process, while building)"
    )

    rng = np.random.default_rng(args.seed + 1)
    policy = load_policy()
    stage = RetroStage(store, policy, MatchConfig(), clock=lambda: now)
    warm = rng.integers(0, 256, (64, 32), dtype=np.uint8)  # unrelated: compile and warm the scan
    stage.process([entry(w.tobytes(), -1 - n, now) for n, w in enumerate(warm)])
    stage.process([entry(warm[0].tobytes(), -100, now)])

    rows = rng.choice(len(bits), args.near + args.trickle // 2, replace=False)
    hashes, expected = near_entries(bits, args.entries, rows[: args.near], rng)
    entries = [entry(h.tobytes(), n, now) for n, h in enumerate(hashes)]
    latencies, decisions, total, cpu = burst(stage, entries, args.batch)
    got = {int(d["envelope"]["content_id"][1:]) for d in decisions}
    assert got == expected and len(decisions) == len(expected), (len(got), len(expected))
    print(
        f"\nburst: {args.entries:,} new hashes at once ({args.near} near uploads), batches of {args.batch}: "
        f"{len(decisions)} retroactive decisions (one per upload within {THRESHOLD} bits, checked), "
        f"all out in {total:.3f} s ({cpu:.2f} CPU-seconds); per hash p50 {percentile(latencies, 50):.3f} s, "
        f"p99 {percentile(latencies, 99):.3f} s"
    )

    hashes, expected = near_entries(bits, args.trickle, rows[args.near :], rng)
    entries = [entry(h.tobytes(), 10_000 + n, now) for n, h in enumerate(hashes)]
    latencies, decisions = trickle(stage, entries, args.rate, args.batch)
    got = {int(d["envelope"]["content_id"][1:]) for d in decisions}
    assert got == expected, (len(got), len(expected))
    print(
        f"trickle: {args.trickle} new hashes at {args.rate:.0f}/s: {len(decisions)} decisions; per hash "
        f"p50 {percentile(latencies, 50) * 1000:.1f} ms, p99 {percentile(latencies, 99) * 1000:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )

    wall, cpu = scan(store, rng.integers(0, 256, (1000, 32), dtype=np.uint8))
    print(f"\nthe search alone, 1,000 hashes against every stored upload: {wall:.3f} s ({cpu:.2f} CPU-s)")

    uploads = [
        Incoming("decisions", b"", decision_of(args.items + i, *(rng.bytes(n) for n in (32, 16, 32)), now))
        for i in range(args.batch)
    ]
    t = time.perf_counter()
    stage.process(uploads)
    print(
        f"recheck: {args.batch} upload decisions against the {len(stage.recent_entries):,} entries kept: "
        f"{(time.perf_counter() - t) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
