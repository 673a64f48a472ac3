"""The exchange stages with in-memory partners, replay guard and counts: what is signed and
published, what is imported by trust, and every kind of refusal."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.exchange.partners import PartnerTable
from pipeline.exchange.signing import keygen, load_private, public_pem, sign
from pipeline.records import Incoming, Output, Record
from pipeline.serde import Codec
from pipeline.stages.exchange import ImportStage, PublishStage

NOW = 1_800_000_000_000
HASH = "f" * 64


class Guard:
    def __init__(self) -> None:
        self.seen: dict[str, str] = {}

    def first_seen(self, digests: list[tuple[str, str]], ttl_s: int) -> list[str]:
        return [self.seen.setdefault(d, pos) for d, pos in digests]


class Counts:
    def __init__(self) -> None:
        self.counted: dict[tuple[str, str], set[str]] = {}

    def count(self, name: str, what: str, ids: list[str]) -> None:
        self.counted.setdefault((name, what), set()).update(ids)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, object]:
    out = {}
    for name in ("a", "mallory"):
        keygen(tmp_path / f"{name}.key", tmp_path / f"{name}.pub")
        out[name] = load_private(tmp_path / f"{name}.key")
    return out


def shared(**extra: object) -> Record:
    return {
        "signal_type": "pdq",
        "hash": HASH.upper(),
        "category": "terrorism",
        "severity": "critical",
        "source_platform": "a",
        "incident_id": "inc-1",
        "shared_at": NOW,
        **extra,
    }


def published(keys: dict[str, object]) -> Record:
    stage = PublishStage("a", lambda r: sign(r, keys["a"]))  # type: ignore[arg-type]
    [out] = stage.process([Incoming("shared.signals", None, shared())])
    assert out.value is not None
    return out.value


def importer(keys: dict[str, object], trust: str = "auto", status: str = "active") -> tuple[ImportStage, Counts]:
    table = PartnerTable()
    partner = {"name": "a", "platform_id": "a", "public_key": public_pem(keys["a"]), "trust": trust}  # type: ignore[arg-type]
    table.apply("a", {**partner, "category_trust": {}, "status": status, "added_at": 0})
    counts = Counts()
    return ImportStage("b", table, Guard(), counts, "x.exchange", 3600, clock=lambda: NOW + 1000), counts


def at(record: Record, offset: int) -> Incoming:
    return Incoming("exchange", b"k", record, 0, offset, Codec().encode("ExchangeSignal", record))


def test_only_hashes_labels_and_ids_leave_and_the_signature_covers_them(keys: dict[str, object]) -> None:
    record = published(keys)
    assert set(record) == {
        "kind", "signal_type", "hash", "category", "severity", "platform_id", "incident_id", "about_platform",
        "signed_at", "signature",
    }  # fmt: skip
    assert record["hash"] == HASH and len(record["signature"]) == 64
    Codec().encode("ExchangeSignal", record)


def test_signals_are_banked_by_trust_with_their_provenance(keys: dict[str, object]) -> None:
    record = published(keys)
    stage, counts = importer(keys)
    [entry] = stage.process([at(record, 1)])
    assert entry.topic == "banks" and entry.value is not None
    assert (entry.value["bank"], entry.value["source"], entry.value["incident_id"]) == (
        "partner.a",
        "partner:a",
        "inc-1",
    )
    assert entry.value["signed_at"] == NOW and counts.counted[("a", "imported")]
    review, _ = importer(keys, trust="review")
    assert review.process([at(record, 1)])[0].value["bank"] == "partner-review.a"  # type: ignore[index]
    ignore, _ = importer(keys, trust="ignore")
    assert ignore.process([at(record, 1)]) == []
    assert stage.process([at(record, 1)]) == [entry]  # a redelivery (same place) is not a replay


def refused(out: list[Output]) -> str:
    [letter] = out
    assert letter.topic == "dlq" and letter.value is not None
    return str(letter.value["error"])


def test_forged_unsigned_replayed_stale_and_removed_are_refused(keys: dict[str, object]) -> None:
    record = published(keys)
    stage, counts = importer(keys)
    forged = sign({k: v for k, v in record.items() if k != "signature"}, keys["mallory"])  # type: ignore[arg-type]
    assert "bad signature" in refused(stage.process([at(forged, 1)]))
    assert "unsigned" in refused(stage.process([at({**record, "signature": b""}, 2)]))
    tampered = {**record, "severity": "low"}
    assert "bad signature" in refused(stage.process([at(tampered, 3)]))
    stage.process([at(record, 4)])
    assert "replayed" in refused(stage.process([at(record, 5)]))
    stale = sign({**{k: v for k, v in record.items() if k != "signature"}, "signed_at": NOW - 7200_000}, keys["a"])  # type: ignore[arg-type]
    assert "stale" in refused(stage.process([at(stale, 6)]))
    unknown = {**record, "platform_id": "z"}
    assert "unknown partner" in refused(stage.process([at(unknown, 7)]))
    gone, _ = importer(keys, status="removed")
    assert "removed partner" in refused(gone.process([at(record, 8)]))
    assert len(counts.counted[("a", "refused")]) == 5  # forged, unsigned, tampered, replayed, stale


def test_a_retraction_removes_the_entry_from_both_partner_banks(keys: dict[str, object]) -> None:
    record = published(keys)
    retraction = sign({**{k: v for k, v in record.items() if k != "signature"}, "kind": "retraction"}, keys["a"])  # type: ignore[arg-type]
    stage, _ = importer(keys)
    out = stage.process([at(retraction, 9)])
    assert {(o.key, o.value) for o in out} == {
        (f"partner.a/pdq/{HASH}", None),
        (f"partner-review.a/pdq/{HASH}", None),
    }


def test_a_hash_removed_again_is_not_published_again(keys: dict[str, object]) -> None:
    stage = PublishStage("a", lambda r: sign(r, keys["a"]))  # type: ignore[arg-type]
    first = stage.process([Incoming("shared.signals", None, shared())])
    again = stage.process([Incoming("shared.signals", None, shared(shared_at=NOW + 5))])
    assert len(first) == 1 and again == []
