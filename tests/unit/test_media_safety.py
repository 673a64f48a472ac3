"""Bad media never crashes hashing: corrupt, truncated, empty, oversized, bomb-sized and
slow-to-decode files get a clear reason; media fetching refuses paths outside its root, hosts
and ports not allowed and malformed URLs, and a slow server cannot hold it past its deadline."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from pipeline.signals.fetch import MediaFetcher, parse_allowed_host
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
        elif self.path == "/other-port-redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/image.jpg")
            self.end_headers()
        elif self.path == "/empty":
            self.send_response(200)
            self.send_header("Content-Length", "0")
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
    here = urlsplit(server).netloc  # 127.0.0.1:<port>: an entry allows exactly that port
    fetcher = MediaFetcher(allowed_hosts=[here], max_bytes=10_000)
    assert fetcher.fetch(f"{server}/image.jpg") == b"x" * 5000
    assert fetcher.fetch(f"{server}/local-redirect") == b"x" * 5000
    with pytest.raises(MediaError, match="'evil.example' is not on the media allow-list"):
        fetcher.fetch(f"{server}/redirect")
    with pytest.raises(MediaError, match="'127.0.0.1' port 1 is not on the media allow-list"):
        fetcher.fetch(f"{server}/other-port-redirect")  # an allowed host, on another port
    with pytest.raises(MediaError, match="HTTP 404"):
        fetcher.fetch(f"{server}/missing")
    with pytest.raises(MediaError, match="exceeds the limit"):
        MediaFetcher(allowed_hosts=[here], max_bytes=1000).fetch(f"{server}/image.jpg")
    with pytest.raises(MediaError, match="not on the media allow-list"):
        MediaFetcher(allowed_hosts=["cdn.example"]).fetch(f"{server}/image.jpg")
    with pytest.raises(MediaError, match=r"'127.0.0.1' port \d+ is not on the media allow-list"):
        MediaFetcher(allowed_hosts=["127.0.0.1"]).fetch(f"{server}/image.jpg")  # bare host: port 80 only
    with pytest.raises(MediaError, match="credentials"):
        fetcher.fetch("http://user:pw@127.0.0.1/image.jpg")


def test_allow_list_entries_name_a_port_or_mean_the_default_one() -> None:
    fetcher = MediaFetcher(allowed_hosts=["CDN.example", "media.example:8443", "[::1]:8080", "::2", "[fe80::1]"])
    allowed = {
        "http://cdn.example/a.jpg": ("http", "cdn.example", 80),
        "https://cdn.example/a.jpg": ("https", "cdn.example", 443),
        "http://cdn.example:80/a.jpg": ("http", "cdn.example", 80),
        "https://cdn.example.:443/a.jpg": ("https", "cdn.example", 443),
        "http://media.example:8443/a.jpg": ("http", "media.example", 8443),
        "https://media.example:8443/a.jpg": ("https", "media.example", 8443),
        "http://[::1]:8080/a.jpg": ("http", "::1", 8080),
        "http://[::2]/a.jpg": ("http", "::2", 80),
        "https://[0:0:0:0:0:0:0:2]/a.jpg": ("https", "::2", 443),
        "http://[FE80::1]/a.jpg": ("http", "fe80::1", 80),
    }
    for uri, where in allowed.items():
        assert fetcher.check_http(uri) == where, uri
    refused = {
        "http://cdn.example:8080/a.jpg": "'cdn.example' port 8080",
        "https://cdn.example:80/a.jpg": "'cdn.example' port 80",  # 80 is not https's default
        "http://media.example/a.jpg": "'media.example' is not",
        "https://media.example/a.jpg": "'media.example' is not",
        "http://[::1]/a.jpg": "'::1' is not",
        "http://[::1]:8081/a.jpg": "'::1' port 8081",
        "http://[::2]:8080/a.jpg": "'::2' port 8080",
        "http://other.example/a.jpg": "'other.example' is not",
    }
    for uri, reason in refused.items():
        with pytest.raises(MediaError, match=reason + ".* on the media allow-list"):
            fetcher.check_http(uri)
    assert parse_allowed_host(" [::1]:443 ") == ("::1", 443)
    bad_entries = ("cdn.example:", "cdn.example:x", "cdn.example:70000", "cdn.example:0", "[::1", "[::1]8", ":80", "")
    for bad in bad_entries:
        with pytest.raises(ValueError, match="media allow-list entry"):
            MediaFetcher(allowed_hosts=[bad])


NASTY_URIS = {
    "http://127.0.0.1\x00.evil.example/x.jpg": "control characters or a null byte",
    "http://cdn.example/a\x00.jpg": "control characters or a null byte",
    "http://cdn.example/a b.jpg": "whitespace",
    "http://cdn.example/\r\nHost: evil.example": "control characters",
    "http://cdn.example/\x7f": "control characters",
    "http://cdn.example:99999/x.jpg": "malformed media_uri: Port out of range",
    "http://cdn.example:abc/x.jpg": "malformed media_uri: Port could not be cast",
    "http://cdn.example:-1/x.jpg": "malformed media_uri",
    "http://cdn.example:+80/x.jpg": "malformed media_uri",
    "http://cdn.example:\u0663\u0663/x.jpg": "malformed media_uri",
    "http://[::1/x.jpg": "malformed media_uri: Invalid IPv6 URL",
    "http://[not-ipv6]/x.jpg": "malformed media_uri",
    "http://[::1]:8080:9/x.jpg": "malformed media_uri",
    "http://cdn.example/" + "a" * 10_000: "longer than 8192 characters",
    "file:///media/%00/x.jpg": "null byte",
    "file://%00/etc/passwd": "not allowed",
    "http://:80/x.jpg": "'\\(none\\)' is not on the media allow-list",
    "http:///x.jpg": "'\\(none\\)' is not on the media allow-list",
    "http://%00/x.jpg": "not on the media allow-list",
    "http://\u00e9xample.example/": "not on the media allow-list",
    "https://[::1]:0/x.jpg": "port 0 is not on the media allow-list",
    "http://cdn.example%2f@evil.example/": "credentials",
    "": "scheme '\\(none\\)' is not allowed",
    "\u2603://x": "is not allowed",
    "data:image/png;base64,AAAA": "scheme 'data' is not allowed",
    "javascript:alert(1)": "scheme 'javascript' is not allowed",
}


@pytest.mark.parametrize("uri", NASTY_URIS, ids=range(len(NASTY_URIS)))
def test_malformed_uris_give_a_media_error_with_the_reason(uri: str, tmp_path: Path) -> None:
    fetcher = MediaFetcher(file_root=tmp_path, allowed_hosts=["[::1]:1"], timeout_s=1)
    with pytest.raises(MediaError, match=NASTY_URIS[uri]):
        fetcher.fetch(uri)


def test_no_uri_makes_fetch_raise_anything_but_media_error(tmp_path: Path) -> None:
    """A poor man's fuzzer (hypothesis is not a dependency): URIs glued from nasty pieces."""
    pieces = [
        "http://", "https://", "file://", "file:///", "//", "[", "]", ":", "::1", "[::1]", ":1", ":99999", ":-1",
        "%00", "%zz", "\x00", "\n", "\t", " ", "\x7f", "@", "user:pw@", "#", "?", "/", "\\", "..", "%2e%2e",
        "127.0.0.1", "\u2603", "\u0663", "\ud800", "xn--", "a" * 300,
    ]  # fmt: skip
    rng = random.Random(7)
    fetcher = MediaFetcher(file_root=tmp_path, allowed_hosts=["[::1]:1", "127.0.0.1:1"], timeout_s=1)
    for _ in range(3000):
        uri = "".join(rng.choices(pieces, k=rng.randint(1, 8)))
        with contextlib.suppress(MediaError):  # anything else fails the test
            fetcher.fetch(uri)


def test_empty_media_is_an_error_not_absent_media(server: str, tmp_path: Path) -> None:
    with pytest.raises(MediaError, match=r"media is empty \(0 bytes\)") as info:
        media_signals(b"", LIMITS)
    assert info.value.signals == []  # type: ignore[attr-defined]
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(MediaError, match=r"media is empty \(0 bytes\)"):
        MediaFetcher(file_root=tmp_path).fetch(f"file://{tmp_path}/empty.jpg")
    with pytest.raises(MediaError, match=r"media is empty \(0 bytes\)"):
        MediaFetcher(allowed_hosts=[urlsplit(server).netloc]).fetch(f"{server}/empty")


class Slowloris:
    """An HTTP server on 127.0.0.1 that answers one byte at a time, in its headers or in its
    body, for as long as the client keeps listening."""

    def __init__(self, phase: str, interval_s: float = 0.1) -> None:
        self.phase, self.interval_s = phase, interval_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

    def _trickle(self, conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            if self.phase == "headers":
                head, rest = b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 10_000
            else:
                head, rest = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n", b"x" * 100_000
            try:
                conn.sendall(head)
                for byte in rest:
                    if self.stopped.wait(self.interval_s):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:  # the client gave up
                return

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


@pytest.mark.parametrize("phase", ["headers", "body"])
def test_a_slowloris_server_cannot_hold_a_fetch_past_its_deadline(phase: str) -> None:
    server = Slowloris(phase)
    try:
        fetcher = MediaFetcher(allowed_hosts=[f"127.0.0.1:{server.port}"], timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(MediaError, match="fetch did not finish within 1 s"):
            fetcher.fetch(f"http://127.0.0.1:{server.port}/slow.jpg")
        assert time.monotonic() - started < 3.0  # a byte every 0.1 s: per-read timeouts never fire
    finally:
        server.close()


def test_video_decoding_has_a_time_budget_and_a_frame_cap() -> None:
    data = video(1, seconds=2)
    with pytest.raises(MediaError, match="video decoding exceeded 0 s") as info:
        media_signals(data, MediaLimits(decode_timeout_s=0.0))
    assert {s["signal_type"] for s in info.value.signals} == {"md5", "sha256"}  # type: ignore[attr-defined]
    with pytest.raises(MediaError, match="video has more than 5 frames") as info:
        media_signals(data, MediaLimits(max_video_frames=5))
    assert {s["signal_type"] for s in info.value.signals} == {"md5", "sha256"}  # type: ignore[attr-defined]
    assert any(s["signal_type"] == "video_pdq" for s in media_signals(data, LIMITS))
