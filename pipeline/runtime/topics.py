"""Creating the topics of the topic map (idempotent): banks, incidents and partners compacted,
audit records kept until an operator decides otherwise (not for the broker's default week)."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.config import COMPACTED, TOPICS, Settings

logger = logging.getLogger(__name__)

TOPIC_CONFIG = {"audit": {"retention.ms": "-1"}}


def create_topics(settings: Settings, timeout_s: float = 30.0) -> dict[str, str]:
    """Creates every missing topic; returns {topic: "created" | "exists"}."""
    result = _create(settings, [t for t in TOPICS if t != "exchange"], timeout_s)
    return result | _create(settings.exchange_cluster(), ["exchange"], timeout_s)  # on the partners' cluster


def _create(settings: Settings, topics: list[str], timeout_s: float) -> dict[str, str]:
    admin = AdminClient(settings.admin_config())
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = []
    for short in topics:
        name = settings.topic(short)
        if name in existing:
            continue
        config = {"cleanup.policy": "compact"} if short in COMPACTED else {}
        config.update(TOPIC_CONFIG.get(short, {}))
        wanted.append(NewTopic(name, settings.partitions, settings.replication_factor, config=config))
    result = {settings.topic(s): "exists" for s in topics}
    if not wanted:
        return result
    for name, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result()
            result[name] = "created"
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    return result
