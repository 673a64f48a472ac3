"""The media store: content-addressed, kept once, refs that cannot name anything but a digest;
the files store writes atomically and forgets after its TTL; the setting picks the store."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Settings
from pipeline.records import envelope
from pipeline.stages.enrich import moderation_record
from pipeline.state.media import (
    FileMediaStore,
    RedisMediaStore,
    digest_of,
    media_bytes,
    open_media_store,
    ref_of,
    without_inline_media,
)

DATA = b"\xff\xd8 some media bytes"
REF = "sha256:" + hashlib.sha256(DATA).hexdigest()


def test_refs_are_content_addresses_and_nothing_else() -> None:
    assert ref_of(DATA) == REF and digest_of(REF) == REF.removeprefix("sha256:")
    for bad in (
        "",
        "sha256:",
        "md5:" + "0" * 64,
        "sha256:../../etc/passwd",
        "sha256:" + "A" * 64,
        "sha256:" + "0" * 65,
    ):
        with pytest.raises(ValueError, match="not a media reference"):
            digest_of(bad)


def test_file_store_keeps_media_once_atomically_and_forgets_after_its_ttl(tmp_path: Path) -> None:
    store = FileMediaStore(tmp_path / "media", ttl_s=60)
    assert store.get(REF) is None
    assert store.put(DATA) == REF and store.put(DATA) == REF
    assert store.get(REF) == DATA
    files = [p for p in (tmp_path / "media").rglob("*") if p.is_file()]
    assert [p.name for p in files] == [digest_of(REF)]  # no temporary file left behind
    old = time.time() - 120
    os.utime(files[0], (old, old))
    assert store.get(REF) is None  # expired
    store.put(DATA)  # a put refreshes the TTL
    assert store.get(REF) == DATA
    files[0].write_bytes(b"damaged")
    assert store.get(REF) is None  # not the content its name promises
    with pytest.raises(ValueError):
        store.get("sha256:../../../etc/passwd")


class FakeRedis:
    """What RedisMediaStore uses of a redis.Redis, in memory, with TTLs."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.ttl: dict[str, int] = {}
        self.sets = 0

    def pipeline(self, transaction: bool = True) -> FakeRedis:
        return self

    def execute(self) -> list[Any]:
        return []

    def set(self, key: str, value: bytes, nx: bool = False, ex: int | None = None) -> bool:
        if nx and key in self.data:
            return False
        self.sets += 1
        self.data[key] = value
        self.ttl[key] = ex or -1
        return True

    def expire(self, key: str, seconds: int) -> bool:
        self.ttl[key] = seconds
        return key in self.data

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)


def test_redis_store_sets_once_with_a_ttl_that_each_put_refreshes() -> None:
    client = FakeRedis()
    store = RedisMediaStore(client, ttl_s=100)
    assert store.put(DATA) == REF and store.put(DATA) == REF
    key = "modstream:media:" + digest_of(REF)
    assert client.sets == 1 and client.ttl[key] == 100 and store.get(REF) == DATA
    client.ttl[key] = 5
    store.put(DATA)
    assert client.ttl[key] == 100
    assert store.get(ref_of(b"other")) is None


def test_the_setting_picks_the_store(tmp_path: Path) -> None:
    client = FakeRedis()
    assert open_media_store("none", 10, lambda: client) is None
    redis_store = open_media_store("redis", 10, lambda: client)
    assert isinstance(redis_store, RedisMediaStore) and redis_store.ttl_s == 10
    file_store = open_media_store(f"file://{tmp_path}/m", 10, lambda: client)
    assert isinstance(file_store, FileMediaStore) and file_store.root == tmp_path / "m"
    for bad in ("s3://bucket", "file://otherhost/x", "file://", "Redis"):
        with pytest.raises(ValueError, match="MODSTREAM_MEDIA_STORE"):
            open_media_store(bad, 10, lambda: client)
    env = {
        "MODSTREAM_MEDIA_STORE": "file:///var/lib/modstream/media",
        "MODSTREAM_MEDIA_STORE_TTL_S": "3600",
        "MODSTREAM_MEDIA_BATCH_BUDGET_S": "2.5",
        "MODSTREAM_MEDIA_DECODE_TIMEOUT_S": "4",
    }
    s = Settings.from_env(env)
    assert (s.media_store, s.media_store_ttl_s, s.media_batch_budget_s, s.media_decode_timeout_s) == (
        "file:///var/lib/modstream/media",
        3600,
        2.5,
        4.0,
    )
    d = Settings.from_env({})
    assert (d.media_store, d.media_store_ttl_s, d.media_batch_budget_s) == ("redis", 7 * 24 * 3600, 0.0)


def test_records_give_their_media_from_the_store_or_inline(tmp_path: Path) -> None:
    store = FileMediaStore(tmp_path)
    upload = {"envelope": envelope("p", content_id="c"), "media_b64": DATA, "media_uri": None, "media_type": None}
    inline = moderation_record("uploads", upload)
    assert media_bytes(inline, store) == DATA  # enriched before media travelled by reference
    stripped = without_inline_media(inline)
    assert stripped["upload"]["media_b64"] is None and inline["upload"]["media_b64"] == DATA  # a copy
    by_ref = {**stripped, "media_ref": store.put(DATA)}
    assert media_bytes(by_ref, store) == DATA and media_bytes(by_ref, None) is None
    live = moderation_record("live", {"envelope": envelope("p", stream_id="s"), "kind": "frame", "frame_b64": DATA})
    assert without_inline_media(live)["live"]["frame_b64"] is None
