"""Retroactive matching through the broker: an upload allowed before its hash was banked is
removed once the hash is banked, once, by rule retroactive-match naming the entry; an upload
already removed is not actioned again; after a restart the store is rebuilt and still knows
both."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from pipeline.app import App
from pipeline.banks.admin import bank_entry, media_entries, publish
from pipeline.config import Settings
from pipeline.records import Record
from pipeline.sdk import ModerationProducer
from tests.media import encode, photo

from .helpers import collect

pytestmark = pytest.mark.integration


@contextmanager
def running(app: App, names: list[str]) -> Iterator[None]:
    runners = app.runners(names)
    threads = [threading.Thread(target=r.run, args=(False,), daemon=True) for r in runners]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        for r in runners:
            r.stop()
        for t in threads:
            t.join(30)
        app.close()


def decisions_until(settings: Settings, done: object, timeout_s: float = 120) -> list[Record]:
    return collect(settings, "decisions", done, timeout_s)  # type: ignore[arg-type]


def of(decisions: list[Record], content_id: str, rule: str | None = None) -> list[Record]:
    return [
        d for d in decisions if d["envelope"]["content_id"] == content_id and (rule is None or d["rule_id"] == rule)
    ]


def test_an_upload_allowed_before_its_hash_was_banked_is_removed_once(settings: Settings) -> None:
    image, other = photo(1100), photo(1200)
    original = encode(image, quality=90)
    copy = encode(image, quality=45)  # other bytes, the same look
    assert hashlib.sha256(copy).digest() != hashlib.sha256(original).digest()
    # A partner's exact-hash list knows the original file; nothing knows its look yet.
    publish(settings, [bank_entry("partner", "sha256", hashlib.sha256(original).hexdigest(), "terrorism", "high", "p")])
    app = App(settings)
    producer = ModerationProducer(settings)
    with running(app, ["enrich", "match", "classify", "decide", "retro"]):
        producer.send_upload("c-copy", "u-copy", media=copy)
        producer.send_upload("c-other", "u-other", media=encode(other))
        producer.flush()
        first = decisions_until(settings, lambda ds: {"c-copy", "c-other"} <= {d["envelope"]["content_id"] for d in ds})
        assert [d["action"] for d in of(first, "c-copy")] == ["allow"]
        assert [d["action"] for d in of(first, "c-other")] == ["allow"]

        # The original is removed at upload (the partner's hash), and its PDQ goes to the
        # `removed` bank: the copy, allowed before, is removed now.
        producer.send_upload("c-original", "u-original", media=original)
        producer.flush()
        # Decisions of different items may sit on different partitions: wait for both.
        found = decisions_until(
            settings, lambda ds: bool(of(ds, "c-copy", "retroactive-match")) and bool(of(ds, "c-original"))
        )
        [retro] = of(found, "c-copy", "retroactive-match")
        assert [d["action"] for d in of(found, "c-original")] == ["remove"]

    # Restarted: the store is rebuilt from `decisions`. More entries for the same look (and for
    # the other photo): the copy keeps its one retroactive decision, the original its removal;
    # the other photo is removed now.
    with running(App(settings), ["retro"]):
        publish(settings, media_entries(original, "tvec", "terrorism", "critical", "ops", "img-1100"))
        publish(settings, media_entries(encode(other), "tvec", "terrorism", "critical", "ops", "img-1200"))
        decisions_until(settings, lambda ds: bool(of(ds, "c-other", "retroactive-match")))
        time.sleep(3)  # time for any further (wrong) decision to appear
        final = decisions_until(settings, lambda ds: False, timeout_s=5)

    assert retro["action"] == "remove" and retro["effects"] == ["strike"]
    assert retro["envelope"]["user_id"] == "u-copy"
    [match] = retro["matches"]
    assert match["bank"] == "removed" and match["signal_type"] == "pdq"
    assert match["hash"] in retro["explanation"] and "'removed'" in retro["explanation"]
    assert f"distance {match['distance']}" in retro["explanation"]
    assert [d["decision_id"] for d in of(final, "c-copy", "retroactive-match")] == [retro["decision_id"]]
    assert of(final, "c-original", "retroactive-match") == []
    [other_retro] = of(final, "c-other", "retroactive-match")
    assert other_retro["matches"][0]["bank"] == "tvec"
