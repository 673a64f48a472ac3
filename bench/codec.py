"""Benchmark: Avro encode and decode per record, the compiled functions (pipeline.serde.compiled)
beside fastavro's schemaless writer and reader with the same parsed schemas, in one run, on the
records of the text-only path (an upload with text, a report, the ModerationRecord between
stages, the Decision) and on an upload carrying a 1920x1080 JPEG inline. Asserts that both
write the same bytes and read the same records.

    python bench/codec.py [--records 20000]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[0] = str(Path(__file__).resolve().parent.parent)

import fastavro  # noqa: E402

from pipeline.policy.engine import load_policy  # noqa: E402
from pipeline.records import Incoming, envelope  # noqa: E402
from pipeline.serde import Codec  # noqa: E402
from pipeline.stages.decide import DecideStage  # noqa: E402
from pipeline.stages.enrich import moderation_record  # noqa: E402
from pipeline.state.accounts import account_context  # noqa: E402


def jpeg_1080p() -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:1080, 0:1920]
    pixels = np.stack([(x // 7) % 256, (y // 5) % 256, (x + y) // 12 % 256], axis=-1)
    pixels = pixels + rng.integers(0, 40, (1080, 1920, 3))
    buf = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def samples() -> list[tuple[str, str, dict[str, Any]]]:
    env = envelope("bench", content_id="item-1", user_id="user-1")
    text = "the match last night was something else, see you at the market on saturday"
    upload = {"envelope": env, "media_b64": None, "media_uri": None, "media_type": None, "text": text, "signals": None}
    report = {"envelope": env, "reporter_id": "reporter-7", "reason": "hate", "text": "this breaks the rules"}
    record = {**moderation_record("uploads", upload), "account": account_context("user-1", {}), "stages": ["enrich"]}
    [decision] = [o.value for o in DecideStage(load_policy()).process([Incoming("classified", None, record)])]
    image = {**upload, "media_b64": jpeg_1080p(), "media_type": "image/jpeg"}
    return [
        ("upload, text", "UploadEvent", upload),
        ("report", "ReportEvent", report),
        ("ModerationRecord", "ModerationRecord", record),
        ("Decision", "Decision", decision),  # type: ignore[list-item]
        ("upload, 1080p JPEG inline", "UploadEvent", image),
    ]


def per_record_us(f: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def compare(codec: Codec, label: str, name: str, record: dict[str, Any], n: int) -> str:
    """One line: size, then encode and decode per record, ours beside fastavro's."""
    schema = codec.schemas.ready[name]
    encode, decode = codec._encoders[name], codec._decoders[name]
    out = bytearray()
    encode(out, record)
    body = bytes(out)
    reference = io.BytesIO()
    fastavro.schemaless_writer(reference, schema, codec.schemas.tagged(name, record))
    assert body == reference.getvalue(), f"{label}: bytes differ"
    assert decode(body, 0)[0] == fastavro.schemaless_reader(io.BytesIO(body), schema), f"{label}: records differ"
    n = n if len(body) < 10_000 else max(50, n // 100)
    tagged = codec.schemas.tagged(name, record)
    enc = per_record_us(lambda: encode(bytearray(), record), n)
    fastavro_enc = per_record_us(lambda: fastavro.schemaless_writer(io.BytesIO(), schema, tagged), n)
    dec = per_record_us(lambda: decode(body, 0), n)
    fastavro_dec = per_record_us(lambda: fastavro.schemaless_reader(io.BytesIO(body), schema), n)
    return (
        f"{label:28} {len(body):>9,} {enc:>10.2f} {fastavro_enc:>9.2f} {fastavro_enc / enc:>5.1f} "
        f"{dec:>10.2f} {fastavro_dec:>9.2f} {fastavro_dec / dec:>5.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20000)
    args = parser.parse_args()
    codec = Codec()
    print(f"per record, best of 3 runs of {args.records:,}; bytes identical and records equal (asserted)\n")
    head = f"{'record':28} {'bytes':>9} {'encode us':>10} {'fastavro':>9} {'x':>5} {'decode us':>10} {'fastavro':>9}"
    print(head + f" {'x':>5}")
    print("-" * (len(head) + 6))
    for label, name, record in samples():
        print(compare(codec, label, name, record, args.records))


if __name__ == "__main__":
    main()
