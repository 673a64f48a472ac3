"""The batch histogram exposes what prometheus_client's Histogram would for the same values."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.runtime.metrics import BatchHistogram

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


def samples(text: str, name: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        if family.name == name
        for s in family.samples
    }


def test_batch_histogram_matches_prometheus_histogram() -> None:
    rng = random.Random(7)
    values = {
        ("fused", "decisions"): [*BUCKETS, 0.0, 1e-9, 301.0, -0.2] + [rng.expovariate(5) for _ in range(500)],
        ("fused", "review"): [rng.uniform(0, 400) for _ in range(50)],
    }
    ours = BatchHistogram("test_batch_seconds", "doc", ("stage", "topic"), BUCKETS, registry=None)
    theirs_registry = CollectorRegistry()
    theirs = Histogram("test_batch_seconds", "doc", ["stage", "topic"], buckets=BUCKETS, registry=theirs_registry)
    for labels, vs in values.items():
        for i in range(0, len(vs), 64):  # in batches, as the runner observes them
            ours.observe_many(labels, vs[i : i + 64])
        for v in vs:
            theirs.labels(*labels).observe(v)
    registry = CollectorRegistry()
    registry.register(ours)
    mine = samples(generate_latest(registry).decode(), "test_batch_seconds")
    expected = samples(generate_latest(theirs_registry).decode(), "test_batch_seconds")
    assert mine.keys() == expected.keys()
    for key, value in expected.items():
        assert abs(mine[key] - value) < 1e-9 * max(1.0, abs(value)), key
