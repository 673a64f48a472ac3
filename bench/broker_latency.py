"""Minimal reproduction: the latency the embedded broker (Tansu) alone puts under a record, with
plain confluent-kafka clients and no modstream stage in the path.

- one hop: producer -> topic A -> reader;
- two hops (what bench/pipeline.py's latency covers): producer -> topic A -> a do-nothing
  pass-through (bench/passthrough.py's confluent loop, in its own process) -> topic B -> reader.

The producer has the settings of bench/passthrough.py (idempotence, acks=all, linger.ms=5, lz4)
and sends keyed records of about 150 bytes, each carrying its send time, at a fixed rate, paced
in steps of about 1 ms as bench/e2e.py's `send` does. The reader is bench/e2e.py's
OutputReader: a consumer with the runner's settings (fetch.wait.max.ms, no
auto-commit, read_committed); latency = the time a record is read back minus its send time.
Every consumer, the pass-through's included, uses --fetch-wait-ms (the embedded default: 10).
Topics have 1 partition and as many as bench/pipeline.py uses by default (3).

    python bench/broker_latency.py [--rates 1000,5000,10000] [--seconds 4] [--fetch-wait-ms 10]
                                   [--partitions 1,3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script: make the repository root importable (as bench/pipeline.py does).
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

from confluent_kafka import Producer  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

from bench.e2e import OutputReader, percentile, stop_process  # noqa: E402
from bench.passthrough import PRODUCER  # noqa: E402
from pipeline.config import Settings  # noqa: E402
from pipeline.dev import services  # noqa: E402

PASSTHROUGH = str(ROOT / "bench" / "passthrough.py")
PADDING = os.urandom(64).hex()  # fills each value up to about 150 bytes
VALUE_BYTES = 150


def produce(producer: Producer, topic: str, phase: int, seq: int) -> None:
    value = f"{phase} {seq} {time.time():.6f} {PADDING}"[:VALUE_BYTES].encode()
    while True:
        try:
            producer.produce(topic, value=value, key=str(seq).encode())
            return
        except BufferError:
            producer.poll(0.01)


def send(producer: Producer, topic: str, rate: float, seconds: float) -> tuple[int, float]:
    """Sends at `rate` records/s for `seconds`, paced in steps of about 1 ms; returns the number
    sent and the rate achieved."""
    step = max(1, int(rate / 1000))
    n = int(rate * seconds)
    started = time.monotonic()
    for i in range(n):
        produce(producer, topic, int(rate), i)
        producer.poll(0)
        if i % step == step - 1 and (ahead := started + (i + 1) / rate - time.monotonic()) > 0:
            time.sleep(ahead)
    elapsed = time.monotonic() - started
    producer.flush(30)
    return n, n / elapsed


def measure(bootstrap: str, partitions: int, hops: int, args: argparse.Namespace, log: Path) -> None:
    """One topic layout: a warm-up (group joins), then each rate in turn, a table row each."""
    tag = os.urandom(3).hex()
    source, sink = f"lat-{tag}-a", f"lat-{tag}-b"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, partitions, 1) for t in (source, sink)]).values():
        future.result(30)
    relay: subprocess.Popen[bytes] | None = None
    if hops == 2:
        env = {**os.environ, "MODSTREAM_FETCH_WAIT_MAX_MS": str(args.fetch_wait_ms), "MODSTREAM_BATCH_SIZE": "500"}
        with log.open("ab") as out:
            relay = subprocess.Popen(
                [sys.executable, PASSTHROUGH, "confluent", bootstrap, source, sink], env=env, stdout=out, stderr=out
            )
    settings = Settings(
        bootstrap_servers=bootstrap,
        session_timeout_ms=services.EMBEDDED_SESSION_TIMEOUT_MS,
        fetch_wait_max_ms=args.fetch_wait_ms,
    )
    reader = OutputReader(settings, sink if hops == 2 else source)
    reader.keep_values = True
    reader.start()
    producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER})
    try:
        if not reader.assigned.wait(30):
            raise RuntimeError("the reader got no partitions")
        # Warm-up: a probe every 100 ms until one comes out (the pass-through has joined too).
        probes = 0
        while not reader.arrivals and probes < 300:
            produce(producer, source, 0, probes)
            producer.flush(10)
            probes += 1
            reader.wait_for(1, 0.1)
        if not reader.wait_for(probes, 10):
            raise RuntimeError("the warm-up did not come out")
        time.sleep(0.5)
        for rate in args.rates:
            base = len(reader.values)
            n, achieved = send(producer, source, rate, args.seconds)
            reader.wait_for(base + n, 30)
            time.sleep(3 * args.fetch_wait_ms / 1000 + 0.2)  # stragglers (duplicates would show)
            lat = sorted(
                arrived * 1000 - float(value.split()[2]) * 1000
                for arrived, value in reader.values[base:]
                if value.split()[0] == str(rate).encode()
            )
            p50, p99, top = (percentile(lat, q) for q in (0.5, 0.99, 1.0))
            row = f"{partitions:>10} {hops:>4} {rate:>7,} {achieved:>9,.0f} {len(lat):>7,}/{n:<7,} "
            print(row + f"{p50:>7.1f} {p99:>7.1f} {top:>7.1f}", flush=True)
    finally:
        reader.stop()
        if relay is not None:
            stop_process(relay)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=lambda s: [int(r) for r in s.split(",")], default=[1000, 5000, 10000])
    parser.add_argument("--seconds", type=float, default=4.0, help="how long each rate is sent")
    parser.add_argument("--fetch-wait-ms", type=int, default=services.EMBEDDED_FETCH_WAIT_MAX_MS)
    parser.add_argument("--partitions", type=lambda s: [int(p) for p in s.split(",")], default=[1, 3])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="modstream-broker-latency-"))
    broker, bootstrap = services.start_broker(work / "broker.log")
    header = f"{'partitions':>10} {'hops':>4} {'rate':>7} {'sent/s':>9} {'records/sent':>15} "
    print(f"embedded Tansu, fetch.wait.max.ms {args.fetch_wait_ms}, {args.seconds:g} s per rate")
    print(header + f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}", flush=True)
    try:
        for partitions in args.partitions:
            for hops in (1, 2):
                measure(bootstrap, partitions, hops, args, work / "passthrough.log")
    finally:
        stop_process(broker)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
