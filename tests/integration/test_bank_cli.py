"""`modstream bank` through the broker: import, add-media, list, export, delete."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import Settings
from tests.media import encode, photo, video

from ..conftest import settings_env
from .test_cli import cli

pytestmark = pytest.mark.integration

MD5 = hashlib.md5(b"x").hexdigest()
SHA = hashlib.sha256(b"x").hexdigest()
PDQ = "f" * 64
DATA = Path(__file__).parent.parent / "data" / "banks"


def export_bytes(settings: Settings, *args: str) -> bytes:
    """`bank export` as bytes: pytx's CSV ends its lines with CRLF."""
    out = subprocess.run(
        [sys.executable, "-m", "pipeline", "--log-level", "WARNING", "bank", "export", *args],
        capture_output=True,
        env=settings_env(settings),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_list_export_delete(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(f"sha256,{SHA},terrorism,critical\nsha256,nothex,terrorism,critical\nmd5,{MD5},hate,extreme\n")
    out = cli(settings, "bank", "import", str(bad))
    assert out.returncode != 0
    assert "line 2: 'nothex' is not a valid sha256 hash" in out.stderr and "line 3: severity" in out.stderr
    assert "nothing imported" in out.stderr

    good = tmp_path / "good.csv"
    good.write_text(
        f"signal_type,hash,category,severity,bank\nsha256,{SHA.upper()},terrorism,critical\n"
        f"md5,{MD5},hate,medium,partner\npdq,{PDQ},violent_extremism,high\n"
    )
    assert cli(settings, "bank", "import", str(good), "--bank", "local").stdout.strip() == "imported 3 entries"
    listed = cli(settings, "bank", "list").stdout.splitlines()
    assert listed == ["local\tpdq\t1", "local\tsha256\t1", "partner\tmd5\t1"]
    exported = cli(settings, "bank", "export").stdout
    assert f"sha256,{SHA},terrorism,critical,local" in exported  # hashes are normalised to lower case
    # export is valid import input
    (tmp_path / "round.csv").write_text(exported)
    assert cli(settings, "bank", "import", str(tmp_path / "round.csv")).returncode == 0

    assert (
        cli(settings, "bank", "delete", "local", "--signal-type", "pdq", "--hash", PDQ).stdout.strip()
        == "deleted 1 entries"
    )
    assert cli(settings, "bank", "delete", "partner").stdout.strip() == "deleted 1 entries"
    assert cli(settings, "bank", "list").stdout.splitlines() == ["local\tsha256\t1"]


def test_add_media_banks_image_and_video_hashes(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "a.jpg").write_bytes(encode(photo(1)))
    (tmp_path / "b.mp4").write_bytes(video(2, seconds=4))
    out = cli(
        settings,
        "bank",
        "add-media",
        str(tmp_path / "a.jpg"),
        str(tmp_path / "b.mp4"),
        "--bank",
        "tvec",
        "--category",
        "terrorism",
        "--severity",
        "critical",
    )
    assert out.returncode == 0, out.stderr
    counts = {
        tuple(line.split("\t")[:2]): int(line.split("\t")[2])
        for line in cli(settings, "bank", "list").stdout.splitlines()
    }
    assert counts[("tvec", "pdq")] == 1 and counts[("tvec", "sha256")] == 2 and counts[("tvec", "video_pdq")] >= 2
    (tmp_path / "junk.jpg").write_bytes(b"junk" * 10)
    out = cli(settings, "bank", "add-media", str(tmp_path / "junk.jpg"), "--bank", "tvec", "--category", "terrorism")
    assert out.returncode != 0 and "not a decodable image or video" in out.stderr


def test_exchange_formats_import_and_export(settings: Settings, tmp_path: Path) -> None:
    """pytx dataset CSV and local_file round trip through the banks topic byte for byte; a
    TCAP-style CSV imports; what a format cannot name is left out, and said so."""
    pytx, local_file = DATA / "pytx_dataset.csv", DATA / "local_file.txt"
    assert cli(settings, "bank", "import", str(pytx), "--severity", "critical").stdout.strip() == "imported 5 entries"
    assert export_bytes(settings, "--format", "pytx") == pytx.read_bytes()

    out = cli(settings, "bank", "import", str(local_file), "--bank", "te")
    assert out.returncode != 0 and "local_file rows carry no category: give --category" in out.stderr
    out = cli(settings, "bank", "import", str(local_file), "--format", "local_file", "--bank", "te", "--category", "t")
    assert out.stdout.strip() == "imported 4 entries", out.stderr
    assert export_bytes(settings, "--format", "local_file", "--bank", "te") == local_file.read_bytes()

    out = cli(settings, "bank", "import", str(DATA / "tcap.csv"), "--bank", "tcap")
    assert out.stdout.strip() == "imported 4 entries", out.stderr
    listed = cli(settings, "bank", "list").stdout.splitlines()
    assert "tcap\tpdq\t2" in listed and "tcap\tmd5\t1" in listed and "tvec\tsha256\t2" in listed

    (tmp_path / "frames.csv").write_text(f"video_pdq,{PDQ},terrorism,critical,gifct\n")
    assert cli(settings, "bank", "import", str(tmp_path / "frames.csv")).returncode == 0
    out = cli(settings, "bank", "export", "--format", "tcap", "--bank", "gifct")
    assert out.stdout.splitlines()[0] == "hash,algorithm,category" and len(out.stdout.splitlines()) == 3
    assert "left out 1 video_pdq entries: the tcap format has no name for them" in out.stderr
