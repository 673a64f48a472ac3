"""Two platforms on one broker (two topic prefixes, two platform ids, two key pairs) sharing an
exchange topic: what A removes, B removes within seconds; forged, unsigned, replayed and
removed-partner signals are refused; a review-trust partner's hash sends B's match to
review; B's dispute reaches A; A's retraction leaves B's banks; nothing that leaves A names
content or users."""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import ImageOps

from pipeline.app import App, connect_redis, run_all
from pipeline.config import Settings
from pipeline.exchange.admin import add_partner, remove_partner, retract
from pipeline.exchange.partners import RedisPartnerCounts
from pipeline.exchange.signing import keygen, load_private, sign
from pipeline.records import now_ms, record_key
from pipeline.runtime.reader import read_table, read_topic
from pipeline.runtime.topics import create_topics
from pipeline.sdk import ModerationProducer
from pipeline.signals.media import MediaLimits, media_signals
from tests.media import encode, photo

from .helpers import collect, event_ids

pytestmark = pytest.mark.integration

ALLOWED_FIELDS = {
    "kind", "signal_type", "hash", "category", "severity", "platform_id", "incident_id", "about_platform",
    "signed_at", "signature",
}  # fmt: skip


@contextmanager
def platform(settings: Settings, *extra: str) -> Iterator[App]:
    """One platform's modstream: the pipeline fused plus the exchange (when it has a key) and
    any `extra` stages, in threads."""
    app = App(settings)
    names = ["enrich", "match", "classify", "decide", *extra] + ["exchange"] * bool(settings.exchange_private_key)
    runners = app.runners(names)
    thread = threading.Thread(target=run_all, args=(runners,), daemon=True)
    thread.start()
    try:
        for r in runners:
            assert r.ready.wait(60), f"{r.name} got no partitions"
        yield app
    finally:
        for r in runners:
            r.stop()
        thread.join(30)
        app.close()


def decision_for(settings: Settings, event_id: str, timeout_s: float = 60.0) -> dict:  # type: ignore[type-arg]
    [d] = [
        d
        for d in collect(settings, "decisions", lambda ds: event_id in event_ids(ds), timeout_s)
        if d["envelope"]["event_id"] == event_id
    ]
    return d


def test_two_platforms_share_signed_signals(settings: Settings, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    keys = {}
    for name in ("pa", "pb", "pr", "pc", "mallory"):
        keygen(tmp_path / f"{name}.key", tmp_path / f"{name}.pub")
        keys[name] = tmp_path / f"{name}.key"
    exchange_topic = f"x{run}.exchange"
    a = settings.with_(
        topic_prefix=f"a{run}.", platform_id="pa", exchange_topic=exchange_topic, exchange_private_key=str(keys["pa"])
    )
    b = settings.with_(
        topic_prefix=f"b{run}.", platform_id="pb", exchange_topic=exchange_topic, exchange_private_key=str(keys["pb"])
    )
    for s in (a, b):
        create_topics(s)
    pub = {n: (tmp_path / f"{n}.pub").read_text() for n in keys}
    add_partner(a, "pb", pub["pb"], "auto")
    add_partner(b, "pa", pub["pa"], "auto")
    add_partner(b, "pr", pub["pr"], "review")
    add_partner(b, "pc", pub["pc"], "auto")
    remove_partner(b, "pc")

    banned_image = photo(4242)
    banned = encode(banned_image, quality=90)
    with ModerationProducer(a) as producer:
        entry = {
            "bank": "tvec",
            "signal_type": "sha256",
            "hash": hashlib.sha256(banned).hexdigest(),
            "category": "terrorism",
            "severity": "critical",
            "source": "test",
            "added_at": now_ms(),
        }
        producer.send("banks", entry, key=record_key("banks", entry))

    with platform(a), platform(b):
        # A removes an item; B removes a transformed copy within seconds, naming A.
        with ModerationProducer(a) as producer:
            removed_at_a = producer.send_upload(f"a-item-{run}", f"a-user-{run}", media=banned)
        assert decision_for(a, removed_at_a)["action"] == "remove"
        copy = encode(ImageOps.mirror(banned_image).resize((500, 375)), quality=70)
        deadline, found = time.monotonic() + 30, None
        while found is None and time.monotonic() < deadline:
            time.sleep(0.5)
            with ModerationProducer(b) as producer:
                sent = producer.send_upload(f"b-copy-{uuid.uuid4().hex[:6]}", f"b-user-{run}", media=copy)
            d = decision_for(b, sent)
            found = d if d["action"] == "remove" else None
        assert found is not None, "B never removed the copy"
        [match] = [m for m in found["matches"] if m["bank"] == "partner.pa"]
        assert match["source"] == "partner:pa" and found["rule_id"] == "bank-match-severe"
        banked_pdq = match["hash"]

        # Forged, unsigned, replayed and removed-partner signals are refused and dead-lettered.
        exchanged = [v for _, v in read_topic(b.exchange_cluster(), "exchange", idle_timeout_s=2, as_json=False) if v]
        genuine = next(v for v in exchanged if v["platform_id"] == "pa" and v["kind"] == "signal")
        unsigned_fields = {k: v for k, v in genuine.items() if k != "signature"}
        fake_hash = {**unsigned_fields, "hash": "0" * 64}
        with ModerationProducer(b.exchange_cluster()) as producer:
            for record in (
                sign(fake_hash, load_private(keys["mallory"])),  # forged: signed with another key
                {**fake_hash, "signature": b""},  # unsigned
                genuine,  # replayed
                sign({**unsigned_fields, "platform_id": "pc"}, load_private(keys["pc"])),  # removed partner
            ):
                producer.send("exchange", record, key="x")
            # A review-trust partner's hash sends B's match to review.
            review_image = photo(777)
            review_pdq = next(
                s for s in media_signals(encode(review_image), MediaLimits()) if s["signal_type"] == "pdq"
            )
            producer.send(
                "exchange",
                sign(
                    {
                        **unsigned_fields,
                        "platform_id": "pr",
                        "signal_type": "pdq",
                        "hash": review_pdq["value"],
                        "signed_at": now_ms(),
                    },
                    load_private(keys["pr"]),
                ),
                key="r",
            )
        reasons = [
            d["error"]
            for d in collect(b, "dlq", lambda ds: len([x for x in ds if x["stage"] == "exchange-import"]) >= 4, 60)
            if d["stage"] == "exchange-import"
        ]
        assert any(r.startswith("bad signature") for r in reasons), reasons
        assert any(r.startswith("unsigned") for r in reasons), reasons
        assert any(r.startswith("replayed") for r in reasons), reasons
        assert any(r.startswith("removed partner") for r in reasons), reasons
        assert "0" * 64 not in {e["hash"] for e in read_table(b, "banks").values()}  # nothing unsigned was banked

        deadline, reviewed = time.monotonic() + 30, None
        while reviewed is None and time.monotonic() < deadline:
            time.sleep(0.5)
            with ModerationProducer(b) as producer:
                sent = producer.send_upload(
                    f"b-rev-{uuid.uuid4().hex[:6]}", f"b-user-{run}", media=encode(review_image, quality=75)
                )
            d = decision_for(b, sent)
            reviewed = d if d["action"] == "review" else None
        assert reviewed is not None and reviewed["rule_id"] == "partner-review-match", (
            d["rule_id"],
            [k for k in read_table(b, "banks") if "review" in k],
            review_pdq,
        )

        # B's reviewer overturns the match on A's hash: a signed dispute reaches A.
        with ModerationProducer(b) as producer:
            verdict = {
                "task_id": f"t-{run}",
                "envelope": found["envelope"],
                "reviewer": "rita",
                "action": "allow",
                "category": None,
                "note": "news footage",
                "decided_at": now_ms(),
            }
            producer.send("review.verdicts", verdict, key=found["envelope"]["content_id"])
        counts = RedisPartnerCounts(connect_redis(a.redis_url))
        deadline = time.monotonic() + 30
        while counts.counts(["pb"])["pb"]["disputes_received"] < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert counts.counts(["pb"])["pb"]["disputes_received"] >= 1
        assert RedisPartnerCounts(connect_redis(b.redis_url)).counts(["pa"])["pa"]["disputed"] >= 1

        # A retracts its hash: it leaves B's banks.
        key = f"partner.pa/pdq/{banked_pdq}"
        assert key in read_table(b, "banks")
        retract(a, "pdq", banked_pdq)
        deadline = time.monotonic() + 30
        while key in read_table(b, "banks") and time.monotonic() < deadline:
            time.sleep(0.5)
        assert key not in read_table(b, "banks")

    # Nothing that left A names content or users: only the exchange's fields, only hashes and labels.
    private = {f"a-item-{run}", f"a-user-{run}", removed_at_a}
    from_a = [
        v
        for _, v in read_topic(a.exchange_cluster(), "exchange", idle_timeout_s=2, as_json=False)
        if v and v["platform_id"] == "pa"
    ]
    assert from_a and all(set(v) == ALLOWED_FIELDS for v in from_a)
    assert not any(str(value) in private for v in from_a for value in v.values())
