"""The stage contract and the record helpers shared by every stage. No I/O here.

A stage is a small class with a `name`, the short names of the topics it
reads (`inputs`) and a `process(batch)` method that turns a batch of decoded
`Incoming` records into `Output`s. It never touches Kafka or Redis clients:
whatever it needs is handed to its constructor. The runner (pipeline.runtime)
owns consuming, decoding, producing, committing and dead-lettering.

Contract for `process`:
- It may be called again with the same records (at-least-once delivery), so
  any effect outside its return value must be idempotent, keyed by event_id.
- If it raises, the runner retries the records one by one and dead-letters
  exactly those that still raise; a stage need not catch per-record errors.
- It must not block for long: the runner's poll loop waits on it.

Optional: a stage may define `not_before(record: Incoming) -> int | None`, the time (ms
since the epoch) before which a record must not be processed (a scheduled retry). The
runner then holds that record's partition, from that record on, until the time comes,
without blocking the poll loop; nothing at or after it on the partition is committed.
"""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Record = dict[str, Any]


@dataclass(slots=True)
class Incoming:
    """A decoded record and where it came from."""

    topic: str  # short name, e.g. "uploads"
    key: bytes | None
    value: Record
    partition: int = 0
    offset: int = 0
    raw: bytes | None = None  # the value as read, for dead letters a stage writes itself


@dataclass(slots=True)
class Output:
    """A record to produce: topic short name, key and value (None is a tombstone)."""

    topic: str
    key: str | bytes | None
    value: Record | None


class Stage(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def inputs(self) -> tuple[str, ...]:
        """Short names of the topics the stage reads."""
        ...

    @property
    def outputs(self) -> tuple[str, ...]:
        """Short names of the topics the stage writes (besides dead letters)."""
        ...

    def process(self, batch: Sequence[Incoming]) -> list[Output]: ...


class StageError(Exception):
    """Raised by a stage for one record it cannot process; the record is dead-lettered."""


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return uuid.uuid4().hex


HASH_FORMATS = {  # the signal types banks hold, and the form of their hashes (lower-case hex)
    "md5": re.compile(r"[0-9a-f]{32}"),
    "sha256": re.compile(r"[0-9a-f]{64}"),
    "pdq": re.compile(r"[0-9a-f]{64}"),
    "video_pdq": re.compile(r"[0-9a-f]{64}"),
}


def signal(signal_type: str, value: str, quality: int | None = None, frame: int | None = None) -> Record:
    """A Signal record: one hash of a piece of media."""
    return {"signal_type": signal_type, "value": value, "quality": quality, "frame": frame}


def stable_id(*parts: str) -> str:
    """An id derived from its parts, so that reprocessing an event yields the same id."""
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=16).hexdigest()


def subject_key(envelope: Record) -> str:
    """The partition key of an event: its content_id, else its stream_id, else its event_id."""
    return envelope.get("content_id") or envelope.get("stream_id") or envelope["event_id"]


def record_key(topic: str, value: Record) -> str:
    """The key a record of `topic` is produced with (see the topic map)."""
    if topic == "banks":
        return f"{value['bank']}/{value['signal_type']}/{value['hash'].lower()}"
    if topic == "shared.signals":
        return f"{value['signal_type']}/{value['hash'].lower()}"
    if topic == "incidents":
        return str(value["incident_id"])
    if topic == "dlq":
        return f"{value['topic']}/{value['partition']}/{value['offset']}"
    if topic == "accounts":
        return str(value["envelope"]["user_id"])
    return subject_key(value["envelope"])


def envelope(
    platform_id: str,
    *,
    content_id: str | None = None,
    stream_id: str | None = None,
    user_id: str | None = None,
    event_id: str | None = None,
    occurred_at: int | None = None,
) -> Record:
    return {
        "event_id": event_id or new_id(),
        "platform_id": platform_id,
        "occurred_at": occurred_at if occurred_at is not None else now_ms(),
        "content_id": content_id,
        "stream_id": stream_id,
        "user_id": user_id,
    }


DEAD_LETTER_VALUE_MAX = 64 * 1024  # bytes of a raw value a dead letter carries; larger ones keep a prefix


def fill_envelope(env: Any, platform_id: str) -> Any:
    """An envelope (JSON form) with a missing event_id, platform_id and occurred_at filled in;
    anything that is not an object is returned as it is, for the schema check to refuse."""
    if env is None:
        env = {}
    if not isinstance(env, dict):
        return env
    filled = {"content_id": None, "stream_id": None, "user_id": None, **env}
    if not filled.get("event_id"):
        filled["event_id"] = new_id()
    if not filled.get("platform_id"):
        filled["platform_id"] = platform_id
    if filled.get("occurred_at") is None:
        filled["occurred_at"] = now_ms()
    return filled


def dead_letter_value(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes | None,
    stage: str,
    kind: str,
    error: str,
    keep: int = DEAD_LETTER_VALUE_MAX,
) -> Record:
    """A DeadLetter record. A raw value larger than `keep` bytes is cut to its first `keep` bytes,
    with its size and SHA-256, so that a dead letter always fits in a message."""
    truncated = value is not None and len(value) > keep
    return {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key if key is None or len(key) <= keep else key[:keep],
        "value": value[:keep] if truncated and value is not None else value,
        "value_size": None if value is None else len(value),
        "value_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
        "value_truncated": truncated,
        "stage": stage,
        "error_type": kind,
        "error": error[:2000],
        "failed_at": now_ms(),
    }


def dead_letter(record: Incoming, stage: str, kind: str, error: str, topic_prefix: str) -> Output:
    """A DeadLetter output for a record a stage gives up on without raising."""
    value = dead_letter_value(
        topic_prefix + record.topic, record.partition, record.offset, record.key, record.raw, stage, kind, error
    )
    return Output("dlq", record.key, value)


def media_of(record: Record) -> bytes | None:
    """The inline media bytes of a ModerationRecord: the upload's media or the live frame."""
    if record.get("upload"):
        media: bytes | None = record["upload"].get("media_b64")
        return media
    if record.get("live"):
        frame: bytes | None = record["live"].get("frame_b64")
        return frame
    return None
