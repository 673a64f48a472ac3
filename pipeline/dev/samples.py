"""Sample media for the demo, benchmarks and tests: photographic-like images (smooth
structure, edges, texture and sensor noise, not flat noise) and short videos of them,
drawn from a seed."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def photo(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A synthetic 'photograph': a sky-to-ground gradient, soft blobs, hard-edged shapes,
    fine texture and sensor noise, all drawn from `seed`."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    img = top[None, None, :] * (1 - y / h)[..., None] + bottom[None, None, :] * (y / h)[..., None]
    for _ in range(12):  # soft light and shadow
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.4) * max(w, h)
        blob = np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
        img += blob[..., None] * rng.uniform(-120, 120, 3)[None, None, :]
    low = rng.normal(0, 1, (h // 16 + 2, w // 16 + 2, 3))  # low-frequency texture
    texture = np.asarray(
        Image.fromarray(((low - low.min()) / np.ptp(low) * 255).astype(np.uint8)).resize(
            (w, h), Image.Resampling.BICUBIC
        ),
        dtype=np.float32,
    )
    img += (texture - 128) * 0.4
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(8):  # objects with edges
        x0, y0 = rng.uniform(0, w * 0.8), rng.uniform(0, h * 0.8)
        x1, y1 = x0 + rng.uniform(0.05, 0.3) * w, y0 + rng.uniform(0.05, 0.3) * h
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
    pil = pil.filter(ImageFilter.GaussianBlur(1.2))
    noisy = np.asarray(pil, dtype=np.float32) + rng.normal(0, 4, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def encode(img: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def clip(
    seed: int,
    seconds: int = 6,
    fps: int = 10,
    size: tuple[int, int] = (320, 240),
    codec: str = "mpeg4",
    scene_seconds: int = 2,
) -> bytes:
    """An MP4 of `seconds` with a new scene every `scene_seconds`, each scene a slowly
    panning photo, encoded with PyAV."""
    import av

    scenes = [photo(seed * 100 + i, (size[0] + 64, size[1] + 64)) for i in range(seconds // scene_seconds + 1)]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream: Any = container.add_stream(codec, rate=fps)  # a VideoStream; PyAV types it as any stream
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(seconds * fps):
            scene = scenes[i // (scene_seconds * fps)]
            shift = (i % (scene_seconds * fps)) // 2
            frame = scene.crop((shift, shift, shift + size[0], shift + size[1]))
            for packet in stream.encode(av.VideoFrame.from_image(frame)):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def frames(data: bytes, quality: int = 80, size: tuple[int, int] | None = None) -> list[bytes]:
    """A video as a live platform sends it: one JPEG frame a second (rescaled to `size`)."""
    import av

    out, next_second = [], 0.0
    with av.open(io.BytesIO(data), mode="r") as container:
        for frame in container.decode(container.streams.video[0]):
            if frame.time is not None and frame.time >= next_second:
                image = frame.to_image()
                out.append(encode(image.resize(size) if size else image, quality=quality))
                next_second += 1.0
    return out
