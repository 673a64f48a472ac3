"""PDQ hashes of images (Meta's algorithm, through the `pdqhash` package).

Fast path: a JPEG is decoded at a reduced scale (libjpeg's DCT scaling, PIL's
draft mode) so that its smaller side stays at least 512 pixels; PDQ itself
works on a 64x64 downsample, so the hash stays within a few bits of hashing
the full-size image (tests/unit/test_image_hashing.py measures it) at a
fraction of the decoding cost.

Besides the hash of the image as it is, the seven other dihedral hashes
(rotations and mirrors) are returned as `pdq_dihedral` signals, so a mirrored
or rotated copy of a banked image matches.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import pdqhash
from PIL import Image

from pipeline.records import Record, signal

DRAFT_MIN_SIDE = 512


class MediaError(ValueError):
    """Media that cannot be hashed; the message says why (the record's media_error)."""


def open_image(data: bytes, max_pixels: int) -> Image.Image | None:
    """The image in `data`, or None if it is not an image format PIL knows."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        return None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(f"decompression bomb: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise MediaError(f"decompression bomb: {width}x{height} pixels exceeds the limit of {max_pixels}")
    return image


def rgb_array(image: Image.Image, fast: bool = True, min_side: int = DRAFT_MIN_SIDE) -> np.ndarray:
    if fast and image.format == "JPEG":
        image.draft("RGB", (min_side, min_side))
    try:
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise MediaError(f"corrupt image ({image.format}): {exc}") from exc


def pdq_hex(bits: np.ndarray) -> str:
    return np.packbits(bits.astype(np.uint8)).tobytes().hex()


def pdq_of_array(rgb: np.ndarray) -> tuple[str, int]:
    bits, quality = pdqhash.compute(rgb)
    return pdq_hex(bits), int(quality)


def image_signals(image: Image.Image, fast: bool = True, min_side: int = DRAFT_MIN_SIDE) -> list[Record]:
    hashes, quality = pdqhash.compute_dihedral(rgb_array(image, fast, min_side))
    original, *others = (pdq_hex(h) for h in hashes)
    signals = [signal("pdq", original, int(quality))]
    signals += [signal("pdq_dihedral", h, int(quality)) for h in dict.fromkeys(others) if h != original]
    return signals
