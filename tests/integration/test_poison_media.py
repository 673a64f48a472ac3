"""Poison through the broker: a slowloris media URL, a video that decodes too slowly and an
absurd envelope, in a batch with normal uploads. The normal ones are decided within seconds,
the poison ones get decisions (or a dead letter) that say why, and a ~1 MB inline upload is
decided with its bytes travelling by reference, not in the records between the stages."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from pipeline.app import App
from pipeline.config import Settings
from pipeline.sdk import ModerationProducer
from tests.media import encode, photo, video
from tests.models import registry_with_image_model
from tests.unit.test_media_safety import Slowloris

from .helpers import collect, event_ids, running

pytestmark = pytest.mark.integration


def padded_jpeg(size: int) -> bytes:
    """A photo padded after the JPEG's end to `size` bytes (decoders ignore the padding)."""
    data = encode(photo(4242, (640, 480)))
    return data + b"\x00" * (size - len(data))


def test_poison_media_gets_reasons_while_the_rest_is_decided(settings: Settings, tmp_path: Path) -> None:
    server = Slowloris("body")
    s = settings.with_(
        media_allowed_hosts=(f"127.0.0.1:{server.port}",),
        media_timeout_s=1.0,
        media_decode_timeout_s=1e-6,
        models=str(registry_with_image_model(tmp_path)),
    )
    app = App(s)
    big = padded_jpeg(999_000)  # its upload event just fits the 1 MB message limit
    producer = ModerationProducer(s)
    try:
        # enrich runs apart, so the enriched records go through the broker and its size limit.
        with running(s, [app.build("enrich")], [app.build(n) for n in ("match", "classify", "decide")]) as runners:
            assert all(r.ready.wait(60) for r in runners)
            started = time.monotonic()
            normal = [producer.send_upload(f"c-ok-{i}", "u1", media=encode(photo(1300 + i))) for i in range(3)]
            slow = producer.send_upload("c-slow", "u2", media_uri=f"http://127.0.0.1:{server.port}/slow.jpg")
            slow_video = producer.send_upload("c-video", "u3", media=video(13, seconds=2))
            large = producer.send_upload("c-large", "u4", media=big)
            absurd = producer.send_report("c-ok-0", "r1", "terrorism", occurred_at=2**63 - 1)
            after = producer.send_report("c-ok-1", "r2", "terrorism")
            producer.flush()
            collect(s, "decisions", lambda ds: set(normal) <= set(event_ids(ds)), 60)
            normal_s = time.monotonic() - started
            wanted = {*normal, slow, slow_video, large, after}
            found = collect(s, "decisions", lambda ds: wanted <= set(event_ids(ds)), 60)
            letters = collect(s, "dlq", lambda ls: any(x["stage"] == "enrich" for x in ls), 30)
            enriched = collect(s, "enriched", lambda rs: large in event_ids(rs), 30)
    finally:
        server.close()
        app.close()
    d = {x["envelope"]["event_id"]: x for x in found}
    assert normal_s < 30, normal_s  # seconds, not a stalled stage (generous: a shared, slow machine)
    for eid in normal:
        assert d[eid]["action"] == "allow"
    for eid, reason in ((slow, "did not finish within"), (slow_video, "video decoding exceeded 1e-06 s")):
        assert d[eid]["action"] == "review" and d[eid]["rule_id"] == "unhashable-media"
        assert reason in d[eid]["explanation"], d[eid]["explanation"]
    assert {x["signal_type"] for x in d[slow_video]["signals"]} >= {"md5", "sha256"}
    assert d[after]["action"] == "pending" and absurd not in d
    [letter] = [x for x in letters if x["stage"] == "enrich"]
    assert letter["topic"] == s.topic("reports")
    assert f"envelope.occurred_at {2**63 - 1} is beyond the year 9999" in letter["error"]
    # The large upload: decided, its bytes by reference, and seen by the image model through the store.
    digest = hashlib.sha256(big).hexdigest()
    assert d[large]["action"] == "allow"
    assert any(x["signal_type"] == "sha256" and x["value"] == digest for x in d[large]["signals"])
    assert any(x["model"] == "brightness" for x in d[large]["scores"])
    [record] = [r for r in enriched if r["envelope"]["event_id"] == large]
    assert record["upload"]["media_b64"] is None
    assert record["media_ref"] == "sha256:" + digest
