"""The Redis media store against a real Redis, as the app wires it: bytes kept once by digest,
with a TTL each put refreshes."""

from __future__ import annotations

import pytest

from pipeline.app import App
from pipeline.config import Settings
from pipeline.state.media import PREFIX, RedisMediaStore, digest_of, ref_of

pytestmark = pytest.mark.integration


def test_redis_media_store_keeps_bytes_once_with_a_refreshed_ttl(settings: Settings) -> None:
    store = App(settings.with_(media_store_ttl_s=100)).media_store()
    assert isinstance(store, RedisMediaStore)
    data = b"\x00\xff binary media " + settings.topic_prefix.encode()
    ref = store.put(data)
    key = PREFIX + digest_of(ref)
    assert ref == ref_of(data) and store.get(ref) == data
    store.redis.expire(key, 5)
    assert store.put(data) == ref and 90 < store.redis.ttl(key) <= 100
    assert store.get(ref_of(b"never stored " + settings.topic_prefix.encode())) is None
    store.redis.delete(key)
