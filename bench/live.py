"""Benchmark: the live path under load, beside an upload backlog.

In one run, on the embedded broker (Tansu) and Redis (MODSTREAM_REDIS_URL, else
redis://127.0.0.1:6379/0, else the embedded one), with a fresh topic prefix:

- `python -m pipeline run live` runs as its own process (its own consumer group), and the
  upload pipeline as another (`python -m pipeline run enrich match classify decide`, fused),
  as in production;
- --streams concurrent live streams (default 100) send one 1280x720 JPEG frame a second
  each, spread evenly over the second. The frames come from a pool of distinct frames of
  generated videos (pipeline.dev.samples: photographic-looking scenes, slowly panning, a new
  scene every few seconds), encoded once before the run and reused across streams (each
  stream plays a pool video from its own offset);
- --banked-streams of them (default 10) turn, mid-stream and staggered, into a re-broadcast
  of a banked video: the banked clip is 640x360, its copy is re-encoded at 960x540 and
  rescaled to 1280x720 JPEG frames; the bank holds the clip's vPDQ frame hashes (item_id
  per video). Once a stream's end_stream decision is read back, the platform stops sending
  its frames (as an enforcement service would cut it);
- at --uploads-at seconds, a backlog of --uploads text-post upload events (default 20,000)
  lands on mod.uploads all at once, and the upload pipeline works through it while the
  streams go on. The banked copies start at --copy-at, inside that window.

Measured:
- end latency: time the end_stream decision is read back from mod.decisions minus the
  occurred_at of the frame that ended the stream (the decision's envelope): p50/p99, against
  the target (p99 < 2 s);
- stream seconds to end: the same arrival minus the occurred_at of the first copied frame
  (a window of several frames is needed to match a video): p50/p99;
- frames judged per second by the live process (Prometheus counter
  `modstream_live_frames_total`, scraped every second) beside the rate offered, and how long
  the live process took, after the last frame was sent, to judge everything;
- false ends: end_stream decisions on the benign streams (target 0);
- the upload backlog's decisions per second and when it drained; CPU of each process.
With --profile (default on when py-spy is installed), py-spy samples the live process for
--profile-seconds from the start of the upload backlog and the hottest frames are printed.

    python bench/live.py [--streams 100] [--banked-streams 10] [--seconds 60] [--uploads 20000]
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

# This directory holds a file named like the package: make `pipeline` mean the package.
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition  # noqa: E402

from bench.e2e import WORDS  # noqa: E402
from pipeline.config import TOPICS, Settings  # noqa: E402
from pipeline.dev import services  # noqa: E402
from pipeline.records import now_ms, record_key  # noqa: E402
from pipeline.runtime.reader import read_all  # noqa: E402
from pipeline.runtime.topics import create_topics  # noqa: E402
from pipeline.sdk import ModerationProducer  # noqa: E402
from pipeline.serde import Codec  # noqa: E402
from pipeline.state.accounts import RedisAccountStore  # noqa: E402

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
TARGET_P99_S = 2.0
# py-spy on the PATH, else next to this interpreter (a virtualenv's bin/)
PY_SPY = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
SIZE = (1280, 720)


# ---- media (generated before the run, in worker processes) -------------------------------------
def _benign_video(job: tuple[int, int]) -> list[bytes]:
    """`seconds` JPEG frames (one a second) of a generated 1280x720 video at a live platform's
    bit rate (3 Mbit/s, 10 fps): a new photographic-looking scene every few seconds, panning."""
    import io

    import av

    from pipeline.dev.samples import encode, photo

    seed, seconds = job
    fps, scene_s = 10, 4
    scenes = [photo(seed * 100 + i, (SIZE[0] + 96, SIZE[1] + 96)) for i in range(seconds // scene_s + 1)]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt, stream.bit_rate = SIZE[0], SIZE[1], "yuv420p", 3_000_000
        for i in range(seconds * fps):
            scene, step = scenes[i // (scene_s * fps)], (i % (scene_s * fps)) * 2 // 3
            frame = scene.crop((step, step // 2, step + SIZE[0], step // 2 + SIZE[1]))
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    out, next_second = [], 0.0
    with av.open(io.BytesIO(buf.getvalue())) as container:
        for frame in container.decode(container.streams.video[0]):
            if frame.time is not None and frame.time >= next_second:
                out.append(encode(frame.to_image(), quality=80))
                next_second += 1.0
    return out


def _banked_video(job: tuple[int, int]) -> tuple[list[str], list[bytes]]:
    """A banked clip's vPDQ frame hashes, and the frames of its re-broadcast (re-encoded at
    960x540, rescaled to 1280x720, one JPEG a second)."""
    from pipeline.dev.samples import clip, frames
    from pipeline.signals.media import MediaLimits, media_signals
    from tests.media import reencode_video

    seed, seconds = job
    data = clip(seed, seconds=seconds, fps=10, size=(640, 360), scene_seconds=2)
    hashes = [s["value"] for s in media_signals(data, MediaLimits()) if s["signal_type"] == "video_pdq"]
    return hashes, frames(reencode_video(data, (960, 540)), quality=80, size=SIZE)


def make_media(pool_videos: int, pool_seconds: int, banked: int, banked_seconds: int) -> tuple[Any, Any]:
    with ProcessPoolExecutor(max(1, min(2, os.cpu_count() or 1))) as pool:
        benign = pool.map(_benign_video, [(7000 + i, pool_seconds) for i in range(pool_videos)])
        bad = pool.map(_banked_video, [(8000 + i, banked_seconds) for i in range(banked)])
        return list(benign), list(bad)


# ---- processes ----------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_env(s: Settings, metrics_port: int = 0) -> dict[str, str]:
    return {
        **os.environ,
        "MODSTREAM_BOOTSTRAP_SERVERS": s.bootstrap_servers,
        "MODSTREAM_REDIS_URL": s.redis_url,
        "MODSTREAM_TOPIC_PREFIX": s.topic_prefix,
        "MODSTREAM_PARTITIONS": str(s.partitions),
        "MODSTREAM_BATCH_SIZE": str(s.batch_size),
        "MODSTREAM_SESSION_TIMEOUT_MS": str(s.session_timeout_ms),
        "MODSTREAM_FETCH_WAIT_MAX_MS": str(s.fetch_wait_max_ms),
        "MODSTREAM_METRICS_PORT": str(metrics_port),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    }


def start(stages: Sequence[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "pipeline", "--log-level", "WARNING", "run", *stages]
    return subprocess.Popen(cmd, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, cwd=ROOT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


class Metrics(threading.Thread):
    """Scrapes the live process's counters every `interval_s`: (time, frames judged, ignored)."""

    def __init__(self, port: int, interval_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.interval_s = interval_s
        self.samples: list[tuple[float, float, float]] = []
        self._stop_event = threading.Event()

    def scrape(self) -> tuple[float, float, float] | None:
        try:
            text = urllib.request.urlopen(self.url, timeout=2).read().decode()
        except OSError:
            return None
        judged = sum(float(v) for v in re.findall(r"^modstream_live_frames_total\{[^}]*\} (\S+)$", text, re.M))
        ignored = sum(float(v) for v in re.findall(r'^modstream_live_ignored_total\{kind="frame"\} (\S+)$', text, re.M))
        return time.time(), judged, ignored

    def run(self) -> None:
        while not self._stop_event.is_set():
            sample = self.scrape()
            if sample:
                self.samples.append(sample)
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def at(self, t: float) -> tuple[float, float, float]:
        """The first sample at or after `t` (else the last)."""
        return next((s for s in self.samples if s[0] >= t), self.samples[-1])


class Decisions(threading.Thread):
    """Reads mod.decisions from the beginning; live decisions (keyed by a stream id of this
    run) are decoded with their arrival time, upload decisions only counted."""

    def __init__(self, settings: Settings, stream_prefix: str) -> None:
        super().__init__(daemon=True)
        self.settings, self.prefix = settings, stream_prefix.encode()
        self.codec = Codec()
        self.live: list[tuple[float, dict[str, Any]]] = []
        self.uploads: list[float] = []
        self.ended: set[str] = set()
        self.assigned = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        topic = self.settings.topic("decisions")
        consumer = Consumer(self.settings.consumer_config(None))
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        self.assigned.set()
        while not self._stop_event.is_set():
            for m in consumer.consume(1000, 0.02):
                if m.error():
                    continue
                now = time.time()
                if (m.key() or b"").startswith(self.prefix):
                    d = self.codec.decode(TOPICS["decisions"], m.value())
                    self.live.append((now, d))
                    if d["action"] == "end_stream":
                        self.ended.add(d["envelope"]["stream_id"])
                else:
                    self.uploads.append(now)
        consumer.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def encode_uploads(producer: ModerationProducer, n: int, tag: str) -> list[tuple[str, str | bytes | None, bytes]]:
    """The upload events as the SDK encodes them (topic, key, value), so the backlog lands at once."""
    import random

    rng = random.Random(3)
    records: list[tuple[str, str | bytes | None, bytes]] = []

    class Recorder:
        def produce(self, topic: str, value: bytes, key: str | bytes | None = None, **_: object) -> None:
            records.append((topic, key, value))

        def poll(self, timeout: float = 0) -> int:
            return 0

    real, producer.producer = producer.producer, Recorder()  # type: ignore[assignment]
    try:
        for i in range(n):
            text = " ".join(rng.choices(WORDS, k=rng.randint(6, 24)))
            producer.send_upload(f"{tag}c{i}", f"{tag}u{rng.randrange(500)}", text=text)
    finally:
        producer.producer = real
    return records


def py_spy(pid: int, seconds: int, work: Path) -> None:
    """Samples `pid` with py-spy (raw folded stacks to work/live.folded; its output to py-spy.log)."""
    cmd = [PY_SPY or "py-spy", "record", "--pid", str(pid), "--duration", str(seconds)]
    cmd += ["--rate", "50", "--nonblocking", "--format", "raw", "-o", str(work / "live.folded")]
    with (work / "py-spy.log").open("ab") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def profile_summary(path: Path, top: int = 14) -> list[str]:
    """py-spy raw (folded) stacks: the frames where the samples are, inclusive and self."""
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] += n
        for f in dict.fromkeys(re.sub(r":\d+\)$", ")", f) for f in frames):
            inclusive[f] += n
    if not total:
        return ["  (no samples)"]
    out = [f"  {total} samples; inclusive (function), below the common trunk (frames in >97% of samples):"]
    below = [(f, n) for f, n in inclusive.most_common() if n < 0.97 * total]
    out += [f"    {100 * n / total:5.1f}%  {f}" for f, n in below[:top]]
    out.append("  self (line):")
    out += [f"    {100 * n / total:5.1f}%  {f}" for f, n in leaf.most_common(top)]
    return out


# ---- the run ------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--banked-streams", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=60, help="how long the streams send frames")
    ap.add_argument("--uploads", type=int, default=20_000)
    ap.add_argument("--uploads-at", type=float, default=8.0, help="when the upload backlog lands (s)")
    ap.add_argument("--copy-at", type=float, default=10.0, help="when the first banked copy starts (s)")
    ap.add_argument("--copy-every", type=float, default=2.0, help="seconds between the banked copies' starts")
    ap.add_argument("--pool-videos", type=int, default=8)
    ap.add_argument("--pool-seconds", type=int, default=30)
    ap.add_argument("--banked-videos", type=int, default=2)
    ap.add_argument("--banked-seconds", type=int, default=20)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--drain-timeout", type=float, default=180.0)
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=PY_SPY is not None)
    ap.add_argument("--profile-seconds", type=int, default=20)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, profile)")
    args = ap.parse_args()
    assert 0 <= args.banked_streams <= args.streams

    work = Path(tempfile.mkdtemp(prefix="modstream-bench-live-"))
    t_media = time.monotonic()
    pool, banked = make_media(args.pool_videos, args.pool_seconds, args.banked_videos, args.banked_seconds)
    frame_kb = sum(len(f) for v in pool for f in v) / sum(len(v) for v in pool) / 1024
    print(
        f"media: {sum(len(v) for v in pool)} distinct 1280x720 benign frames (mean {frame_kb:.0f} KB), "
        f"{len(banked)} banked videos ({', '.join(str(len(h)) for h, _ in banked)} frame hashes; "
        f"copies of {', '.join(str(len(c)) for _, c in banked)} frames) in {time.monotonic() - t_media:.0f} s",
        flush=True,
    )

    broker, bootstrap = services.start_broker(work / "broker.log")
    redis_url = next(
        (u for u in (os.environ.get("MODSTREAM_REDIS_URL", ""), DEFAULT_REDIS) if u and services.redis_answers(u)), ""
    )
    redis_proc = None
    if not redis_url:
        redis_proc, redis_url = services.start_redis(work / "redis")
    tag = f"bl{os.urandom(4).hex()}"
    settings = Settings(
        bootstrap_servers=bootstrap,
        redis_url=redis_url,
        topic_prefix=f"{tag}.",
        partitions=args.partitions,
        session_timeout_ms=services.EMBEDDED_SESSION_TIMEOUT_MS,
        fetch_wait_max_ms=services.EMBEDDED_FETCH_WAIT_MAX_MS,
        kafka_extra={"log_level": "4"},
    )
    create_topics(settings)
    from pipeline.app import connect_redis

    redis = connect_redis(redis_url)
    procs: list[subprocess.Popen[bytes]] = []
    reader = Decisions(settings, f"{tag}.s")
    metrics_port = services.free_port()
    metrics = Metrics(metrics_port)
    try:
        producer = ModerationProducer(settings)
        for k, (hashes, _) in enumerate(banked):
            for value in hashes:
                entry = {
                    "bank": "tvec",
                    "signal_type": "video_pdq",
                    "hash": value,
                    "category": "terrorism",
                    "severity": "critical",
                    "source": "bench",
                    "added_at": now_ms(),
                    "item_id": f"banked-video-{k}",
                }
                producer.send("banks", entry, key=record_key("banks", entry))
        producer.flush()

        n, nb = args.streams, args.banked_streams
        sids = [f"{tag}.s{i:03d}" for i in range(n)]
        users = [f"{tag}.u{i:03d}" for i in range(n)]
        accounts = RedisAccountStore(redis)
        for u in [*users, f"{tag}.warm"]:
            accounts.set_verified(u)
        # The banked streams, spread over the stream ids; each starts its copy at its own time.
        step = n / nb if nb else 1
        bad = {int(j * step): j for j in range(nb)}
        copy_start = {i: int(args.copy_at + j * args.copy_every) for i, j in bad.items()}
        copy_of = {i: banked[j % len(banked)][1] for i, j in bad.items()}

        def frame_of(i: int, k: int) -> tuple[bytes, bool]:
            if i in bad and copy_start[i] <= k < copy_start[i] + len(copy_of[i]):
                return copy_of[i][k - copy_start[i]], True
            video = pool[i % len(pool)]
            return video[(i * 7 + k) % len(video)], False

        uploads = encode_uploads(producer, args.uploads, f"{tag}.")
        reader.start()
        reader.assigned.wait(30)
        procs.append(start(["live"], process_env(settings, metrics_port), work / "live.log"))
        procs.append(start(["enrich", "match", "classify", "decide"], process_env(settings), work / "pipeline.log"))
        live_pid, pipe_pid = procs[0].pid, procs[1].pid

        # Warm-up: a stream and an upload through, so that group joins, model loading and
        # bank catch-up are done before the clock starts.
        t = time.monotonic()
        producer.send_live_started(f"{tag}.swarm", f"{tag}.warm", title="warm-up")
        producer.send_live_frame(f"{tag}.swarm", f"{tag}.warm", 0, pool[0][0])
        producer.send_upload(f"{tag}.warm", f"{tag}.warm", text="warm-up")
        producer.flush()
        while not (reader.live and reader.uploads):
            if time.monotonic() - t > 240 or any(p.poll() is not None for p in procs):
                raise RuntimeError(f"processes not ready (see {work}/live.log, pipeline.log)")
            time.sleep(0.05)
        metrics.start()
        print(f"ready in {time.monotonic() - t:.1f} s (live pid {live_pid}, pipeline pid {pipe_pid})", flush=True)

        # The run.
        started_ids = {producer.send_live_started(sids[i], users[i], title=f"stream {i}") for i in range(n)}
        producer.flush()
        time.sleep(1.0)
        first_copy: dict[str, int] = {}  # stream id -> occurred_at of its first copied frame
        sent_frames = skipped = 0
        late: list[float] = []
        uploads_sent = threading.Event()
        upload_times: dict[str, float] = {}

        def send_uploads() -> None:
            kafka = Producer(settings.producer_config())
            upload_times["start"] = time.time()
            for topic, key, value in uploads:
                while True:
                    try:
                        kafka.produce(topic, value=value, key=key)
                        break
                    except BufferError:
                        kafka.poll(0.05)
            kafka.flush(60)
            upload_times["acked"] = time.time()
            uploads_sent.set()

        cpu0 = {p: cpu_seconds(p) for p in (live_pid, pipe_pid, broker.pid)}
        t0 = time.time()
        uploader = threading.Timer(args.uploads_at, send_uploads)
        uploader.start()
        profiler = None
        if args.profile:
            profiler = threading.Timer(args.uploads_at, py_spy, (live_pid, args.profile_seconds, work))
            profiler.start()
        for k in range(args.seconds):
            for i in range(n):
                due = t0 + k + i / n
                wait = due - time.time()
                if wait > 0:
                    time.sleep(wait)
                else:
                    late.append(-wait)
                if sids[i] in reader.ended:
                    skipped += 1
                    continue  # the platform cut the stream
                frame, copied = frame_of(i, k)
                at = now_ms()
                producer.send_live_frame(sids[i], users[i], k, frame, occurred_at=at)
                sent_frames += 1
                if copied and sids[i] not in first_copy:
                    first_copy[sids[i]] = at
            producer.producer.poll(0)
        producer.flush()
        t_sent = time.time()
        uploads_sent.wait(120)

        # Drain: every frame sent judged (or ignored, for a stream already ended).
        deadline = time.monotonic() + args.drain_timeout
        while time.monotonic() < deadline:
            s = metrics.scrape()
            if s and s[1] + s[2] >= sent_frames + 1:  # + the warm-up frame
                break
            time.sleep(0.5)
        t_drained = time.time()
        while len(reader.uploads) < args.uploads + 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        end_sample = metrics.scrape()
        for sid, user in zip(sids, users, strict=True):
            producer.send_live_ended(sid, user)
        producer.flush()
        cpu1 = {p: cpu_seconds(p) for p in (live_pid, pipe_pid, broker.pid)}
        t_end = time.time()
    finally:
        metrics.stop()
        for p in procs:
            stop(p)
        reader.stop()

    # ---- figures ------------------------------------------------------------------------------
    ends: dict[str, tuple[float, dict[str, Any]]] = {}
    for arrived, d in reader.live:
        sid = d["envelope"]["stream_id"]
        if d["action"] == "end_stream" and sid not in ends:
            ends[sid] = (arrived, d)
    bad_ids = {sids[i] for i in bad}
    from_frame = [arrived - d["envelope"]["occurred_at"] / 1000 for sid, (arrived, d) in ends.items() if sid in bad_ids]
    from_copy = [
        arrived - first_copy[sid] / 1000 for sid, (arrived, _) in ends.items() if sid in bad_ids and sid in first_copy
    ]
    frames_to_end = []
    for sid, (_, d) in ends.items():
        if sid in bad_ids and (m := re.search(r"ended at frame (\d+)", d["explanation"])):
            frames_to_end.append(int(m.group(1)) - copy_start[sids.index(sid)] + 1)
    false_ends = sorted(sid for sid in ends if sid not in bad_ids)
    starts = Counter(d["action"] for _, d in reader.live if d["envelope"]["event_id"] in started_ids)
    end_rules = Counter(d["rule_id"] for _, (_, d) in ends.items() if d["envelope"]["stream_id"] in bad_ids)

    judged_rate = float("nan")
    if metrics.samples:
        s0, s1 = metrics.at(t0 + 5), metrics.at(t_sent)
        judged_rate = (s1[1] - s0[1]) / (s1[0] - s0[0]) if s1[0] > s0[0] else float("nan")
    offered = sent_frames / (t_sent - t0)
    judged_total = (end_sample[1] + end_sample[2] - 1) if end_sample else float("nan")
    up = sorted(reader.uploads[1:])  # after the warm-up's
    up_done = up[-1] if len(up) >= args.uploads else float("nan")
    dlq = len(read_all(settings, "dlq")) if broker.poll() is None else -1
    wall = {
        "live": cpu1[live_pid] - cpu0[live_pid],
        "pipeline": cpu1[pipe_pid] - cpu0[pipe_pid],
        "broker": cpu1[broker.pid] - cpu0[broker.pid],
    }

    def secs(values: Sequence[float]) -> str:
        return f"p50 {percentile(values, 0.5):6.2f} s   p99 {percentile(values, 0.99):6.2f} s   (n={len(values)})"

    def row(figure: str, measured: str, target: str = "") -> None:
        print(f"  {figure:<56}{measured:<50}{target}")

    p99 = percentile(from_frame, 0.99)
    verdict = "MET" if p99 < TARGET_P99_S and len(from_frame) == nb else "MISSED"
    print()
    print(
        f"live bench: {n} streams at 1 frame/s (1280x720 JPEG, mean {frame_kb:.0f} KB), {args.seconds} s; "
        f"{nb} turn into a banked video from t={args.copy_at:.0f} s (one every {args.copy_every:.0f} s); "
        f"{args.uploads} uploads land on mod.uploads at t={args.uploads_at:.0f} s"
    )
    print(
        f"  embedded broker (Tansu), Redis {redis_url}; live: 1 process (`modstream run live`); uploads: 1 "
        f"process (`modstream run enrich match classify decide`); {os.cpu_count()} CPUs, shared"
    )
    row("figure", "measured", "target")
    row("end latency (frame that ended it -> decision)", secs(from_frame), f"p99 < {TARGET_P99_S:.0f} s: {verdict}")
    row("stream seconds to end (first copied frame -> decision)", secs(from_copy), "(reported)")
    window = f"(window {settings.live_window}, min_frames {settings.live_min_frames})"
    row("copied frames sent until the end (incl. it)", str(sorted(frames_to_end)), window)
    row("banked streams ended", f"{len(from_frame)}/{nb}, rules {dict(end_rules)}", f"{nb}/{nb}")
    row("false ends on benign streams", f"{len(false_ends)} of {n - nb}", "0")
    row(
        "frames judged/s by the live process (t0+5 s .. last sent)",
        f"{judged_rate:6.1f}/s   (offered {offered:6.1f}/s)",
        "the offered rate",
    )
    row("frames sent / judged or ignored", f"{sent_frames} / {judged_total:.0f} ({skipped} not sent: cut streams)")
    row("live process drained after the last frame was sent", f"{t_drained - t_sent:6.1f} s")
    late_ms = f"p99 {percentile(late, 0.99) * 1000:.0f} ms, max {max(late, default=0) * 1000:.0f} ms"
    row("sender lateness (the driver's own)", late_ms)
    if up and "start" in upload_times:
        took = (up_done if not math.isnan(up_done) else up[-1]) - upload_times["start"]
        since = upload_times["start"] - t0
        row(
            "upload backlog decided",
            f"{len(up)}/{args.uploads} in {took:.1f} s ({len(up) / took:.0f}/s), t={since:.1f} s on",
        )
    span = t_end - t0
    row(
        "CPU over the run (s, % of one core)",
        "  ".join(f"{k} {v:.0f} s ({100 * v / span:.0f}%)" for k, v in wall.items()),
    )
    row("dead letters", str(dlq))
    row("started decisions", str(dict(starts)))
    per = [
        f"{sid.rsplit('.', 1)[1]} {a - d['envelope']['occurred_at'] / 1000:.2f}/{a - first_copy.get(sid, 0) / 1000:.1f}"
        for sid, (a, d) in sorted(ends.items())
        if sid in bad_ids
    ]
    print("  per banked stream, end latency / stream seconds to end: " + ", ".join(per))
    if false_ends:
        print("  false ends: " + ", ".join(f"{s} ({ends[s][1]['rule_id']})" for s in false_ends))
    folded = work / "live.folded"
    if args.profile and not folded.exists():
        print(f"  (no profile: see {work / 'py-spy.log'})")
    if folded.exists():
        print(f"where the live process's time goes (py-spy, {args.profile_seconds} s from t={args.uploads_at:.0f} s):")
        print("\n".join(profile_summary(folded)))

    for pattern in (f"*{tag}.*",):
        keys = list(redis.scan_iter(pattern, count=50_000))
        for i in range(0, len(keys), 1000):
            redis.delete(*keys[i : i + 1000])
    del producer  # its connections, before the broker goes
    gc.collect()
    broker.terminate()
    broker.wait(10)
    if redis_proc is not None:
        redis_proc.terminate()
    if args.keep:
        print(f"work directory: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
