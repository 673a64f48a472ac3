"""Shared by the stage benchmarks."""

from __future__ import annotations

import time
from collections.abc import Sequence

from pipeline.records import Incoming, Stage


def stage_rate(stage: Stage, records: Sequence[Incoming], batch_size: int) -> float:
    """Records/s of `stage.process` over `records` in batches of `batch_size`, as the runner hands them over."""
    started = time.perf_counter()
    for i in range(0, len(records), batch_size):
        stage.process(records[i : i + batch_size])
    return len(records) / (time.perf_counter() - started)
