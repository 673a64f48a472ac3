"""Test services. Kafka, in order: a cluster named by MODSTREAM_TEST_BOOTSTRAP_SERVERS, Docker
through testcontainers when Docker works, else the embedded Tansu broker. Redis: the one at
MODSTREAM_TEST_REDIS_URL (or MODSTREAM_REDIS_URL) if it answers, else the embedded one."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.dev import services


def _docker_works() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="modstream-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def broker_kind() -> str:
    """external (MODSTREAM_TEST_BOOTSTRAP_SERVERS), docker (testcontainers) or embedded (Tansu)."""
    if os.environ.get("MODSTREAM_TEST_BOOTSTRAP_SERVERS"):
        return "external"
    return "docker" if _docker_works() else "embedded"


@pytest.fixture(scope="session")
def bootstrap(workdir: Path, broker_kind: str) -> Iterator[str]:
    if broker_kind == "external":
        yield os.environ["MODSTREAM_TEST_BOOTSTRAP_SERVERS"]
    elif broker_kind == "docker":
        try:
            from testcontainers.kafka import KafkaContainer
        except ImportError:  # testcontainers >= 4.15 moved it
            from testcontainers.community.kafka import KafkaContainer  # type: ignore[no-redef]

        with KafkaContainer().with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
    else:
        proc, address = services.start_broker(workdir / "broker.log")
        yield address
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="session")
def redis_url(workdir: Path) -> Iterator[str]:
    for name in ("MODSTREAM_TEST_REDIS_URL", "MODSTREAM_REDIS_URL"):
        url = os.environ.get(name, "")
        if url and services.redis_answers(url):
            yield url
            return
    proc, url = services.start_redis(workdir / "redis")
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def settings(bootstrap: str, redis_url: str, workdir: Path, broker_kind: str) -> Settings:
    """Settings for one test: its own topic prefix (so tests never see each other's
    records), topics created, a short session timeout for fast group joins."""
    from pipeline.runtime.topics import create_topics

    s = Settings(
        bootstrap_servers=bootstrap,
        redis_url=redis_url,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        partitions=3,
        session_timeout_ms=services.EMBEDDED_SESSION_TIMEOUT_MS,
        fetch_wait_max_ms=services.EMBEDDED_FETCH_WAIT_MAX_MS if broker_kind == "embedded" else 500,
        batch_timeout_s=0.05,
        instance_id="test",
        # Clients a test leaves behind would log connection errors once the broker stops at the
        # end of the session, burying pytest's summary: keep librdkafka to critical messages.
        kafka_extra={"log_level": "2"},
        state_dir=workdir / "state",
    )
    create_topics(s)
    return s


def settings_env(s: Settings) -> dict[str, str]:
    """The environment that gives a subprocess the same settings."""
    return {
        **os.environ,
        "MODSTREAM_BOOTSTRAP_SERVERS": s.bootstrap_servers,
        "MODSTREAM_REDIS_URL": s.redis_url,
        "MODSTREAM_TOPIC_PREFIX": s.topic_prefix,
        "MODSTREAM_PARTITIONS": str(s.partitions),
        "MODSTREAM_SESSION_TIMEOUT_MS": str(s.session_timeout_ms),
        "MODSTREAM_FETCH_WAIT_MAX_MS": str(s.fetch_wait_max_ms),
        "MODSTREAM_INSTANCE_ID": s.instance_id,
        "MODSTREAM_GUARANTEE": s.guarantee,
        "MODSTREAM_STATE_DIR": str(s.state_dir),
        "MODSTREAM_BATCH_SIZE": str(s.batch_size),
        "MODSTREAM_MODELS": s.models,
        "MODSTREAM_POLICY": s.policy,
        "MODSTREAM_SCHEMA_REGISTRY_URL": s.schema_registry_url,
    }
