"""The live path through the broker and Redis: a re-broadcast of a banked video is ended once
(one end_stream decision, one strike) even across a SIGKILL of the live process between its
acknowledged outputs and its offset commit; benign footage runs; accounts gate `started`
(identity, suspension) as the platform changes them; frames after the end are not judged.

The live stage runs as production runs it (`App(settings).build("live")`, its own consumer
group), the account state changes through the accounts stage (AccountEvents from the SDK), and
strikes come from the account enforcer reading mod.decisions.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.app import App, connect_redis
from pipeline.config import Settings
from pipeline.records import Record, record_key
from pipeline.runtime.reader import read_all
from pipeline.sdk import ModerationProducer
from pipeline.signals.media import MediaLimits, media_signals
from pipeline.state.accounts import PREFIX as ACCOUNT_PREFIX
from pipeline.state.streams import PREFIX as STREAM_PREFIX
from tests.media import encode, frames_of, photo, reencode_video, video

from ..conftest import settings_env
from .helpers import committed_through, end_offsets, running, services, wait_for

pytestmark = pytest.mark.integration

ITEM = "attack-video"

# The live stage in a child process, SIGKILLed at the first offset commit after the batch that
# ended a stream: that batch's outputs are flushed (acknowledged) and its offsets not committed,
# so whoever takes over gets the same frames again.
KILLER = textwrap.dedent("""
    import os, signal, sys
    from pipeline.app import App
    from pipeline.config import Settings
    from pipeline.runtime.runner import Runner

    app = App(Settings.from_env())
    stage = app.build("live")
    ended = []
    judge = stage.process

    def process(batch):
        out = judge(batch)
        ends = [o.value for o in out if o.topic == "decisions" and o.value and o.value["action"] == "end_stream"]
        if ends:
            ended.append([(r.partition, r.offset) for r in batch])
        return out

    stage.process = process

    def crash():
        if ended:
            left = runner._producer.flush(30)
            print(f"killer: end batch at {ended[0]}, {left} outputs unacknowledged", file=sys.stderr, flush=True)
            if left == 0:
                os.kill(os.getpid(), signal.SIGKILL)

    runner = Runner(app.settings, [stage], app.codec, before_commit=crash)
    runner.run()
""")


# ---- media -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def media() -> dict[str, Any]:
    """A banked video (its vPDQ frame hashes), its re-broadcast (re-encoded, rescaled, one JPEG a
    second), benign photos and the frames of other generated videos."""
    clip = video(7, seconds=12, scene_seconds=2)
    hashes = [s["value"] for s in media_signals(clip, MediaLimits()) if s["signal_type"] == "video_pdq"]
    return {
        "hashes": hashes,
        "copy": frames_of(reencode_video(clip, (480, 360))),
        "benign": [encode(photo(900 + i, (640, 360)), quality=80) for i in range(4)],
        "others": [
            frames_of(reencode_video(video(seed, seconds=12, scene_seconds=2), (480, 360))) for seed in (31, 32)
        ],
    }


def bank_video(producer: ModerationProducer, hashes: list[str]) -> None:
    for value in hashes:
        entry = {
            "bank": "tvec",
            "signal_type": "video_pdq",
            "hash": value,
            "category": "terrorism",
            "severity": "critical",
            "source": "test",
            "added_at": 0,
            "item_id": ITEM,
        }
        producer.send("banks", entry, key=record_key("banks", entry))
    producer.flush()


# ---- helpers -----------------------------------------------------------------------------------
def caught_up(settings: Settings, group: str, topic: str) -> Callable[[], bool]:
    """True once `group` has committed every record of `topic` produced so far."""
    ends = end_offsets(settings, topic)
    return lambda: committed_through(settings, group, topic, ends)


def of_stream(settings: Settings, stream_id: str) -> list[Record]:
    return [d for d in read_all(settings, "decisions") if d["envelope"]["stream_id"] == stream_id]


def ends_of(decisions: list[Record]) -> list[Record]:
    return [d for d in decisions if d["action"] == "end_stream"]


def uid(settings: Settings, what: str) -> str:
    return f"{settings.topic_prefix}{what}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis(settings: Settings) -> Iterator[Any]:
    """Redis; the test's accounts and streams are named after its topic prefix, deleted after it."""
    client = connect_redis(settings.redis_url)
    yield client
    for prefix in (ACCOUNT_PREFIX, STREAM_PREFIX):
        left = list(client.scan_iter(prefix + settings.topic_prefix + "*", count=50_000))
        if left:
            client.delete(*left)


def account_update(settings: Settings, redis: Any, producer: ModerationProducer, user: str, kind: str) -> None:
    """Sends an AccountEvent and waits until the accounts stage applied it."""
    event_id = producer.send_account_update(user, kind, actor="platform")
    producer.flush()
    wait_for(lambda: bool(redis.sismember(ACCOUNT_PREFIX + user + ":events", event_id)), what=f"{kind} applied")


def stream(
    producer: ModerationProducer, sid: str, user: str, frames: list[bytes], start: int = 0, started: bool = True
) -> list[str]:
    """Sends `started` (unless not) and the frames; returns the event ids sent."""
    ids = [producer.send_live_started(sid, user, title="my stream")] if started else []
    ids += [producer.send_live_frame(sid, user, start + i, f) for i, f in enumerate(frames)]
    producer.flush()
    return ids


# ---- tests -----------------------------------------------------------------------------------
def test_a_rebroadcast_is_ended_once_with_one_strike_across_a_sigkill(
    settings: Settings, redis: Any, media: dict[str, Any], tmp_path: Path
) -> None:
    producer = ModerationProducer(settings)
    bank_video(producer, media["hashes"])
    user, sid = uid(settings, "streamer"), uid(settings, "stream")
    log, killer = tmp_path / "live.log", tmp_path / "killer.py"
    killer.write_text(KILLER)
    env = settings_env(settings) | {"MODSTREAM_BATCH_SIZE": "3"}
    frames = media["benign"] + media["copy"]

    with services(settings, "accounts", "enforce-account"):
        account_update(settings, redis, producer, user, "identity_verified")
        stream(producer, sid, user, frames)

        crashed = subprocess.Popen(
            [sys.executable, str(killer)], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
        )
        assert crashed.wait(180) == -signal.SIGKILL, log.read_text()
        [first] = ends_of(of_stream(settings, sid))  # emitted, acknowledged, offsets not committed
        assert (first["rule_id"], first["envelope"]["user_id"]) == ("bank-match-live", user)
        assert any(m["signal_type"] == "video_pdq" and m["item_id"] == ITEM for m in first["matches"])
        ended_at = int(first["explanation"].split("ended at frame ")[1].split(":")[0])
        assert len(media["benign"]) <= ended_at <= len(media["benign"]) + 8, first["explanation"]

        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "--log-level", "WARNING", "run", "live"],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(caught_up(settings, settings.group_id("live"), "live"), 120, "the live group to catch up")
            # The platform keeps sending frames of the ended stream (the copy again, and benign
            # ones): none is judged, none gets a decision.
            late = stream(producer, sid, user, media["copy"] + media["benign"], start=len(frames), started=False)
            wait_for(caught_up(settings, settings.group_id("live"), "live"), 60, "the late frames")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        assert code == 0, log.read_text()
        group = settings.group_id("enforcer.account")
        wait_for(caught_up(settings, group, "decisions"), 60, "the account enforcer")
    decisions = of_stream(settings, sid)
    ends = ends_of(decisions)
    assert {d["decision_id"] for d in ends} == {first["decision_id"]}  # one end, however often emitted
    assert {d["envelope"]["event_id"] for d in ends} == {first["envelope"]["event_id"]}
    assert not {d["envelope"]["event_id"] for d in decisions} & set(late)  # frames after the end: nothing
    assert {d["action"] for d in decisions} == {"allow", "end_stream"}
    account = redis.hgetall(ACCOUNT_PREFIX + user)
    assert account["strikes"] == "1", account
    assert account["live_suspended"] == "1"  # bank-match-live: one strike suspends live access
    # The frame that ended the stream, redelivered to `modstream run live`, emits the same
    # decision again (outputs lost in a crash are never lost for good), and is no dead letter.
    dead = read_all(settings, "dlq")
    assert dead == [], [(d["offset"], d["error"]) for d in dead]
    assert len(ends) == 2, ends


def test_benign_streams_are_never_ended(settings: Settings, redis: Any, media: dict[str, Any]) -> None:
    producer = ModerationProducer(settings)
    bank_video(producer, media["hashes"])
    user = uid(settings, "streamer")
    sids = [uid(settings, "benign") for _ in media["others"]]
    with services(settings, "accounts", "live"):
        account_update(settings, redis, producer, user, "identity_verified")
        for sid, frames in zip(sids, media["others"], strict=True):
            stream(producer, sid, user, media["benign"] + frames)
            producer.send_live_ended(sid, user)
        producer.flush()
        wait_for(caught_up(settings, settings.group_id("live"), "live"), 90, "the live group")
    for sid in sids:
        assert [(d["action"], d["kind"]) for d in of_stream(settings, sid)] == [("allow", "live")]
        assert redis.hget(STREAM_PREFIX + sid, "status") == "closed"
        assert redis.hlen(STREAM_PREFIX + sid + ":frames") >= len(media["others"][0]) // 2  # judged, kept


def test_unverified_then_verified(settings: Settings, redis: Any, media: dict[str, Any]) -> None:
    producer = ModerationProducer(settings)
    bank_video(producer, media["hashes"])
    user = uid(settings, "newcomer")
    refused, later = uid(settings, "refused"), uid(settings, "later")
    with services(settings, "accounts", "live"):
        # Never verified: the stream is refused at `started`, and its frames (even a banked
        # video's) are not judged: one decision for the stream, no strike.
        started = stream(producer, refused, user, media["copy"])[0]
        wait_for(caught_up(settings, settings.group_id("live"), "live"), 90, "the live group")
        [d] = of_stream(settings, refused)
        assert (d["action"], d["rule_id"], d["effects"]) == ("end_stream", "live-unverified", [])
        assert d["envelope"]["event_id"] == started

        account_update(settings, redis, producer, user, "identity_verified")
        stream(producer, later, user, media["benign"])
        wait_for(caught_up(settings, settings.group_id("live"), "live"), 90, "the live group")
    assert [d["action"] for d in of_stream(settings, later)] == ["allow"]
    assert len(of_stream(settings, refused)) == 1
    assert int(redis.hget(ACCOUNT_PREFIX + user, "strikes") or 0) == 0


def test_suspended_then_lifted(settings: Settings, redis: Any, media: dict[str, Any]) -> None:
    producer = ModerationProducer(settings)
    user = uid(settings, "suspended")
    refused, later = uid(settings, "refused"), uid(settings, "later")
    with services(settings, "accounts", "live"):
        account_update(settings, redis, producer, user, "identity_verified")
        account_update(settings, redis, producer, user, "live_suspended")
        stream(producer, refused, user, media["benign"])
        wait_for(caught_up(settings, settings.group_id("live"), "live"), 90, "the live group")
        [d] = of_stream(settings, refused)
        assert (d["action"], d["rule_id"]) == ("end_stream", "live-suspended")

        account_update(settings, redis, producer, user, "live_lifted")
        stream(producer, later, user, media["benign"])
        stream(producer, refused, user, media["benign"], start=len(media["benign"]), started=False)  # still over
        wait_for(caught_up(settings, settings.group_id("live"), "live"), 90, "the live group")
    assert [d["action"] for d in of_stream(settings, later)] == ["allow"]
    assert len(of_stream(settings, refused)) == 1


def test_a_replayed_refusal_is_emitted_again(settings: Settings, redis: Any) -> None:
    """A redelivery of the event that ended a stream (here a refused `started`, read again by a
    new consumer group) emits the same decision again, as the stage's contract says."""
    producer = ModerationProducer(settings)
    user, sid = uid(settings, "newcomer"), uid(settings, "refused")
    with services(settings, "live"):
        stream(producer, sid, user, [])
        wait_for(caught_up(settings, settings.group_id("live"), "live"), 90, "the live group")
    [d] = of_stream(settings, sid)
    assert (d["action"], d["rule_id"]) == ("end_stream", "live-unverified")
    app = App(settings)
    try:
        with running(settings, [app.build("live")], codec=app.codec, group=settings.group_id("live-replay")):
            wait_for(caught_up(settings, settings.group_id("live-replay"), "live"), 90, "the replay")
    finally:
        app.close()
    dead = read_all(settings, "dlq")
    assert dead == [], [(d["offset"], d["error"]) for d in dead]
    assert [x["decision_id"] for x in of_stream(settings, sid)] == [d["decision_id"]] * 2
