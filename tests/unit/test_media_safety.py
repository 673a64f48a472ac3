"""Bad media never crashes hashing: corrupt, truncated, oversized and bomb-sized files get a
clear reason; media fetching refuses paths outside its root and hosts not allowed."""

from __future__ import annotations

import struct
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.signals.fetch import MediaFetcher
from pipeline.signals.media import MediaError, MediaLimits, media_signals
from tests.media import encode, photo, video

LIMITS = MediaLimits()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header claims 10^10 pixels (the zip-bomb shape: a few KB that would
    decompress to gigabytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * 1_000_000, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"\x00\x01 not media at all" * 20, "not a decodable image or video"),
        (encode(photo(1))[:2500], r"corrupt image \(JPEG\): image file is truncated"),
        (encode(photo(1), "PNG")[:4000], r"corrupt image \(PNG\)"),
        (png_bomb(), "decompression bomb"),
        (video(1, seconds=2)[:3000], "video"),
    ],
)
def test_bad_media_raises_media_error_with_reason(data: bytes, reason: str) -> None:
    with pytest.raises(MediaError, match=reason) as info:
        media_signals(data, LIMITS)
    assert {s["signal_type"] for s in info.value.signals} == {"md5", "sha256"}  # type: ignore[attr-defined]


def test_oversized_media_is_refused_before_decoding() -> None:
    with pytest.raises(MediaError, match="exceeds the limit"):
        media_signals(encode(photo(1)), MediaLimits(max_bytes=1000))


def test_file_fetching_stays_under_its_root(tmp_path: Path) -> None:
    root = tmp_path / "media"
    root.mkdir()
    (root / "ok.jpg").write_bytes(b"bytes")
    (tmp_path / "secret").write_text("outside")
    (root / "link").symlink_to(tmp_path / "secret")
    fetcher = MediaFetcher(file_root=root)
    assert fetcher.fetch(f"file://{root}/ok.jpg") == b"bytes"
    for uri, reason in [
        (f"file://{root}/../secret", "outside the media root"),
        (f"file://{root}/link", "outside the media root"),
        (f"file://{root}/missing.jpg", "file not found"),
        ("file://otherhost/etc/passwd", "not allowed"),
        ("ftp://example.org/x.jpg", "scheme 'ftp' is not allowed"),
        ("gopher://x", "not allowed"),
    ]:
        with pytest.raises(MediaError, match=reason):
            fetcher.fetch(uri)
    with pytest.raises(MediaError, match="not enabled"):
        MediaFetcher().fetch(f"file://{root}/ok.jpg")


class Server(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/image.jpg":
            body = b"x" * 5000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://evil.example/payload")
            self.end_headers()
        elif self.path == "/local-redirect":
            self.send_response(302)
            self.send_header("Location", "/image.jpg")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_http_fetching_only_from_allowed_hosts(server: str) -> None:
    fetcher = MediaFetcher(allowed_hosts=["127.0.0.1"], max_bytes=10_000)
    assert fetcher.fetch(f"{server}/image.jpg") == b"x" * 5000
    assert fetcher.fetch(f"{server}/local-redirect") == b"x" * 5000
    with pytest.raises(MediaError, match="'evil.example' is not on the media allow-list"):
        fetcher.fetch(f"{server}/redirect")
    with pytest.raises(MediaError, match="HTTP 404"):
        fetcher.fetch(f"{server}/missing")
    with pytest.raises(MediaError, match="exceeds the limit"):
        MediaFetcher(allowed_hosts=["127.0.0.1"], max_bytes=1000).fetch(f"{server}/image.jpg")
    with pytest.raises(MediaError, match="not on the media allow-list"):
        MediaFetcher(allowed_hosts=["cdn.example"]).fetch(f"{server}/image.jpg")
    with pytest.raises(MediaError, match="credentials"):
        fetcher.fetch("http://user:pw@127.0.0.1/image.jpg")
