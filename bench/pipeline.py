"""Benchmark: enrich -> match -> decide on the embedded broker, beside a plain confluent-kafka
consume->produce loop and the same pass-through as a faust-streaming agent, in one run.

For each system, on the same broker and the same input:
- throughput: a backlog of N uploads is produced first; the processor is started and the
  rate is N / (time of last output - time of first output), so group joins do not count;
- latency: then uploads are produced at a steady rate; end-to-end latency is the time an
  output is read back minus the event's occurred_at (p50 and p99).

    python bench/pipeline.py [--events 20000] [--rate 500] [--seconds 6]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

# This file is named like the package: make `pipeline` mean the package, not this script.
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition  # noqa: E402

from pipeline.config import Settings  # noqa: E402
from pipeline.dev.services import (  # noqa: E402
    EMBEDDED_FETCH_WAIT_MAX_MS,
    EMBEDDED_SESSION_TIMEOUT_MS,
    start_broker,
    start_redis,
)
from pipeline.records import now_ms, record_key  # noqa: E402
from pipeline.runtime.topics import create_topics  # noqa: E402
from pipeline.sdk import ModerationProducer  # noqa: E402
from pipeline.serde import Codec  # noqa: E402

BANNED = b"banned media for the benchmark" * 20


class OutputReader(threading.Thread):
    """Reads an output topic from the beginning; records arrival times and latencies."""

    def __init__(self, settings: Settings, topic: str, record_type: str) -> None:
        super().__init__(daemon=True)
        self.settings, self.topic, self.record_type = settings, topic, record_type
        self.codec = Codec()
        self.arrivals: list[float] = []
        self.latencies_ms: list[int] = []
        self.measure_from = 0
        self._stop = threading.Event()

    def run(self) -> None:
        consumer = Consumer(self.settings.consumer_config(None))
        meta = consumer.list_topics(self.topic, timeout=30).topics[self.topic]
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        while not self._stop.is_set():
            first = consumer.poll(0.05)  # wait for one, then take what is there: no added wait
            if first is None:
                continue
            for m in [first, *consumer.consume(999, 0)]:
                if m.error():
                    continue
                self.arrivals.append(time.monotonic())
                occurred = self.codec.decode(self.record_type, m.value())["envelope"]["occurred_at"]
                if occurred >= self.measure_from:
                    self.latencies_ms.append(now_ms() - occurred)
        consumer.close()

    def stop(self) -> None:
        self._stop.set()

    def wait_for(self, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.arrivals) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(self.arrivals) >= n


def send_uploads(producer: ModerationProducer, n: int, rate: float = 0) -> None:
    started = time.monotonic()
    for i in range(n):
        if i % 10 == 0:  # a file an exact-hash bank knows
            producer.send_upload(f"c-{i}", f"u{i % 100}", media=BANNED)
        else:  # text posts: the runtime's cost, not image hashing (see bench/hashing.py)
            producer.send_upload(f"c-{i}", f"u{i % 100}", text=f"post number {i}")
        if rate and i % 10 == 9:
            ahead = started + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()


def measure(
    name: str,
    settings: Settings,
    command: list[str],
    out_topic: str,
    out_type: str,
    events: int,
    rate: float,
    seconds: float,
    log: Path,
) -> dict[str, float]:
    create_topics(settings)
    producer = ModerationProducer(settings)
    entry = {
        "bank": "bench",
        "signal_type": "sha256",
        "hash": hashlib.sha256(BANNED).hexdigest(),
        "category": "terrorism",
        "severity": "high",
        "source": "bench",
        "added_at": now_ms(),
    }
    producer.send("banks", entry, key=record_key("banks", entry))
    send_uploads(producer, events)
    reader = OutputReader(settings, out_topic, out_type)
    reader.measure_from = now_ms() + 10**12  # backlog phase: no latency samples
    reader.start()
    env = {
        **os.environ,
        "MODSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "MODSTREAM_REDIS_URL": settings.redis_url,
        "MODSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "MODSTREAM_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
        "MODSTREAM_FETCH_WAIT_MAX_MS": str(settings.fetch_wait_max_ms),
        "PYTHONPATH": str(ROOT),
    }
    proc = subprocess.Popen(command, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        if not reader.wait_for(events, 300):
            raise RuntimeError(f"{name}: only {len(reader.arrivals)} of {events} outputs; see {log}")
        throughput = (events - 1) / (reader.arrivals[events - 1] - reader.arrivals[0])
        paced = int(rate * seconds)
        reader.measure_from = now_ms()
        send_uploads(producer, paced, rate)
        reader.wait_for(events + paced, 120)
    finally:
        proc.terminate()
        proc.wait(30)
        reader.stop()
    lat = sorted(reader.latencies_ms)
    return {
        "events_per_s": throughput,
        "p50_ms": statistics.median(lat) if lat else float("nan"),
        "p99_ms": lat[int(len(lat) * 0.99) - 1] if lat else float("nan"),
        "latency_samples": len(lat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=500.0, help="events/s in the latency phase")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the latency phase")
    parser.add_argument("--only", help="run only the systems whose name contains this")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="modstream-bench-"))
    broker, bootstrap = start_broker(work / "broker.log")
    redis, redis_url = start_redis(work / "redis")
    py = sys.executable
    systems = [
        (
            "modstream enrich>match>classify>decide",
            "decisions",
            "Decision",
            [py, "-m", "pipeline", "--log-level", "WARNING", "run", "enrich", "match", "classify", "decide"],
        ),
        (
            "plain confluent-kafka loop",
            "matched",
            "UploadEvent",
            [py, str(ROOT / "bench" / "passthrough.py"), "confluent"],
        ),
        (
            "faust-streaming agent",
            "classified",
            "UploadEvent",
            [py, str(ROOT / "bench" / "passthrough.py"), "faust"],
        ),
    ]
    if args.only:
        systems = [s for s in systems if args.only in s[0]]
    results = {}
    try:
        for name, out_short, out_type, command in systems:
            settings = Settings(
                bootstrap_servers=bootstrap,
                redis_url=redis_url,
                topic_prefix=f"b{uuid.uuid4().hex[:8]}.",
                partitions=3,
                session_timeout_ms=EMBEDDED_SESSION_TIMEOUT_MS,
                fetch_wait_max_ms=EMBEDDED_FETCH_WAIT_MAX_MS,
            )
            if "pipeline" not in command:  # baselines: bootstrap, input and output topics as arguments
                command = [*command, bootstrap, settings.topic("uploads"), settings.topic(out_short)]
            print(f"running {name} ...", flush=True)
            results[name] = measure(
                name,
                settings,
                command,
                settings.topic(out_short),
                out_type,
                args.events,
                args.rate,
                args.seconds,
                work / f"{out_short}.log",
            )
            print(f"  {results[name]}", flush=True)
    finally:
        broker.terminate()
        redis.terminate()

    print(
        f"\n{args.events} events backlog; latency at {args.rate:.0f} events/s for {args.seconds:.0f} s; "
        f"embedded Tansu broker; {os.cpu_count()} cores\n"
    )
    print(f"{'system':40} {'events/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, r in results.items():
        print(f"{name:40} {r['events_per_s']:>10.0f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f}")
    ours = results.get("modstream enrich>match>classify>decide", {}).get("events_per_s", 0)
    for name, r in results.items() if ours else ():
        if not name.startswith("modstream"):
            print(f"modstream / {name}: {ours / r['events_per_s']:.2f}x throughput")


if __name__ == "__main__":
    main()
