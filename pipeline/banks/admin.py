"""Bank management for operators: import and export bank files (the formats are in
`formats.py`), add the hashes of a media file, list, delete.

Everything goes through the compacted `mod.banks` topic: match processes pick changes
up within a second. Input is validated before anything is produced.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import IO

from pipeline.banks import formats
from pipeline.config import Settings
from pipeline.records import HASH_FORMATS, Record, now_ms, record_key
from pipeline.runtime.reader import read_table
from pipeline.sdk import ModerationProducer
from pipeline.signals.media import MediaLimits, media_signals

SEVERITIES = ("low", "medium", "high", "critical")


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
    named, signal_type, value, severity = (
        signal_type.strip(),
        signal_type.strip().lower(),
        value.strip().lower(),
        severity.strip().lower(),
    )
    if signal_type not in HASH_FORMATS:
        raise BankInputError(f"unknown signal type {named!r}; known: {', '.join(HASH_FORMATS)}")
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


@dataclass
class Parsed:
    format: str
    entries: list[Record]
    skipped: Counter[str]  # rows left out on purpose, by reason (pytx's NEGATIVE_CLASS, DISPUTED)


def parse(
    lines: Iterable[str],
    default_bank: str,
    source: str,
    fmt: str | None = None,
    category: str = "",
    severity: str = "high",
) -> Parsed:
    """Entries from a bank file in `fmt` (see pipeline.banks.formats; detected from the content
    when None); what a row lacks comes from the defaults. All rows are checked, and the error
    names every bad line: one bad line imports nothing."""
    lines = list(lines)
    if lines:
        lines[0] = lines[0].removeprefix("\ufeff")  # a BOM, as spreadsheets write
    name = fmt or formats.detect(lines)
    if name is None:
        raise BankInputError(
            f"cannot tell the format from the first line: name it with --format ({', '.join(formats.FORMATS)})"
        )
    if "category" not in formats.FORMATS[name].carries and not category.strip():
        raise BankInputError(f"{name} rows carry no category: give --category")
    entries, errors, skipped = [], [], Counter[str]()
    for lineno, row in formats.FORMATS[name].read(lines):
        try:
            if isinstance(row, str):
                raise BankInputError(row)
            if row.skip:
                skipped[row.skip] += 1
                continue
            if not (row.category or category).strip():
                raise BankInputError("no category in the row, and no --category given")
            bank = row.bank or default_bank
            entries.append(
                bank_entry(bank, row.signal_type, row.hash, row.category or category, row.severity or severity, source)
            )
        except BankInputError as exc:
            errors.append(f"line {lineno}: {exc}")
    if errors:
        raise BankInputError("; ".join(errors[:20]) + (f" (and {len(errors) - 20} more)" if len(errors) > 20 else ""))
    return Parsed(name, entries, skipped)


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


def export(entries: Iterable[Record], out: IO[str], fmt: str = "modstream") -> Counter[str]:
    """Writes the entries in `fmt`; returns the signal types the format could not name, with counts."""
    return formats.FORMATS[fmt].write(entries, out)


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
