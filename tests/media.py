"""Media the tests generate: transformed copies of sample photos, and short videos."""

from __future__ import annotations

import io

from PIL import Image, ImageEnhance, ImageOps

from pipeline.dev.samples import clip as video
from pipeline.dev.samples import encode, photo
from pipeline.dev.samples import frames as frames_of

__all__ = ["TRANSFORMS", "crop_edges", "encode", "frames_of", "photo", "reencode_video", "video"]


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
