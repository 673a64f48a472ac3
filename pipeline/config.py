"""Process settings: one object, built once from `MODSTREAM_*` environment variables.

The CLI builds a `Settings` and passes it down; nothing reads the environment
elsewhere. Kafka options are mapped to librdkafka keys here and only here.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

# Short topic name -> (value schema, key description). The full name is prefix + short name.
TOPICS: dict[str, str] = {
    "uploads": "UploadEvent",
    "reports": "ReportEvent",
    "live": "LiveEvent",
    "enriched": "ModerationRecord",
    "matched": "ModerationRecord",
    "classified": "ModerationRecord",
    "decisions": "Decision",
    "enforcement.results": "EnforcementResult",
    "banks": "BankEntry",
    "shared.signals": "SharedSignal",
    "incidents": "Incident",
    "review": "ReviewTask",
    "review.verdicts": "ReviewVerdict",
    "dlq": "DeadLetter",
}
COMPACTED = frozenset({"banks", "incidents"})


def _pairs(text: str) -> dict[str, int]:
    """ "bank=20,other=40" -> {"bank": 20, "other": 40}."""
    pairs = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"expected name=number, got {item!r}")
        pairs[name.strip()] = int(value)
    return pairs


def default_state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "modstream"


@dataclass(frozen=True)
class Settings:
    """Everything a process needs to know about its environment.

    `bootstrap_servers` and `redis_url` may be empty: `resolve()` then fills
    them from the embedded dev services recorded by `modstream dev up`.
    """

    bootstrap_servers: str = ""
    redis_url: str = ""
    schema_registry_url: str = ""
    topic_prefix: str = "mod."
    partitions: int = 6
    replication_factor: int = 1
    platform_id: str = "local"
    guarantee: str = "at-least-once"  # or "exactly-once"
    instance_id: str = field(default_factory=socket.gethostname)
    batch_size: int = 500
    batch_timeout_s: float = 0.1  # longest wait for the first record of a batch
    session_timeout_ms: int = 45000
    fetch_wait_max_ms: int = 500
    metrics_port: int = 0  # 0: no metrics server
    # media fetching and hashing (enrich)
    media_root: str = ""  # file:// media_uri must lie under it; empty: file:// refused
    media_allowed_hosts: tuple[str, ...] = ()  # http(s):// media_uri hosts allowed
    media_max_bytes: int = 64 * 1024 * 1024
    media_max_pixels: int = 50_000_000
    media_timeout_s: float = 10.0
    # matching (match)
    pdq_threshold: int = 31
    pdq_bank_thresholds: dict[str, int] = field(default_factory=dict)
    pdq_min_quality: int = 50
    video_query_match_pct: float = 80.0
    video_index_match_pct: float = 0.0
    removed_bank: str = "removed"  # where decide banks the hashes of removed items
    # classification (classify)
    models: str = ""  # model registry file; empty: the built-in one
    onnx_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    onnx_threads: int = 1
    classify_skip_matched: bool = True
    classify_skip_distance: int = 16
    # deciding (decide)
    policy: str = ""  # policy file; empty: the built-in one
    report_aggregation: bool = True
    # enforcing
    webhook_url: str = ""
    webhook_retries: int = 5
    state_dir: Path = field(default_factory=default_state_dir)
    kafka_extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)

        def get(name: str, default: str = "") -> str:
            return env.get(f"MODSTREAM_{name}", default)

        base = cls()
        extra = json.loads(get("KAFKA_EXTRA", "{}"))
        settings = cls(
            bootstrap_servers=get("BOOTSTRAP_SERVERS"),
            redis_url=get("REDIS_URL"),
            schema_registry_url=get("SCHEMA_REGISTRY_URL"),
            topic_prefix=get("TOPIC_PREFIX", base.topic_prefix),
            partitions=int(get("PARTITIONS", str(base.partitions))),
            replication_factor=int(get("REPLICATION_FACTOR", str(base.replication_factor))),
            platform_id=get("PLATFORM_ID", base.platform_id),
            guarantee=get("GUARANTEE", base.guarantee),
            instance_id=get("INSTANCE_ID", base.instance_id),
            batch_size=int(get("BATCH_SIZE", str(base.batch_size))),
            batch_timeout_s=float(get("BATCH_TIMEOUT_S", str(base.batch_timeout_s))),
            session_timeout_ms=int(get("SESSION_TIMEOUT_MS", str(base.session_timeout_ms))),
            fetch_wait_max_ms=int(get("FETCH_WAIT_MAX_MS", str(base.fetch_wait_max_ms))),
            metrics_port=int(get("METRICS_PORT", "0")),
            media_root=get("MEDIA_ROOT"),
            media_allowed_hosts=tuple(h.strip() for h in get("MEDIA_ALLOWED_HOSTS").split(",") if h.strip()),
            media_max_bytes=int(get("MEDIA_MAX_BYTES", str(base.media_max_bytes))),
            media_max_pixels=int(get("MEDIA_MAX_PIXELS", str(base.media_max_pixels))),
            media_timeout_s=float(get("MEDIA_TIMEOUT_S", str(base.media_timeout_s))),
            pdq_threshold=int(get("PDQ_THRESHOLD", str(base.pdq_threshold))),
            pdq_bank_thresholds=_pairs(get("PDQ_BANK_THRESHOLDS")),
            pdq_min_quality=int(get("PDQ_MIN_QUALITY", str(base.pdq_min_quality))),
            video_query_match_pct=float(get("VIDEO_QUERY_MATCH_PCT", str(base.video_query_match_pct))),
            video_index_match_pct=float(get("VIDEO_INDEX_MATCH_PCT", str(base.video_index_match_pct))),
            removed_bank=get("REMOVED_BANK", base.removed_bank),
            models=get("MODELS"),
            onnx_providers=tuple(
                p.strip() for p in get("ONNX_PROVIDERS", "CPUExecutionProvider").split(",") if p.strip()
            ),
            onnx_threads=int(get("ONNX_THREADS", str(base.onnx_threads))),
            classify_skip_matched=get("CLASSIFY_SKIP_MATCHED", "1").lower() not in ("0", "false", "no"),
            classify_skip_distance=int(get("CLASSIFY_SKIP_DISTANCE", str(base.classify_skip_distance))),
            policy=get("POLICY"),
            webhook_url=get("WEBHOOK_URL"),
            webhook_retries=int(get("WEBHOOK_RETRIES", str(base.webhook_retries))),
            report_aggregation=get("REPORT_AGGREGATION", "1").lower() not in ("0", "false", "no"),
            state_dir=Path(get("STATE_DIR", str(base.state_dir))),
            kafka_extra={str(k): str(v) for k, v in extra.items()},
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.guarantee not in ("at-least-once", "exactly-once"):
            raise ValueError(f"MODSTREAM_GUARANTEE must be at-least-once or exactly-once, not {self.guarantee!r}")
        if self.partitions < 1 or self.batch_size < 1:
            raise ValueError("MODSTREAM_PARTITIONS and MODSTREAM_BATCH_SIZE must be positive")

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def topic(self, short: str) -> str:
        if short not in TOPICS:
            raise KeyError(f"unknown topic {short!r}; known: {', '.join(TOPICS)}")
        return self.topic_prefix + short

    def short_name(self, topic: str) -> str:
        return topic[len(self.topic_prefix) :] if topic.startswith(self.topic_prefix) else topic

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly-once"

    # librdkafka configuration, in one place.
    def _common(self) -> dict[str, Any]:
        if not self.bootstrap_servers:
            raise RuntimeError("no Kafka bootstrap servers: set MODSTREAM_BOOTSTRAP_SERVERS or run `modstream dev up`")
        return {"bootstrap.servers": self.bootstrap_servers, **self.kafka_extra}

    def producer_config(self, transactional_id: str | None = None) -> dict[str, Any]:
        conf = {
            **self._common(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
        }
        if transactional_id:
            conf["transactional.id"] = transactional_id
        return conf

    def consumer_config(self, group_id: str | None, **overrides: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            **self._common(),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "session.timeout.ms": self.session_timeout_ms,
            "fetch.wait.max.ms": self.fetch_wait_max_ms,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
        }
        if group_id:
            conf["group.id"] = group_id
        else:
            conf["group.id"] = f"modstream-reader-{os.getpid()}"  # required by librdkafka, unused
        conf.update(overrides)
        return conf

    def admin_config(self) -> dict[str, Any]:
        return self._common()

    def group_id(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def redacted(self) -> dict[str, Any]:
        """The settings as printable values: credentials in URLs and extras are hidden."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key == "kafka_extra":
                value = {k: ("***" if "password" in k or "secret" in k else v) for k, v in value.items()}
            elif key.endswith("_url") and "@" in str(value):
                scheme, _, rest = str(value).partition("://")
                value = f"{scheme}://***@{rest.split('@', 1)[1]}"
            out[key] = str(value) if isinstance(value, Path) else value
        return out
