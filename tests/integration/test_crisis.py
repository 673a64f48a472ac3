"""The crisis protocol through the broker: declaring an incident with seed media removes a
transformed copy uploaded a second later, naming the incident, and a copy uploaded before
the declaration retroactively; the partner platform removes
its own copy; closing restores the normal policy; a news clip in a benign bank goes to review
though its frames are near a banked clip."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from PIL import ImageOps

from pipeline.banks.admin import media_entries, publish
from pipeline.config import Settings
from pipeline.exchange.admin import add_partner
from pipeline.exchange.signing import keygen
from pipeline.policy.crisis import close, declare
from pipeline.runtime.topics import create_topics
from pipeline.sdk import ModerationProducer
from tests.media import encode, photo, reencode_video, video

from .helpers import collect
from .test_exchange import decision_for, platform

pytestmark = pytest.mark.integration

TEXT = "Our brothers will strike the parliament soon, be ready."  # between the review and remove scores


def test_an_incident_is_declared_shared_and_closed(settings: Settings, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    for name in ("pa", "pb"):
        keygen(tmp_path / f"{name}.key", tmp_path / f"{name}.pub")
    a = settings.with_(
        topic_prefix=f"a{run}.",
        platform_id="pa",
        exchange_topic=f"x{run}.exchange",
        exchange_private_key=str(tmp_path / "pa.key"),
    )
    b = a.with_(topic_prefix=f"b{run}.", platform_id="pb", exchange_private_key=str(tmp_path / "pb.key"))
    for s in (a, b):
        create_topics(s)
    add_partner(b, "pa", (tmp_path / "pa.pub").read_text(), "auto")
    seed_image = photo(5151)
    seed = tmp_path / "attack.jpg"
    seed.write_bytes(encode(seed_image, quality=92))
    copy = encode(ImageOps.mirror(seed_image).resize((480, 360)), quality=65)

    early_copy = encode(seed_image.resize((560, 420)), quality=75)  # uploaded before anyone knew
    with platform(a, "retro"), platform(b):
        with ModerationProducer(a) as producer:
            calm = producer.send_upload(f"calm-{run}", "u1", text=TEXT)
            early = producer.send_upload(f"early-{run}", "u3", media=early_copy)
        assert decision_for(a, calm)["rule_id"] == "classifier-review-extremism"
        assert decision_for(a, early)["action"] == "allow"

        incident, banked = declare(a, "attack footage", "terrorism", media=[seed], reason="test")
        assert banked >= 3  # exact hashes, PDQ and its dihedral variants
        time.sleep(1.0)
        with ModerationProducer(a) as producer:
            copied = producer.send_upload(f"copy-{run}", "u2", media=copy)
            tense = producer.send_upload(f"tense-{run}", "u1", text=TEXT)
        d = decision_for(a, copied)
        assert d["action"] == "remove" and d["incident_id"] == incident["incident_id"]
        assert any(m["bank"] == f"incident.{incident['incident_id']}" for m in d["matches"])
        t = decision_for(a, tense)  # the policy tightens: urgent review, never a removal on a score alone
        assert (t["rule_id"], t["incident_id"]) == ("crisis-classifier-review", incident["incident_id"])

        # The copy uploaded before the declaration is taken down retroactively, naming the incident.
        found_retro = collect(
            a,
            "decisions",
            lambda ds: any(
                x["envelope"]["content_id"] == f"early-{run}" and x["rule_id"] == "retroactive-match" for x in ds
            ),
            60,
        )
        [retro] = [
            x
            for x in found_retro
            if x["envelope"]["content_id"] == f"early-{run}" and x["rule_id"] == "retroactive-match"
        ]
        assert retro["action"] == "remove" and retro["incident_id"] == incident["incident_id"]

        # The partner learnt the incident's hashes at once: its own copy is removed, naming the incident.
        deadline, found = time.monotonic() + 30, None
        while found is None and time.monotonic() < deadline:
            with ModerationProducer(b) as producer:
                sent = producer.send_upload(f"b-copy-{uuid.uuid4().hex[:6]}", "b-user", media=copy)
            d = decision_for(b, sent)
            found = d if d["action"] == "remove" else None
            time.sleep(0.5)
        assert found is not None and found["incident_id"] == incident["incident_id"]
        assert any(m["bank"] == "partner.pa" for m in found["matches"])

        close(a, incident["incident_id"])
        # decide follows the incidents topic: once it has read the close, the normal policy is back
        deadline, d = time.monotonic() + 30, None
        while time.monotonic() < deadline and (d is None or d["incident_id"] is not None):
            with ModerationProducer(a) as producer:
                after = producer.send_upload(f"after-{uuid.uuid4().hex[:6]}", "u1", text=TEXT)
            d = decision_for(a, after)
        assert d is not None and d["rule_id"] == "classifier-review-extremism" and d["incident_id"] is None


def test_a_news_clip_in_a_benign_bank_goes_to_review(settings: Settings) -> None:
    attack = video(61, seconds=8)
    news = reencode_video(attack, (256, 192))  # the same footage, broadcast by a news channel
    publish(settings, media_entries(attack, "tvec", "terrorism", "critical", "test", "attack"))
    publish(settings, media_entries(news, "benign.news", "news", "low", "test", "news-clip"))
    with platform(settings):
        with ModerationProducer(settings) as producer:
            sent = producer.send_upload("news-upload", "journalist", media=reencode_video(news, (240, 180)))
        d = decision_for(settings, sent)
    assert d["action"] == "review" and d["rule_id"] == "benign-match"
    banks = {m["bank"] for m in d["matches"]}
    assert {"tvec", "benign.news"} <= banks  # near the banked clip, and named benign
