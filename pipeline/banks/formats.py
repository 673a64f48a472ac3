"""Bank file formats: what `modstream bank import` reads and `bank export` writes.

- modstream: our CSV, `signal_type,hash,category,severity[,bank]`, with an optional header.
- pytx: python-threatexchange's dataset CSV (`threatexchange dataset -P --csv`):
  `signal_type,signal_str,collab,category,tags`. The collab is the bank, the tags (space
  separated) the category; pytx's `category` is its opinion of the signal: POSITIVE_CLASS and
  INVESTIGATION_SEED rows are banked, NEGATIVE_CLASS and DISPUTED rows (false positives) are
  left out. Export writes POSITIVE_CLASS: modstream acts on every banked hash.
- local_file: the file of ThreatExchange's `local_file` collaboration, `<signal_type> <hash>`
  per line, signal types as pytx names them.
- tcap: a TCAP/GIFCT-style hash list with a header, `hash,algorithm,category` (also
  `hash_digest`/`hash_value` and `hash_type`); algorithm names are read liberally (PDQ,
  MD5, SHA-256, HASH_PDQ, video_md5, ...).

Readers turn lines into `Row`s (our signal-type names, raw strings) and say what is wrong
with a line instead of raising, so that every bad line can be named; `admin` validates the
hashes and builds the entries. Writers return the signal types they had to leave out.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, NamedTuple

from pipeline.records import Record


@dataclass(frozen=True)
class Row:
    """One line's entry before validation; what the format lacks is left empty."""

    signal_type: str
    hash: str
    category: str = ""
    severity: str = ""
    bank: str = ""
    skip: str = ""  # why the row is not banked (a pytx opinion), or ""


Read = Iterator[tuple[int, Row | str]]  # line number, and the row or what is wrong with it


class Format(NamedTuple):
    detect: Callable[[list[str]], bool]  # the first line of content, split as CSV, lower-cased
    read: Callable[[Iterable[str]], Read]
    write: Callable[[Iterable[Record], IO[str]], Counter[str]]  # -> signal types left out
    carries: frozenset[str]  # which of bank, category, severity its rows carry


_ALIASES = {
    "md5": "md5",
    "videomd5": "md5",
    "sha256": "sha256",
    "videosha256": "sha256",
    "pdq": "pdq",
    "videopdq": "video_pdq",
}
PYTX_NAMES = {"md5": "video_md5", "sha256": "video_sha256", "pdq": "pdq"}  # pytx has no per-frame type
TCAP_NAMES = {"md5": "MD5", "sha256": "SHA256", "pdq": "PDQ"}
MODSTREAM_FIELDS = ["signal_type", "hash", "category", "severity", "bank"]
PYTX_FIELDS = ["signal_type", "signal_str", "collab", "category", "tags"]
PYTX_BANKED = ("POSITIVE_CLASS", "INVESTIGATION_SEED")
PYTX_LEFT_OUT = ("NEGATIVE_CLASS", "DISPUTED")
TCAP_COLUMNS = {"hash": ("hash", "hash_digest", "hash_value"), "algorithm": ("algorithm", "hash_type")}


def signal_type(name: str) -> str:
    """Our name for a signal type as any format names it; an unknown name comes back as
    given, for the validator to refuse."""
    key = re.sub(r"[^a-z0-9]", "", name.lower()).removeprefix("hash")
    return _ALIASES.get(key, name.strip())


def detect(lines: list[str]) -> str | None:
    """The first format (in FORMATS order) that claims the first line of content."""
    first = next((line for line in lines if line.strip() and not line.lstrip().startswith("#")), None)
    if first is None:
        return "modstream"
    fields = [f.strip().lower() for f in next(csv.reader([first]), [])]
    return next((name for name, fmt in FORMATS.items() if fmt.detect(fields)), None)


def _csv_rows(lines: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    reader = csv.reader(lines)
    for row in reader:
        if any(f.strip() for f in row) and not row[0].lstrip().startswith("#"):
            yield reader.line_num, [f.strip() for f in row]


def _with_header(
    lines: Iterable[str], columns: dict[str, tuple[str, ...]], make: Callable[[dict[str, str]], Row | str]
) -> Read:
    """Rows of a CSV whose header names its columns (any order, any case); `columns` maps each
    required field to the header names it may have, other columns are passed by name."""
    rows = _csv_rows(lines)
    lineno, header = next(rows, (0, []))
    if not header:
        return
    names = [h.lower() for h in header]
    for field, options in columns.items():
        found = next((o for o in options if o in names), None)
        if found is None:
            yield lineno, f"the header has no {field} column ({' or '.join(options)})"
            return
        names[names.index(found)] = field
    for lineno, row in rows:
        if len(row) != len(names):
            yield lineno, f"expected {len(names)} fields, got {len(row)}"
        else:
            yield lineno, make(dict(zip(names, row, strict=True)))


# ---- modstream ---------------------------------------------------------------------
def _read_modstream(lines: Iterable[str]) -> Read:
    for n, (lineno, row) in enumerate(_csv_rows(lines)):
        if n == 0 and row[0].lower() == "signal_type":
            continue
        if len(row) not in (4, 5):
            yield lineno, f"expected 4 or 5 fields, got {len(row)}"
        else:
            yield lineno, Row(signal_type(row[0]), row[1], row[2], row[3], row[4] if len(row) == 5 else "")


def _write_modstream(entries: Iterable[Record], out: IO[str]) -> Counter[str]:
    writer = csv.writer(out)
    writer.writerow(MODSTREAM_FIELDS)
    for e in sorted(entries, key=lambda e: (e["bank"], e["signal_type"], e["hash"])):
        writer.writerow([e["signal_type"], e["hash"], e["category"], e["severity"], e["bank"]])
    return Counter()


# ---- pytx dataset CSV ------------------------------------------------------------------
def _pytx_row(f: dict[str, str]) -> Row | str:
    opinion = f.get("category", "").upper()
    if opinion and opinion not in PYTX_BANKED + PYTX_LEFT_OUT:
        return f"category {f['category']!r} is not one of {', '.join(PYTX_BANKED + PYTX_LEFT_OUT)}"
    tags = " ".join(f.get("tags", "").split())
    skip = opinion if opinion in PYTX_LEFT_OUT else ""
    return Row(signal_type(f["signal_type"]), f["signal_str"], tags, bank=f.get("collab", ""), skip=skip)


def _read_pytx(lines: Iterable[str]) -> Read:
    return _with_header(lines, {"signal_type": ("signal_type",), "signal_str": ("signal_str",)}, _pytx_row)


def _write_pytx(entries: Iterable[Record], out: IO[str]) -> Counter[str]:
    named, left_out = _named(entries, PYTX_NAMES)
    writer = csv.writer(out)  # pytx's csv.DictWriter: excel dialect, CRLF
    writer.writerow(PYTX_FIELDS)
    writer.writerows(sorted((name, e["hash"], e["bank"], PYTX_BANKED[0], e["category"]) for name, e in named))
    return left_out


# ---- ThreatExchange local_file ------------------------------------------------------------
def _read_local_file(lines: Iterable[str]) -> Read:
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split(None, 1)
        if len(parts) != 2:
            yield lineno, "expected '<signal_type> <hash>'"
        else:
            yield lineno, Row(signal_type(parts[0]), parts[1].strip())


def _write_local_file(entries: Iterable[Record], out: IO[str]) -> Counter[str]:
    named, left_out = _named(entries, PYTX_NAMES)
    out.writelines(sorted({f"{name} {e['hash']}\n" for name, e in named}))
    return left_out


# ---- TCAP / GIFCT-style CSV ---------------------------------------------------------------
def _read_tcap(lines: Iterable[str]) -> Read:
    return _with_header(
        lines, TCAP_COLUMNS, lambda f: Row(signal_type(f["algorithm"]), f["hash"], f.get("category", ""))
    )


def _write_tcap(entries: Iterable[Record], out: IO[str]) -> Counter[str]:
    named, left_out = _named(entries, TCAP_NAMES)
    writer = csv.writer(out)
    writer.writerow(["hash", "algorithm", "category"])
    for name, value, category in sorted({(name, e["hash"], e["category"]) for name, e in named}):
        writer.writerow([value, name, category])
    return left_out


def _named(entries: Iterable[Record], names: dict[str, str]) -> tuple[list[tuple[str, Record]], Counter[str]]:
    named, left_out = [], Counter[str]()
    for e in entries:
        if e["signal_type"] in names:
            named.append((names[e["signal_type"]], e))
        else:
            left_out[e["signal_type"]] += 1
    return named, left_out


# Detection tries these in order: a header names pytx and tcap; modstream is a header or a
# row of 4 or 5 fields; local_file is two words and no comma.
FORMATS: dict[str, Format] = {
    "pytx": Format(
        lambda f: "signal_type" in f and "signal_str" in f,
        _read_pytx,
        _write_pytx,
        frozenset({"bank", "category"}),
    ),
    "tcap": Format(
        lambda f: all(any(o in f for o in opts) for opts in TCAP_COLUMNS.values()),
        _read_tcap,
        _write_tcap,
        frozenset({"category"}),
    ),
    "modstream": Format(
        lambda f: f[0] == "signal_type" or len(f) in (4, 5),
        _read_modstream,
        _write_modstream,
        frozenset({"bank", "category", "severity"}),
    ),
    "local_file": Format(
        lambda f: len(f) == 1 and len(f[0].split()) == 2,
        _read_local_file,
        _write_local_file,
        frozenset(),
    ),
}
