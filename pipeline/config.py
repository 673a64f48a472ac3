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
    "accounts": "AccountEvent",
    "enriched": "ModerationRecord",
    "matched": "ModerationRecord",
    "classified": "ModerationRecord",
    "decisions": "Decision",
    "enforcement.results": "EnforcementResult",
    "enforcement.retry": "EnforcementRetry",
    "banks": "BankEntry",
    "shared.signals": "SharedSignal",
    "incidents": "Incident",
    "review": "ReviewTask",
    "review.verdicts": "ReviewVerdict",
    "dlq": "DeadLetter",
    "partners": "Partner",
    "exchange": "ExchangeSignal",  # on the cluster the partners share; named by exchange_topic, not prefixed
    "audit": "AuditRecord",  # operators' writes through the API and the review console
}
COMPACTED = frozenset({"banks", "incidents", "partners"})


def _pairs(text: str) -> dict[str, int]:
    """ "bank=20,other=40" -> {"bank": 20, "other": 40}."""
    pairs = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"expected name=number, got {item!r}")
        pairs[name.strip()] = int(value)
    return pairs


def _shard(text: str) -> tuple[int, int]:
    """ "2/4" -> (2, 4): shard 2 of 4."""
    index, sep, count = text.partition("/")
    if not sep or not index.strip().isdigit() or not count.strip().isdigit() or int(index) >= int(count):
        raise ValueError(f"MODSTREAM_RETRO_SHARD must be i/n with 0 <= i < n, not {text!r}")
    return int(index), int(count)


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
    # Largest record the processes produce or accept, in bytes. Keep it at or below the broker's
    # message.max.bytes (Kafka's default is 1048588); outputs larger than this are dead-lettered.
    message_max_bytes: int = 1_000_000
    compression: str = "lz4"  # producer compression.type; "none" for clients without LZ4
    # media fetching and hashing (enrich)
    media_root: str = ""  # file:// media_uri must lie under it; empty: file:// refused
    media_allowed_hosts: tuple[str, ...] = ()  # http(s):// media_uri hosts allowed: host (default port) or host:port
    media_max_bytes: int = 64 * 1024 * 1024
    media_max_pixels: int = 50_000_000
    media_timeout_s: float = 10.0  # overall deadline of one fetch: connect, headers and body
    media_batch_budget_s: float = 0.0  # time a batch waits for its fetches; 0: media_timeout_s
    media_decode_timeout_s: float = 20.0  # time to decode one video
    media_store: str = "redis"  # where media bytes travel between stages: redis, file:///a/dir or none
    media_store_ttl_s: int = 7 * 24 * 3600
    # matching (match)
    pdq_threshold: int = 31
    pdq_bank_thresholds: dict[str, int] = field(default_factory=dict)
    pdq_min_quality: int = 50
    video_query_match_pct: float = 80.0
    video_index_match_pct: float = 0.0
    removed_bank: str = "removed"  # where decide banks the hashes of removed items
    bank_load_timeout_s: float = 900.0  # a match process loads the bank topic at start within this
    # retroactive matching (retro)
    retro_days: int = 7  # uploads kept for retroactive matching, by age
    retro_dihedral: bool = False  # keep uploads' PDQ rotations and mirrors too (about 8x the memory)
    retro_shard: tuple[int, int] = (0, 1)  # this retro process keeps the uploads of shard i of n
    # live streams (live)
    live_window: int = 30  # frames of a stream matched together against the video banks
    live_min_frames: int = 3  # frames of the window near one banked video that end the stream
    live_image_every: int = 5  # every Nth kept frame goes through the image models
    live_stream_ttl_s: int = 3600  # how long an ended stream's state is kept
    # flood detection (flood)
    flood_accounts: int = 20  # distinct accounts uploading one piece of content that make a flood
    flood_window_s: int = 600  # the sliding window they are counted in
    flood_category_thresholds: dict[str, int] = field(default_factory=dict)  # category -> accounts
    flood_pdq_distance: int = 8  # PDQ bits within which two uploads are the same content (0-15)
    # classification (classify)
    models: str = ""  # model registry file; empty: the built-in one
    onnx_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    onnx_threads: int = 1
    classify_skip_matched: bool = True
    classify_skip_distance: int = 16
    # deciding (decide)
    policy: str = ""  # policy file; empty: the built-in one
    report_aggregation: bool = True
    # exchange between platforms
    exchange_bootstrap_servers: str = ""  # the cluster the partners share; empty: this platform's own
    exchange_kafka_extra: dict[str, str] = field(default_factory=dict)  # its TLS/SASL settings; empty: kafka_extra
    exchange_topic: str = "modstream.exchange"
    exchange_private_key: str = ""  # this platform's Ed25519 private key (PEM file) for signing
    exchange_max_age_s: int = 7 * 24 * 3600  # signatures older than this are refused as stale
    # enforcing
    webhook_url: str = ""
    webhook_retries: int = 5
    live_suspension_s: int = 0  # how long a `suspend_live` decision suspends live access; 0: until lifted
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
            message_max_bytes=int(get("MESSAGE_MAX_BYTES", str(base.message_max_bytes))),
            compression=get("COMPRESSION", base.compression),
            media_root=get("MEDIA_ROOT"),
            media_allowed_hosts=tuple(h.strip() for h in get("MEDIA_ALLOWED_HOSTS").split(",") if h.strip()),
            media_max_bytes=int(get("MEDIA_MAX_BYTES", str(base.media_max_bytes))),
            media_max_pixels=int(get("MEDIA_MAX_PIXELS", str(base.media_max_pixels))),
            media_timeout_s=float(get("MEDIA_TIMEOUT_S", str(base.media_timeout_s))),
            media_batch_budget_s=float(get("MEDIA_BATCH_BUDGET_S", str(base.media_batch_budget_s))),
            media_decode_timeout_s=float(get("MEDIA_DECODE_TIMEOUT_S", str(base.media_decode_timeout_s))),
            media_store=get("MEDIA_STORE", base.media_store),
            media_store_ttl_s=int(get("MEDIA_STORE_TTL_S", str(base.media_store_ttl_s))),
            pdq_threshold=int(get("PDQ_THRESHOLD", str(base.pdq_threshold))),
            pdq_bank_thresholds=_pairs(get("PDQ_BANK_THRESHOLDS")),
            pdq_min_quality=int(get("PDQ_MIN_QUALITY", str(base.pdq_min_quality))),
            video_query_match_pct=float(get("VIDEO_QUERY_MATCH_PCT", str(base.video_query_match_pct))),
            video_index_match_pct=float(get("VIDEO_INDEX_MATCH_PCT", str(base.video_index_match_pct))),
            removed_bank=get("REMOVED_BANK", base.removed_bank),
            bank_load_timeout_s=float(get("BANK_LOAD_TIMEOUT_S", str(base.bank_load_timeout_s))),
            retro_days=int(get("RETRO_DAYS", str(base.retro_days))),
            retro_dihedral=get("RETRO_DIHEDRAL", "0").lower() in ("1", "true", "yes"),
            retro_shard=_shard(get("RETRO_SHARD", "0/1")),
            live_window=int(get("LIVE_WINDOW", str(base.live_window))),
            live_min_frames=int(get("LIVE_MIN_FRAMES", str(base.live_min_frames))),
            live_image_every=int(get("LIVE_IMAGE_EVERY", str(base.live_image_every))),
            live_stream_ttl_s=int(get("LIVE_STREAM_TTL_S", str(base.live_stream_ttl_s))),
            flood_accounts=int(get("FLOOD_ACCOUNTS", str(base.flood_accounts))),
            flood_window_s=int(get("FLOOD_WINDOW_S", str(base.flood_window_s))),
            flood_category_thresholds=_pairs(get("FLOOD_CATEGORY_THRESHOLDS")),
            flood_pdq_distance=int(get("FLOOD_PDQ_DISTANCE", str(base.flood_pdq_distance))),
            models=get("MODELS"),
            onnx_providers=tuple(
                p.strip() for p in get("ONNX_PROVIDERS", "CPUExecutionProvider").split(",") if p.strip()
            ),
            onnx_threads=int(get("ONNX_THREADS", str(base.onnx_threads))),
            classify_skip_matched=get("CLASSIFY_SKIP_MATCHED", "1").lower() not in ("0", "false", "no"),
            classify_skip_distance=int(get("CLASSIFY_SKIP_DISTANCE", str(base.classify_skip_distance))),
            policy=get("POLICY"),
            exchange_bootstrap_servers=get("EXCHANGE_BOOTSTRAP_SERVERS"),
            exchange_kafka_extra={str(k): str(v) for k, v in json.loads(get("EXCHANGE_KAFKA_EXTRA", "{}")).items()},
            exchange_topic=get("EXCHANGE_TOPIC", base.exchange_topic),
            exchange_private_key=get("EXCHANGE_PRIVATE_KEY"),
            exchange_max_age_s=int(get("EXCHANGE_MAX_AGE_S", str(base.exchange_max_age_s))),
            webhook_url=get("WEBHOOK_URL"),
            webhook_retries=int(get("WEBHOOK_RETRIES", str(base.webhook_retries))),
            live_suspension_s=int(get("LIVE_SUSPENSION_S", str(base.live_suspension_s))),
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
        if self.message_max_bytes < 64 * 1024:
            raise ValueError("MODSTREAM_MESSAGE_MAX_BYTES must be at least 65536")
        if self.retro_days < 1:
            raise ValueError("MODSTREAM_RETRO_DAYS must be at least 1")
        if min([self.flood_accounts, *self.flood_category_thresholds.values()]) < 1 or self.flood_window_s < 1:
            raise ValueError(
                "MODSTREAM_FLOOD_ACCOUNTS, its category thresholds and MODSTREAM_FLOOD_WINDOW_S must be positive"
            )
        if not 0 <= self.flood_pdq_distance <= 15:
            raise ValueError("MODSTREAM_FLOOD_PDQ_DISTANCE must be 0 to 15")

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def topic(self, short: str) -> str:
        if short not in TOPICS:
            raise KeyError(f"unknown topic {short!r}; known: {', '.join(TOPICS)}")
        if short == "exchange":
            return self.exchange_topic
        return self.topic_prefix + short

    def short_name(self, topic: str) -> str:
        if topic == self.exchange_topic:
            return "exchange"
        return topic[len(self.topic_prefix) :] if topic.startswith(self.topic_prefix) else topic

    def exchange_cluster(self) -> Settings:
        """These settings pointed at the exchange's cluster (the local one unless configured)."""
        return replace(
            self,
            bootstrap_servers=self.exchange_bootstrap_servers or self.bootstrap_servers,
            kafka_extra=self.exchange_kafka_extra or self.kafka_extra,
        )

    @property
    def exactly_once(self) -> bool:
        return self.guarantee == "exactly-once"

    # librdkafka configuration, in one place. Our defaults come first and MODSTREAM_KAFKA_EXTRA
    # last, so a user's setting always wins over a default of ours.
    def _common(self, defaults: dict[str, Any]) -> dict[str, Any]:
        if not self.bootstrap_servers:
            raise RuntimeError("no Kafka bootstrap servers: set MODSTREAM_BOOTSTRAP_SERVERS or run `modstream dev up`")
        return {"bootstrap.servers": self.bootstrap_servers, **defaults, **self.kafka_extra}

    def producer_config(self, transactional_id: str | None = None) -> dict[str, Any]:
        conf = self._common(
            {
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "compression.type": self.compression,
                # Room for the record's framing: the record itself is checked against
                # message_max_bytes before it is produced.
                "message.max.bytes": self.message_max_bytes + 64 * 1024,
            }
        )
        if transactional_id:
            conf["transactional.id"] = transactional_id
        return conf

    def consumer_config(self, group_id: str | None, **overrides: Any) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "session.timeout.ms": self.session_timeout_ms,
            "fetch.wait.max.ms": self.fetch_wait_max_ms,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            # A fetch may return one record larger than this; it bounds memory per partition.
            "max.partition.fetch.bytes": max(1_048_576, self.message_max_bytes + 64 * 1024),
            # librdkafka requires a group id even where no group is used.
            "group.id": group_id or f"modstream-reader-{os.getpid()}",
            **overrides,
        }
        return self._common(defaults)

    def admin_config(self) -> dict[str, Any]:
        return self._common({})

    def group_id(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def redacted(self) -> dict[str, Any]:
        """The settings as printable values: credentials in URLs and extras are hidden."""
        out: dict[str, Any] = {}
        for key, value in self.__dict__.items():
            if key in ("kafka_extra", "exchange_kafka_extra"):
                value = {k: ("***" if "password" in k or "secret" in k else v) for k, v in value.items()}
            elif key.endswith("_url") and "@" in str(value):
                scheme, _, rest = str(value).partition("://")
                value = f"{scheme}://***@{rest.split('@', 1)[1]}"
            out[key] = str(value) if isinstance(value, Path) else value
        return out
