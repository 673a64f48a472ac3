"""All the signals of a piece of media: exact hashes always, PDQ for images, per-frame PDQ
for videos. Media that cannot be hashed raises MediaError with the reason."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.records import Record
from pipeline.signals.exact import exact_signals
from pipeline.signals.image import MediaError, image_signals, open_image
from pipeline.signals.video import video_signals

__all__ = ["MediaError", "MediaLimits", "media_signals"]


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 50_000_000  # decoded pixels of an image or a video frame
    max_video_seconds: float = 3600.0
    min_frame_quality: int = 50
    decode_timeout_s: float = 20.0  # wall-clock budget for decoding one video
    max_video_frames: int = 250_000  # frames decoded from one video (an hour at about 70 fps)
    draft_min_side: int = 512  # a JPEG is decoded at the smallest DCT scale keeping this side (PDQ reads 64x64)


def media_signals(data: bytes, limits: MediaLimits) -> list[Record]:
    """Exact hashes plus perceptual ones. Raises MediaError (with the exact hashes computed
    so far in `.signals`) when the media is empty, too big, corrupt, of an unknown kind or too
    slow to decode."""
    if not data:
        exc = MediaError("media is empty (0 bytes)")
        exc.signals = []  # type: ignore[attr-defined]
        raise exc
    signals = exact_signals(data)
    try:
        if len(data) > limits.max_bytes:
            raise MediaError(f"media of {len(data)} bytes exceeds the limit of {limits.max_bytes}")
        image = open_image(data, limits.max_pixels)
        if image is not None:
            return signals + image_signals(image, min_side=limits.draft_min_side)
        return signals + video_signals(
            data,
            max_pixels=limits.max_pixels,
            max_seconds=limits.max_video_seconds,
            min_quality=limits.min_frame_quality,
            timeout_s=limits.decode_timeout_s,
            max_frames=limits.max_video_frames,
        )
    except MediaError as exc:
        exc.signals = signals  # type: ignore[attr-defined]
        raise
