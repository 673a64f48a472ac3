"""enrich and classify around media, with fakes and no broker: media travels by reference
through the media store, empty media is an error, a batch's fetches have a budget that a
stuck fetch cannot stretch, and absurd envelopes are dead-lettered alone."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from pipeline.policy.engine import load_policy
from pipeline.records import Incoming, Output, Record, StageError, envelope, now_ms
from pipeline.serde import Codec
from pipeline.signals.media import MediaError
from pipeline.stages.classify import ClassifyStage
from pipeline.stages.decide import DecideStage
from pipeline.stages.enrich import EnrichStage, check_envelope
from pipeline.stages.match import MatchStage
from pipeline.state.media import ref_of
from tests.media import encode, photo
from tests.unit.test_stages import FakeAccounts, bank

MEDIA = encode(photo(3, (160, 120)))
CLEAN = encode(photo(4, (160, 120)))


class FakeMedia:
    """The MediaStore contract in a dict."""

    def __init__(self) -> None:
        self.items: dict[str, bytes] = {}

    def put(self, data: bytes) -> str:
        self.items[ref_of(data)] = data
        return ref_of(data)

    def get(self, ref: str) -> bytes | None:
        return self.items.get(ref)


class FakeFetcher:
    """Serves `media` by URI; a URI starting with `slow` blocks until released."""

    def __init__(self, media: dict[str, bytes]) -> None:
        self.media = media
        self.release = threading.Event()

    def fetch(self, uri: str) -> bytes:
        if uri.startswith("slow"):
            self.release.wait(30)
            raise MediaError("released")
        if uri not in self.media:
            raise MediaError(f"no {uri}")
        return self.media[uri]


def upload(
    media: bytes | None = None, uri: str | None = None, content_id: str = "c1", offset: int = 0, **env: Any
) -> Incoming:
    value = {
        "envelope": envelope("p", content_id=content_id, user_id="u1", **env),
        "media_b64": media,
        "media_uri": uri,
        "media_type": None,
        "text": None,
    }
    return Incoming("uploads", content_id.encode(), value, 0, offset, b"raw")


def frame(data: bytes) -> Incoming:
    value = {
        "envelope": envelope("p", stream_id="s1", user_id="u1"),
        "kind": "frame",
        "frame_index": 1,
        "frame_b64": data,
        "text": None,
    }
    return Incoming("live", b"s1", value)


def report(offset: int = 0, **env: Any) -> Incoming:
    value = {
        "envelope": envelope("p", content_id="c1", user_id="owner", **env),
        "reporter_id": "r1",
        "reason": "terrorism",
        "text": None,
    }
    return Incoming("reports", b"c1", value, 2, offset, b"raw report")


def enriched(outputs: list[Output]) -> list[Record]:
    return [o.value for o in outputs if o.topic == "enriched" and o.value is not None]


def test_enrich_keeps_media_in_the_store_and_passes_a_reference() -> None:
    store = FakeMedia()
    fetcher = FakeFetcher({"https://cdn/x.jpg": CLEAN})
    stage = EnrichStage(FakeAccounts(), fetcher, media=store)
    records = enriched(stage.process([upload(MEDIA), frame(MEDIA), upload(uri="https://cdn/x.jpg", content_id="c2")]))
    by_inline, by_frame, by_uri = records
    assert by_inline["media_ref"] == by_frame["media_ref"] == ref_of(MEDIA) and store.items[ref_of(MEDIA)] == MEDIA
    assert by_inline["upload"]["media_b64"] is None and by_frame["live"]["frame_b64"] is None
    assert by_uri["media_ref"] == ref_of(CLEAN) and store.items[ref_of(CLEAN)] == CLEAN
    assert all(any(s["signal_type"] == "pdq" for s in r["signals"]) for r in records)
    [again] = enriched(stage.process([upload(MEDIA)]))  # redelivered: the same reference
    assert again["media_ref"] == by_inline["media_ref"] and len(store.items) == 2
    [unkept] = enriched(EnrichStage(FakeAccounts()).process([upload(MEDIA)]))  # no store: no bytes
    assert unkept["media_ref"] is None and unkept["upload"]["media_b64"] is None and unkept["signals"]


def megabyte_upload(limit: int = 1_000_000) -> bytes:
    """A JPEG padded (after its end) so that its upload event is just under `limit` bytes."""
    overhead = len(Codec().encode("UploadEvent", upload(MEDIA).value)) - len(MEDIA)
    return MEDIA + b"\x00" * (limit - 200 - overhead - len(MEDIA))


def test_a_megabyte_upload_makes_a_small_enriched_record() -> None:
    codec, media = Codec(), megabyte_upload()
    event = upload(media)
    assert 999_000 < len(codec.encode("UploadEvent", event.value)) < 1_000_000
    [record] = enriched(EnrichStage(FakeAccounts(), media=FakeMedia()).process([event]))
    assert record["media_ref"] == ref_of(media) and any(s["signal_type"] == "pdq" for s in record["signals"])
    assert len(codec.encode("ModerationRecord", record)) < 10_000
    inline = {**record, "upload": event.value}  # as enrich emitted it before: over the message limit
    assert len(codec.encode("ModerationRecord", inline)) > 1_000_000


@dataclass(frozen=True)
class Spec:
    name: str = "seen"
    modality: str = "image"
    labels: tuple[str, ...] = ("seen",)


class RecordingModel:
    spec = Spec()

    def __init__(self) -> None:
        self.inputs: list[Any] = []

    def scores(self, inputs: Any) -> np.ndarray:
        self.inputs += inputs
        return np.full((len(inputs), 1), 0.5)


def test_image_models_get_media_by_reference_also_when_it_was_fetched() -> None:
    store = FakeMedia()
    enrich = EnrichStage(FakeAccounts(), FakeFetcher({"https://cdn/x.jpg": CLEAN}), media=store)
    out = enrich.process([upload(MEDIA), upload(uri="https://cdn/x.jpg", content_id="c2")])
    model = RecordingModel()
    classify = ClassifyStage([model], media=store)
    classified = classify.process([Incoming("matched", None, o.value) for o in out if o.value is not None])
    assert model.inputs == [MEDIA, CLEAN]
    assert [s["label"] for o in classified for s in (o.value or {})["scores"]] == ["seen", "seen"]
    store.items.clear()  # expired: the image is not scored, the record still goes on
    later = ClassifyStage([RecordingModel()], media=store).process([Incoming("matched", None, out[0].value or {})])
    assert later[0].value is not None and later[0].value["scores"] == []


def test_empty_media_is_a_media_error_and_the_decision_says_why() -> None:
    stages = (
        EnrichStage(FakeAccounts(), FakeFetcher({"https://cdn/empty.jpg": b""}), media=FakeMedia()),
        MatchStage(bank()),
        DecideStage(load_policy()),
    )
    for record in (upload(b""), upload(uri="https://cdn/empty.jpg"), frame(b"")):
        batch = [record]
        for stage in stages:
            batch = [Incoming(o.topic, None, o.value) for o in stage.process(batch) if o.value is not None]
        [decision] = [i.value for i in batch if i.topic == "decisions"]
        assert decision["action"] == "review" and decision["rule_id"] == "unhashable-media"
        assert "media is empty (0 bytes)" in decision["explanation"]


def test_a_stuck_fetch_costs_its_record_the_batch_budget_not_the_batch() -> None:
    fetcher = FakeFetcher({"https://cdn/a.jpg": MEDIA, "https://cdn/b.jpg": CLEAN})
    stage = EnrichStage(FakeAccounts(), fetcher, batch_budget_s=0.3, fetch_workers=8)
    try:
        started = time.monotonic()
        batch = [upload(uri=f"slow-{i}", content_id=f"s{i}") for i in range(4)]
        batch += [upload(uri="https://cdn/a.jpg", content_id="a"), upload(MEDIA, content_id="inline")]
        records = enriched(stage.process(batch))
        assert time.monotonic() - started < 2.0
        for r in records[:4]:
            assert r["media_error"] == "fetch did not finish within the batch budget of 0.3 s"
        assert all(r["media_error"] is None and r["signals"] for r in records[4:])
        # The four fetches are still stuck (until their own deadline); the next batch goes on.
        started = time.monotonic()
        after = enriched(stage.process([upload(uri="https://cdn/b.jpg", content_id=f"b{i}") for i in range(4)]))
        assert time.monotonic() - started < 0.3 and all(r["media_error"] is None for r in after)
    finally:
        fetcher.release.set()


def test_absurd_envelopes_are_refused_with_the_reason() -> None:
    now = now_ms()
    good: Record = {"envelope": envelope("p", content_id="c", occurred_at=now)}
    check_envelope(good, now)
    check_envelope({"envelope": {**good["envelope"], "occurred_at": now + 3600_000}}, now)  # clocks drift
    cases: dict[str, Record] = {
        "envelope.event_id is empty": {"event_id": " "},
        "envelope.occurred_at -1 is negative": {"occurred_at": -1},
        "is 172800 s in the future": {"occurred_at": now + 2 * 86400_000},
        f"envelope.occurred_at {2**63 - 1} is beyond the year 9999": {"occurred_at": 2**63 - 1},
        "envelope.content_id is 513 characters long; the limit is 512": {"content_id": "c" * 513},
        "envelope.user_id is 10000 characters long": {"user_id": "u" * 10_000},
    }
    for reason, change in cases.items():
        with pytest.raises(StageError, match=reason):
            check_envelope({"envelope": {**good["envelope"], **change}}, now)
    with pytest.raises(StageError, match="reporter_id is 600 characters long"):
        check_envelope({**good, "reporter_id": "r" * 600}, now)


def test_an_absurd_envelope_is_dead_lettered_alone_and_its_neighbours_go_on() -> None:
    stage = EnrichStage(FakeAccounts(), topic_prefix="t.")
    batch = [upload(MEDIA, offset=1), report(offset=2, occurred_at=2**63 - 1), report(offset=3)]
    out = stage.process(batch)
    assert [o.topic for o in out] == ["enriched", "enriched", "dlq"]
    letter = out[2].value
    assert letter is not None and (letter["topic"], letter["partition"], letter["offset"]) == ("t.reports", 2, 2)
    assert letter["stage"] == "enrich" and letter["value"] == b"raw report"
    assert letter["error"] == f"StageError: envelope.occurred_at {2**63 - 1} is beyond the year 9999"
    assert [r["kind"] for r in enriched(out)] == ["upload", "report"]
