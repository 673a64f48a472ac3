"""Fetching media by reference, safely: `file://` only under a configured root, `http(s)://`
only to allow-listed hosts (redirects included), with a size cap and a time limit.

Every refusal raises MediaError with a reason a person can act on.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from pipeline.signals.image import MediaError

CHUNK = 64 * 1024


class MediaFetcher:
    def __init__(
        self,
        file_root: Path | None = None,
        allowed_hosts: Iterable[str] = (),
        max_bytes: int = 64 * 1024 * 1024,
        timeout_s: float = 10.0,
    ) -> None:
        self.file_root = file_root.resolve() if file_root else None
        self.allowed_hosts = frozenset(h.lower() for h in allowed_hosts)
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self._opener = urllib.request.build_opener(_CheckedRedirects(self._check_http), urllib.request.ProxyHandler({}))

    def fetch(self, uri: str) -> bytes:
        parts = urlsplit(uri)
        if parts.scheme == "file":
            return self._fetch_file(parts.netloc, unquote(parts.path))
        if parts.scheme in ("http", "https"):
            self._check_http(uri)
            return self._fetch_http(uri)
        raise MediaError(f"media_uri scheme {parts.scheme or '(none)'!r} is not allowed")

    def _fetch_file(self, host: str, path: str) -> bytes:
        if self.file_root is None:
            raise MediaError("file:// media is not enabled (no media root configured)")
        if host not in ("", "localhost"):
            raise MediaError(f"file:// on host {host!r} is not allowed")
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
        return resolved.read_bytes()

    def _check_http(self, uri: str) -> None:
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https"):
            raise MediaError(f"redirect to scheme {parts.scheme!r} is not allowed")
        if parts.username or parts.password:
            raise MediaError("credentials in media URLs are not allowed")
        host = (parts.hostname or "").lower()
        if host not in self.allowed_hosts:
            raise MediaError(f"host {host or '(none)'!r} is not on the media allow-list")

    def _fetch_http(self, uri: str) -> bytes:
        deadline = time.monotonic() + self.timeout_s
        try:
            with self._opener.open(uri, timeout=self.timeout_s) as response:
                declared = response.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > self.max_bytes:
                    raise MediaError(f"media of {declared} bytes exceeds the limit of {self.max_bytes}")
                chunks, size = [], 0
                while chunk := response.read(CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise MediaError(f"media exceeds the limit of {self.max_bytes} bytes")
                    if time.monotonic() > deadline:
                        raise MediaError(f"fetching took longer than {self.timeout_s} s")
                    chunks.append(chunk)
                return b"".join(chunks)
        except urllib.error.HTTPError as exc:
            raise MediaError(f"fetch failed: HTTP {exc.code}") from exc
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, MediaError):
                raise reason from exc
            raise MediaError(f"fetch failed: {reason}") from exc


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to an allowed host."""

    def __init__(self, check: object) -> None:
        self.check = check

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        self.check(newurl)  # type: ignore[operator]
        return super().redirect_request(req, fp, code, msg, headers, newurl)
