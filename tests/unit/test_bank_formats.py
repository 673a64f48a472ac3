"""Bank file formats (pipeline/banks/formats.py) through `admin.parse` and `admin.export`, no
broker: detection, each reader and writer, round trips byte for byte, and bad lines."""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

import pytest

from pipeline.banks import admin, formats
from pipeline.cli import main

DATA = Path(__file__).parent.parent / "data" / "banks"
MD5 = hashlib.md5(b"a").hexdigest()
SHA = hashlib.sha256(b"a").hexdigest()
PDQ = hashlib.sha256(b"pdq-1").hexdigest()


def parse(text: str, fmt: str | None = None, **defaults: str) -> admin.Parsed:
    return admin.parse(io.StringIO(text), defaults.pop("bank", "imported"), "test", fmt, **defaults)


def export(parsed: admin.Parsed, fmt: str) -> str:
    out = io.StringIO(newline="")
    assert admin.export(parsed.entries, out, fmt) == {}
    return out.getvalue()


def fixture(name: str) -> str:
    return (DATA / name).read_bytes().decode()


def test_formats_are_detected_from_the_content() -> None:
    assert parse(fixture("pytx_dataset.csv")).format == "pytx"
    assert parse(fixture("local_file.txt"), category="terrorism").format == "local_file"
    assert parse(fixture("tcap.csv")).format == "tcap"
    assert parse(f"signal_type,hash,category,severity\nmd5,{MD5},hate,low\n").format == "modstream"
    assert parse(f"# no header\nmd5,{MD5},hate,low,partner\n").format == "modstream"
    with pytest.raises(admin.BankInputError, match="name it with --format"):
        parse("what,is,this\n")


def test_the_cli_offers_every_format() -> None:
    bank = main.commands["bank"].commands  # type: ignore[attr-defined]
    for command in ("import", "export"):
        choices = next(p.type.choices for p in bank[command].params if p.name == "fmt")
        assert sorted(choices) == sorted(formats.FORMATS)


def test_pytx_dataset_round_trips_byte_for_byte() -> None:
    text = fixture("pytx_dataset.csv")
    parsed = parse(text, severity="critical")
    by_hash = {e["hash"]: e for e in parsed.entries}
    assert by_hash[MD5] | {"added_at": 0} == {
        "bank": "gifct",  # the collab
        "signal_type": "md5",  # pytx's video_md5
        "hash": MD5,
        "category": "terrorism",  # the tags
        "severity": "critical",  # --severity: pytx has none
        "source": "test",
        "added_at": 0,
        "item_id": None,
    }
    assert by_hash[SHA]["category"] == "terrorism violent_extremism"  # several tags are kept together
    assert export(parsed, "pytx") == text


def test_pytx_opinions_and_defaults() -> None:
    text = (
        "signal_type,signal_str,collab,category,tags\r\n"
        f"pdq,{PDQ.upper()},,INVESTIGATION_SEED,\r\n"
        f"video_md5,{MD5},tvec,NEGATIVE_CLASS,terrorism\r\n"
        f"video_sha256,{SHA},tvec,DISPUTED,terrorism\r\n"
    )
    parsed = parse(text, bank="partner", category="terrorism")
    assert [(e["bank"], e["signal_type"], e["hash"], e["category"]) for e in parsed.entries] == [
        ("partner", "pdq", PDQ, "terrorism")
    ]
    assert parsed.skipped == {"NEGATIVE_CLASS": 1, "DISPUTED": 1}


def test_local_file_round_trips_and_pytx_reads_our_export() -> None:
    text = fixture("local_file.txt")
    with pytest.raises(admin.BankInputError, match="local_file rows carry no category: give --category"):
        parse(text)
    parsed = parse(text, bank="te", category="terrorism", severity="high")
    assert {(e["bank"], e["signal_type"], e["category"], e["severity"]) for e in parsed.entries} == {
        ("te", "pdq", "terrorism", "high"),
        ("te", "md5", "terrorism", "high"),
        ("te", "sha256", "terrorism", "high"),
    }
    assert export(parsed, "local_file") == text


def test_tcap_reads_algorithms_liberally_and_writes_canonical_names() -> None:
    parsed = parse(fixture("tcap.csv"), bank="tcap")
    assert {(e["signal_type"], e["hash"]) for e in parsed.entries} >= {("pdq", PDQ), ("md5", MD5), ("sha256", SHA)}
    lines = export(parsed, "tcap").splitlines()
    assert lines[0] == "hash,algorithm,category" and f"{MD5},MD5,terrorism" in lines
    assert f"{SHA},SHA256,violent_extremism" in lines and f"{PDQ},PDQ,terrorism" in lines
    other = parse(f"Hash_Digest,Hash_Type,Category,File_Type\n{MD5},Video_MD5,terrorism,mp4\n")
    assert other.format == "tcap" and other.entries[0]["signal_type"] == "md5"


@pytest.mark.parametrize(
    ("fmt", "text", "errors"),
    [
        (
            "pytx",
            f"signal_type,signal_str,collab,category,tags\npdq,{PDQ},c,POSITIVE_CLASS,t\nurl,http://x,c,POSITIVE_CLASS,t\n"
            f"pdq,{PDQ},c,MAYBE,t\n",
            ["line 3: unknown signal type 'url'", "line 4: category 'MAYBE' is not one of"],
        ),
        ("local_file", f"pdq {PDQ}\nvideo_md5 {SHA}\n{MD5}\n", ["line 2: '", "is not a valid md5", "line 3: expected"]),
        (
            "tcap",
            f"hash,algorithm,category\n{MD5},TMK,t\n{PDQ[:60]},PDQ,t\n",
            ["line 2: unknown signal type 'TMK'", "line 3"],
        ),
        ("tcap", f"hash,category\n{MD5},t\n", ["line 1: the header has no algorithm column"]),
        ("modstream", f"md5,{MD5},,low\nmd5,{MD5},t\n", ["line 1: no category", "line 2: expected 4 or 5 fields"]),
    ],
)
def test_a_bad_line_is_named_and_nothing_is_imported(fmt: str, text: str, errors: list[str]) -> None:
    with pytest.raises(admin.BankInputError) as exc:
        parse(text, fmt, category="terrorism" if fmt == "local_file" else "")
    for error in errors:
        assert error in str(exc.value)


def test_export_leaves_out_what_a_format_cannot_name() -> None:
    parsed = parse(f"video_pdq,{PDQ},terrorism,high,v\nmd5,{MD5},terrorism,high,v\n")
    for fmt in ("pytx", "local_file", "tcap"):
        out = io.StringIO()
        assert admin.export(parsed.entries, out, fmt) == {"video_pdq": 1}
        assert PDQ not in out.getvalue() and MD5 in out.getvalue()
    assert {e["signal_type"] for e in parse(export(parsed, "modstream")).entries} == {"video_pdq", "md5"}


def test_pytx_writes_what_we_read() -> None:
    """python-threatexchange's own dataset CSV writer and local_file reader agree with ours."""
    pytest.importorskip("threatexchange")
    from threatexchange.cli.dataset_cmd import DatasetCommand
    from threatexchange.exchanges.fetch_state import FetchedSignalMetadata, SignalOpinion, SignalOpinionCategory
    from threatexchange.exchanges.impl.file_api import FileCollaborationConfig, LocalFileSignalExchangeAPI
    from threatexchange.signal_type.md5 import VideoMD5Signal
    from threatexchange.signal_type.pdq.signal import PdqSignal

    class Labelled(FetchedSignalMetadata):
        def get_as_opinions(self) -> list[SignalOpinion]:
            return [SignalOpinion(False, SignalOpinionCategory.POSITIVE_CLASS, {"terrorism"})]

    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, formats.PYTX_FIELDS)
    writer.writeheader()
    for signal_type, value in ((PdqSignal, PDQ), (VideoMD5Signal, MD5)):
        DatasetCommand(csv=True)._print_csv(writer, "tvec", signal_type, value, Labelled())  # type: ignore[arg-type]
    assert export(parse(out.getvalue()), "pytx") == out.getvalue()

    path = DATA / "local_file.txt"
    api = LocalFileSignalExchangeAPI(
        FileCollaborationConfig(name="t", api="local_file", enabled=True, filename=str(path))
    )
    fetched = {key for delta in api.fetch_iter([], None) for key in delta.updates}
    assert fetched == {tuple(line.split(" ")) for line in fixture("local_file.txt").splitlines()}
    assert {kind for kind, _ in fetched} <= {PdqSignal.get_name(), VideoMD5Signal.get_name(), "video_sha256"}
