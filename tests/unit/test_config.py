from __future__ import annotations

import pytest

from pipeline.config import Settings


def test_settings_from_env() -> None:
    s = Settings.from_env(
        {
            "MODSTREAM_BOOTSTRAP_SERVERS": "k:9092",
            "MODSTREAM_TOPIC_PREFIX": "x.",
            "MODSTREAM_GUARANTEE": "exactly-once",
            "MODSTREAM_PARTITIONS": "12",
            "MODSTREAM_KAFKA_EXTRA": '{"sasl.password": "hunter2", "security.protocol": "SASL_SSL"}',
            "MODSTREAM_REDIS_URL": "redis://user:pw@r:6379/0",
        }
    )
    assert s.topic("uploads") == "x.uploads" and s.partitions == 12 and s.exactly_once
    assert s.producer_config("tx")["transactional.id"] == "tx"
    assert s.consumer_config("g")["security.protocol"] == "SASL_SSL"
    printable = str(s.redacted())
    assert "hunter2" not in printable and "pw@" not in printable


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="GUARANTEE"):
        Settings.from_env({"MODSTREAM_GUARANTEE": "maybe-once"})
    with pytest.raises(KeyError, match="unknown topic"):
        Settings().topic("nope")
