"""Benchmark: `POST /v1/check` of `modstream serve` (a real uvicorn server in its own process,
on the embedded broker) at a fixed request rate, hash-only and with a 1920x1080 JPEG, beside
the same lookups through HMA's own index class (python-threatexchange's PDQIndex, called
in-process, with its PDQ hasher for the JPEGs), in one run.

The load is open-loop: request i is due at start + i/rate, whatever earlier requests do, and
its latency runs from when it was due (so a stalled server cannot hide its queue). Each check
is answered only after Kafka acknowledged its upload event. The bank holds `--bank-size`
random PDQ hashes plus one of the JPEGs; hash-only queries are half near-copies of banked
hashes (0-40 bits flipped), half unrelated, and the matches the API reports are compared
with the in-process index's.

    python bench/api.py [--rate 200] [--jpeg-rates 200,20] [--seconds 20] [--bank-size 100000] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

import httpx  # noqa: E402

from bench.e2e import Services, cpu_seconds, make_jpegs, percentile, process_env, stop_process  # noqa: E402
from pipeline.banks import admin  # noqa: E402
from pipeline.banks.pdq_index import bits_to_hex  # noqa: E402
from pipeline.banks.table import BankTable  # noqa: E402
from pipeline.dev.services import free_port  # noqa: E402
from pipeline.records import signal  # noqa: E402
from pipeline.runtime.topics import create_topics  # noqa: E402
from pipeline.signals.media import MediaLimits, media_signals  # noqa: E402

TOKEN = "bench-token-0123456789abcdef"
THRESHOLD = 31
WARMUP_S = 3.0


@dataclass
class Phase:
    name: str
    requests: int
    ok: int
    errors: dict[str, int]
    seconds: float
    due_ms: list[float]  # latency from when each request was due
    service_ms: list[float]  # latency from when it was sent
    server_cpu_s: float
    bodies: list[tuple[int, Any]]  # (request number, verdict) of the answered requests
    server_ms: dict[str, list[float]]  # the server's own timings (Server-Timing): judge, ack
    rate: float = 0.0  # requests/s offered

    def row(self) -> dict[str, Any]:
        due, svc = sorted(self.due_ms), sorted(self.service_ms)
        return {
            "phase": self.name,
            "offered_rps": self.rate,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "achieved_rps": round(self.ok / self.seconds, 1),
            "p50_ms": round(percentile(due, 0.50), 2),
            "p99_ms": round(percentile(due, 0.99), 2),
            "max_ms": round(due[-1], 2) if due else None,
            "service_p99_ms": round(percentile(svc, 0.99), 2),
            "server_cpu_ms_per_request": round(1000 * self.server_cpu_s / max(1, self.requests), 2),
            **{
                f"server_{name}_p{q}_ms": round(percentile(sorted(values), q / 100), 2)
                for name, values in sorted(self.server_ms.items())
                for q in (50, 99)
            },
        }


def pdq_data(size: int, queries: int, seed: int = 7) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    bank = rng.integers(0, 256, (size, 32), dtype=np.uint8)
    q = bank[rng.integers(0, size, queries)].copy()
    for row in q[: queries // 2]:
        for bit in rng.choice(256, rng.integers(0, 41), replace=False):
            row[bit // 8] ^= 1 << (bit % 8)
    q[queries // 2 :] = rng.integers(0, 256, (queries - queries // 2, 32), dtype=np.uint8)
    rng.shuffle(q)
    return bits_to_hex(bank), bits_to_hex(q)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def start_server(settings: Any, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **process_env(settings),
        "MODSTREAM_API_TOKENS": json.dumps({TOKEN: {"name": "bench", "scopes": ["check", "banks:read"]}}),
    }
    cmd = [sys.executable, "-m", "pipeline", "--log-level", "WARNING", "serve", "--port", str(port), "--no-access-log"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def settle(pid: int, timeout_s: float = 180) -> None:
    """Waits until the server is idle (its PDQ index built in the background after the banks
    loaded): under 5% of a core over 2 s."""
    say("waiting for the server to settle")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = cpu_seconds(pid)
        time.sleep(2)
        if cpu_seconds(pid) - before < 0.1:
            return


def wait_ready(base: str, entries: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("modstream serve exited:\n" + log.read_text()[-3000:])
        try:
            health = httpx.get(f"{base}/healthz", timeout=2).json()
            if health["bank_entries"] >= entries:
                return
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.5)
    raise SystemExit("modstream serve did not load the banks in time")


class Http1Pool:
    """A minimal HTTP/1.1 keep-alive client for one server, POSTing prepared bodies: far less CPU
    per request than a general-purpose client, so that the load generator, which shares the
    machine with the server, is not what limits the rate."""

    def __init__(self, host: str, port: int, headers: dict[str, str], max_connections: int = 512) -> None:
        self.host, self.port = host, port
        self.head = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **headers}.items()).encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(max_connections)

    async def post(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        async with self.slots:
            if self.idle:
                try:
                    return await self._post(self.idle.pop(), path, body)
                except (OSError, asyncio.IncompleteReadError):
                    pass  # the server closed the idle connection (keep-alive timeout): once more, on a new one
            return await self._post(await asyncio.open_connection(self.host, self.port), path, body)

    async def _post(
        self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        reader, writer = conn
        try:
            writer.write(b"POST %s HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n" % (path.encode(), self.head, len(body)))
            writer.write(body)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                key, sep, value = line.partition(":")
                if sep:
                    headers[key.strip().lower()] = value.strip()
            payload = await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        if headers.get("connection", "").lower() == "close":
            writer.close()
        else:
            self.idle.append(conn)
        return int(lines[0].split()[1]), headers, payload

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


async def load(base: str, bodies: list[bytes], rate: float, seconds: float, pid: int, name: str) -> Phase:
    """Open-loop load at `rate` for WARMUP_S (not counted) and then `seconds`."""
    host, port = base.removeprefix("http://").split(":")
    client = Http1Pool(host, int(port), {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    due_ms: list[float] = []
    service_ms: list[float] = []
    answers: list[Any] = []
    errors: dict[str, int] = {}
    server_ms: dict[str, list[float]] = {}
    say(f"{name}: {rate:g} requests/s for {WARMUP_S:g} + {seconds:g} s")

    async def one(i: int, body: bytes, due: float, counted: bool) -> None:
        sent = time.perf_counter()
        try:
            status, headers, payload = await asyncio.wait_for(client.post("/v1/check", body), 120)
            kind = "ok" if status == 200 else f"http {status}"
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError) as exc:
            kind, headers, payload = type(exc).__name__, {}, b""
        done = time.perf_counter()
        if not counted:
            return
        if kind != "ok":
            errors[kind] = errors.get(kind, 0) + 1
            return
        due_ms.append(1000 * (done - due))
        service_ms.append(1000 * (done - sent))
        answers.append((i, json.loads(payload)))
        for part in filter(None, headers.get("server-timing", "").split(",")):
            step, _, dur = part.strip().partition(";dur=")
            server_ms.setdefault(step, []).append(float(dur))

    warm = int(WARMUP_S * rate)
    total = warm + int(seconds * rate)
    tasks = []
    start = time.perf_counter()
    cpu0 = cpu_at = 0.0
    for i in range(total):
        due = start + i / rate
        if i == warm:
            cpu0, cpu_at = cpu_seconds(pid), time.perf_counter()
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i, bodies[i % len(bodies)], due, i >= warm)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - cpu_at
    cpu = cpu_seconds(pid) - cpu0
    client.close()
    return Phase(name, total - warm, len(due_ms), errors, elapsed, due_ms, service_ms, cpu, answers, server_ms, rate)


def run_async(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def hma_index(bank: list[str], queries: list[str], jpegs: list[bytes]) -> dict[str, Any]:
    """The same lookups through the index class HMA builds for PDQ (PdqSignal.get_index_cls(),
    faiss), in-process, one at a time, and the JPEGs through its PDQ hasher and the index."""
    from threatexchange.signal_type.pdq.signal import PdqSignal

    started = time.perf_counter()
    index = PdqSignal.get_index_cls().build([(h, i) for i, h in enumerate(bank)])
    build_s = time.perf_counter() - started
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        found.append({bank[m.metadata] for m in index.query(q) if m.similarity_info.distance <= THRESHOLD})
        times.append(1000 * (time.perf_counter() - t))
    jpeg_times = []
    for n in range(max(40, len(jpegs))):
        t = time.perf_counter()
        h = PdqSignal.hash_from_bytes(jpegs[n % len(jpegs)])
        if h:
            index.query(h)
        jpeg_times.append(1000 * (time.perf_counter() - t))
    times.sort()
    jpeg_times.sort()
    return {
        "class": type(index).__name__,
        "build_s": round(build_s, 2),
        "lookup_p50_ms": round(percentile(times, 0.5), 3),
        "lookup_p99_ms": round(percentile(times, 0.99), 3),
        "lookups_per_s_one_core": round(len(times) / (sum(times) / 1000), 1),
        "jpeg_hash_and_lookup_p50_ms": round(percentile(jpeg_times, 0.5), 2),
        "jpeg_hash_and_lookup_p99_ms": round(percentile(jpeg_times, 0.99), 2),
        "found": found,
    }


def modstream_in_process(bank: list[str], queries: list[str]) -> dict[str, Any]:
    """BankTable.match_batch, one query at a time, in-process: what the API adds is the rest."""
    table = BankTable()
    table.load(
        {"bank": "bench", "signal_type": "pdq", "hash": h, "category": "c", "severity": "high", "added_at": 0}
        for h in bank
    )
    table.match_batch([[signal("pdq", queries[0], 100)]])  # the index builds on first use
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait for the background rebuild to cover every entry
        table.match_batch([[signal("pdq", bank[-1], 100)]])
        if table.match_batch([[signal("pdq", bank[-1], 100)]])[0]:
            break
        time.sleep(0.2)
    times = []
    for q in queries:
        t = time.perf_counter()
        table.match_batch([[signal("pdq", q, 100)]])
        times.append(1000 * (time.perf_counter() - t))
    times.sort()
    return {"lookup_p50_ms": round(percentile(times, 0.5), 3), "lookup_p99_ms": round(percentile(times, 0.99), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s offered")
    parser.add_argument("--jpeg-rates", default="", help="comma-separated requests/s of JPEG phases; default: --rate")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per phase (after a warm-up)")
    parser.add_argument("--bank-size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2000, help="distinct hash-only queries")
    parser.add_argument("--jpegs", type=int, default=8, help="distinct 1080p JPEGs")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="modstream-bench-api-"))
    svc = Services(work)
    proc = None
    try:
        settings = svc.settings(partitions=3)
        create_topics(settings)
        bank, queries = pdq_data(args.bank_size, args.queries)
        jpegs = [p.read_bytes() for p in make_jpegs(work / "jpegs", args.jpegs)]
        banned = [s for s in media_signals(jpegs[0], MediaLimits()) if s["signal_type"] in ("pdq", "md5")]
        entries = [admin.bank_entry("bench", "pdq", h, "terrorism", "critical", "bench") for h in bank]
        entries += [
            admin.bank_entry("bench", s["signal_type"], s["value"], "terrorism", "critical", "bench") for s in banned
        ]
        say(f"publishing {len(entries)} bank entries")
        started = time.perf_counter()
        admin.publish(settings, entries)
        publish_s = time.perf_counter() - started

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(settings, port, work / "serve.log")
        say("starting modstream serve")
        started = time.perf_counter()
        wait_ready(base, len(entries), proc, work / "serve.log")
        load_s = time.perf_counter() - started
        settle(proc.pid)

        hash_bodies = [json.dumps({"hashes": {"pdq": q}}).encode() for q in queries]
        jpeg_bodies = [json.dumps({"media_b64": base64.b64encode(j).decode()}).encode() for j in jpegs]
        phases = [run_async(load(base, hash_bodies, args.rate, args.seconds, proc.pid, "hash-only"))]
        for rate in (args.jpeg_rates or str(args.rate)).split(","):
            settle(proc.pid)  # a phase the server could not keep up with leaves work behind
            phases.append(run_async(load(base, jpeg_bodies, float(rate), args.seconds, proc.pid, "1080p JPEG")))
        say("HMA's index, in-process")
        hma = hma_index(bank, queries, jpegs)
        say("modstream's BankTable, in-process")
        ours = modstream_in_process(bank, queries)

        # The API's matches for the hash-only queries, against the in-process index's.
        agree = checked = 0
        for i, answer in phases[0].bodies:
            api_found = {m["hash"] for m in answer["matches"]}
            agree += api_found == hma["found"][i % len(queries)]
            checked += 1
        blocked = sum(a["action"] == "remove" for p in phases[1:] for _, a in p.bodies)
        answered = sum(len(p.bodies) for p in phases[1:])
        result = {
            "machine": {"cpus": os.cpu_count(), "bank_entries": len(entries), "load_average": os.getloadavg()[0]},
            "setup": {"bank_publish_s": round(publish_s, 1), "server_ready_s": round(load_s, 1)},
            "api": [p.row() for p in phases],
            "api_jpeg_blocked": f"{blocked}/{answered} (1 of {len(jpegs)} images is banked)",
            "hma_index_class": "threatexchange " + hma["class"],
            "hma_index_in_process": {k: v for k, v in hma.items() if k not in ("found", "class")},
            "modstream_banktable_in_process": ours,
            "hash_only_matches_agree_with_hma_index": f"{agree}/{checked}",
        }
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            report(result)
    finally:
        if proc is not None:
            stop_process(proc, 30)
        svc.close()
        shutil.rmtree(work, ignore_errors=True)


def report(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(
        f"modstream serve /v1/check, {m['bank_entries']} banked hashes, {m['cpus']} CPUs "
        f"(load average {m['load_average']:.1f} at the end)"
    )
    print(f"  (bank published in {r['setup']['bank_publish_s']} s; server ready in {r['setup']['server_ready_s']} s)")
    print(
        f"  {'phase':<12} {'offered':>8} {'ok/sent':>11} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
        f"{'cpu ms/req':>10}  errors"
    )
    for row in r["api"]:
        print(
            f"  {row['phase']:<12} {row['offered_rps']:>8} {str(row['ok']) + '/' + str(row['requests']):>11} "
            f"{row['achieved_rps']:>7} "
            f"{row['p50_ms']:>8} {row['p99_ms']:>8} {row['max_ms']:>8} {row['server_cpu_ms_per_request']:>10}  "
            f"{row['errors'] or '-'}"
        )
    for row in r["api"]:
        parts = [
            f"{k[7:-3].replace('_', ' ')} {v} ms"
            for k, v in row.items()
            if k.startswith("server_") and k != "server_cpu_ms_per_request"
        ]
        print(f"  {row['phase']:<12} in the server: {', '.join(parts)}")
    print(f"  1080p JPEG checks blocked: {r['api_jpeg_blocked']}")
    h, o = r["hma_index_in_process"], r["modstream_banktable_in_process"]
    print(f"HMA's index ({r['hma_index_class']}, faiss), in-process, one query at a time:")
    print(
        f"  build {h['build_s']} s; lookup p50 {h['lookup_p50_ms']} ms, p99 {h['lookup_p99_ms']} ms "
        f"({h['lookups_per_s_one_core']} lookups/s on one core)"
    )
    print(
        f"  1080p JPEG, PdqSignal.hash_from_bytes + lookup: p50 {h['jpeg_hash_and_lookup_p50_ms']} ms, "
        f"p99 {h['jpeg_hash_and_lookup_p99_ms']} ms"
    )
    print(
        f"modstream BankTable.match_batch, in-process, one query: "
        f"p50 {o['lookup_p50_ms']} ms, p99 {o['lookup_p99_ms']} ms"
    )
    print(f"hash-only matches equal to the HMA index's: {r['hash_only_matches_agree_with_hma_index']}")


if __name__ == "__main__":
    main()
