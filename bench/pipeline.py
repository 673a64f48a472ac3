"""Benchmark: the modstream pipeline (enrich > match > classify > decide), fused in one
process and as one process per stage, beside a plain confluent-kafka consume>produce loop
and a faust-streaming agent with the same batching, on two workload mixes, in one run.

Mixes (every event of a mix goes through every system):
- text-only: text posts (captions of 6-24 words) and reports on recent posts (20%);
- realistic: text posts (50%), 1920x1080 JPEG uploads by reference (30%; `file://` URIs under
  a media root this bench creates and sets as MODSTREAM_MEDIA_ROOT, a few dozen distinct
  photographic-looking files reused, one of them in a hash bank) and reports (20%).
The baselines pass the same records through without doing any of the work; the `avro` one,
the floor, also decodes each event and encodes a Decision for it (bench/passthrough.py).

For each mix and system, on the same embedded broker, a fresh topic prefix each time:
1. start the system's processes; send a small warm-up through and wait for it to come out
   (group joins, model loading and bank catch-up are done then);
2. throughput: pause the processes (SIGSTOP), produce a backlog of N events (encoded by the SDK
   beforehand, so that producing takes well under the group session timeout), resume them
   (SIGCONT); events/s = N / (time the last output is read back - time of resuming). The
   baselines get max(N, --text-events): they do none of the work, and a short backlog would
   measure little but start-up.
   CPU time of the processes and of the broker over that interval is reported per event,
   which is steadier than events/s when the machine is shared;
3. latency: produce at half the measured peak for --seconds (longer, up to --max-seconds, until
   --min-samples events); latency = the time an output is read back minus the event's
   occurred_at (p50, p99).

    python bench/pipeline.py [--text-events 20000] [--media-events 2000] [--seconds 6]
    python bench/pipeline.py --profile [--profile-events 40000]   # fused runner under py-spy
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# This file is named like the package: make `pipeline` mean the package, not this script.
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

from bench.e2e import (  # noqa: E402
    Mix,
    OutputReader,
    Processes,
    Services,
    cpu_seconds,
    encode,
    latencies_ms,
    make_jpegs,
    modstream_command,
    percentile,
    process_env,
    send,
    send_encoded,
)
from pipeline.config import Settings  # noqa: E402
from pipeline.runtime.topics import create_topics  # noqa: E402
from pipeline.sdk import ModerationProducer  # noqa: E402
from pipeline.serde import Codec  # noqa: E402

STAGES = ("enrich", "match", "classify", "decide")
PASSTHROUGH = str(ROOT / "bench" / "passthrough.py")
INPUTS = ("uploads", "reports")

# Targets (the issue): modstream per process >= 3x the 10,700 events/s measured before and at
# least 0.25x the plain loop on the text-only mix; p99 under 50 ms at half the peak rate.
TARGET_EVENTS_PER_S = 3 * 10_700
TARGET_VS_PLAIN = 0.25
TARGET_P99_MS = 50.0


@dataclass(frozen=True)
class System:
    key: str
    name: str
    out: str  # short name of the topic its outputs go to
    commands: Callable[[Settings], list[list[str]]]

    @property
    def modstream(self) -> bool:
        return self.key in ("fused", "separate")


def _baseline(kind: str, out: str) -> Callable[[Settings], list[list[str]]]:
    def commands(s: Settings) -> list[list[str]]:
        sources = ",".join(s.topic(t) for t in INPUTS)
        return [[sys.executable, PASSTHROUGH, kind, s.bootstrap_servers, sources, s.topic(out)]]

    return commands


SYSTEMS = (
    System("fused", "modstream fused (1 process)", "decisions", lambda s: [modstream_command(*STAGES)]),
    System(
        "separate", "modstream separate (4 processes)", "decisions", lambda s: [modstream_command(n) for n in STAGES]
    ),
    System("plain", "plain confluent-kafka loop", "matched", _baseline("confluent", "matched")),
    System("avro", "plain loop + Avro decode, Decision", "decisions", _baseline("avro", "decisions")),
    System("faust", "faust-streaming take()", "matched", _baseline("faust", "matched")),
)


def measure(
    svc: Services,
    system: System,
    mix: Mix,
    events: int,
    args: argparse.Namespace,
    media_root: Path | None,
    work: Path,
) -> dict[str, float]:
    settings = svc.settings(args.partitions, media_root, args.batch_size)
    if not system.modstream:  # they do none of the work: a longer backlog for a steadier figure
        events = max(events, args.text_events)
    tag = settings.topic_prefix.strip(".")
    create_topics(settings)
    producer = ModerationProducer(settings)
    mix.prepare(producer)
    reader = OutputReader(settings, settings.topic(system.out))
    reader.start()
    reader.assigned.wait(30)
    log = work / f"{mix.name}-{system.key}.log"
    procs = Processes(system.commands(settings), process_env(settings), log)
    result: dict[str, float] = {}
    try:
        started = time.monotonic()
        warmup = mix.events(args.warmup, f"{tag}w", seed=1)
        send(producer, warmup)
        if not reader.wait_for(len(warmup), 180, procs.alive):
            raise RuntimeError(f"{system.name}: {reader.count} of {len(warmup)} warm-up outputs; see {log}")
        result["ready_s"] = time.monotonic() - started
        time.sleep(0.5)  # let the warm-up's commits land

        # throughput on a backlog
        backlog = mix.events(events, f"{tag}b", seed=2)
        encoded = encode(producer, backlog)
        base = reader.count
        procs.pause()
        t = time.monotonic()
        send_encoded(producer, encoded)
        result["backlog_produce_s"] = time.monotonic() - t
        if result["backlog_produce_s"] > 0.5 * settings.session_timeout_ms / 1000:
            print(
                f"  warning: the backlog took {result['backlog_produce_s']:.1f} s to produce; paused consumers "
                "may have lost their group session",
                flush=True,
            )
        cpu0, broker0 = procs.cpu_each(), cpu_seconds(svc.broker.pid)
        resumed = time.time()
        procs.resume()
        if not reader.wait_for(base + len(backlog), max(300, events / 50), procs.alive):
            raise RuntimeError(f"{system.name}: {reader.count - base} of {len(backlog)} backlog outputs; see {log}")
        cpu1, broker1 = procs.cpu_each(), cpu_seconds(svc.broker.pid)
        last = reader.arrivals[base + len(backlog) - 1]
        result["backlog"] = len(backlog)
        result["events_per_s"] = len(backlog) / (last - resumed)
        each = [(b - a) / len(backlog) * 1e6 for a, b in zip(cpu0, cpu1, strict=True)]
        result["cpu_us_per_event"] = sum(each)
        if len(each) > 1:
            for i, us in enumerate(each):
                result[f"cpu_us_per_event_{i}"] = us
        result["broker_cpu_us_per_event"] = (broker1 - broker0) / len(backlog) * 1e6

        # latency at half the peak
        rate = result["events_per_s"] / 2
        if args.max_rate:
            rate = min(rate, args.max_rate)
        seconds = max(args.seconds, min(args.max_seconds, args.min_samples / rate))
        paced = mix.events(max(50, int(rate * seconds)), f"{tag}l", seed=3)
        time.sleep(0.5)
        base = reader.count
        reader.keep_values = True
        result["target_rate"] = rate
        sent, result["rate"] = send(producer, paced, rate, seconds=seconds + 1)
        reader.wait_for(base + sent, 60, procs.alive)
        reader.keep_values = False
        result["outputs_missing"] = max(0, base + sent - reader.count)
    finally:
        procs.stop()
        reader.stop()
    lat = latencies_ms(reader.values, Codec())
    result["p50_ms"] = percentile(lat, 0.50)
    result["p99_ms"] = percentile(lat, 0.99)
    result["latency_samples"] = len(lat)
    return result


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def report(results: dict[tuple[str, str], dict[str, float]], args: argparse.Namespace, svc: Services) -> None:
    print(
        f"\nembedded Tansu broker, {args.partitions} partitions, batch {args.batch_size}; Redis {svc.redis_kind}; "
        f"{os.cpu_count()} cores (shared: figures are indicative)\n"
        f"backlog: {args.text_events} text-only / {args.media_events} realistic events; "
        f"latency: {args.seconds:g} s (longer for at least {args.min_samples} samples, at most {args.max_seconds:g} s) "
        "at half each system's peak\n"
    )
    head = (
        f"{'mix':10} {'system':34} {'backlog':>7} {'events/s':>9} {'CPU us/ev':>10} {'broker us/ev':>12} "
        f"{'lat rate/s':>11} {'samples':>7} {'p50 ms':>7} {'p99 ms':>7}"
    )
    print(head)
    print("-" * len(head))
    short = False
    for (mix, key), r in results.items():
        name = next(s.name for s in SYSTEMS if s.key == key)
        below = r.get("rate", 0) < 0.9 * r.get("target_rate", 0)
        short |= below
        print(
            f"{mix:10} {name:34} {fmt(r.get('backlog'), '7,.0f')} {fmt(r.get('events_per_s'), '9,.0f')} "
            f"{fmt(r.get('cpu_us_per_event'), '10.0f')} {fmt(r.get('broker_cpu_us_per_event'), '12.0f')} "
            f"{fmt(r.get('rate'), '10,.0f')}{'*' if below else ' '} {fmt(r.get('latency_samples'), '7,.0f')} "
            f"{fmt(r.get('p50_ms'), '7.1f')} {fmt(r.get('p99_ms'), '7.1f')}"
            + (f"  ERROR: {r['error']}" if "error" in r else "")
            + (f"  ({r['outputs_missing']:.0f} outputs missing)" if r.get("outputs_missing") else "")
        )
    print(
        "\nevents/s: backlog / (last output read back - resume); CPU us/ev: CPU time of the system's processes\n"
        "(all of them) per backlog event; broker us/ev: the broker's, idle fetch polling included; lat rate/s: the\n"
        "rate the latency phase achieved (target: half the peak)"
        + ("; *: the bench's producer fell short of half the peak" if short else "")
    )
    print("\ntargets")
    plain = results.get(("text-only", "plain"), {}).get("events_per_s")
    floor = results.get(("text-only", "avro"), {})
    if plain and "events_per_s" in floor:
        print(
            f"  text-only the floor (plain loop + Avro) reaches {floor['events_per_s'] / plain:.2f}x the plain loop, "
            f"at {floor['cpu_us_per_event']:.0f} CPU us/ev against the plain loop's "
            f"{results[('text-only', 'plain')]['cpu_us_per_event']:.0f}"
        )
    for key in ("fused", "separate"):
        row = results.get(("text-only", key))
        if not row or "events_per_s" not in row:
            continue
        eps = row["events_per_s"]
        ok = "MET" if eps >= TARGET_EVENTS_PER_S else "not met"
        line = (
            f"  text-only {key:8} {eps:>9,.0f} events/s vs >= {TARGET_EVENTS_PER_S:,} "
            f"({eps / TARGET_EVENTS_PER_S:.2f}x): {ok}"
        )
        if plain:
            ok = "MET" if eps / plain >= TARGET_VS_PLAIN else "not met"
            line += f"; {eps / plain:.2f}x the plain loop vs >= {TARGET_VS_PLAIN}x: {ok}"
        print(line)
        each = [row[f"cpu_us_per_event_{i}"] for i in range(len(STAGES)) if f"cpu_us_per_event_{i}" in row]
        per_process = ", ".join(f"{name} {1e6 / us:,.0f}" for name, us in zip(STAGES, each, strict=False) if us > 0)
        print(
            f"  {'':9} {key:8} {1e6 / row['cpu_us_per_event']:>9,.0f} events per CPU-second of all its processes"
            + (f" (each: {per_process})" if per_process else "")
            + "; that is the rate per process on a dedicated core"
        )
    for (mix, key), r in results.items():
        if key in ("fused", "separate") and "p99_ms" in r:
            ok = "MET" if r["p99_ms"] < TARGET_P99_MS else "not met"
            print(f"  {mix:10} {key:8} p99 {r['p99_ms']:.1f} ms at {r['rate']:,.0f}/s vs < {TARGET_P99_MS:g} ms: {ok}")
    for mix in dict.fromkeys(m for m, _ in results):
        ours = results.get((mix, "fused"), {}).get("events_per_s")
        for key in ("plain", "avro", "faust"):
            other = results.get((mix, key), {}).get("events_per_s")
            if ours and other:
                print(f"  {mix:10} modstream fused / {key}: {ours / other:.2f}x throughput")


def build_mix(name: str, args: argparse.Namespace, work: Path) -> tuple[Mix, int, Path | None]:
    """A mix, its backlog size and its media root."""
    if name == "text-only":
        return Mix("text-only", text=0.8, image=0.0, report=0.2), args.text_events, None
    if name == "realistic":
        media_root = work / "media"
        t = time.monotonic()
        images = make_jpegs(media_root, args.images)
        print(f"{len(images)} JPEGs of 1920x1080 drawn in {time.monotonic() - t:.0f} s", flush=True)
        mix = Mix("realistic", text=0.5, image=0.3, report=0.2, images=images, banked=images[:1])
        return mix, args.media_events, media_root
    raise SystemExit(f"unknown mix {name!r}: text-only or realistic")


# ---- profile ---------------------------------------------------------------------------
def profile(svc: Services, args: argparse.Namespace, work: Path) -> None:
    """The fused runner on a backlog (text-only unless --profile-mix says otherwise) under
    py-spy, attached after the warm-up; prints the functions with the most own time."""
    spy_bin = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not spy_bin:
        raise SystemExit("py-spy not found: pip install py-spy")
    mix, _, media_root = build_mix(args.profile_mix, args, work)
    settings = svc.settings(args.partitions, media_root, args.batch_size)
    tag = settings.topic_prefix.strip(".")
    create_topics(settings)
    producer = ModerationProducer(settings)
    mix.prepare(producer)
    reader = OutputReader(settings, settings.topic("decisions"))
    reader.start()
    reader.assigned.wait(30)
    procs = Processes([modstream_command(*STAGES)], process_env(settings), work / "profile-run.log")
    raw = Path(args.profile_out).resolve() if args.profile_out else work / "profile.txt"
    try:
        warm = mix.events(args.warmup, f"{tag}w", seed=1)
        send(producer, warm)
        if not reader.wait_for(len(warm), 180, procs.alive):
            raise SystemExit("the fused runner produced no warm-up outputs")
        time.sleep(0.5)
        backlog = mix.events(args.profile_events, f"{tag}b", seed=2)
        encoded = encode(producer, backlog)
        base = reader.count
        procs.pause()
        send_encoded(producer, encoded)
        # py-spy attaches to the running process (needs ptrace rights: root, or ptrace_scope 0).
        spy = subprocess.Popen(
            [spy_bin, "record", "--pid", str(procs.procs[0].pid), "--rate", str(args.profile_rate)]
            + ["--format", "raw", "--nonblocking", "--full-filenames", "-o", str(raw)],
            stdout=subprocess.DEVNULL,
            stderr=(work / "py-spy.log").open("ab"),
        )
        time.sleep(1.0)
        cpu0 = procs.cpu()
        resumed = time.time()
        procs.resume()
        reader.wait_for(base + len(backlog), 600, procs.alive)
        elapsed = reader.arrivals[-1] - resumed
        cpu = procs.cpu() - cpu0
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    finally:
        procs.stop()
        reader.stop()
    n = len(backlog)
    print(
        f"\nfused runner, {n} {mix.name} events: {n / elapsed:,.0f} events/s under py-spy, "
        f"{cpu / n * 1e6:.0f} us CPU per event" + (f"; raw profile: {raw}" if args.profile_out else "")
    )
    if not raw.exists():
        raise SystemExit(f"py-spy wrote nothing; see {work / 'py-spy.log'}")
    top_by_own(raw, args.profile_top, cpu / n * 1e6)


def _frame_name(frame: str) -> str:
    """'func (/path/to/site-packages/pkg/file.py:123)' -> 'func (pkg/file.py)'."""
    func, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/site-packages/", "/dist-packages/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = re.sub(r"^.*/lib/python3\.\d+/", "", path)
    return f"{func} ({path})" if path else func


# What a sample is spent on: the first of these that any frame of its stack matches.
COMPONENTS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("Avro encode (Codec.encode)", lambda f: f.startswith("Codec.encode ")),
    ("Avro decode (Codec.decode)", lambda f: f.startswith("Codec.decode ")),
    ("Redis client", lambda f: "(redis/" in f),
    ("ONNX inference", lambda f: "(onnxruntime/" in f),
    ("policy engine", lambda f: "(pipeline/policy/engine.py)" in f),
    ("enrich stage, rest", lambda f: f.startswith("EnrichStage.")),
    ("match stage, rest", lambda f: f.startswith("MatchStage.")),
    ("classify stage, rest", lambda f: f.startswith("ClassifyStage.")),
    ("decide stage, rest", lambda f: f.startswith("DecideStage.")),
    ("runner, rest", lambda f: f.startswith("Runner.")),
    ("other threads (followers, fetch pool)", lambda f: True),
)


def top_by_own(raw: Path, top: int, cpu_us_per_event: float) -> None:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
        parts[next(name for name, match in COMPONENTS if any(match(f) for f in frames))] += n
    if not samples:
        raise SystemExit("py-spy recorded no samples")
    us = cpu_us_per_event / samples  # one sample, as a share of the measured CPU per event
    print(f"{samples} samples of active threads; us/ev: the share of the process's CPU time per event\n")
    print(f"{'own %':>6} {'us/ev':>6} {'total %':>7}  function (file)")
    for name, n in own.most_common(top):
        print(f"{n / samples * 100:6.1f} {n * us:6.1f} {total[name] / samples * 100:7.1f}  {name}")
    print(f"\n{'%':>6} {'us/ev':>6}  by component (inclusive; a sample counts once, for the first that matches)")
    for name, _ in COMPONENTS:
        if parts[name]:
            print(f"{parts[name] / samples * 100:6.1f} {parts[name] * us:6.1f}  {name}")


# ---- main ------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text-events", type=int, default=20000, help="backlog of the text-only mix")
    parser.add_argument("--media-events", type=int, default=2000, help="backlog of the realistic mix")
    parser.add_argument("--images", type=int, default=36, help="distinct 1080p JPEGs in the realistic mix")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the latency phase")
    parser.add_argument(
        "--min-samples", type=int, default=500, help="latency samples wanted: a slow system's phase is longer"
    )
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longest latency phase")
    parser.add_argument("--warmup", type=int, default=200, help="events sent before measuring")
    parser.add_argument("--max-rate", type=float, default=0, help="cap on the latency phase's rate (0: none)")
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--only", help="systems to run, comma-separated: fused,separate,plain,avro,faust")
    parser.add_argument("--mixes", default="text-only,realistic", help="comma-separated: text-only,realistic")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) afterwards")
    parser.add_argument("--profile", action="store_true", help="profile the fused runner instead (py-spy)")
    parser.add_argument("--profile-events", type=int, default=40000)
    parser.add_argument("--profile-mix", default="text-only", help="text-only or realistic")
    parser.add_argument("--profile-rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--profile-top", type=int, default=25)
    parser.add_argument("--profile-out", help="where to keep py-spy's raw output")
    args = parser.parse_args()

    began = time.monotonic()
    failed = False
    work = Path(tempfile.mkdtemp(prefix="modstream-bench-"))
    svc = Services(work)
    try:
        if args.profile:
            profile(svc, args, work)
            print(f"\nprofile took {time.monotonic() - began:.0f} s")
            return
        systems = [s for s in SYSTEMS if not args.only or s.key in args.only.split(",")]
        mixes = [build_mix(name, args, work) for name in args.mixes.split(",")]
        results: dict[tuple[str, str], dict[str, float]] = {}
        for mix, events, media_root in mixes:
            for system in systems:
                print(f"{mix.name}: {system.name} ...", flush=True)
                t = time.monotonic()
                try:
                    r = measure(svc, system, mix, events, args, media_root, work)
                except RuntimeError as exc:
                    print(f"  failed: {exc}", flush=True)
                    failed = True
                    r = {"error": str(exc)}  # type: ignore[dict-item]
                else:
                    print(
                        "  " + ", ".join(f"{k} {v:,.1f}" for k, v in r.items()) + f" ({time.monotonic() - t:.0f} s)",
                        flush=True,
                    )
                results[(mix.name, system.key)] = r
        report(results, args, svc)
        if args.json:
            Path(args.json).write_text(json.dumps({f"{m}/{k}": r for (m, k), r in results.items()}, indent=2))
        print(f"\nbench took {time.monotonic() - began:.0f} s")
    except BaseException:
        args.keep = True
        raise
    finally:
        svc.close()
        if args.keep or failed:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
