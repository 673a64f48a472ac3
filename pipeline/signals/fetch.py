"""Fetching media by reference, safely: `file://` only under a configured root, `http(s)://`
only to allow-listed hosts and ports (redirects included), with a size cap and one overall
deadline per fetch.

An allow-list entry `host:port` allows exactly that port; a bare `host` allows only the
scheme's default port (80 for http, 443 for https); IPv6 literals are written in brackets,
`[::1]:8080` (a bare `::1` means its default ports).

The deadline (`timeout_s`) covers connecting, the TLS handshake, the response headers and
the body together: a watchdog shuts the fetch's socket down when it passes, so a server
that trickles a byte a second cannot hold a fetch longer than the timeout. (Name
resolution is not interruptible; the caller's batch budget bounds it.)

`fetch()` raises MediaError, with a reason a person can act on, for every refusal and
every failure, malformed URLs included; nothing else escapes it.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from pipeline.signals.image import MediaError

logger = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_URI_CHARS = 8192
MAX_REDIRECTS = 5
DEFAULT_PORTS = {"http": 80, "https": 443}
REDIRECTS = (301, 302, 303, 307, 308)
EMPTY = "media is empty (0 bytes)"


def _normal_host(host: str) -> str:
    """A host as compared with the allow-list: lower case, no trailing dot, IPs in canonical form."""
    host = host.lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def parse_allowed_host(entry: str) -> tuple[str, int | None]:
    """An allow-list entry as (host, port); port None means the scheme's default port.
    Raises ValueError for an entry that is not `host`, `host:port`, `[v6]` or `[v6]:port`."""
    text = entry.strip()
    port_text = ""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"media allow-list entry {entry!r}: expected [ipv6] or [ipv6]:port")
        port_text = rest[1:] if rest else ""
        if rest and not port_text:
            raise ValueError(f"media allow-list entry {entry!r}: empty port")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        if not port_text:
            raise ValueError(f"media allow-list entry {entry!r}: empty port")
    else:  # a name, or a bare IPv6 literal (several colons)
        host = text
    if not host:
        raise ValueError(f"media allow-list entry {entry!r} has no host")
    if not port_text:
        return _normal_host(host), None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"media allow-list entry {entry!r}: port must be a number from 1 to 65535")
    return _normal_host(host), int(port_text)


class _Deadline:
    """The overall deadline of one fetch: at `at` (monotonic), the sockets it tracks are shut
    down, which wakes any blocked read or handshake. Thread-safe; `cancel()` when done."""

    def __init__(self, timeout_s: float) -> None:
        self.at = time.monotonic() + timeout_s
        self.expired = False
        self._done = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout_s, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            self.expired = True
            raise TimeoutError("deadline passed")
        return left

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shut(sock)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for sock in self._sockets:
                _shut(sock)

    def cancel(self) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    # socket.socket.shutdown, not SSLSocket's: only the file descriptor is shut, from any thread.
    with contextlib.suppress(OSError):  # already closed by the fetching thread
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, host: str, port: int, deadline: _Deadline) -> None:
        super().__init__(host, port, timeout=deadline.remaining())
        self._deadline = deadline

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self._deadline.remaining())
        self._deadline.track(sock)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, deadline: _Deadline, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=deadline.remaining(), context=context)
        self._deadline = deadline
        self._ssl_context = context

    def connect(self) -> None:
        raw = socket.create_connection((self.host, self.port), self._deadline.remaining())
        # Handshake after tracking, so that a server stalling the handshake is cut off too.
        sock = self._ssl_context.wrap_socket(raw, server_hostname=self.host, do_handshake_on_connect=False)
        self._deadline.track(sock)
        sock.do_handshake()
        self.sock = sock


class MediaFetcher:
    """Fetches media by URI. Thread-safe: enrich fetches a batch's media in parallel."""

    def __init__(
        self,
        file_root: Path | None = None,
        allowed_hosts: Iterable[str] = (),
        max_bytes: int = 64 * 1024 * 1024,
        timeout_s: float = 10.0,
    ) -> None:
        self.file_root = file_root.resolve() if file_root else None
        self.allowed_hosts = frozenset(parse_allowed_host(h) for h in allowed_hosts)
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._ssl = ssl.create_default_context()

    def fetch(self, uri: str) -> bytes:
        """The media at `uri`; raises MediaError (and nothing else) with the reason it cannot."""
        try:
            parts = self._parse(uri)
            if parts.scheme == "file":
                return self._fetch_file(parts.netloc, unquote(parts.path))
            if parts.scheme in ("http", "https"):
                return self._fetch_http(uri)
            raise MediaError(f"media_uri scheme {parts.scheme or '(none)'!r} is not allowed")
        except MediaError:
            raise
        except ValueError as exc:  # UnicodeError and http.client.InvalidURL among them
            raise MediaError(f"malformed media_uri: {exc}") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise MediaError(f"fetch failed: {exc or type(exc).__name__}") from exc
        except Exception as exc:  # the contract is MediaError only: a bad URL must not fail the batch
            logger.warning("unexpected error fetching media", exc_info=True)
            raise MediaError(f"fetch failed: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _parse(uri: str) -> SplitResult:
        if len(uri) > MAX_URI_CHARS:
            raise MediaError(f"malformed media_uri: longer than {MAX_URI_CHARS} characters ({len(uri)})")
        if any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
            raise MediaError("malformed media_uri: it contains whitespace, control characters or a null byte")
        try:
            return urlsplit(uri)
        except ValueError as exc:
            raise MediaError(f"malformed media_uri: {exc}") from exc

    def _fetch_file(self, host: str, path: str) -> bytes:
        if self.file_root is None:
            raise MediaError("file:// media is not enabled (no media root configured)")
        if host not in ("", "localhost"):
            raise MediaError(f"file:// on host {host!r} is not allowed")
        if "\x00" in path:
            raise MediaError("malformed media_uri: the path contains a null byte")
        try:
            resolved = Path(path).resolve(strict=True)
        except (OSError, RuntimeError) as exc:
            raise MediaError(f"file not found: {path}") from exc
        if not resolved.is_relative_to(self.file_root):
            raise MediaError(f"file {path} is outside the media root")
        if not resolved.is_file():
            raise MediaError(f"{path} is not a regular file")
        size = resolved.stat().st_size
        if size > self.max_bytes:
            raise MediaError(f"media of {size} bytes exceeds the limit of {self.max_bytes}")
        if size == 0:
            raise MediaError(EMPTY)
        return resolved.read_bytes()

    def check_http(self, uri: str, redirect: bool = False) -> tuple[str, str, int]:
        """(scheme, host, port) of an http(s) URI whose host and port are allowed; raises MediaError."""
        parts = self._parse(uri)
        if parts.scheme not in ("http", "https"):
            kind = "redirect to scheme" if redirect else "media_uri scheme"
            raise MediaError(f"{kind} {parts.scheme or '(none)'!r} is not allowed")
        if parts.username or parts.password:
            raise MediaError("credentials in media URLs are not allowed")
        try:
            port = parts.port
        except ValueError as exc:
            raise MediaError(f"malformed media_uri: {exc}") from exc
        host = _normal_host(parts.hostname or "")
        default = DEFAULT_PORTS[parts.scheme]
        port = default if port is None else port
        if (host, port) in self.allowed_hosts or (port == default and (host, None) in self.allowed_hosts):
            return parts.scheme, host, port
        shown = host or "(none)"
        if port == default:
            raise MediaError(f"host {shown!r} is not on the media allow-list")
        raise MediaError(f"host {shown!r} port {port} is not on the media allow-list")

    def _fetch_http(self, uri: str) -> bytes:
        self.check_http(uri)
        deadline = _Deadline(self.timeout_s)
        try:
            for _ in range(MAX_REDIRECTS + 1):
                result = self._get(uri, deadline)
                if isinstance(result, bytes):
                    return result
                uri = result
            raise MediaError(f"more than {MAX_REDIRECTS} redirects")
        except (OSError, http.client.HTTPException) as exc:
            if deadline.expired:
                raise self._too_slow() from exc
            raise MediaError(f"fetch failed: {exc or type(exc).__name__}") from exc
        finally:
            deadline.cancel()

    def _too_slow(self) -> MediaError:
        return MediaError(f"fetch did not finish within {self.timeout_s:g} s")

    def _get(self, uri: str, deadline: _Deadline) -> bytes | str:
        """One request: the body, or the (checked) URI a redirect points to."""
        scheme, host, port = self.check_http(uri, redirect=True)
        parts = urlsplit(uri)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = _HTTPSConnection(host, port, deadline, self._ssl)
        else:
            conn = _HTTPConnection(host, port, deadline)
        try:
            conn.request("GET", target, headers={"Accept": "*/*", "Connection": "close", "User-Agent": "modstream"})
            response = conn.getresponse()
            if deadline.expired:  # the watchdog cut the headers short
                raise self._too_slow()
            if response.status in REDIRECTS:
                location = response.getheader("Location")
                if not location:
                    raise MediaError(f"fetch failed: HTTP {response.status} without a Location")
                return urljoin(uri, location.strip())
            if not 200 <= response.status < 300:
                raise MediaError(f"fetch failed: HTTP {response.status}")
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise MediaError(f"media of {declared} bytes exceeds the limit of {self.max_bytes}")
            chunks, size = [], 0
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > self.max_bytes:
                    raise MediaError(f"media exceeds the limit of {self.max_bytes} bytes")
                chunks.append(chunk)
            if deadline.expired:  # the watchdog cut the body short
                raise self._too_slow()
            if size == 0:
                raise MediaError(EMPTY)
            return b"".join(chunks)
        finally:
            conn.close()
