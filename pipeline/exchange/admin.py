"""Operators' side of the exchange: registering partners, and retracting a shared hash."""

from __future__ import annotations

from pipeline.config import Settings
from pipeline.exchange.partners import TRUST_LEVELS, RedisPartnerCounts
from pipeline.exchange.signing import exchange_key, load_private, load_public, sign
from pipeline.records import Record, now_ms
from pipeline.runtime.reader import read_table
from pipeline.sdk import ModerationProducer


def add_partner(
    settings: Settings,
    name: str,
    public_key_pem: str,
    trust: str,
    platform_id: str | None = None,
    category_trust: dict[str, str] | None = None,
) -> Record:
    load_public(public_key_pem)  # refuse a file that is not an Ed25519 public key
    levels = {trust, *(category_trust or {}).values()}
    if levels - set(TRUST_LEVELS):
        raise ValueError(f"trust must be one of {TRUST_LEVELS}, not {sorted(levels - set(TRUST_LEVELS))}")
    partner = {
        "name": name,
        "platform_id": platform_id or name,
        "public_key": public_key_pem,
        "trust": trust,
        "category_trust": dict(category_trust or {}),
        "status": "active",
        "added_at": now_ms(),
    }
    with ModerationProducer(settings) as producer:
        producer.send("partners", partner, key=name)
    return partner


def remove_partner(settings: Settings, name: str) -> None:
    """Marks the partner removed: its signals are refused from now on (its banked entries stay
    until it retracts them or an operator deletes its banks)."""
    partners = read_table(settings, "partners")
    if name not in partners:
        raise KeyError(f"no partner {name!r}")
    with ModerationProducer(settings) as producer:
        producer.send("partners", {**partners[name], "status": "removed"}, key=name)


def list_partners(settings: Settings, redis: object) -> list[Record]:
    partners = sorted(read_table(settings, "partners").values(), key=lambda p: p["name"])
    counts = RedisPartnerCounts(redis).counts([p["name"] for p in partners])
    return [{**p, **counts[p["name"]]} for p in partners]


def retract(settings: Settings, signal_type: str, value: str) -> Record:
    """Publishes this platform's signed retraction of a hash it shared: partners remove it."""
    key = load_private(settings.exchange_private_key)
    record = {
        "kind": "retraction",
        "signal_type": signal_type,
        "hash": value.lower(),
        "category": "",
        "severity": "",
        "platform_id": settings.platform_id,
        "incident_id": None,
        "about_platform": None,
        "signed_at": now_ms(),
    }
    signed = sign(record, key)
    with ModerationProducer(settings.exchange_cluster()) as producer:
        producer.send("exchange", signed, key=exchange_key(record))
    return signed
