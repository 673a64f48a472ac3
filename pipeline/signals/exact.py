"""Exact cryptographic hashes of media bytes: MD5 (for legacy hash lists) and SHA-256."""

from __future__ import annotations

import hashlib

from pipeline.records import Record, signal


def exact_signals(media: bytes) -> list[Record]:
    return [
        signal("md5", hashlib.md5(media, usedforsecurity=False).hexdigest()),
        signal("sha256", hashlib.sha256(media).hexdigest()),
    ]
