"""Benchmark: records/s of the classify stage with the default text model, batched (one
inference call per consumed batch) beside one-record-at-a-time inference of the same
model, in one run. `--provider CUDAExecutionProvider` runs the same on a GPU.

    python bench/classify.py [--records 4000] [--batch 500] [--threads 1] [--provider CPUExecutionProvider]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import stage_rate  # noqa: E402
from pipeline.models.corpus import read  # noqa: E402
from pipeline.models.registry import DEFAULT_REGISTRY, load_models  # noqa: E402
from pipeline.records import Incoming, envelope  # noqa: E402
from pipeline.stages.classify import ClassifyStage  # noqa: E402
from pipeline.stages.enrich import moderation_record  # noqa: E402


def records(n: int) -> list[Incoming]:
    texts = [t for t, _, _ in read()]
    out = []
    for i in range(n):
        upload = {
            "envelope": envelope("bench", content_id=f"c{i}"),
            "media_b64": None,
            "media_uri": None,
            "media_type": None,
            "text": texts[i % len(texts)],
        }
        out.append(Incoming("matched", None, moderation_record("uploads", upload)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--provider", default="CPUExecutionProvider")
    args = parser.parse_args()
    models = load_models(DEFAULT_REGISTRY, [args.provider], args.threads)
    stage = ClassifyStage(models)
    batch = records(args.records)
    stage_rate(stage, batch[:200], args.batch)  # warm up
    batched = stage_rate(stage, batch, args.batch)
    single = stage_rate(stage, batch, 1)
    print(
        f"classify stage, default text model, providers {models[0].providers}, {args.threads} thread(s), "
        f"{args.records} records"
    )
    print(f"{'batched (' + str(args.batch) + ' per inference)':32} {batched:>10,.0f} records/s")
    print(f"{'one record per inference':32} {single:>10,.0f} records/s")
    print(f"batching: {batched / single:.1f}x")


if __name__ == "__main__":
    main()
