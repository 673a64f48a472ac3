"""End-to-end benchmark helpers shared by bench/pipeline.py: the embedded services, the two
workload mixes, an output reader that timestamps what the system under test writes, and
control of the processes under test (start, pause, resume, CPU time, stop).

Only public entry points of the project are used: Settings, the SDK producer, topic
creation, the Codec, the dev services and the `modstream` CLI.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from pipeline.config import Settings
from pipeline.dev import services
from pipeline.records import now_ms, record_key
from pipeline.sdk import ModerationProducer
from pipeline.serde import Codec
from pipeline.serde.avro import DecodeError

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


# ---- services ---------------------------------------------------------------------------
class Services:
    """The embedded broker, and Redis: MODSTREAM_REDIS_URL or the local default if either
    answers, else the embedded redis-server."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.broker, self.bootstrap = services.start_broker(work / "broker.log")
        self.redis_proc: subprocess.Popen[bytes] | None = None
        for url in (os.environ.get("MODSTREAM_REDIS_URL", ""), DEFAULT_REDIS):
            if url and services.redis_answers(url):
                self.redis_url = url
                self.redis_kind = "external"
                break
        else:
            self.redis_proc, self.redis_url = services.start_redis(work / "redis")
            self.redis_kind = "embedded"

    def settings(self, partitions: int, media_root: Path | None = None, batch_size: int = 500) -> Settings:
        """Settings with a fresh topic prefix, so a system never sees another's records."""
        tag = os.urandom(4).hex()
        return Settings(
            bootstrap_servers=self.bootstrap,
            redis_url=self.redis_url,
            topic_prefix=f"b{tag}.",
            partitions=partitions,
            batch_size=batch_size,
            session_timeout_ms=services.EMBEDDED_SESSION_TIMEOUT_MS,
            fetch_wait_max_ms=services.EMBEDDED_FETCH_WAIT_MAX_MS,
            media_root=str(media_root) if media_root else "",
            kafka_extra={"log_level": "4"},  # the bench's own clients: warnings and worse
        )

    def close(self) -> None:
        for proc in (self.broker, self.redis_proc):
            if proc is not None:
                stop_process(proc)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`."""
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def process_env(settings: Settings) -> dict[str, str]:
    """The environment of a `modstream` process (or baseline) under test."""
    return {
        **os.environ,
        "MODSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "MODSTREAM_REDIS_URL": settings.redis_url,
        "MODSTREAM_TOPIC_PREFIX": settings.topic_prefix,
        "MODSTREAM_PARTITIONS": str(settings.partitions),
        "MODSTREAM_BATCH_SIZE": str(settings.batch_size),
        "MODSTREAM_SESSION_TIMEOUT_MS": str(settings.session_timeout_ms),
        "MODSTREAM_FETCH_WAIT_MAX_MS": str(settings.fetch_wait_max_ms),
        "MODSTREAM_MEDIA_ROOT": settings.media_root,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
    }


# ---- media ------------------------------------------------------------------------------
def _write_jpeg(args: tuple[int, str, tuple[int, int]]) -> str:
    from pipeline.dev.samples import encode, photo

    seed, path, size = args
    Path(path).write_bytes(encode(photo(1000 + seed, size), quality=88))
    return path


def make_jpegs(root: Path, count: int, size: tuple[int, int] = (1920, 1080)) -> list[Path]:
    """`count` distinct photographic-looking JPEGs (gradients, blobs, edges, texture, sensor
    noise: pipeline.dev.samples.photo) under `root`, drawn in parallel."""
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(i, str(root / f"photo-{i:03d}.jpg"), size) for i in range(count)]
    with ProcessPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        return [Path(p) for p in pool.map(_write_jpeg, jobs)]


# ---- workloads --------------------------------------------------------------------------
WORDS = [
    "the",
    "a",
    "this",
    "my",
    "our",
    "new",
    "old",
    "great",
    "photo",
    "video",
    "trip",
    "weekend",
    "city",
    "beach",
    "mountain",
    "dinner",
    "friends",
    "family",
    "game",
    "match",
    "team",
    "win",
    "lost",
    "music",
    "concert",
    "album",
    "song",
    "review",
    "today",
    "tomorrow",
    "yesterday",
    "morning",
    "night",
    "love",
    "like",
    "share",
    "check",
    "out",
    "watch",
    "look",
    "at",
    "here",
    "there",
    "what",
    "when",
    "why",
    "how",
    "best",
    "worst",
    "ever",
    "really",
    "very",
    "so",
    "much",
    "more",
    "food",
    "recipe",
    "coffee",
    "cat",
    "dog",
    "garden",
    "rain",
    "sun",
    "snow",
    "train",
    "bus",
    "car",
    "bike",
    "run",
    "walk",
    "book",
    "movie",
    "show",
    "season",
]
REASONS = ("spam", "other", "harassment", "hate", "spam", "other")


@dataclass
class Event:
    kind: str  # "text", "image" or "report"
    content_id: str
    user_id: str
    text: str | None = None
    media_uri: str | None = None
    reporter_id: str = ""
    reason: str = "other"


@dataclass
class Mix:
    """A workload: shares of text posts, image uploads (by reference) and reports."""

    name: str
    text: float
    image: float
    report: float
    images: list[Path] = field(default_factory=list)
    banked: list[Path] = field(default_factory=list)  # images whose SHA-256 a bank holds

    def events(self, n: int, tag: str, seed: int = 0) -> list[Event]:
        """`n` events; content ids carry `tag` (Redis is shared, topics are not)."""
        rng = random.Random(seed)
        out: list[Event] = []
        posted: list[str] = []
        for i in range(n):
            roll = rng.random()
            user = f"u{rng.randrange(500)}"
            if roll < self.report and posted:
                target = posted[-1 - min(len(posted) - 1, int(rng.expovariate(1 / 50)))]
                out.append(
                    Event(
                        "report",
                        target,
                        user,
                        text="this breaks the rules" if rng.random() < 0.5 else None,
                        reporter_id=f"r{rng.randrange(2000)}",
                        reason=rng.choice(REASONS),
                    )
                )
                continue
            cid = f"{tag}-c{i}"
            posted.append(cid)
            caption = " ".join(rng.choices(WORDS, k=rng.randint(6, 24)))
            if roll < self.report + self.image and self.images:
                uri = rng.choice(self.images).as_uri()
                out.append(Event("image", cid, user, text=caption if rng.random() < 0.5 else None, media_uri=uri))
            else:
                out.append(Event("text", cid, user, text=caption))
        return out

    def prepare(self, producer: ModerationProducer) -> None:
        """Bank entries the workload matches against."""
        for path in self.banked:
            entry = {
                "bank": "bench",
                "signal_type": "sha256",
                "hash": hashlib.sha256(path.read_bytes()).hexdigest(),
                "category": "terrorism",
                "severity": "high",
                "source": "bench",
                "added_at": now_ms(),
            }
            producer.send("banks", entry, key=record_key("banks", entry))
        producer.flush()


def send(
    producer: ModerationProducer, events: Sequence[Event], rate: float = 0, seconds: float = 0
) -> tuple[int, float]:
    """Produces `events` (at `rate` events/s if given; occurred_at is the send time), for at
    most `seconds` if given, and waits for every acknowledgement; returns how many were sent
    and the rate achieved."""
    step = max(1, int(rate / 1000)) if rate else 0  # pace in steps of about 1 ms
    started = time.monotonic()
    sent = 0
    for i, e in enumerate(events):
        if seconds and i % 100 == 0 and time.monotonic() - started > seconds:
            break
        if e.kind == "report":
            producer.send_report(e.content_id, e.reporter_id, e.reason, text=e.text, owner_id=e.user_id)
        elif e.kind == "image":
            producer.send_upload(e.content_id, e.user_id, media_uri=e.media_uri, media_type="image/jpeg", text=e.text)
        else:
            producer.send_upload(e.content_id, e.user_id, text=e.text)
        sent += 1
        if step and i % step == step - 1:
            ahead = started + (i + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    elapsed = time.monotonic() - started
    producer.flush()
    return sent, sent / elapsed if elapsed > 0 else float("inf")


class _Recorder:
    """Stands in for the SDK's Kafka producer: keeps what it would have produced."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str | bytes | None, bytes | None]] = []

    def produce(self, topic: str, value: bytes | None = None, key: str | bytes | None = None, **_: object) -> None:
        self.records.append((topic, key, value))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def flush(self, timeout: float = 0) -> int:
        return 0


def encode(producer: ModerationProducer, events: Sequence[Event]) -> list[tuple[str, str | bytes | None, bytes | None]]:
    """The records the SDK would produce for `events` (topic, key, value), built and encoded
    by the SDK itself, so that a backlog can be produced in a fraction of the time."""
    real, recorder = producer.producer, _Recorder()
    producer.producer = recorder  # type: ignore[assignment]
    try:
        send(producer, events)
    finally:
        producer.producer = real
    return recorder.records


def send_encoded(producer: ModerationProducer, records: Sequence[tuple[str, str | bytes | None, bytes | None]]) -> None:
    """Produces records from `encode` and waits for every acknowledgement."""
    kafka = producer.producer
    for topic, key, value in records:
        while True:
            try:
                kafka.produce(topic, value=value, key=key)
                break
            except BufferError:
                kafka.poll(0.1)
    if remaining := kafka.flush(60):
        raise RuntimeError(f"{remaining} backlog records not acknowledged")


# ---- reading outputs --------------------------------------------------------------------
class OutputReader(threading.Thread):
    """Reads an output topic from the beginning and timestamps each record (wall clock, s).
    Values are kept only while `keep_values` is set, and decoded only afterwards, so the
    reader costs the machine as little as possible while a system is measured."""

    def __init__(self, settings: Settings, topic: str) -> None:
        super().__init__(daemon=True)
        self.settings, self.topic = settings, topic
        self.arrivals: list[float] = []
        self.values: list[tuple[float, bytes]] = []
        self.keep_values = False
        self.assigned = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        consumer = Consumer(self.settings.consumer_config(None))
        meta = consumer.list_topics(self.topic, timeout=30).topics[self.topic]
        consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        self.assigned.set()
        while not self._stop_event.is_set():
            first = consumer.poll(0.05)
            if first is None:
                continue
            messages = [first, *consumer.consume(999, 0)]
            now = time.time()
            for m in messages:
                if m.error():
                    continue
                self.arrivals.append(now)
                if self.keep_values:
                    self.values.append((now, m.value() or b""))
        consumer.close()

    @property
    def count(self) -> int:
        return len(self.arrivals)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)

    def wait_for(self, n: int, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.count < n and time.monotonic() < deadline and alive():
            time.sleep(0.005)
        return self.count >= n


def latencies_ms(values: Iterable[tuple[float, bytes]], codec: Codec) -> list[float]:
    """Read-back time minus occurred_at for each value (a Decision, or an event passed through)."""
    out = []
    for arrived, raw in values:
        for record_type in ("Decision", "UploadEvent", "ReportEvent"):
            try:
                occurred = codec.decode(record_type, raw)["envelope"]["occurred_at"]
            except DecodeError:
                continue
            out.append(arrived * 1000 - occurred)
            break
    return sorted(out)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))]


# ---- processes under test ---------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return float("nan")


class Processes:
    """The processes of one system under test."""

    def __init__(self, commands: list[list[str]], env: dict[str, str], log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.procs = [
                subprocess.Popen(c, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
                for c in commands
            ]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def pause(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for p in self.procs:
            p.send_signal(signal.SIGCONT)

    def cpu_each(self) -> list[float]:
        return [cpu_seconds(p.pid) for p in self.procs]

    def cpu(self) -> float:
        return sum(self.cpu_each())

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def modstream_command(*stages: str) -> list[str]:
    return [sys.executable, "-m", "pipeline", "--log-level", "WARNING", "run", *stages]
