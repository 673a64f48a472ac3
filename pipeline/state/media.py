"""Media bytes by reference: a content-addressed store between the stages.

enrich puts an item's media (inline or fetched) in the store once and passes on only its
reference, `sha256:<hex>` (the record's `media_ref`), so records between stages stay small
whatever the size of the media; classify gets the bytes back by reference for its image
models. The same bytes always get the same reference, so a redelivered batch stores
nothing new and emits the same records.

Stores: Redis (`RedisMediaStore`, one key per digest, kept once with SET NX and a TTL that
each put refreshes; it is handed a client made with decode_responses=False), a directory
(`FileMediaStore`, files named by digest, written atomically; a file older than the TTL is
treated as gone), or none (`open_media_store("none")` returns None: bytes are not kept and
image models see no media). `get` returns None for media that is not (or no longer) there.
Both stores are thread-safe.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from pipeline.records import Record, media_of

PREFIX = "modstream:media:"
REF_SCHEME = "sha256:"
DEFAULT_TTL_S = 7 * 24 * 3600
_DIGEST = re.compile(r"[0-9a-f]{64}")


class MediaStore(Protocol):
    def put(self, data: bytes) -> str:
        """Stores `data` (once) and returns its reference."""
        ...

    def get(self, ref: str) -> bytes | None:
        """The bytes of `ref`, or None if they are not (or no longer) stored."""
        ...


def ref_of(data: bytes) -> str:
    return REF_SCHEME + hashlib.sha256(data).hexdigest()


def digest_of(ref: str) -> str:
    """The hex digest of a reference; raises ValueError for anything but `sha256:<64 hex>`."""
    digest = ref.removeprefix(REF_SCHEME)
    if not ref.startswith(REF_SCHEME) or not _DIGEST.fullmatch(digest):
        raise ValueError(f"not a media reference: {ref[:100]!r}")
    return digest


def _verified(ref: str, data: bytes | None) -> bytes | None:
    """`data` if it is the content `ref` names; None if it is missing or damaged."""
    if data is None or hashlib.sha256(data).hexdigest() != digest_of(ref):
        return None
    return data


class RedisMediaStore:
    def __init__(self, client: Any, ttl_s: int = DEFAULT_TTL_S) -> None:  # a redis.Redis, decode_responses=False
        self.redis = client
        self.ttl_s = ttl_s

    def put(self, data: bytes) -> str:
        ref = ref_of(data)
        key = PREFIX + digest_of(ref)
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(key, data, nx=True, ex=self.ttl_s)  # written once: a repeat only refreshes the TTL
        pipe.expire(key, self.ttl_s)
        pipe.execute()
        return ref

    def get(self, ref: str) -> bytes | None:
        data = self.redis.get(PREFIX + digest_of(ref))
        if isinstance(data, str):
            raise TypeError("RedisMediaStore needs a Redis client made with decode_responses=False")
        return _verified(ref, data)


class FileMediaStore:
    """Files `<root>/<first two hex digits>/<digest>`; writes go to a temporary file that is
    then renamed, so a reader never sees a partial file. Expired files are not deleted here
    (a periodic `find -mtime` does that); `get` ignores them."""

    def __init__(self, root: Path, ttl_s: int = DEFAULT_TTL_S) -> None:
        self.root = root
        self.ttl_s = ttl_s

    def _path(self, ref: str) -> Path:
        digest = digest_of(ref)
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        ref = ref_of(data)
        path = self._path(ref)
        if path.exists():
            os.utime(path)  # kept once; the TTL restarts
            return ref
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ref

    def get(self, ref: str) -> bytes | None:
        path = self._path(ref)
        try:
            if time.time() - path.stat().st_mtime > self.ttl_s:
                return None
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        return _verified(ref, data)


def open_media_store(spec: str, ttl_s: int, redis: Callable[[], Any]) -> MediaStore | None:
    """The store a `media_store` setting names: `redis` (made by calling `redis()`),
    `file:///some/dir`, or `none` (None: media is not kept)."""
    if spec == "none":
        return None
    if spec == "redis":
        return RedisMediaStore(redis(), ttl_s)
    parts = urlsplit(spec)
    if parts.scheme == "file" and parts.netloc in ("", "localhost") and parts.path:
        return FileMediaStore(Path(unquote(parts.path)), ttl_s)
    raise ValueError(f"MODSTREAM_MEDIA_STORE must be redis, none or file:///a/directory, not {spec!r}")


def media_bytes(record: Record, store: MediaStore | None) -> bytes | None:
    """A ModerationRecord's media: from the store by `media_ref`, else inline (records
    enriched before media travelled by reference carry it inline)."""
    ref = record.get("media_ref")
    if ref:
        return store.get(ref) if store is not None else None
    return media_of(record)


def without_inline_media(record: Record) -> Record:
    """The record with its event's inline media bytes (upload media, live frame) removed
    (a copy; the record itself when it carries none)."""
    upload: Record = record.get("upload") or {}
    live: Record = record.get("live") or {}
    inline_upload = upload.get("media_b64") is not None
    inline_frame = live.get("frame_b64") is not None
    if not (inline_upload or inline_frame):
        return record
    out = dict(record)
    if inline_upload:
        out["upload"] = {**upload, "media_b64": None}
    if inline_frame:
        out["live"] = {**live, "frame_b64": None}
    return out
