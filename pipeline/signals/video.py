"""Per-frame PDQ of videos, as vPDQ does: one frame a second, decoded with PyAV.

Consecutive frames whose hashes are within `DEDUP_DISTANCE` of the last kept
one are collapsed (a still scene yields one hash), and frames below the
quality floor are dropped: PDQ of a flat or dark frame matches anything.

Decoding is bounded in time (`timeout_s`, checked between decoded frames) and in the
number of frames decoded, so a video crafted to decode slowly cannot hold a stage.
"""

from __future__ import annotations

import io
import time

import av
import numpy as np

from pipeline.records import Record, signal
from pipeline.signals.image import MediaError, pdq_of_array

DEDUP_DISTANCE = 8
FRAME_SIDE = 512  # frames are scaled so their longer side is at most this before hashing


def video_signals(
    data: bytes,
    *,
    max_pixels: int,
    max_seconds: float,
    min_quality: int,
    timeout_s: float = 20.0,
    max_frames: int = 250_000,
) -> list[Record]:
    deadline = time.monotonic() + timeout_s
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError) as exc:
        raise MediaError(f"not a decodable image or video: {exc}") from exc
    with container:
        if not container.streams.video:
            raise MediaError("media has no video stream")
        stream = container.streams.video[0]
        if stream.width * stream.height > max_pixels:
            raise MediaError(f"decompression bomb: {stream.width}x{stream.height} video frames exceed the limit")
        scale = min(1.0, FRAME_SIDE / max(stream.width, stream.height, 1))
        size = (max(1, int(stream.width * scale)), max(1, int(stream.height * scale)))
        signals: list[Record] = []
        last_bits: np.ndarray | None = None
        next_second = 0
        try:
            for decoded, frame in enumerate(container.decode(stream), 1):
                if time.monotonic() > deadline:
                    raise MediaError(f"video decoding exceeded {timeout_s:g} s")
                if decoded > max_frames:
                    raise MediaError(f"video has more than {max_frames} frames")
                if frame.time is None or frame.time < next_second:
                    continue
                if frame.time > max_seconds:
                    raise MediaError(f"video longer than {max_seconds:.0f} s")
                second = int(frame.time)
                next_second = second + 1
                rgb = frame.reformat(width=size[0], height=size[1], format="rgb24").to_ndarray()
                value, quality = pdq_of_array(rgb)
                if quality < min_quality:
                    continue
                bits = np.unpackbits(np.frombuffer(bytes.fromhex(value), dtype=np.uint8))
                if last_bits is not None and int((bits != last_bits).sum()) <= DEDUP_DISTANCE:
                    continue
                last_bits = bits
                signals.append(signal("video_pdq", value, quality, second))
        except av.FFmpegError as exc:
            raise MediaError(f"corrupt video: {exc}") from exc
    if not signals:
        raise MediaError("video has no frame of sufficient quality to hash")
    return signals
