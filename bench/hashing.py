"""Benchmark: PDQ hashing of 1920x1080 JPEGs, the fast path (JPEG decoded at reduced scale)
beside plain pdqhash on the decoded full-size image, in one run, with the distance between
their hashes.

    python bench/hashing.py [--images 24] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import pdqhash
from PIL import Image

sys.path[0] = str(Path(__file__).resolve().parent.parent)

from pipeline.dev.samples import encode, photo  # noqa: E402
from pipeline.signals.image import image_signals, open_image, pdq_of_array, rgb_array  # noqa: E402


def full_size(data: bytes) -> str:
    bits, _ = pdqhash.compute(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    return np.packbits(bits.astype(np.uint8)).tobytes().hex()


def fast(data: bytes) -> str:
    return pdq_of_array(rgb_array(open_image(data, 50_000_000)))[0]  # type: ignore[arg-type]


def enrich_path(data: bytes) -> str:
    return image_signals(open_image(data, 50_000_000))[0]["value"]  # type: ignore[arg-type]


def rate(fn, images: list[bytes], rounds: int) -> tuple[float, list[str]]:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    for _ in range(rounds):
        hashes = [fn(d) for d in images]
    return len(images) * rounds / (time.perf_counter() - started), hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    images = [encode(photo(seed, (1920, 1080)), quality=90) for seed in range(args.images)]
    print(f"{len(images)} photographic 1920x1080 JPEGs (quality 90), {args.rounds} rounds, one thread")
    full_rate, full_hashes = rate(full_size, images, args.rounds)
    fast_rate, fast_hashes = rate(fast, images, args.rounds)
    enrich_rate, _ = rate(enrich_path, images, args.rounds)
    distances = [
        int(np.unpackbits(np.frombuffer(bytes.fromhex(a), np.uint8) ^ np.frombuffer(bytes.fromhex(b), np.uint8)).sum())
        for a, b in zip(full_hashes, fast_hashes, strict=True)
    ]
    width = 52
    print(f"{'path':{width}} {'images/s':>9}")
    print(f"{'plain pdqhash on the full decoded image':52} {full_rate:>9.1f}")
    print(f"{'fast path (reduced-scale JPEG decode, pdqhash)':52} {fast_rate:>9.1f}  {fast_rate / full_rate:.1f}x")
    print(f"{'enrich (fast path plus the 8 dihedral hashes)':52} {enrich_rate:>9.1f}  {enrich_rate / full_rate:.1f}x")
    print(f"distance fast vs full: max {max(distances)}, mean {np.mean(distances):.1f} bits (match threshold 31)")


if __name__ == "__main__":
    main()
