"""Benchmark: flood detection latency under background upload traffic.

In one run, on the embedded broker (Tansu) and a Redis of its own (the embedded redis-server,
so that other clients of a shared Redis neither slow it nor blur its figures; --redis shared
uses MODSTREAM_REDIS_URL, else redis://127.0.0.1:6379/0), with a fresh topic prefix:

- `python -m pipeline run flood` runs as its own process (its own consumer group on
  mod.enriched), as in production, with MODSTREAM_FLOOD_ACCOUNTS (default 20) and
  MODSTREAM_FLOOD_WINDOW_S (600);
- background traffic: --rate image uploads a second (default 1,000) for --seconds (60), each
  a new file (its own SHA-256 and a random PDQ of quality 100) from one of a million
  accounts, produced as the ModerationRecords enrich writes to mod.enriched. Every one of
  them starts a cluster in Redis (the worst case for the PDQ representative index); text
  posts, which the stage skips, are left out. Enrich itself is not in the loop: hashing a
  thousand images a second needs more than this machine (bench/pipeline.py measures it);
- --floods floods (default 12), evenly spread over the run: --accounts + 4 distinct accounts
  each upload a copy of one new file over --spread seconds (default 2), inside the background
  traffic. Half the floods are exact copies (one SHA-256 and PDQ), half are near-duplicates
  (a different file each, PDQ within 4 bits of the first copy's).

Measured:
- detection latency: the time the crossing copy's `restrict` decision (the copy that brings
  the cluster to the threshold) is read back from mod.decisions, minus the time that copy
  was produced: p50/p95/max over the floods (and the same from its occurred_at);
- per flood, copies quarantined (expected: every copy) and proposals on mod.incidents (one);
  false quarantines of background uploads (expected: none);
- the background rate achieved and the producer's worst lag behind its schedule; the flood
  process's CPU; Redis time in the flood scripts and memory used by the flood keys, per upload.

    python bench/flood.py [--rate 1000] [--seconds 60] [--floods 12] [--accounts 20]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# This directory holds a file named like the package: make `pipeline` mean the package.
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

from bench.e2e import OutputReader, Processes, Services, modstream_command, percentile, process_env  # noqa: E402
from pipeline.app import connect_redis  # noqa: E402
from pipeline.dev import services  # noqa: E402
from pipeline.records import Record, envelope, signal, stable_id  # noqa: E402
from pipeline.runtime.reader import read_all  # noqa: E402
from pipeline.runtime.topics import create_topics  # noqa: E402
from pipeline.sdk import ModerationProducer  # noqa: E402
from pipeline.serde import Codec  # noqa: E402
from pipeline.stages.flood import RULE  # noqa: E402
from pipeline.state.floods import PREFIX  # noqa: E402


@dataclass(order=True)
class Planned:
    at: float  # seconds after the start
    content_id: str = field(compare=False)
    user_id: str = field(compare=False)
    sha256: str = field(compare=False)
    pdq: str = field(compare=False)
    flood: int = field(default=-1, compare=False)  # the flood it belongs to, -1 for background
    copy: int = field(default=-1, compare=False)  # its rank in the flood (0-based)
    event_id: str = field(default="", compare=False)
    sent_at: float = field(default=0.0, compare=False)  # wall clock, s


def moderation_record(p: Planned, occurred_at: int) -> Record:
    env = envelope("bench", content_id=p.content_id, user_id=p.user_id, occurred_at=occurred_at)
    p.event_id = env["event_id"]
    return {
        "envelope": env,
        "kind": "upload",
        "upload": {"envelope": env, "media_b64": None, "media_uri": "file:///bench", "media_type": "image/jpeg"},
        "report": None,
        "live": None,
        "account": None,
        "signals": [signal("sha256", p.sha256), signal("pdq", p.pdq, 100)],
        "media_error": None,
        "media_ref": None,
        "matches": [],
        "scores": [],
        "stages": ["enrich"],
    }


def flip(pdq: str, bits: list[int]) -> str:
    value = int(pdq, 16)
    for b in bits:
        value ^= 1 << b
    return f"{value:064x}"


def plan(args: argparse.Namespace, tag: str, rng: random.Random) -> list[Planned]:
    out: list[Planned] = []
    n = int(args.rate * args.seconds)
    for i in range(n):
        digest = hashlib.sha256(f"{tag}-bg-{i}".encode()).hexdigest()
        out.append(Planned(i / args.rate, f"{tag}-bg-{i}", f"u{rng.randrange(1_000_000)}", digest, rng_pdq(rng)))
    copies = args.accounts + 4
    for f in range(args.floods):
        start = (f + 0.5) * args.seconds / args.floods
        base = rng_pdq(rng)
        for c in range(copies):
            near = f % 2 == 1 and c > 0
            key = f"{tag}-flood-{f}" + (f"-{c}" if near else "")
            out.append(
                Planned(
                    start + c * args.spread / copies,
                    f"{tag}-f{f}-c{c}",
                    f"{tag}-flooder-{f}-{c}",
                    hashlib.sha256(key.encode()).hexdigest(),
                    flip(base, rng.sample(range(256), rng.randint(1, 4))) if near else base,
                    flood=f,
                    copy=c,
                )
            )
    return sorted(out)


def rng_pdq(rng: random.Random) -> str:
    return f"{rng.getrandbits(256):064x}"


def flood_memory(client: object) -> tuple[int, int]:
    """(keys, bytes) of the flood keys in Redis (MEMORY USAGE, summed)."""
    keys = list(client.scan_iter(PREFIX + "*", count=10_000))  # type: ignore[attr-defined]
    total = 0
    for i in range(0, len(keys), 5000):
        pipe = client.pipeline(transaction=False)  # type: ignore[attr-defined]
        for k in keys[i : i + 5000]:
            pipe.memory_usage(k, samples=0)
        total += sum(x or 0 for x in pipe.execute())
    return len(keys), total


def script_usec(client: object) -> int:
    """Microseconds the Redis server spent in EVALSHA so far."""
    stats = client.info("commandstats").get("cmdstat_evalsha", {})  # type: ignore[attr-defined]
    return int(stats.get("usec", 0))


def warm_up(settings_producer: ModerationProducer, codec: Codec, reader: OutputReader, accounts: int) -> None:
    """A first flood, sent before the clock starts: the flood process has joined its group and
    loaded its scripts once its decisions come back."""
    rng = random.Random()
    base, tag = rng_pdq(rng), os.urandom(4).hex()
    for c in range(accounts):
        p = Planned(0, f"warm-{tag}-{c}", f"warm-{tag}-{c}", hashlib.sha256(tag.encode()).hexdigest(), base)
        settings_producer.send("enriched", moderation_record(p, int(time.time() * 1000)))
    settings_producer.flush()
    if not reader.wait_for(accounts, 180):
        raise RuntimeError("the flood process did not quarantine the warm-up flood in 3 minutes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="background uploads a second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--floods", type=int, default=12)
    parser.add_argument("--accounts", type=int, default=20, help="MODSTREAM_FLOOD_ACCOUNTS")
    parser.add_argument("--window-s", type=int, default=600, help="MODSTREAM_FLOOD_WINDOW_S")
    parser.add_argument("--spread", type=float, default=2.0, help="seconds over which a flood's copies arrive")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis", choices=("own", "shared"), default="own")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="modstream-bench-flood-"))
    svc = Services(work)
    procs: Processes | None = None
    private = None
    try:
        settings = svc.settings(args.partitions)
        if args.redis == "own":
            private, url = services.start_redis(work / "redis-own")
            settings = settings.with_(redis_url=url)
        create_topics(settings)
        redis = connect_redis(settings.redis_url)
        keys_before, bytes_before = flood_memory(redis)
        env = {
            **process_env(settings),
            "MODSTREAM_FLOOD_ACCOUNTS": str(args.accounts),
            "MODSTREAM_FLOOD_WINDOW_S": str(args.window_s),
        }
        procs = Processes([modstream_command("flood")], env, work / "flood.log")
        codec = Codec()
        reader = OutputReader(settings, settings.topic("decisions"))
        reader.keep_values = True
        reader.start()
        reader.assigned.wait(30)
        producer = ModerationProducer(settings, codec)
        t = time.monotonic()
        warm_up(producer, codec, reader, args.accounts)
        warm = reader.count
        print(f"flood process up, warm-up flood quarantined in {time.monotonic() - t:.1f} s", flush=True)

        tag = os.urandom(3).hex()
        planned = plan(args, tag, random.Random(args.seed))
        topic = settings.topic("enriched")
        lead_s = 2.0 + len(planned) / 20_000  # time to encode everything before the clock starts
        start = time.time() + lead_s
        encoded = []
        for p in planned:
            value = codec.encode("ModerationRecord", moderation_record(p, int((start + p.at) * 1000)), f"{topic}-value")
            encoded.append((p, value))
        cpu0, redis0 = procs.cpu(), script_usec(redis)
        kafka = producer.producer
        worst_lag = 0.0
        time.sleep(max(0.0, start - time.time()))
        for i, (p, value) in enumerate(encoded):
            ahead = start + p.at - time.time()
            if ahead > 0.0005:
                time.sleep(ahead)
            else:
                worst_lag = max(worst_lag, -ahead)
            while True:
                try:
                    kafka.produce(topic, value=value, key=p.content_id)
                    break
                except BufferError:
                    kafka.poll(0.05)
            p.sent_at = time.time()
            if i % 200 == 0:
                kafka.poll(0)
        sent_s = time.time() - start
        if left := kafka.flush(60):
            raise RuntimeError(f"{left} records not acknowledged")
        background = sum(1 for p in planned if p.flood < 0)
        copies = args.accounts + 4
        expected = warm + args.floods * copies
        drained = reader.wait_for(expected, 120, procs.alive)
        time.sleep(2)  # any false quarantine still in flight
        cpu, redis_usec = procs.cpu() - cpu0, script_usec(redis) - redis0
        busy_s = time.time() - start
        reader.stop()

        by_decision = {stable_id(p.event_id, RULE): p for p in planned}
        arrivals: dict[str, float] = {}
        for arrived, raw in reader.values:
            d = codec.decode("Decision", raw)
            arrivals.setdefault(d["decision_id"], arrived)
        quarantined = [by_decision[i] for i in arrivals if i in by_decision]
        false_q = [p for p in quarantined if p.flood < 0]
        latencies, from_occurred, per_flood = [], [], []
        for f in range(args.floods):
            members = [p for p in planned if p.flood == f]
            crossing = next(p for p in members if p.copy == args.accounts - 1)
            got = arrivals.get(stable_id(crossing.event_id, RULE))
            per_flood.append(sum(1 for p in members if stable_id(p.event_id, RULE) in arrivals))
            if got is not None:
                latencies.append((got - crossing.sent_at) * 1000)
                from_occurred.append((got - (start + crossing.at)) * 1000)
        latencies.sort()
        from_occurred.sort()
        incidents = [i for i in read_all(settings, "incidents") if i["status"] == "proposed"]
        keys_after, bytes_after = flood_memory(redis)

        print(f"\nbackground: {background:,} image uploads offered at {args.rate:,.0f}/s over {args.seconds:g} s;")
        print(
            f"  sent in {sent_s:.1f} s ({len(planned) / sent_s:,.0f}/s with the flood copies), "
            f"worst lag behind schedule {worst_lag * 1000:.0f} ms; all quarantines read back: {drained}"
        )
        print(f"floods: {args.floods} x {copies} copies (threshold {args.accounts} accounts, window {args.window_s} s)")
        print(
            f"detection latency (crossing copy produced -> its restrict decision read back), n={len(latencies)}: "
            f"p50 {percentile(latencies, 0.5):.0f} ms, p95 {percentile(latencies, 0.95):.0f} ms, "
            f"max {max(latencies, default=float('nan')):.0f} ms"
        )
        print(
            f"  from occurred_at: p50 {percentile(from_occurred, 0.5):.0f} ms, "
            f"p95 {percentile(from_occurred, 0.95):.0f} ms"
        )
        print(f"copies quarantined per flood: {per_flood} (expected {copies} each)")
        print(f"proposed incidents: {len(incidents)} (expected {args.floods + 1}, the warm-up's included)")
        print(f"false quarantines of background uploads: {len(false_q)}")
        print(f"flood process CPU: {cpu:.1f} s over {busy_s:.0f} s ({cpu / busy_s * 100:.0f}% of a core)")
        per_upload = redis_usec / len(planned)
        print(f"Redis time in the flood scripts: {per_upload:.0f} us per upload ({args.redis} Redis)")
        print(
            f"Redis flood keys: {keys_before:,} -> {keys_after:,}, {(bytes_after - bytes_before) / 2**20:.1f} MiB more "
            f"({(bytes_after - bytes_before) / max(1, len(planned)):.0f} bytes per upload)"
        )
        # In a shared Redis, the clusters of this run (every background upload made one) go now
        # rather than in a window; the representatives expire with their generation.
        for i in range(0, len(planned) if args.redis == "shared" else 0, 5000):
            pipe = redis.pipeline(transaction=False)
            for p in planned[i : i + 5000]:
                for kind, value in (("pdq", p.pdq), ("sha256", p.sha256)):
                    key = f"{PREFIX}c:{stable_id(kind, value)}"
                    pipe.delete(key, key + ":u", key + ":x")
            pipe.execute()
    finally:
        if procs is not None:
            procs.stop()
        if private is not None:
            private.terminate()
            private.wait(10)
        svc.close()


if __name__ == "__main__":
    main()
