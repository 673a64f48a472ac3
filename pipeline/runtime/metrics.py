"""Prometheus metrics and the health endpoint of a processor.

Metrics are module-level, as prometheus_client intends, labelled by stage so
that fused stages and several runners in one process stay apart. A process has
one metrics server whatever the number of runners in it (`serve` is idempotent);
each runner registers its health check, and /health reports them all.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily

logger = logging.getLogger(__name__)

RECORDS_IN = Counter("modstream_records_in_total", "Records consumed", ["stage", "topic"])
RECORDS_OUT = Counter("modstream_records_out_total", "Records produced", ["stage", "topic"])
ERRORS = Counter("modstream_errors_total", "Records dead-lettered or failed", ["stage", "kind"])
BATCH_SECONDS = Histogram(
    "modstream_batch_seconds",
    "Time to process one batch, produce and commit",
    ["stage"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class BatchHistogram:
    """A labelled histogram observed a batch of values at a time, under one lock per batch
    (prometheus_client's Histogram takes a lock and walks its buckets per value, which cost
    a microsecond per output record). Exposed like any histogram (_bucket, _sum, _count)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...],
        buckets: tuple[float, ...],
        registry: Any = REGISTRY,
    ) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, labelnames
        self.bounds = [float(b) for b in buckets]
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}  # -> (counts, [sum])
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe_many(self, labels: tuple[str, ...], values: Iterable[float]) -> None:
        bounds, find = self.bounds, bisect.bisect_left
        with self._lock:
            counts, total = self._series.setdefault(labels, ([0] * (len(bounds) + 1), [0.0]))
            for v in values:
                counts[find(bounds, v)] += 1  # the first bucket whose bound is >= v; else +Inf
                total[0] += v

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        with self._lock:
            series = [(labels, list(counts), total[0]) for labels, (counts, total) in self._series.items()]
        for labels, counts, total in series:
            cumulative, running = [], 0
            for bound, n in zip([*self.bounds, math.inf], counts, strict=True):
                running += n
                cumulative.append((str(bound) if bound != math.inf else "+Inf", running))
            family.add_metric(list(labels), cumulative, total)
        yield family


E2E_SECONDS = BatchHistogram(
    "modstream_end_to_end_seconds",
    "Time from the event's occurred_at to the output being acknowledged",
    ("stage", "topic"),
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
CONSUMER_LAG = Gauge("modstream_consumer_lag", "Messages behind the end", ["stage", "topic", "partition"])
HEALTHY = Gauge("modstream_healthy", "1 while a runner's poll loop goes round (as /health says), else 0", ["stage"])
# The 24-hour deadline of reported items (set by `modstream escalate`, from the report store).
DEADLINE_ITEMS = Gauge(
    "modstream_deadline_items",
    "Reported items without a final decision: all (open), first reported 20 h ago or more (past_20h), "
    "past their 24 h deadline (overdue)",
    ["state"],
)
DEADLINE_OLDEST_SECONDS = Gauge(
    "modstream_deadline_oldest_age_seconds", "Time since the first report of the oldest item without a final decision"
)


def record_lag(stage: str, stats_json: str, assigned: Collection[tuple[str, int]] | None = None) -> None:
    """librdkafka statistics callback: export per-partition consumer lag. With `assigned` (the
    (topic, partition) pairs this consumer owns), the series of a partition it no longer owns
    is removed, so after a rebalance only the new owner's lag is summed."""
    stats = json.loads(stats_json)
    for topic, tdata in stats.get("topics", {}).items():
        for partition, pdata in tdata.get("partitions", {}).items():
            if partition == "-1":
                continue
            lag = pdata.get("consumer_lag", -1)
            if assigned is not None and (topic, int(partition)) not in assigned:
                CONSUMER_LAG.remove(stage, topic, partition)
            elif lag >= 0:
                CONSUMER_LAG.labels(stage, topic, partition).set(lag)


def record_deadlines(open_items: int, past_20h: int, overdue: int, oldest_reported_at: int | None, now_ms: int) -> None:
    """Exports the deadline backlog: counts of reported items awaiting a final decision."""
    DEADLINE_ITEMS.labels("open").set(open_items)
    DEADLINE_ITEMS.labels("past_20h").set(past_20h)
    DEADLINE_ITEMS.labels("overdue").set(overdue)
    DEADLINE_OLDEST_SECONDS.set(0 if oldest_reported_at is None else max(0.0, (now_ms - oldest_reported_at) / 1000))


_health_checks: dict[str, Callable[[], dict[str, Any]]] = {}
_servers: dict[int, HealthServer] = {}
_server_lock = threading.Lock()


def register_health(name: str, check: Callable[[], dict[str, Any]]) -> None:
    """Adds a runner's (or another loop's) check to /health, and to `modstream_healthy`."""
    _health_checks[name] = check
    HEALTHY.labels(name).set_function(lambda: 1.0 if check().get("healthy") else 0.0)


def unregister_health(name: str) -> None:
    _health_checks.pop(name, None)
    HEALTHY.remove(name)


def process_health() -> dict[str, Any]:
    """Every registered runner's health; healthy only if all are (and there is one)."""
    runners = [check() for check in list(_health_checks.values())]
    return {"healthy": bool(runners) and all(r["healthy"] for r in runners), "runners": runners}


def serve(port: int) -> HealthServer:
    """Starts this process's metrics and health server on `port`, once: every runner of the
    process that asks for the same port shares it (it lives as long as the process)."""
    with _server_lock:
        if port not in _servers:
            _servers[port] = HealthServer(port, process_health).start()
        return _servers[port]


class HealthServer:
    """Serves /metrics (Prometheus text) and /health (JSON; 503 when unhealthy)."""

    def __init__(self, port: int, health: Callable[[], dict[str, Any]]) -> None:
        handler = _make_handler(health)
        self.httpd = ThreadingHTTPServer(("0.0.0.0", port), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="health", daemon=True)

    def start(self) -> HealthServer:
        self.thread.start()
        logger.info("metrics and health on port %d", self.port)
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _make_handler(health: Callable[[], dict[str, Any]]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, generate_latest())
            elif self.path in ("/health", "/healthz"):
                state = health()
                body = json.dumps(state).encode()
                self._send(200 if state.get("healthy") else 503, "application/json", body)
            else:
                self._send(404, "text/plain", b"not found\n")

        def _send(self, code: int, ctype: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: probes hit this often
            pass

    return Handler


class Heartbeat:
    """When the poll loop last went round; the health check reads it."""

    def __init__(self, stale_after_s: float = 60.0) -> None:
        self.stale_after_s = stale_after_s
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self.last
