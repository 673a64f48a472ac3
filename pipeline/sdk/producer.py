"""The producer SDK for platform backends: send upload, report and live events.

Idempotent producer with acks=all. Each send returns the event id at once;
`flush()` waits for every acknowledgement and raises `DeliveryError` listing
the events the broker did not take, so a backend knows what to resend.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from pipeline.config import TOPICS, Settings
from pipeline.records import HASH_FORMATS, Record, envelope, signal, subject_key
from pipeline.serde import Codec


class DeliveryError(Exception):
    def __init__(self, failures: list[tuple[str, str]]) -> None:
        super().__init__(f"{len(failures)} events not delivered; first: {failures[0][0]}: {failures[0][1]}")
        self.failures = failures  # (event_id, reason)


class RecordTooLarge(ValueError):
    """A record larger than the configured message size: send large media by `media_uri`."""


class ModerationProducer:
    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        self.settings = settings
        self.codec = codec or Codec(registry_url=settings.schema_registry_url)
        self.producer = Producer(settings.producer_config())
        self.failures: list[tuple[str, str]] = []

    def send_upload(
        self,
        content_id: str,
        user_id: str,
        *,
        media: bytes | None = None,
        media_uri: str | None = None,
        media_type: str | None = None,
        text: str | None = None,
        signals: dict[str, str] | None = None,
        **env: Any,
    ) -> str:
        """`signals`: hashes the platform computed itself, e.g. `{"pdq": HEX}`, matched
        besides those of the media."""
        event = {
            "envelope": self._envelope(content_id=content_id, user_id=user_id, **env),
            "media_b64": media,
            "media_uri": media_uri,
            "media_type": media_type,
            "text": text,
            "signals": _ready_signals(signals) if signals else None,
        }
        return self.send("uploads", event)

    def send_report(
        self,
        content_id: str,
        reporter_id: str,
        reason: str,
        *,
        text: str | None = None,
        owner_id: str | None = None,
        **env: Any,
    ) -> str:
        event = {
            "envelope": self._envelope(content_id=content_id, user_id=owner_id, **env),
            "reporter_id": reporter_id,
            "reason": reason,
            "text": text,
        }
        return self.send("reports", event)

    def send_live_started(self, stream_id: str, user_id: str, *, title: str | None = None, **env: Any) -> str:
        return self._live(stream_id, user_id, "started", text=title, **env)

    def send_live_frame(self, stream_id: str, user_id: str, frame_index: int, frame: bytes, **env: Any) -> str:
        return self._live(stream_id, user_id, "frame", frame_index=frame_index, frame_b64=frame, **env)

    def send_live_ended(self, stream_id: str, user_id: str, **env: Any) -> str:
        return self._live(stream_id, user_id, "ended", **env)

    def _live(
        self,
        stream_id: str,
        user_id: str,
        kind: str,
        *,
        frame_index: int | None = None,
        frame_b64: bytes | None = None,
        text: str | None = None,
        **env: Any,
    ) -> str:
        event = {
            "envelope": self._envelope(stream_id=stream_id, user_id=user_id, **env),
            "kind": kind,
            "frame_index": frame_index,
            "frame_b64": frame_b64,
            "text": text,
        }
        return self.send("live", event)

    def send_account_update(
        self,
        user_id: str,
        kind: str,
        *,
        actor: str = "",
        reason: str = "",
        until: int | None = None,
        **env: Any,
    ) -> str:
        """Tells modstream about an account: `kind` is identity_verified, identity_unverified,
        live_suspended (until `until`, ms since the epoch; None: until lifted) or live_lifted.
        Keyed by user_id, so the updates of one account are applied in order."""
        event = {
            "envelope": self._envelope(user_id=user_id, **env),
            "kind": kind,
            "actor": actor,
            "reason": reason,
            "until": until,
        }
        return self.send("accounts", event, key=user_id)

    def _envelope(self, **fields: Any) -> Record:
        return envelope(fields.pop("platform_id", self.settings.platform_id), **fields)

    def send(self, topic: str, event: Record, key: str | None = None) -> str:
        """Sends any record to a topic by short name; the key defaults to the subject's id."""
        value = self.codec.encode(TOPICS[topic], event, f"{self.settings.topic(topic)}-value")
        env = event.get("envelope") or {}
        event_id = env.get("event_id", "")
        if len(value) > self.settings.message_max_bytes:
            raise RecordTooLarge(
                f"{topic} record {event_id or ''} is {len(value)} bytes, over the message limit of "
                f"{self.settings.message_max_bytes} (MODSTREAM_MESSAGE_MAX_BYTES); send large media by media_uri"
            )
        self._produce(topic, key or (subject_key(env) if env else None), value, event_id)
        return event_id

    def send_raw(self, topic: str, key: str | bytes | None, value: bytes | None) -> None:
        self._produce(topic, key, value, "")

    def _produce(self, topic: str, key: str | bytes | None, value: bytes | None, event_id: str) -> None:
        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                self.failures.append((event_id, str(err)))

        while True:
            try:
                self.producer.produce(self.settings.topic(topic), value=value, key=key, on_delivery=on_delivery)
                break
            except BufferError:
                self.producer.poll(0.1)
            except KafkaException as exc:  # refused before sending (too large, unknown topic...)
                raise DeliveryError([(event_id or "?", str(exc.args[0]))]) from exc
        self.producer.poll(0)

    def flush(self, timeout_s: float = 30.0) -> None:
        remaining = self.producer.flush(timeout_s)
        failures, self.failures = self.failures, []
        if remaining:
            failures.append(("?", f"{remaining} events still queued after {timeout_s} s"))
        if failures:
            raise DeliveryError(failures)

    def __enter__(self) -> ModerationProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()


def _ready_signals(hashes: dict[str, str]) -> list[Record]:
    """Signals from `{signal_type: hash}`, checked here so that a bad one raises at send time
    rather than sending the upload to the dead-letter topic."""
    out = []
    for kind, value in hashes.items():
        kind, value = kind.strip().lower(), value.strip().lower()
        if kind not in HASH_FORMATS:
            raise ValueError(f"unknown signal type {kind!r}; known: {', '.join(HASH_FORMATS)}")
        if not HASH_FORMATS[kind].fullmatch(value):
            raise ValueError(f"{value[:80]!r} is not a {kind} hash (hex digits of its length)")
        out.append(signal(kind, value, 100 if kind in ("pdq", "video_pdq") else None))
    return out
