"""Media the tests generate: transformed copies of sample photos, and short videos."""

from __future__ import annotations

import io

from PIL import Image, ImageEnhance, ImageOps

from pipeline.dev.samples import encode, photo

__all__ = ["TRANSFORMS", "crop_edges", "encode", "photo", "reencode_video", "video"]


def crop_edges(img: Image.Image, fraction: float = 0.01) -> Image.Image:
    w, h = img.size
    dx, dy = max(1, round(w * fraction)), max(1, round(h * fraction))
    return img.crop((dx, dy, w - dx, h - dy))


TRANSFORMS = {
    "resized": lambda im: encode(im.resize((im.width // 2, im.height // 2), Image.LANCZOS)),
    "jpeg_q20": lambda im: encode(im, quality=20),
    "cropped_1pct": lambda im: encode(crop_edges(im)),
    "brightened": lambda im: encode(ImageEnhance.Brightness(im).enhance(1.3)),
    "mirrored": lambda im: encode(ImageOps.mirror(im)),
    "rotated_90": lambda im: encode(im.transpose(Image.Transpose.ROTATE_90)),
    "png": lambda im: encode(im, "PNG"),
}


def video(
    seed: int,
    seconds: int = 6,
    fps: int = 10,
    size: tuple[int, int] = (320, 240),
    codec: str = "mpeg4",
    scene_seconds: int = 2,
) -> bytes:
    """A video of `seconds` with a new scene every `scene_seconds`, each scene a slowly
    panning photo, encoded with PyAV."""
    import av

    scenes = [photo(seed * 100 + i, (size[0] + 64, size[1] + 64)) for i in range(seconds // scene_seconds + 1)]
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps)
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


def reencode_video(data: bytes, size: tuple[int, int], codec: str = "mpeg4") -> bytes:
    """Decode a video and encode it again at another size (and codec)."""
    import av

    out = io.BytesIO()
    with av.open(io.BytesIO(data)) as source, av.open(out, mode="w", format="mp4") as target:
        in_stream = source.streams.video[0]
        stream = target.add_stream(codec, rate=in_stream.average_rate or 10)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for frame in source.decode(in_stream):
            image = frame.to_image().resize(size)
            for packet in stream.encode(av.VideoFrame.from_image(image)):
                target.mux(packet)
        for packet in stream.encode():
            target.mux(packet)
    return out.getvalue()
