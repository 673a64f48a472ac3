"""Benchmark: decisions/s of the decide stage with Redis-backed report aggregation, beside the
same stage with aggregation disabled, on the same records, in one run.

Records: half uploads, half reports on 2,000 items from 500 reporters, in batches of 500 as
the runner would hand them over. Redis: MODSTREAM_REDIS_URL if it answers, else the embedded one.

    python bench/decide.py [--records 20000] [--batch 500]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from bench.common import stage_rate  # noqa: E402
from pipeline.app import connect_redis  # noqa: E402
from pipeline.dev.services import redis_answers, start_redis  # noqa: E402
from pipeline.policy.engine import load_policy  # noqa: E402
from pipeline.records import Incoming, envelope, new_id  # noqa: E402
from pipeline.stages.decide import DecideStage  # noqa: E402
from pipeline.stages.enrich import moderation_record  # noqa: E402
from pipeline.state.reports import RedisReportStore  # noqa: E402


def records(n: int, seed: int = 1) -> list[Incoming]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        env = envelope("bench", content_id=f"item-{rng.randrange(2000)}", user_id=f"user-{rng.randrange(300)}")
        if i % 2:
            report = {"envelope": env, "reporter_id": f"reporter-{rng.randrange(500)}", "reason": "hate", "text": None}
            out.append(Incoming("classified", None, moderation_record("reports", report)))
        else:
            upload = {"envelope": env, "media_b64": None, "media_uri": None, "media_type": None, "text": "a post"}
            out.append(Incoming("classified", None, moderation_record("uploads", upload)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    url = os.environ.get("MODSTREAM_REDIS_URL", "")
    proc = None
    if not (url and redis_answers(url)):
        proc, url = start_redis(Path(tempfile.mkdtemp(prefix="modstream-bench-redis-")))
    try:
        store = RedisReportStore(connect_redis(url), prefix=f"bench-{new_id()[:8]}:")
        policy = load_policy()
        batch = records(args.records)
        without = stage_rate(DecideStage(policy, None), batch, args.batch)
        with_redis = stage_rate(DecideStage(policy, store), batch, args.batch)
    finally:
        if proc is not None:
            proc.terminate()
    print(f"decide stage, default policy, {args.records} records (half reports), batches of {args.batch}")
    print(f"{'report aggregation disabled':34} {without:>10,.0f} decisions/s")
    print(f"{'Redis report aggregation':34} {with_redis:>10,.0f} decisions/s")
    print(f"aggregation costs {without / with_redis:.1f}x")


if __name__ == "__main__":
    main()
