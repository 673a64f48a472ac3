"""Perceptual matching through the broker: transformed copies of banked images and videos
are removed, unrelated media allowed, removed items stay removed when re-uploaded
transformed, and bad media gets a clear reason while the stage keeps going."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from PIL import ImageOps

from pipeline.app import App
from pipeline.banks.admin import bank_entry, media_entries, publish
from pipeline.config import Settings
from pipeline.sdk import ModerationProducer
from tests.media import TRANSFORMS, encode, photo, reencode_video, video
from tests.unit.test_media_safety import png_bomb

from .helpers import collect, event_ids, running, wait_banked

pytestmark = pytest.mark.integration


@pytest.fixture
def app(settings: Settings, tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "media").mkdir()
    app = App(settings.with_(media_root=str(tmp_path / "media"), media_allowed_hosts=("cdn.partner.example",)))
    yield app
    app.close()


def fused(app: App) -> list[object]:
    return [app.build(n) for n in ("enrich", "match", "classify", "decide")]


def decisions_for(settings: Settings, ids: list[str], timeout_s: float = 90) -> dict[str, dict]:  # type: ignore[type-arg]
    found = collect(settings, "decisions", lambda ds: set(ids) <= set(event_ids(ds)), timeout_s)
    return {d["envelope"]["event_id"]: d for d in found}


def test_transformed_copies_removed_unrelated_allowed(settings: Settings, app: App) -> None:
    original = photo(500)
    publish(
        settings,
        media_entries(encode(original, quality=95), "tvec", "terrorism", "critical", "gifct", "img-500"),
    )
    producer = ModerationProducer(settings)
    with running(settings, fused(app)):
        copies = {
            producer.send_upload(f"c-{name}", "u1", media=make(original)): name for name, make in TRANSFORMS.items()
        }
        unrelated = [producer.send_upload(f"c-other-{i}", "u2", media=encode(photo(600 + i))) for i in range(5)]
        producer.flush()
        decisions = decisions_for(settings, [*copies, *unrelated])
    for event_id, name in copies.items():
        d = decisions[event_id]
        assert d["action"] == "remove", name
        assert any(m["signal_type"] == "pdq" and m["bank"] == "tvec" for m in d["matches"]), name
    assert all(decisions[e]["action"] == "allow" for e in unrelated)


def test_removed_item_reuploaded_transformed_is_removed_at_upload(settings: Settings, app: App) -> None:
    image = photo(700)
    data = encode(image, quality=90)
    # A partner's exact-hash list knows this file; nothing knows its look.
    publish(
        settings,
        [bank_entry("partner-md5", "sha256", hashlib.sha256(data).hexdigest(), "terrorism", "critical", "p")],
    )
    producer = ModerationProducer(settings)
    table = app.banks()
    with running(settings, fused(app)):
        first = producer.send_upload("c-first", "u1", media=data)
        producer.flush()
        assert decisions_for(settings, [first])[first]["action"] == "remove"
        deadline = time.monotonic() + 10
        while not any(e["bank"] == "removed" and e["signal_type"] == "pdq" for e in table.entries()):
            assert time.monotonic() < deadline, "the removed item's PDQ never reached the bank"
            time.sleep(0.05)
        copy = encode(ImageOps.mirror(image).resize((400, 300)), quality=50)
        assert hashlib.sha256(copy).hexdigest() != hashlib.sha256(data).hexdigest()
        again = producer.send_upload("c-again", "u9", media=copy)
        producer.flush()
        d = decisions_for(settings, [again])[again]
    assert d["action"] == "remove"
    assert [m["bank"] for m in d["matches"] if m["signal_type"] == "pdq"] == ["removed"]


def test_bank_entry_added_while_running_applies_to_later_uploads(settings: Settings, app: App) -> None:
    image = encode(photo(800))
    producer = ModerationProducer(settings)
    with running(settings, fused(app)):
        before = producer.send_upload("c-before", "u1", media=image)
        producer.flush()
        assert decisions_for(settings, [before])[before]["action"] == "allow"
        entries = media_entries(image, "late", "violent_extremism", "high", "ops", "img-800")
        publish(settings, entries)
        wait_banked(app.banks(), entries)
        after = producer.send_upload("c-after", "u1", media=encode(photo(800), quality=40))
        producer.flush()
        assert decisions_for(settings, [after])[after]["action"] == "remove"


def test_bad_media_gets_a_reason_and_the_stage_keeps_going(settings: Settings, app: App, tmp_path: Path) -> None:
    good = encode(photo(900))
    (tmp_path / "outside.jpg").write_bytes(good)
    (tmp_path / "media" / "inside.jpg").write_bytes(good)
    producer = ModerationProducer(settings)
    cases = {
        "corrupt": {"media": b"\x00\x01\x02 not an image" * 30},
        "truncated": {"media": good[:3000]},
        "bomb": {"media": png_bomb()},
        "evil-host": {"media_uri": "http://evil.example/attack.jpg"},
        "outside-root": {"media_uri": f"file://{tmp_path}/outside.jpg"},
        "no-scheme": {"media_uri": "/etc/passwd"},
    }
    reasons = {
        "corrupt": "not a decodable image or video",
        "truncated": "truncated",
        "bomb": "decompression bomb",
        "evil-host": "not on the media allow-list",
        "outside-root": "outside the media root",
        "no-scheme": "scheme",
    }
    with running(settings, fused(app)):
        sent = {producer.send_upload(f"c-{name}", "u1", **kw): name for name, kw in cases.items()}  # type: ignore[arg-type]
        inside = producer.send_upload("c-inside", "u1", media_uri=f"file://{tmp_path}/media/inside.jpg")
        after = producer.send_upload("c-after", "u1", media=good)
        producer.flush()
        decisions = decisions_for(settings, [*sent, inside, after])
    for event_id, name in sent.items():
        d = decisions[event_id]
        assert d["action"] == "review" and d["rule_id"] == "unhashable-media", name
        assert reasons[name] in d["explanation"], (name, d["explanation"])
    assert decisions[inside]["action"] == "allow"
    assert any(s["signal_type"] == "pdq" for s in decisions[inside]["signals"])
    assert decisions[after]["action"] == "allow"


def test_reencoded_banked_video_removed_unrelated_video_allowed(settings: Settings, app: App) -> None:
    original = video(31, seconds=6)
    publish(settings, media_entries(original, "tvec-video", "terrorism", "critical", "gifct", "vid-31"))
    producer = ModerationProducer(settings)
    with running(settings, fused(app)):
        copy = producer.send_upload("c-copy", "u1", media=reencode_video(original, (240, 180)))
        other = producer.send_upload("c-other", "u2", media=video(32, seconds=6))
        producer.flush()
        decisions = decisions_for(settings, [copy, other])
    [match] = [m for m in decisions[copy]["matches"] if m["signal_type"] == "video_pdq"]
    assert decisions[copy]["action"] == "remove"
    assert match["item_id"] == "vid-31" and match["score"] >= 80
    assert decisions[other]["action"] == "allow"
