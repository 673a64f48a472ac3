"""The command line through the broker: topics, produce and tail in JSON, run, dev services, demo."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.dev.services import free_port
from pipeline.records import dead_letter_value, envelope, record_key
from pipeline.runtime.reader import read_all
from pipeline.sdk import ModerationProducer
from pipeline.serde import Codec

from ..conftest import settings_env

pytestmark = pytest.mark.integration


def cli(settings: Settings, *args: str, stdin: str = "", timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "--log-level", "WARNING", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=settings_env(settings),
        timeout=timeout,
    )


def test_topics_create_is_idempotent_and_compacts_banks(settings: Settings) -> None:
    from confluent_kafka.admin import AdminClient, ConfigResource

    out = cli(settings, "topics", "create")
    assert out.returncode == 0, out.stderr
    assert f"{settings.topic('banks')}\texists" in out.stdout  # the fixture created them already
    admin = AdminClient(settings.admin_config())
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.topic("banks"))
    configs = admin.describe_configs([resource])[resource].result()
    assert configs["cleanup.policy"].value == "compact"


def test_produce_json_run_and_tail(settings: Settings, tmp_path: Path) -> None:
    media = b"banned by the cli test" * 10
    import hashlib

    bank_line = json.dumps(
        {
            "bank": "cli",
            "signal_type": "sha256",
            "hash": hashlib.sha256(media).hexdigest(),
            "category": "terrorism",
            "severity": "high",
            "source": "cli",
            "added_at": 1,
        }
    )
    assert cli(settings, "produce", "banks", stdin=bank_line + "\n").returncode == 0
    upload = {
        "envelope": {
            "event_id": "e-cli-1",
            "platform_id": "p",
            "occurred_at": int(time.time() * 1000),
            "content_id": "c-cli-1",
            "user_id": "u",
        },
        "media_b64": base64.b64encode(media).decode(),
    }
    bad = {"envelope": {"event_id": "e-cli-2", "platform_id": "p", "occurred_at": 1}, "surprise": 1}
    out = cli(settings, "produce", "uploads", stdin=json.dumps(bad) + "\n")
    assert out.returncode != 0 and "unknown field(s) ['surprise']" in out.stderr
    out = cli(settings, "produce", "uploads", stdin=json.dumps(upload) + "\n")
    assert out.returncode == 0, out.stderr

    log = (tmp_path / "run.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "all"],
        env=settings_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        out = cli(settings, "tail", "decisions", "--from-beginning", "--max", "1", "--timeout", "60")
        assert out.returncode == 0, out.stderr
        decision = json.loads(out.stdout.splitlines()[0])
        results = cli(settings, "tail", "enforcement.results", "--from-beginning", "--max", "1", "--timeout", "60")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert decision["envelope"]["event_id"] == "e-cli-1"
    assert decision["action"] == "remove"
    assert decision["matches"][0]["bank"] == "cli"
    assert json.loads(results.stdout.splitlines()[0])["decision_id"] == decision["decision_id"]
    # the JSON form round-trips: tail's output is valid produce input
    upload_json = cli(settings, "tail", "uploads", "--from-beginning", "--max", "1", "--timeout", "10").stdout
    assert json.loads(upload_json)["media_b64"] == upload["media_b64"]


def test_dev_up_status_down(settings: Settings, tmp_path: Path) -> None:
    env_settings = settings.with_(bootstrap_servers="", redis_url="", state_dir=tmp_path / "state")

    def dev(*args: str) -> subprocess.CompletedProcess[str]:
        env = settings_env(env_settings)
        del env["MODSTREAM_BOOTSTRAP_SERVERS"]
        env.pop("MODSTREAM_REDIS_URL", None)
        return subprocess.run(
            [sys.executable, "-m", "pipeline", "dev", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    up = dev("up")
    try:
        assert up.returncode == 0, up.stderr
        assert "broker 127.0.0.1:" in up.stdout
        status = dev("status")
        assert status.returncode == 0 and "pid" in status.stdout
        assert dev("up").stdout == up.stdout  # idempotent: the same services
    finally:
        assert dev("down").stdout.strip() == "stopped"
    assert dev("status").returncode == 1


def test_demo_prints_decisions(settings: Settings, tmp_path: Path) -> None:
    env = settings_env(settings.with_(state_dir=tmp_path / "state"))
    del env["MODSTREAM_BOOTSTRAP_SERVERS"]
    env.pop("MODSTREAM_REDIS_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "--log-level", "WARNING", "demo"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("REMOVE") == 2
    assert "ALLOW" in out.stdout and "REVIEW" in out.stdout
    assert "demo complete" in out.stdout


def test_produce_fills_the_envelope_and_refuses_oversized_records_cleanly(settings: Settings) -> None:
    line = {"envelope": {"content_id": "c-minimal", "user_id": "u1"}, "text": "hello"}
    out = cli(settings, "produce", "uploads", stdin=json.dumps(line) + "\n")
    assert out.returncode == 0, out.stderr
    tailed = cli(settings, "tail", "uploads", "--from-beginning", "--max", "1", "--timeout", "10").stdout
    env = json.loads(tailed)["envelope"]
    assert env["event_id"] and env["platform_id"] == "local" and env["occurred_at"] > 0
    assert env["content_id"] == "c-minimal"

    huge = {"envelope": {"content_id": "c-huge"}, "text": "x" * 1_200_000}
    out = cli(settings, "produce", "uploads", stdin=json.dumps(huge) + "\n")
    assert out.returncode == 1
    assert "over the message limit" in out.stderr and "Traceback" not in out.stderr


def test_run_processes_starts_members_of_one_group(settings: Settings, tmp_path: Path) -> None:
    import urllib.request

    from pipeline.dev.services import free_port
    from pipeline.sdk import ModerationProducer

    port = free_port()
    while port + 1 == free_port():  # the second member listens on port + 1
        port = free_port()
    log = (tmp_path / "members.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--processes", "2", "enrich"],
        env=settings_env(settings) | {"MODSTREAM_METRICS_PORT": str(port)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def assigned(member_port: int) -> set[str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{member_port}/health", timeout=2) as r:
                return {p for runner in json.loads(r.read())["runners"] for p in runner["assigned"]}
        except OSError:
            return set()

    try:
        with ModerationProducer(settings) as producer:
            sent = {producer.send_upload(f"c{i}", "u", text=f"post {i}") for i in range(30)}
        out = cli(settings, "tail", "enriched", "--from-beginning", "--max", "30", "--timeout", "60")
        deadline = time.monotonic() + 60
        members = [assigned(port), assigned(port + 1)]
        every = 2 * settings.partitions  # uploads and reports (live events take the live path)
        while not (all(members) and len(members[0] | members[1]) == every) and time.monotonic() < deadline:
            time.sleep(0.5)
            members = [assigned(port), assigned(port + 1)]
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    assert all(members) and not members[0] & members[1]  # both members hold partitions, none twice
    assert len(members[0] | members[1]) == every
    assert {json.loads(line)["envelope"]["event_id"] for line in out.stdout.splitlines()} == sent


def test_escalate_says_when_redis_does_not_answer(settings: Settings) -> None:
    away = settings.with_(redis_url=f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    out = cli(away, "escalate", "--once")
    assert out.returncode == 1
    assert "a store does not answer (ConnectionError" in out.stderr and "Traceback" not in out.stderr


def test_dlq_replay_puts_selected_letters_back_where_they_came_from(settings: Settings) -> None:
    codec = Codec()
    uploads = settings.topic("uploads")
    event = {"envelope": envelope(settings.platform_id, content_id="c-back", event_id="e-back"), "text": "hi"}
    raw = codec.encode("UploadEvent", event)
    letters = [
        dead_letter_value(uploads, 1, 7, b"c-back", raw, "decide", "process", "RuntimeError: a bug"),
        dead_letter_value(uploads, 1, 8, b"c-big", b"x" * 200, "decide", "process", "too big", keep=100),
        dead_letter_value("elsewhere.uploads", 0, 1, b"c-far", raw, "decide", "process", "not ours"),
        dead_letter_value(uploads, 2, 3, b"c-other", raw, "enrich", "process", "another stage"),
    ]
    producer = ModerationProducer(settings)
    for letter in letters:
        producer.send("dlq", letter, key=record_key("dlq", letter))
    producer.flush()

    dry = cli(settings, "dlq", "replay", "--stage", "decide", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would replay 1 to {uploads}" in dry.stdout and "1 not selected" in dry.stdout
    assert "skipped 1: value too large to have been kept whole" in dry.stdout
    assert "skipped 1: topic elsewhere.uploads is not one of this deployment's" in dry.stdout
    assert read_all(settings, "uploads") == []

    done = cli(settings, "dlq", "replay", "--stage", "decide", "--kind", "process", "--since", "2020-01-01")
    assert done.returncode == 0, done.stderr
    assert f"replayed 1 to {uploads}" in done.stdout
    assert [r["envelope"]["event_id"] for r in read_all(settings, "uploads")] == ["e-back"]
    assert "replayed 0; 4 not selected" in cli(settings, "dlq", "replay", "--since", "2999-01-01").stdout
    assert cli(settings, "dlq", "replay", "--since", "yesterday").returncode == 2


def test_tail_says_when_the_schema_registry_does_not_answer(settings: Settings) -> None:
    producer = ModerationProducer(settings)
    producer.send_upload("c-1", "u1", text="hello")
    producer.flush()
    away = settings.with_(schema_registry_url=f"http://127.0.0.1:{free_port()}")  # nothing listens there
    out = cli(away, "tail", "uploads", "--from-beginning", "--max", "1", "--timeout", "10")
    assert out.returncode == 1
    assert "RegistryUnavailable: schema registry" in out.stderr and "Traceback" not in out.stderr
