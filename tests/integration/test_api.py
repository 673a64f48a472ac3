"""`modstream serve` against a running pipeline through the broker: a banned image is blocked
synchronously, a clean upload allowed, both events reach `mod.uploads` and the pipeline
decides them with the same decision ids; a hash banked through the HMA API is matched once
the bank topic brings it back."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from pipeline.app import PIPELINE, App
from pipeline.banks import admin
from pipeline.config import Settings
from pipeline.dev.services import free_port
from tests.media import encode, photo

from ..conftest import settings_env
from .helpers import collect, event_ids, running

pytestmark = pytest.mark.integration

BANNED = encode(photo(2001), quality=90)
CLEAN = encode(photo(2002), quality=90)
TOKEN = "integration-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def server(settings: Settings) -> Iterator[httpx.Client]:
    """`modstream serve` in a subprocess, with a token holding every scope."""
    port = free_port()
    env = {
        **settings_env(settings),
        "MODSTREAM_API_TOKENS": json.dumps({TOKEN: {"name": "it", "scopes": ["check", "banks:read", "banks:write"]}}),
        "MODSTREAM_API_HASH_THREADS": "2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--log-level", "WARNING", "serve", "--port", str(port), "--no-access-log"],
        env=env,
    )
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, "modstream serve exited"
            assert time.monotonic() < deadline, "modstream serve did not start"
            time.sleep(0.2)
        yield client
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)


def test_check_blocks_banned_media_and_the_pipeline_agrees(settings: Settings, server: httpx.Client) -> None:
    banned_md5 = hashlib.md5(BANNED).hexdigest()
    entries = [admin.bank_entry("tvec", "md5", banned_md5, "terrorism", "critical", "test")]
    admin.publish(settings, entries)
    deadline = time.monotonic() + 10  # the server follows the bank topic: the entry arrives within a second
    while not server.get("/m/lookup", params={"signal_type": "md5", "signal": banned_md5}, headers=AUTH).json():
        assert time.monotonic() < deadline, "the banked hash never reached the server"
        time.sleep(0.1)

    app = App(settings)
    try:
        with running(settings, [app.build(n) for n in PIPELINE]):
            banned = server.post(
                "/v1/check",
                json={"media_b64": base64.b64encode(BANNED).decode(), "content_id": "c-banned", "user_id": "u1"},
                headers=AUTH,
            )
            clean = server.post(
                "/v1/check",
                json={"media_b64": base64.b64encode(CLEAN).decode(), "content_id": "c-clean", "text": "hello"},
                headers=AUTH,
            )
            # a platform that hashed the file itself sends only the hash
            hashed = server.post(
                "/v1/check", json={"hashes": {"md5": banned_md5}, "content_id": "c-hashed"}, headers=AUTH
            )
            assert banned.status_code == 200 and clean.status_code == 200, (banned.text, clean.text)
            assert hashed.status_code == 200, hashed.text
            blocked, allowed, hash_only = banned.json(), clean.json(), hashed.json()
            assert hash_only["action"] == "remove" and hash_only["matches"][0]["hash"] == banned_md5
            assert (blocked["action"], blocked["rule"], blocked["matches"][0]["bank"]) == (
                "remove",
                "bank-match-severe",
                "tvec",
            )
            assert allowed["action"] == "allow" and allowed["matches"] == []
            ids = {blocked["event_id"], allowed["event_id"], hash_only["event_id"]}
            uploads = collect(settings, "uploads", lambda rs: ids <= set(event_ids(rs)))
            assert ids <= set(event_ids(uploads))
            seen = {u["envelope"]["event_id"]: u for u in uploads}
            assert seen[blocked["event_id"]]["media_b64"] == BANNED
            assert seen[blocked["event_id"]]["envelope"]["content_id"] == "c-banned"
            assert [(g["signal_type"], g["value"]) for g in seen[hash_only["event_id"]]["signals"]] == [
                ("md5", banned_md5)
            ]
            decisions = collect(settings, "decisions", lambda ds: ids <= set(event_ids(ds)))
    finally:
        app.close()
    by_event = {d["envelope"]["event_id"]: d for d in decisions}
    for verdict in (blocked, allowed, hash_only):
        decided = by_event[verdict["event_id"]]
        assert decided["decision_id"] == verdict["decision_id"]  # the same event, decided the same way
        assert decided["action"] == verdict["action"]


def test_hma_writes_go_through_the_bank_topic(settings: Settings, server: httpx.Client) -> None:
    value = "5a" * 32
    r = server.post("/c/bank/PARTNER_X/signal?severity=critical", json={"pdq": value}, headers=AUTH)
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + 10
    while not (found := server.get("/m/lookup", params={"signal_type": "pdq", "signal": value}, headers=AUTH).json()):
        assert time.monotonic() < deadline, "the banked hash never came back from the bank topic"
        time.sleep(0.1)
    assert found == {"PARTNER_X": [{"bank_content_id": r.json()["id"], "distance": "0"}]}
    assert [e["source"] for e in admin.current(settings, "PARTNER_X")] == ["api:it"]
    assert server.get("/c/bank/PARTNER_X", headers=AUTH).json() == {"name": "PARTNER_X", "matching_enabled_ratio": 1.0}
    assert server.get("/c/banks").status_code == 401
