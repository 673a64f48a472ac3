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

from pipeline.banks.table import BankTable, MatchConfig
from pipeline.config import Settings
from pipeline.enforce.account import AccountEnforcer
from pipeline.enforce.consumer import EnforceStage
from pipeline.enforce.logging_enforcer import handlers as logging_handlers
from pipeline.enforce.webhook import WebhookEnforcer
from pipeline.models.registry import DEFAULT_REGISTRY, OnnxModel, Threshold, load_models, load_registry
from pipeline.policy.engine import DEFAULT_POLICY, Policy, load_policy
from pipeline.policy.incidents import IncidentTable
from pipeline.records import Stage
from pipeline.runtime.follower import BankFollower, TopicFollower
from pipeline.runtime.runner import Runner
from pipeline.serde import Codec
from pipeline.signals.fetch import MediaFetcher
from pipeline.signals.media import MediaLimits
from pipeline.stages.classify import ClassifyStage
from pipeline.stages.decide import DecideStage
from pipeline.stages.enrich import EnrichStage
from pipeline.stages.match import MatchStage
from pipeline.state.accounts import RedisAccountStore
from pipeline.state.reports import RedisReportStore

logger = logging.getLogger(__name__)

PIPELINE = ("enrich", "match", "classify", "decide")
ENFORCERS = ("enforce-log", "enforce-account", "enforce-webhook")
STAGES = PIPELINE + ENFORCERS


def connect_redis(url: str) -> Any:
    import redis

    if not url:
        raise RuntimeError("no Redis: set MODSTREAM_REDIS_URL or run `modstream dev up`")
    return redis.Redis.from_url(url, decode_responses=True)


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

    def media_limits(self) -> MediaLimits:
        return MediaLimits(
            max_bytes=self.settings.media_max_bytes,
            max_pixels=self.settings.media_max_pixels,
            min_frame_quality=self.settings.pdq_min_quality,
        )

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

    def report_store(self) -> RedisReportStore:
        return RedisReportStore(self.redis)

    def banks(self) -> BankTable:
        if self._banks is None:
            self._banks = BankTable(self.match_config())
            self._follower = BankFollower(self.settings, self.codec, self._banks)
            self._follower.start()
            self._follower.wait_caught_up()
        return self._banks

    def build(self, name: str) -> Stage:
        builders: dict[str, Callable[[], Stage]] = {
            "enrich": lambda: EnrichStage(
                RedisAccountStore(self.redis), self.fetcher(), self.media_limits(), content=self.report_store()
            ),
            "match": lambda: MatchStage(self.banks()),
            "classify": lambda: ClassifyStage(
                self.models(), self.settings.classify_skip_matched, self.settings.classify_skip_distance
            ),
            "decide": lambda: DecideStage(
                self.policy(),
                self.report_store() if self.settings.report_aggregation else None,
                removed_bank=self.settings.removed_bank,
                incident_active=self.incidents().active,
            ),
            "enforce-log": lambda: EnforceStage("log", logging_handlers(), self.settings.topic_prefix),
            "enforce-account": lambda: EnforceStage(
                "account",
                dict.fromkeys(("remove", "end_stream", "restrict"), AccountEnforcer(RedisAccountStore(self.redis))),
                self.settings.topic_prefix,
            ),
            "enforce-webhook": lambda: EnforceStage(
                "webhook",
                dict.fromkeys(("remove", "end_stream", "restrict"), WebhookEnforcer(self.settings.webhook_url)),
                self.settings.topic_prefix,
                retries=self.settings.webhook_retries,
            ),
        }
        if name not in builders:
            raise ValueError(f"unknown stage {name!r}; known: {', '.join(STAGES)} or all")
        return builders[name]()

    def runners(self, names: list[str]) -> list[Runner]:
        """One runner for the named pipeline stages (fused when several), one per enforcer."""
        if names == ["all"]:
            names = [*PIPELINE, "enforce-log", "enforce-account"]
        chain = [n for n in PIPELINE if n in names]
        runners = [Runner(self.settings, [self.build(n) for n in chain], self.codec)] if chain else []
        for n in names:
            if n in ENFORCERS:
                runners.append(
                    Runner(
                        self.settings,
                        [self.build(n)],
                        self.codec,
                        group=self.settings.group_id("enforcer." + n.split("-", 1)[1]),
                    )
                )
            elif n not in PIPELINE:
                raise ValueError(f"unknown stage {n!r}; known: {', '.join(STAGES)} or all")
        return runners

    def close(self) -> None:
        for follower in (self._follower, self._incident_follower):
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
