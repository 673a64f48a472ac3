"""Wiring: builds stages with the resources they need (Redis, bank table) from settings.

This is where clients are created; stages only receive them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from pipeline.banks.table import BankTable, MatchConfig
from pipeline.config import Settings
from pipeline.enforce.account import AccountEnforcer
from pipeline.enforce.consumer import EnforceStage
from pipeline.enforce.logging_enforcer import handlers as logging_handlers
from pipeline.enforce.webhook import WebhookEnforcer
from pipeline.exchange.partners import PartnerTable, RedisPartnerCounts, RedisReplayGuard
from pipeline.exchange.signing import load_private, sign
from pipeline.models.registry import DEFAULT_REGISTRY, OnnxModel, Threshold, load_models, load_registry
from pipeline.policy.engine import DEFAULT_POLICY, Policy, load_policy
from pipeline.policy.incidents import IncidentTable
from pipeline.policy.review import ReviewQueue
from pipeline.records import Record, Stage
from pipeline.runtime.follower import BankFollower, TopicFollower
from pipeline.runtime.runner import UNAVAILABLE, Runner
from pipeline.serde import Codec
from pipeline.signals.fetch import MediaFetcher
from pipeline.signals.media import MediaLimits
from pipeline.stages.accounts import AccountsStage
from pipeline.stages.classify import ClassifyStage
from pipeline.stages.decide import DecideStage
from pipeline.stages.enrich import EnrichStage
from pipeline.stages.exchange import FeedbackStage, ImportStage, PublishStage
from pipeline.stages.flood import FloodConfig, FloodStage
from pipeline.stages.live import LiveStage
from pipeline.stages.match import MatchStage
from pipeline.stages.retro import BankCodec, RetroStage
from pipeline.state.accounts import RedisAccountStore
from pipeline.state.floods import RedisFloodStore
from pipeline.state.media import MediaStore, open_media_store
from pipeline.state.recent import DAY_MS, RecentStore
from pipeline.state.reports import RedisReportStore
from pipeline.state.streams import RedisStreamStore

logger = logging.getLogger(__name__)

PIPELINE = ("enrich", "match", "classify", "decide")
LIVE = ("live",)  # its own consumer group and runner: an upload backlog never delays a frame
ENFORCERS = ("enforce-log", "enforce-account", "enforce-webhook")
ACCOUNTS = ("accounts",)  # its own consumer group: writes the platforms' AccountEvents to Redis
FLOOD = ("flood",)  # its own consumer group on mod.enriched, beside the upload pipeline
RETRO = ("retro",)  # its own group on mod.banks and mod.decisions, per shard; follows mod.decisions too
STAGES = PIPELINE + LIVE + ENFORCERS + ACCOUNTS + FLOOD + RETRO

# A Redis that refuses connections, does not answer within REDIS_TIMEOUT_S, is full (maxmemory)
# or read-only (a replica, during a failover) is unavailable: the runners redo the batch when it
# answers again instead of dead-lettering its records.
REDIS_TIMEOUT_S = 10.0
REDIS_UNAVAILABLE: tuple[type[BaseException], ...] = (
    *UNAVAILABLE,
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,  # type: ignore[attr-defined]  # the type stubs predate it
    redis.exceptions.ReadOnlyError,
)


def connect_redis(url: str, decode_responses: bool = True) -> Any:
    if not url:
        raise RuntimeError("no Redis: set MODSTREAM_REDIS_URL or run `modstream dev up`")
    timeouts: dict[str, Any] = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S}
    if decode_responses:
        return redis.Redis.from_url(url, decode_responses=True, **timeouts)
    return redis.Redis.from_url(url, **timeouts)


@dataclass
class App:
    """The resources of one process, created on first use and shared by its stages."""

    settings: Settings
    codec: Codec = field(init=False)
    _banks: BankTable | None = None
    _follower: BankFollower | None = None
    _redis: Any = None
    _models: list[OnnxModel] | None = None
    _incidents: IncidentTable | None = None
    _incident_follower: TopicFollower | None = None
    _partners: PartnerTable | None = None
    _partner_follower: TopicFollower | None = None
    _event_followers: list[TopicFollower] = field(default_factory=list)
    _review_queue: ReviewQueue | None = None

    def __post_init__(self) -> None:
        self.codec = Codec(registry_url=self.settings.schema_registry_url)

    @property
    def redis(self) -> Any:
        if self._redis is None:
            self._redis = connect_redis(self.settings.redis_url)
        return self._redis

    def fetcher(self) -> MediaFetcher:
        s = self.settings
        root = Path(s.media_root) if s.media_root else None
        return MediaFetcher(root, s.media_allowed_hosts, s.media_max_bytes, s.media_timeout_s)

    def media_limits(self, draft_min_side: int = 512) -> MediaLimits:
        return MediaLimits(
            max_bytes=self.settings.media_max_bytes,
            max_pixels=self.settings.media_max_pixels,
            min_frame_quality=self.settings.pdq_min_quality,
            decode_timeout_s=self.settings.media_decode_timeout_s,
            draft_min_side=draft_min_side,
        )

    def media_store(self) -> MediaStore | None:
        """The media store of MODSTREAM_MEDIA_STORE. Redis keeps bytes, so it gets a client of
        its own that does not decode responses."""

        def binary_redis() -> Any:
            if not self.settings.redis_url:
                raise RuntimeError("no Redis for the media store: set MODSTREAM_REDIS_URL or MODSTREAM_MEDIA_STORE")
            return connect_redis(self.settings.redis_url, decode_responses=False)

        return open_media_store(self.settings.media_store, self.settings.media_store_ttl_s, binary_redis)

    def match_config(self) -> MatchConfig:
        s = self.settings
        return MatchConfig(
            pdq_threshold=s.pdq_threshold,
            bank_thresholds=s.pdq_bank_thresholds,
            min_quality=s.pdq_min_quality,
            video_query_pct=s.video_query_match_pct,
            video_index_pct=s.video_index_match_pct,
        )

    def models(self) -> list[OnnxModel]:
        if self._models is None:
            path = Path(self.settings.models) if self.settings.models else DEFAULT_REGISTRY
            self._models = load_models(path, self.settings.onnx_providers, self.settings.onnx_threads)
        return self._models

    def thresholds(self) -> dict[tuple[str, str], Threshold]:
        path = Path(self.settings.models) if self.settings.models else DEFAULT_REGISTRY
        return {(spec.name, label): t for spec in load_registry(path) for label, t in spec.thresholds.items()}

    def policy(self) -> Policy:
        return load_policy(Path(self.settings.policy) if self.settings.policy else DEFAULT_POLICY, self.thresholds())

    def incidents(self) -> IncidentTable:
        if self._incidents is None:
            self._incidents = IncidentTable()
            self._incident_follower = TopicFollower(self.settings, self.codec, self._incidents, "incidents")
            self._incident_follower.start()
            self._incident_follower.wait_caught_up()
        return self._incidents

    def review_queue(self) -> ReviewQueue:
        """The open review tasks, followed live from `mod.review` and `mod.review.verdicts`."""
        if self._review_queue is None:
            self._review_queue = ReviewQueue()
            for topic in ("review", "review.verdicts"):
                follower = TopicFollower(self.settings, self.codec, self._review_queue.feed(topic), topic)
                follower.start()
                self._event_followers.append(follower)
                self._review_queue.followers.append(follower)
                follower.wait_caught_up()
        return self._review_queue

    def partners(self) -> PartnerTable:
        if self._partners is None:
            self._partners = PartnerTable()
            self._partner_follower = TopicFollower(self.settings, self.codec, self._partners, "partners")
            self._partner_follower.start()
            self._partner_follower.wait_caught_up()
        return self._partners

    def signer(self) -> Callable[[Record], Record]:
        if not self.settings.exchange_private_key:
            raise ValueError("the exchange needs this platform's key: set MODSTREAM_EXCHANGE_PRIVATE_KEY")
        key = load_private(self.settings.exchange_private_key)
        return lambda record: sign(record, key)

    def exchange_runners(self) -> list[Runner]:
        """publish, import and feedback: the exchange with partner platforms."""
        s, exchange = self.settings, self.settings.exchange_cluster()
        sign_it, counts = self.signer(), RedisPartnerCounts(self.redis)
        importer = ImportStage(
            s.platform_id,
            self.partners(),
            RedisReplayGuard(self.redis),
            counts,
            s.exchange_topic,
            s.exchange_max_age_s,
        )
        group = f"exchange.{{}}.{s.platform_id}"
        return [
            self.runner([PublishStage(s.platform_id, sign_it)], group.format("publish"), exchange=exchange),
            self.runner([importer], group.format("import"), consume_from=exchange),
            self.runner(
                [FeedbackStage(s.platform_id, self.banks(), self.partners(), counts, sign_it)],
                group.format("feedback"),
                exchange=exchange,
            ),
        ]

    def report_store(self) -> RedisReportStore:
        return RedisReportStore(self.redis)

    def banks(self) -> BankTable:
        if self._banks is None:
            self._banks = BankTable(self.match_config())
            self._follower = BankFollower(self.settings, self.codec, self._banks)
            self._follower.start()
            self._follower.wait_caught_up(self.settings.bank_load_timeout_s)
        return self._banks

    def build(self, name: str) -> Stage:
        builders: dict[str, Callable[[], Stage]] = {
            "enrich": lambda: EnrichStage(
                RedisAccountStore(self.redis),
                self.fetcher(),
                self.media_limits(),
                content=self.report_store(),
                media=self.media_store(),
                batch_budget_s=self.settings.media_batch_budget_s or self.settings.media_timeout_s,
                topic_prefix=self.settings.topic_prefix,
            ),
            "match": lambda: MatchStage(self.banks()),
            "classify": lambda: ClassifyStage(
                self.models(),
                self.settings.classify_skip_matched,
                self.settings.classify_skip_distance,
                media=self.media_store(),
            ),
            "decide": lambda: DecideStage(
                self.policy(),
                self.report_store() if self.settings.report_aggregation else None,
                removed_bank=self.settings.removed_bank,
                incidents=self.incidents().active_incidents,
            ),
            "live": lambda: LiveStage(
                RedisStreamStore(self.redis, self.settings.live_stream_ttl_s, self.settings.live_window),
                RedisAccountStore(self.redis),
                self.banks(),
                self.policy(),
                ClassifyStage(self.models(), self.settings.classify_skip_matched, self.settings.classify_skip_distance),
                self.media_limits(draft_min_side=160),  # a 720p frame decodes at 320x180 (PDQ reads 64x64)
                window=self.settings.live_window,
                min_frames=self.settings.live_min_frames,
                image_every=self.settings.live_image_every,
                removed_bank=self.settings.removed_bank,
                incidents=self.incidents().active_incidents,
            ),
            "enforce-log": lambda: EnforceStage("log", logging_handlers(), self.settings.topic_prefix),
            "enforce-account": lambda: EnforceStage(
                "account",
                dict.fromkeys(
                    ("remove", "end_stream", "restrict"),
                    AccountEnforcer(RedisAccountStore(self.redis), self.settings.live_suspension_s),
                ),
                self.settings.topic_prefix,
                unavailable=REDIS_UNAVAILABLE,  # strikes wait for Redis instead of spending attempts
            ),
            "enforce-webhook": lambda: EnforceStage(
                "webhook",
                dict.fromkeys(("remove", "end_stream", "restrict"), WebhookEnforcer(self.settings.webhook_url)),
                self.settings.topic_prefix,
                retries=self.settings.webhook_retries,
            ),
            "accounts": lambda: AccountsStage(RedisAccountStore(self.redis), self.settings.topic_prefix),
            "flood": self._flood,
            "retro": self._retro,
        }
        if name not in builders:
            raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGES)} or all")
        return builders[name]()

    def _flood(self) -> FloodStage:
        """Flood detection; the bank table (to name a category) only where categories have thresholds."""
        s = self.settings
        config = FloodConfig(
            accounts=s.flood_accounts,
            window_s=s.flood_window_s,
            category_accounts=tuple(sorted(s.flood_category_thresholds.items())),
            pdq_distance=s.flood_pdq_distance,
            min_quality=s.pdq_min_quality,
        )
        store = RedisFloodStore(self.redis, s.flood_pdq_distance, s.flood_window_s)
        return FloodStage(store, config, banks=self.banks() if s.flood_category_thresholds else None)

    def _retro(self) -> RetroStage:
        """Retroactive matching: a store of recent uploads, rebuilt from and following
        `decisions` (bank entries wait until it has caught up)."""
        s = self.settings
        store = RecentStore(s.retro_days * DAY_MS, s.pdq_min_quality, s.retro_dihedral, s.retro_shard)
        follower = TopicFollower(s, self.codec, store.feed("decisions"), "decisions")
        follower.start()
        self._event_followers.append(follower)

        def ready() -> bool:
            if not follower.is_alive():
                raise RuntimeError("the recent store's follower of decisions stopped")
            return follower.caught_up.is_set()

        return RetroStage(
            store,
            self.policy(),
            self.match_config(),
            ready=ready,
            incidents=self.incidents().active_incidents,
            topic_prefix=s.topic_prefix,
        )

    def runners(self, names: list[str]) -> list[Runner]:
        """One runner for the named pipeline stages (fused when several), one per enforcer."""
        if names == ["all"]:
            names = [*PIPELINE, *LIVE, "enforce-log", "enforce-account", *ACCOUNTS, *FLOOD, *RETRO]
            if self.settings.exchange_private_key:
                names.append("exchange")
        chain = [n for n in PIPELINE if n in names]
        runners = [self.runner([self.build(n) for n in chain])] if chain else []
        for n in names:
            if n == "exchange":
                runners += self.exchange_runners()
            elif n in LIVE + ACCOUNTS + FLOOD:
                runners.append(self.runner([self.build(n)]))
            elif n in RETRO:  # a group per shard: each shard's process sees every bank entry
                index, count = self.settings.retro_shard
                codec = BankCodec(registry_url=self.settings.schema_registry_url)
                runners.append(self.runner([self.build(n)], f"retro.shard-{index}-of-{count}", codec=codec))
            elif n in ENFORCERS:
                runners.append(self.runner([self.build(n)], "enforcer." + n.split("-", 1)[1]))
            elif n not in PIPELINE:
                raise ValueError(f"unknown stage {n!r}; known: {', '.join(STAGES)}, exchange or all")
        return runners

    def runner(self, stages: list[Stage], group: str | None = None, codec: Codec | None = None, **kw: Any) -> Runner:
        """A runner of `stages` (in consumer group `group`, named as in settings; by default
        the stages' names) that takes an unavailable Redis for what it is."""
        s = self.settings
        return Runner(
            s, stages, codec or self.codec, s.group_id(group) if group else None, unavailable=REDIS_UNAVAILABLE, **kw
        )

    def close(self) -> None:
        for follower in (self._follower, self._incident_follower, self._partner_follower, *self._event_followers):
            if follower is not None:
                follower.stop()


def run_all(runners: list[Runner]) -> None:
    """Runs the runners, extra ones in threads; returns when all have stopped."""
    if not runners:
        return
    threads = [threading.Thread(target=r.run, args=(False,), name=r.name, daemon=True) for r in runners[1:]]
    for t in threads:
        t.start()
    try:
        runners[0].run()
    finally:
        for r in runners[1:]:
            r.stop()
        for t in threads:
            t.join(30)
