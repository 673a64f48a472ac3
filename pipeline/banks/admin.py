"""Bank management for operators: import a CSV, add hashes of a media file, list, export, delete.

Everything goes through the compacted `mod.banks` topic: match processes pick changes
up within a second. Input is validated before anything is produced.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable
from typing import IO

from pipeline.config import Settings
from pipeline.records import Record, now_ms, record_key
from pipeline.runtime.reader import read_table
from pipeline.sdk import ModerationProducer
from pipeline.signals.media import MediaLimits, media_signals

HASH_FORMATS = {
    "md5": re.compile(r"[0-9a-f]{32}"),
    "sha256": re.compile(r"[0-9a-f]{64}"),
    "pdq": re.compile(r"[0-9a-f]{64}"),
    "video_pdq": re.compile(r"[0-9a-f]{64}"),
}
SEVERITIES = ("low", "medium", "high", "critical")
CSV_FIELDS = ["signal_type", "hash", "category", "severity", "bank"]


class BankInputError(ValueError):
    pass


def bank_entry(
    bank: str,
    signal_type: str,
    value: str,
    category: str,
    severity: str,
    source: str,
    item_id: str | None = None,
) -> Record:
    signal_type, value, severity = (
        signal_type.strip().lower(),
        value.strip().lower(),
        severity.strip().lower(),
    )
    if signal_type not in HASH_FORMATS:
        raise BankInputError(f"unknown signal type {signal_type!r}; known: {', '.join(HASH_FORMATS)}")
    if not HASH_FORMATS[signal_type].fullmatch(value):
        raise BankInputError(f"{value!r} is not a valid {signal_type} hash")
    if severity not in SEVERITIES:
        raise BankInputError(f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    if not category.strip() or not bank.strip():
        raise BankInputError("category and bank must not be empty")
    return {
        "bank": bank.strip(),
        "signal_type": signal_type,
        "hash": value,
        "category": category.strip(),
        "severity": severity,
        "source": source,
        "added_at": now_ms(),
        "item_id": item_id,
    }


def parse_csv(lines: Iterable[str], default_bank: str, source: str) -> list[Record]:
    """Rows `signal_type,hash,category,severity[,bank]`; a header row is allowed. All rows are
    checked; the error names every bad line."""
    entries, errors = [], []
    for lineno, row in enumerate(csv.reader(lines), 1):
        if not row or row[0].startswith("#") or (lineno == 1 and row[0].strip() == "signal_type"):
            continue
        if len(row) not in (4, 5):
            errors.append(f"line {lineno}: expected 4 or 5 fields, got {len(row)}")
            continue
        try:
            entries.append(
                bank_entry(row[4] if len(row) == 5 else default_bank, row[0], row[1], row[2], row[3], source)
            )
        except BankInputError as exc:
            errors.append(f"line {lineno}: {exc}")
    if errors:
        raise BankInputError("; ".join(errors[:20]) + (f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""))
    return entries


def media_entries(data: bytes, bank: str, category: str, severity: str, source: str, item_id: str) -> list[Record]:
    """Bank entries for a media file's hashes (exact, PDQ, video frames)."""
    kinds = {"md5", "sha256", "pdq", "video_pdq"}
    return [
        bank_entry(
            bank,
            s["signal_type"],
            s["value"],
            category,
            severity,
            source,
            item_id if s["signal_type"] == "video_pdq" else None,
        )
        for s in media_signals(data, MediaLimits())
        if s["signal_type"] in kinds
    ]


def publish(settings: Settings, entries: Iterable[Record]) -> int:
    count = 0
    with ModerationProducer(settings) as producer:
        for entry in entries:
            producer.send("banks", entry, key=record_key("banks", entry))
            count += 1
    return count


def current(settings: Settings, bank: str | None = None) -> list[Record]:
    entries = read_table(settings, "banks").values()
    return [e for e in entries if bank is None or e["bank"] == bank]


def counts(settings: Settings) -> Counter[tuple[str, str]]:
    return Counter((e["bank"], e["signal_type"]) for e in current(settings))


def export_csv(entries: Iterable[Record], out: IO[str]) -> None:
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for e in sorted(entries, key=lambda e: (e["bank"], e["signal_type"], e["hash"])):
        writer.writerow([e["signal_type"], e["hash"], e["category"], e["severity"], e["bank"]])


def delete(settings: Settings, bank: str, signal_type: str | None = None, value: str | None = None) -> int:
    """Tombstones for one entry (signal type and hash given) or for a whole bank."""
    if signal_type and value:
        keys = [record_key("banks", {"bank": bank, "signal_type": signal_type, "hash": value})]
    else:
        keys = [record_key("banks", e) for e in current(settings, bank)]
    with ModerationProducer(settings) as producer:
        for key in keys:
            producer.send_raw("banks", key, None)
    return len(keys)
