"""The crisis protocol, operators' side: declaring, extending, closing and accepting incidents.

Declaring an incident, in order: its seed media is hashed (exact hashes, PDQ with the seven
dihedral variants, per-frame PDQ of videos) and banked in bank `incident.<id>` (the entries
carry the incident id, so every decision on a match names it); the hashes are shared at once
with every partner (SharedSignal records with the incident id, which the exchange signs and
publishes: sharing is mandatory while the incident is active); then the Incident record goes
active on the incidents topic, which switches on the policy's incident conditions in every
decide and live process. Closing it ends the tightening; its bank stays (a closed incident's
content stays removed).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pipeline.banks.admin import bank_entry
from pipeline.config import Settings
from pipeline.records import Record, new_id, now_ms, record_key, signal
from pipeline.runtime.reader import read_table
from pipeline.sdk import ModerationProducer
from pipeline.signals.media import MediaLimits, media_signals

BANKABLE = ("md5", "sha256", "pdq", "video_pdq")


def incident_bank(incident_id: str) -> str:
    return f"incident.{incident_id}"


def seed_entries(incident: Record, media: Iterable[Path], hashes: Iterable[tuple[str, str]]) -> list[Record]:
    """Bank entries for an incident's seed media and ready hashes (signal_type, hash). The
    mirrored and rotated PDQ hashes of a seed image are banked too."""
    bank, source = incident_bank(incident["incident_id"]), f"incident:{incident['incident_id']}"
    category, severity = incident["category"], incident["severity"]
    entries = []
    for path in media:
        for s in media_signals(path.read_bytes(), MediaLimits()):  # raises MediaError, with the reason
            kind = "pdq" if s["signal_type"] == "pdq_dihedral" else s["signal_type"]
            if kind in BANKABLE:
                item = f"{incident['incident_id']}:{path.name}" if kind == "video_pdq" else None
                entries.append(bank_entry(bank, kind, s["value"], category, severity, source, item))
    entries += [bank_entry(bank, t, h, category, severity, source) for t, h in hashes]
    unique = {record_key("banks", e): {**e, "incident_id": incident["incident_id"]} for e in entries}
    return list(unique.values())


def _publish(settings: Settings, incident: Record, entries: list[Record]) -> None:
    with ModerationProducer(settings) as producer:
        for e in entries:
            producer.send("banks", e, key=record_key("banks", e))
            shared = {
                "signal_type": e["signal_type"],
                "hash": e["hash"],
                "category": e["category"],
                "severity": e["severity"],
                "source_platform": settings.platform_id,
                "incident_id": incident["incident_id"],
                "shared_at": now_ms(),
            }
            producer.send("shared.signals", shared, key=record_key("shared.signals", shared))
        producer.send("incidents", incident, key=incident["incident_id"])


def declare(
    settings: Settings,
    title: str,
    category: str,
    severity: str = "critical",
    media: Iterable[Path] = (),
    hashes: Iterable[tuple[str, str]] = (),
    reason: str = "",
    incident_id: str | None = None,
) -> tuple[Record, int]:
    """Declares an incident; returns it and the number of hashes banked and shared."""
    incident = {
        "incident_id": incident_id or f"inc-{new_id()[:12]}",
        "title": title,
        "status": "active",
        "declared_at": now_ms(),
        "closed_at": None,
        "signals": [],
        "category": category,
        "severity": severity,
        "reason": reason,
    }
    entries = seed_entries(incident, media, hashes)
    incident["signals"] = [signal(e["signal_type"], e["hash"]) for e in entries]
    _publish(settings, incident, entries)
    return incident, len(entries)


def _get(settings: Settings, incident_id: str) -> Record:
    found = read_table(settings, "incidents").get(incident_id)
    if found is None:
        raise KeyError(f"no incident {incident_id}")
    return found


def add_media(settings: Settings, incident_id: str, media: Iterable[Path]) -> int:
    incident = _get(settings, incident_id)
    if incident["status"] != "active":
        raise ValueError(f"incident {incident_id} is {incident['status']}, not active")
    entries = seed_entries(incident, media, ())
    incident = {**incident, "signals": incident["signals"] + [signal(e["signal_type"], e["hash"]) for e in entries]}
    _publish(settings, incident, entries)
    return len(entries)


def close(settings: Settings, incident_id: str) -> Record:
    incident = {**_get(settings, incident_id), "status": "closed", "closed_at": now_ms()}
    with ModerationProducer(settings) as producer:
        producer.send("incidents", incident, key=incident_id)
    return incident


def accept(settings: Settings, incident_id: str, reason: str = "") -> tuple[Record, int]:
    """Turns a proposed incident (from flood detection) into a declared one, seeded with its hashes."""
    proposed = _get(settings, incident_id)
    if proposed["status"] != "proposed":
        raise ValueError(f"incident {incident_id} is {proposed['status']}, not proposed")
    hashes = [(s["signal_type"], s["value"]) for s in proposed["signals"] if s["signal_type"] in BANKABLE]
    return declare(
        settings,
        proposed["title"],
        proposed["category"],
        proposed["severity"],
        hashes=hashes,
        reason=reason or proposed["reason"],
        incident_id=incident_id,
    )


def incidents(settings: Settings) -> list[Record]:
    return sorted(read_table(settings, "incidents").values(), key=lambda i: -i["declared_at"])
