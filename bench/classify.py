"""Benchmark: the classify stage with the default text model (sentence encoder and head, one
ONNX model), in one run: one record per inference; each batch of `--batch` records in one
inference padded to its longest text; and each batch tokenised in one call and run as
micro-batches of texts of similar length (the registry's `micro_batch`, the default way),
with the time per batch (p50, p99).

Texts are the project's corpus and dev set (English and French posts of 2 to 60 words),
shuffled with a fixed seed, so each batch mixes lengths as a topic would. One thread by
default (MODSTREAM_ONNX_THREADS in production); `--provider CUDAExecutionProvider` runs the
same on a GPU.

    python bench/classify.py [--records 3000] [--batch 500] [--single 300] [--whole 1000] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from pipeline.models.corpus import CORPUS, DEV, read  # noqa: E402
from pipeline.models.registry import DEFAULT_REGISTRY, load_models  # noqa: E402
from pipeline.records import Incoming, envelope  # noqa: E402
from pipeline.stages.classify import ClassifyStage  # noqa: E402
from pipeline.stages.enrich import moderation_record  # noqa: E402


def records(n: int, seed: int = 1) -> list[Incoming]:
    texts = [r["text"] for r in read(CORPUS) + read(DEV)]
    random.Random(seed).shuffle(texts)
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


def timed(stage: ClassifyStage, batch: list[Incoming], size: int) -> tuple[float, list[float]]:
    """Records/s over `batch` in batches of `size`, and the seconds each batch took."""
    times = []
    for i in range(0, len(batch), size):
        started = time.perf_counter()
        stage.process(batch[i : i + size])
        times.append(time.perf_counter() - started)
    return len(batch) / sum(times), times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=3000, help="records for the batched run")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--single", type=int, default=300, help="records for the one-at-a-time run")
    parser.add_argument("--whole", type=int, default=1000, help="records for the one-inference-per-batch run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--provider", default="CPUExecutionProvider")
    args = parser.parse_args()
    started = time.perf_counter()
    models = load_models(DEFAULT_REGISTRY, [args.provider], args.threads)
    loaded = time.perf_counter() - started
    stage = ClassifyStage(models)
    model = models[0]
    batch = records(args.records)
    timed(stage, batch[: args.batch], args.batch)  # warm up
    micro, micro_times = timed(stage, batch, args.batch)
    default = model.spec
    model.spec = replace(default, micro_batch=0)
    whole, whole_times = timed(stage, batch[: args.whole], args.batch)
    model.spec = default
    single, single_times = timed(stage, batch[: args.single], 1)
    lengths = np.array([len(e.ids) for e in model.tokenizer.encode_batch_fast([text(r) for r in batch])])
    longest = [lengths[i : i + args.batch].max() for i in range(0, len(lengths), args.batch)]
    print(
        f"classify stage, default text model ({model.spec.encoder}), providers {model.providers}, "
        f"{args.threads} thread(s); model loaded in {loaded:.1f} s"
    )
    print(
        f"tokens per text: mean {lengths.mean():.1f}, max {lengths.max()} (cut at {model.spec.max_length}); "
        f"longest of a batch of {args.batch}: {min(longest)}-{max(longest)}"
    )

    def line(name: str, rate: float, times: list[float], n: int) -> None:
        ms = np.array(times) * 1000
        print(
            f"{name:44} {rate:>8,.1f} records/s  per stage.process() call: p50 {np.percentile(ms, 50):,.0f} ms, "
            f"p99 {np.percentile(ms, 99):,.0f} ms  ({n} records)"
        )

    line("one record per inference", single, single_times, args.single)
    line(f"batch of {args.batch}, one inference padded to longest", whole, whole_times, args.whole)
    line(f"batch of {args.batch}, micro-batches of {default.micro_batch} by length", micro, micro_times, args.records)
    print(f"micro-batches vs one at a time: {micro / single:.2f}x; one padded inference: {whole / single:.2f}x")


def text(record: Incoming) -> str:
    return str(record.value["upload"]["text"])


if __name__ == "__main__":
    main()
