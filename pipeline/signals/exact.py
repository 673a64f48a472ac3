"""Exact cryptographic hashes of media bytes: MD5 (for legacy hash lists) and SHA-256."""

from __future__ import annotations

import hashlib

from pipeline.records import Record


def exact_signals(media: bytes) -> list[Record]:
    return [
        {
            "signal_type": "md5",
            "value": hashlib.md5(media, usedforsecurity=False).hexdigest(),
            "quality": None,
            "frame": None,
        },
        {"signal_type": "sha256", "value": hashlib.sha256(media).hexdigest(), "quality": None, "frame": None},
    ]
