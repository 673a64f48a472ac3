"""The HTTP API through Starlette's TestClient, with fakes for Kafka: tokens and scopes, limits
and malformed requests, the check's verdicts and events, and the HMA-compatible endpoints
checked field by field, called the way Coop's HMA client calls them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from pipeline.api.app import Services, build_services, create_app
from pipeline.api.auth import TokenTable, digest
from pipeline.api.hma import content_id
from pipeline.api.settings import ApiSettings
from pipeline.banks.table import BankTable
from pipeline.models.registry import Threshold
from pipeline.policy.engine import load_policy
from pipeline.records import Record, record_key, stable_id
from pipeline.sdk import DeliveryError, RecordTooLarge
from pipeline.signals.fetch import MediaFetcher
from pipeline.signals.media import MediaLimits, media_signals
from pipeline.stages.classify import ClassifyStage
from pipeline.stages.decide import DecideStage
from tests.media import encode, photo

BANNED = encode(photo(11, (320, 240)))
CLEAN = encode(photo(12, (320, 240)))
BANNED_PDQ = next(s["value"] for s in media_signals(BANNED, MediaLimits()) if s["signal_type"] == "pdq")
TOKENS = {
    "check-token-0123456789": ["check"],
    "reader-token-0123456789": ["banks:read"],
    "writer-token-0123456789": ["banks:write", "banks:read", "check"],
}
CHECK = {"Authorization": "Bearer check-token-0123456789"}
READ = {"Authorization": "Bearer reader-token-0123456789"}
WRITE = {"Authorization": "Bearer writer-token-0123456789"}
LABELS = ("benign", "graphic_violence", "hate", "violent_extremism")
THRESHOLDS = {
    ("text-default", "violent_extremism"): Threshold(0.5, 0.9),
    ("text-default", "hate"): Threshold(0.6),
    ("text-default", "graphic_violence"): Threshold(0.6),
}


class FakeTextModel:
    """The registry's text model as the policy knows it; calls to arms score as violent extremism."""

    spec = SimpleNamespace(name="text-default", modality="text", labels=LABELS)

    def scores(self, inputs: Sequence[str]) -> np.ndarray:
        violent = [0.01, 0.01, 0.02, 0.96]
        return np.array([violent if "TAKE UP ARMS" in x.upper() else [0.97, 0.01, 0.01, 0.01] for x in inputs])


class FakePublisher:
    """Takes upload events as the Kafka publisher does: refuses one over `max_bytes` at once,
    acknowledges (or refuses, with `fail`) the rest."""

    def __init__(self, max_bytes: int = 1_000_000) -> None:
        self.events: list[Record] = []
        self.max_bytes = max_bytes
        self.fail = False

    def submit(self, topic: str, event: Record) -> asyncio.Future[None]:
        size = len(event.get("media_b64") or b"") + len(event.get("text") or "")
        if size > self.max_bytes:
            raise RecordTooLarge(f"uploads record is {size} bytes, over the message limit of {self.max_bytes}")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(DeliveryError([(event["envelope"]["event_id"], "broker down")]))
        else:
            self.events.append({"topic": topic, **event})
            future.set_result(None)
        return future

    def close(self) -> None:
        pass


class FakeBankTopic:
    """Bank writes, applied to the table at once as the bank follower would."""

    def __init__(self, table: BankTable) -> None:
        self.table = table
        self.written: list[Record] = []

    def __call__(self, entries: Iterable[Record]) -> int:
        entries = list(entries)
        self.written += entries
        self.table.load(entries)
        return len(entries)


def entry(bank: str, signal_type: str, value: str, severity: str = "critical") -> Record:
    return {
        "bank": bank,
        "signal_type": signal_type,
        "hash": value,
        "category": "terrorism",
        "severity": severity,
        "source": "test",
        "added_at": 0,
        "item_id": None,
    }


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    table = BankTable()
    table.load([entry("TERROR_A", "pdq", BANNED_PDQ), entry("TERROR_B", "md5", hashlib.md5(BANNED).hexdigest())])
    policy = load_policy(registry_thresholds=THRESHOLDS)
    api = ApiSettings(TokenTable.from_tokens(TOKENS), max_request_bytes=2 * 1024 * 1024, hash_threads=2)
    built = build_services(
        api,
        "test-platform",
        table,
        FakePublisher(),
        FakeBankTopic(table),
        MediaLimits(),
        ClassifyStage([FakeTextModel()]),
        DecideStage(policy, None),
        fetcher=MediaFetcher(tmp_path),
    )
    yield built
    built.close()


@pytest.fixture
def client(services: Services) -> Iterator[TestClient]:
    with TestClient(create_app(services), raise_server_exceptions=False) as c:
        yield c


def published(services: Services) -> list[Record]:
    return services.checker.publisher.events  # type: ignore[attr-defined,no-any-return]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ---- tokens and scopes ------------------------------------------------------------------------
def test_no_token_is_401_with_a_reason_and_a_challenge(client: TestClient) -> None:
    r = client.post("/v1/check", json={"text": "hello"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "token" in r.json()["reason"]
    for header in ("Bearer not-a-known-token-at-all", "Basic abc", "Bearer "):
        r = client.post("/v1/check", json={"text": "hello"}, headers={"Authorization": header})
        assert r.status_code == 401 and r.json()["reason"]


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/v1/check", READ),
        ("GET", "/m/lookup?signal_type=pdq&signal=" + "0" * 64, READ),
        ("GET", "/c/banks", CHECK),
        ("POST", "/c/bank/TERROR_A/signal", CHECK),
        ("POST", "/c/bank/TERROR_A/signal", READ),
        ("POST", "/c/bank/TERROR_A/content", READ),
    ],
)
def test_a_token_without_the_scope_is_403(client: TestClient, method: str, path: str, headers: dict[str, str]) -> None:
    r = client.request(method, path, headers=headers, json={"pdq": "0" * 64})
    assert r.status_code == 403
    assert "lacks the scope" in r.json()["reason"]
    if path.startswith(("/m/", "/c/")):
        assert r.json()["message"] == r.json()["reason"]  # HMA's ErrorResponse


def test_token_configuration_keeps_digests_and_names_no_secret(tmp_path: Path) -> None:
    secret = "s3cret-token-for-coop-0001"
    file = tmp_path / "tokens"
    file.write_text(f"# name digest scopes\nops {digest('ops-token-000000000001')} banks:read,banks:write\n")
    table = TokenTable.from_config(
        json.dumps({secret: {"name": "coop", "scopes": ["check"]}, "plain-token-0000000001": ["banks:read"]}),
        str(file),
        "",
    )
    assert table.authorize(f"Bearer {secret}", "check").name == "coop"
    assert table.authorize("Bearer ops-token-000000000001", "banks:write").name == "ops"
    assert table.authorize("Bearer plain-token-0000000001", "banks:read").name.startswith("token:")
    assert secret not in repr(table.__dict__)
    with pytest.raises(ValueError, match="unknown scopes admin") as bad:
        TokenTable.from_config(json.dumps({secret: ["admin"]}), "", "")
    assert secret not in str(bad.value)
    with pytest.raises(ValueError, match="line 1"):
        file.write_text("ops nothex check\n")
        TokenTable.from_config("", str(file), "")
    anonymous = TokenTable.from_config("", "", "banks:read")
    assert anonymous.authorize(None, "banks:read").name == "anonymous"


def test_api_settings_from_the_environment() -> None:
    api = ApiSettings.from_env(
        {
            "MODSTREAM_API_TOKENS": json.dumps(TOKENS),
            "MODSTREAM_API_MAX_REQUEST_BYTES": "4096",
            "MODSTREAM_API_HASH_THREADS": "3",
        }
    )
    assert (len(api.tokens), api.max_request_bytes, api.threads) == (3, 4096, 3)
    assert ApiSettings.from_env({}).max_request_bytes == 16 * 1024 * 1024
    with pytest.raises(ValueError, match="MAX_REQUEST_BYTES"):
        ApiSettings.from_env({"MODSTREAM_API_MAX_REQUEST_BYTES": "10"})


# ---- limits and malformed requests ---------------------------------------------------------------
def test_an_oversized_request_is_413_with_a_json_reason(client: TestClient) -> None:
    big = {"media_b64": b64(b"\xff" * (2 * 1024 * 1024))}
    r = client.post("/v1/check", json=big, headers=CHECK)
    assert r.status_code == 413
    assert "exceeds the limit of 2097152 bytes" in r.json()["reason"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"text": "'
        for _ in range(40):
            yield b"a" * 65536
        yield b'"}'

    r = client.post("/v1/check", content=chunks(), headers={**CHECK, "Content-Type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["reason"]
    r = client.post("/c/bank/X/signal", content=chunks(), headers={**WRITE, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["message"] == r.json()["reason"]


def test_media_over_the_kafka_message_limit_is_413(client: TestClient, services: Services) -> None:
    services.checker.publisher.max_bytes = 1000  # type: ignore[attr-defined]
    r = client.post("/v1/check", json={"media_b64": b64(CLEAN)}, headers=CHECK)
    assert r.status_code == 413 and "message limit" in r.json()["reason"]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"text": "x", "medya": "y"}', "unknown fields: medya"),
        (b'{"media_b64": "@@@"}', "not valid base64"),
        (b'{"content_id": 7, "text": "x"}', "content_id must be a string"),
        (b'{"content_id": "c"}', "nothing to check"),
        (b'{"hashes": {"pdq": "xyz"}}', "not a valid pdq hash"),
        (b'{"hashes": {"phash": "00"}}', "unknown signal type"),
        (b'{"hashes": [{"signal_type": "pdq", "value": "' + b"0" * 64 + b'", "quality": 101}]}', "quality"),
        (b'{"text": "x", "occurred_at": -5}', "negative"),
        (b'{"text": "x", "event_id": " "}', "event_id is empty"),
        (b'{"media_b64": "AAAA", "media_uri": "file:///x"}', "media once"),
    ],
)
def test_a_malformed_check_is_400_with_the_reason(client: TestClient, body: bytes, reason: str) -> None:
    r = client.post("/v1/check", content=body, headers={**CHECK, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert reason in r.json()["reason"]


def test_wrong_content_type_method_and_path_answer_json(client: TestClient) -> None:
    r = client.post("/v1/check", content=b"text=x", headers={**CHECK, "Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["reason"]
    r = client.get("/v1/check", headers=CHECK)
    assert r.status_code == 405 and r.json()["reason"]
    r = client.get("/v1/nothing", headers=CHECK)
    assert r.status_code == 404 and r.json()["reason"]
    r = client.post("/c/bank/X/signal", content=b"{", headers={**WRITE, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["message"].startswith("the body is not valid JSON")


# ---- the check -----------------------------------------------------------------------------
def test_banned_media_is_removed_and_the_event_published(client: TestClient, services: Services) -> None:
    r = client.post(
        "/v1/check",
        json={"media_b64": b64(BANNED), "content_id": "c-1", "user_id": "u-1", "event_id": "ev-1"},
        headers=CHECK,
    )
    assert r.status_code == 200, r.text
    v = r.json()
    assert (v["action"], v["rule"], v["category"], v["severity"]) == (
        "remove",
        "bank-match-severe",
        "terrorism",
        "critical",
    )
    assert {(m["bank"], m["signal_type"]) for m in v["matches"]} == {("TERROR_A", "pdq"), ("TERROR_B", "md5")}
    assert v["decision_id"] == stable_id("ev-1", "default", load_policy().version)  # the pipeline's decision id
    assert v["published"] and v["media_error"] is None
    assert {s["signal_type"] for s in v["signals"]} >= {"md5", "sha256", "pdq"}
    [event] = published(services)
    assert event["topic"] == "uploads"
    assert event["envelope"]["event_id"] == "ev-1" and event["envelope"]["platform_id"] == "test-platform"
    assert (event["envelope"]["content_id"], event["envelope"]["user_id"]) == ("c-1", "u-1")
    assert event["media_b64"] == BANNED


def test_clean_media_and_text_are_allowed_with_scores(client: TestClient, services: Services) -> None:
    r = client.post("/v1/check", json={"media_b64": b64(CLEAN), "text": "a picture of my cat"}, headers=CHECK)
    v = r.json()
    assert r.status_code == 200 and v["action"] == "allow" and v["matches"] == []
    assert {s["label"] for s in v["scores"]} >= {"violent_extremism", "benign"}
    assert published(services)[0]["envelope"]["event_id"] == v["event_id"]  # filled in


def test_violent_text_is_judged_by_the_models(client: TestClient) -> None:
    text = "IT IS TIME TO TAKE UP ARMS AND ATTACK THE STADIUM, SHOW NO MERCY."
    v = client.post("/v1/check", json={"text": text}, headers=CHECK).json()
    assert (v["action"], v["rule"]) == ("remove", "classifier-remove")
    assert v["thresholds"] == {"text-default/violent_extremism": 0.9}


def test_ready_hashes_are_matched(client: TestClient) -> None:
    near = BANNED_PDQ[:-2] + ("00" if BANNED_PDQ[-2:] != "00" else "ff")
    v = client.post("/v1/check", json={"hashes": {"pdq": near}}, headers=CHECK).json()
    assert v["action"] == "remove" and v["matches"][0]["bank"] == "TERROR_A" and v["matches"][0]["distance"] > 0
    md5 = hashlib.md5(BANNED).hexdigest().upper()
    v = client.post("/v1/check", json={"hashes": [{"signal_type": "video_md5", "value": md5}]}, headers=CHECK).json()
    assert v["action"] == "remove" and v["matches"][0]["bank"] == "TERROR_B"
    v = client.post("/v1/check", json={"hashes": {"pdq": "0" * 64}}, headers=CHECK).json()
    assert v["action"] == "allow"


def test_a_retry_is_the_same_event_and_is_not_produced_twice(client: TestClient, services: Services) -> None:
    body = {"media_b64": b64(BANNED), "event_id": "retry-1"}
    first = client.post("/v1/check", json=body, headers=CHECK).json()
    second = client.post("/v1/check", json=body, headers=CHECK).json()
    assert first["decision_id"] == second["decision_id"] and second["event_id"] == "retry-1"
    assert len(published(services)) == 1
    keyed = [
        client.post("/v1/check", json={"text": "hi"}, headers={**CHECK, "Idempotency-Key": "k-9"}).json()
        for _ in range(2)
    ]
    assert keyed[0]["event_id"] == keyed[1]["event_id"] == stable_id("api-check", "test-platform", "k-9")


def test_a_multipart_upload_is_checked(client: TestClient, services: Services) -> None:
    r = client.post(
        "/v1/check",
        files={"media": ("x.jpg", BANNED, "image/jpeg")},
        data={"content_id": "c-m", "hashes": json.dumps({"md5": "0" * 32})},
        headers=CHECK,
    )
    assert r.status_code == 200, r.text
    assert r.json()["action"] == "remove"
    assert published(services)[0]["media_type"] == "image/jpeg"
    r = client.post("/v1/check", files={"photo": ("x.jpg", BANNED, "image/jpeg")}, headers=CHECK)
    assert r.status_code == 400 and "named media" in r.json()["reason"]


def test_media_by_uri_follows_the_fetch_rules(client: TestClient, tmp_path: Path) -> None:
    (tmp_path / "banned.jpg").write_bytes(BANNED)
    v = client.post("/v1/check", json={"media_uri": (tmp_path / "banned.jpg").as_uri()}, headers=CHECK).json()
    assert v["action"] == "remove"
    v = client.post("/v1/check", json={"media_uri": "http://169.254.169.254/latest"}, headers=CHECK).json()
    assert "allow-list" in v["media_error"]


def test_unhashable_media_carries_the_reason(client: TestClient) -> None:
    v = client.post("/v1/check", json={"media_b64": b64(b"not an image at all")}, headers=CHECK).json()
    assert v["media_error"] and {s["signal_type"] for s in v["signals"]} == {"md5", "sha256"}


def test_an_unacknowledged_event_is_503_with_the_verdict(client: TestClient, services: Services) -> None:
    services.checker.publisher.fail = True  # type: ignore[attr-defined]
    r = client.post("/v1/check", json={"media_b64": b64(BANNED), "event_id": "e-503"}, headers=CHECK)
    assert r.status_code == 503
    assert "retry with the same event_id" in r.json()["reason"]
    assert r.json()["verdict"]["action"] == "remove" and r.json()["verdict"]["published"] is False


def test_checks_over_the_in_flight_limit_are_refused_at_once(client: TestClient, services: Services) -> None:
    services.in_flight = services.api.in_flight_limit
    r = client.post("/v1/check", json={"text": "hi"}, headers=CHECK)
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "retry shortly" in r.json()["reason"]
    services.in_flight = 0
    assert client.post("/v1/check", json={"text": "hi"}, headers=CHECK).status_code == 200


def test_a_check_finding_no_free_thread_within_the_budget_is_refused_before_publishing(
    client: TestClient, services: Services
) -> None:
    services.checker.queue_budget_s = 0.05
    services.checker._threads = asyncio.Semaphore(0)  # every hashing thread busy
    r = client.post("/v1/check", json={"text": "hi", "event_id": "busy-1"}, headers=CHECK)
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "no hashing thread free" in r.json()["reason"]


# ---- HMA, as Coop's client calls it (roostorg/coop server/services/hmaService/index.ts) -------------
class CoopHmaClient:
    """The calls of Coop's HmaService, with its URLs, parameters and bodies."""

    def __init__(self, client: TestClient, headers: dict[str, str]) -> None:
        self.http = client
        self.headers = headers

    def lookup_content(self, **options: str) -> Any:  # lookupContent({url, contentType, signalType, signal})
        names = {"url": "url", "contentType": "content_type", "signalType": "signal_type", "signal": "signal"}
        params = {names[k]: v for k, v in options.items()}
        r = self.http.get("/m/lookup", params=params, headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()

    def check_image_match_with_details(self, bank_ids: list[str], signal_type: str, signal: str) -> dict[str, Any]:
        matches = self.lookup_content(signal=signal, signalType=signal_type)
        matched = [b for b in bank_ids if matches.get(b)]
        return {"matched": bool(matched), "matchedBanks": matched}

    def hash_content_from_url(self, url: str) -> Any:
        r = self.http.get("/h/hash", params={"url": url}, headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()

    def add_content_to_bank(self, bank: str, file: bytes, content_type: str, metadata: dict[str, Any]) -> Any:
        data = {"content_id": metadata["content_id"], "metadata": json.dumps(metadata["json"])}
        r = self.http.post(
            f"/c/bank/{bank}/content", files={content_type: ("blob", file)}, data=data, headers=self.headers
        )
        assert r.status_code == 200, r.text
        return r.json()

    def get_bank_status(self, hma_name: str) -> int:
        return self.http.get(f"/c/bank/{hma_name}", headers=self.headers).status_code


def assert_lookup_shape(found: Any) -> None:
    """HMA's LookupResponse: {bank: [{bank_content_id: int, distance: str}]}."""
    assert isinstance(found, dict)
    for bank, matches in found.items():
        assert isinstance(bank, str) and isinstance(matches, list) and matches
        for m in matches:
            assert set(m) == {"bank_content_id", "distance"}
            assert isinstance(m["bank_content_id"], int) and 0 <= m["bank_content_id"] < 2**53
            assert isinstance(m["distance"], str)


def test_coop_lookup_by_hash(client: TestClient) -> None:
    coop = CoopHmaClient(client, CHECK)
    found = coop.lookup_content(signal=BANNED_PDQ, signalType="pdq")
    assert_lookup_shape(found)
    assert found == {"TERROR_A": [{"bank_content_id": content_id("TERROR_A", "pdq", BANNED_PDQ), "distance": "0"}]}
    assert coop.check_image_match_with_details(["TERROR_A", "OTHER"], "pdq", BANNED_PDQ) == {
        "matched": True,
        "matchedBanks": ["TERROR_A"],
    }
    assert coop.lookup_content(signal="0" * 64, signalType="pdq") == {}
    md5 = hashlib.md5(BANNED).hexdigest()
    assert coop.lookup_content(signal=md5, signalType="video_md5") == {
        "TERROR_B": [{"bank_content_id": content_id("TERROR_B", "md5", md5), "distance": "-"}]
    }
    r = client.get("/m/lookup", params={"signal": "abc", "signal_type": "pdq"}, headers=CHECK)
    assert r.status_code == 400 and set(r.json()) == {"message", "reason"} and "invalid signal" in r.json()["message"]
    r = client.get("/m/lookup", params={"signal": "abc", "signal_type": "tmk"}, headers=CHECK)
    assert r.status_code == 400 and r.json()["message"] == "No such SignalType 'tmk'"


def test_coop_lookup_and_hash_by_url(client: TestClient, tmp_path: Path) -> None:
    coop = CoopHmaClient(client, CHECK)
    (tmp_path / "b.jpg").write_bytes(BANNED)
    url = (tmp_path / "b.jpg").as_uri()
    assert coop.hash_content_from_url(url) == {"pdq": BANNED_PDQ}
    by_type = coop.lookup_content(url=url, contentType="photo")
    assert set(by_type) == {"pdq"}
    assert_lookup_shape(by_type["pdq"])
    assert list(by_type["pdq"]) == ["TERROR_A"]
    assert coop.lookup_content(url=url, signalType="pdq") == by_type["pdq"]  # the outer object elided


def test_coop_adds_content_to_a_bank_and_finds_it(client: TestClient, services: Services, caplog: Any) -> None:
    coop = CoopHmaClient(client, WRITE)
    caplog.set_level(logging.INFO, logger="pipeline.api.audit")
    added = coop.add_content_to_bank("COOP_ORG1_NEW", CLEAN, "photo", {"content_id": "item-7", "json": {"why": "x"}})
    assert set(added) == {"id", "signals"} and isinstance(added["id"], int)
    pdq = next(s["value"] for s in media_signals(CLEAN, MediaLimits()) if s["signal_type"] == "pdq")
    assert added["signals"] == {
        "pdq": pdq,
        "md5": hashlib.md5(CLEAN).hexdigest(),
        "sha256": hashlib.sha256(CLEAN).hexdigest(),
    }
    written = services.write_banks.written  # type: ignore[attr-defined]
    assert {e["signal_type"] for e in written} == {"pdq", "md5", "sha256"}
    assert {e["source"] for e in written} == {"api:token:" + digest("writer-token-0123456789")[:8]}
    assert all(e["bank"] == "COOP_ORG1_NEW" and e["category"] == "unspecified" for e in written)
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == "pipeline.api.audit"]
    assert line["audit"] == "bank.add_content" and line["who"].startswith("token:") and line["at"] > 0
    assert line["metadata"] == {"content_id": "item-7", "json": {"why": "x"}}
    assert "writer-token-0123456789" not in caplog.text
    assert coop.get_bank_status("COOP_ORG1_NEW") == 200
    assert coop.get_bank_status("COOP_ORG1_MISSING") == 404
    found = coop.lookup_content(signal=pdq, signalType="pdq")
    assert found["COOP_ORG1_NEW"] == [{"bank_content_id": added["id"], "distance": "0"}]
    v = client.post("/v1/check", json={"media_b64": b64(CLEAN)}, headers=CHECK).json()
    assert v["action"] == "remove"  # the new bank counts for the check too


def test_hash_endpoint_shapes(client: TestClient) -> None:
    r = client.post("/h/hash", files={"photo": ("x", BANNED)}, headers=CHECK)
    assert r.status_code == 200 and r.json() == {"pdq": BANNED_PDQ}
    r = client.post("/h/hash?types=pdq,md5", files={"photo": ("x", BANNED)}, headers=CHECK)
    assert r.json() == {"pdq": BANNED_PDQ, "md5": hashlib.md5(BANNED).hexdigest()}
    r = client.post("/h/hash", files={"image": ("x", BANNED)}, headers=CHECK)
    assert r.status_code == 400 and r.json()["message"] == "no such content_type: 'image'"
    r = client.post("/h/hash", files={"photo": ("x", BANNED), "video": ("y", BANNED)}, headers=CHECK)
    assert r.status_code == 400
    r = client.post("/h/hash", files={"video": ("x", b"\x00" * 64)}, headers=CHECK)
    assert r.status_code == 200 and r.json() == {"video_md5": hashlib.md5(b"\x00" * 64).hexdigest()}
    r = client.post("/m/lookup", files={"photo": ("x", BANNED)}, headers=CHECK)
    assert r.status_code == 200 and set(r.json()) == {"pdq"}
    assert_lookup_shape(r.json()["pdq"])


def test_raw_lookup_get_and_post(client: TestClient) -> None:
    pid = content_id("TERROR_A", "pdq", BANNED_PDQ)
    r = client.get("/m/raw_lookup", params={"signal": BANNED_PDQ, "signal_type": "pdq"}, headers=CHECK)
    assert r.json() == {"matches": [pid]}
    params = {"signal": BANNED_PDQ, "signal_type": "pdq", "include_distance": "true"}
    assert client.get("/m/raw_lookup", params=params, headers=CHECK).json() == {
        "matches": [{"bank_content_id": pid, "distance": "0"}]
    }
    body = {"signal": BANNED_PDQ, "signal_type": "pdq", "include_distance": True, "banks": "OTHER"}
    assert client.post("/m/raw_lookup", json=body, headers=CHECK).json() == {"matches": []}
    r = client.get("/m/raw_lookup", params={"signal_type": "pdq"}, headers=CHECK)
    assert r.status_code == 400 and r.json()["message"] == "signal is required"


def test_banks_and_signals(client: TestClient, services: Services) -> None:
    r = client.get("/c/banks", headers=READ)
    assert r.json() == [
        {"name": "TERROR_A", "matching_enabled_ratio": 1.0},
        {"name": "TERROR_B", "matching_enabled_ratio": 1.0},
    ]
    assert client.get("/c/bank/TERROR_B", headers=READ).json() == {"name": "TERROR_B", "matching_enabled_ratio": 1.0}
    r = client.get("/c/bank/NOPE", headers=READ)
    assert r.status_code == 404 and r.json()["message"] == "bank 'NOPE' not found"
    value = "ab" * 32
    r = client.post(
        "/c/bank/NEW_BANK/signal?severity=critical",
        json={"pdq": value.upper(), "video_md5": "cd" * 16, "note": "from a partner"},
        headers=WRITE,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"id": content_id("NEW_BANK", "pdq", value), "signals": {"pdq": value, "video_md5": "cd" * 16}}
    written = services.write_banks.written  # type: ignore[attr-defined]
    assert [(e["signal_type"], e["severity"]) for e in written] == [("pdq", "critical"), ("md5", "critical")]
    assert written[0]["hash"] == value and record_key("banks", written[0]) == f"NEW_BANK/pdq/{value}"
    assert [b["name"] for b in client.get("/c/banks", headers=READ).json()] == ["NEW_BANK", "TERROR_A", "TERROR_B"]
    for body, reason in (
        ({}, "No signals given"),
        ({"tmk": "00"}, "No such signal type tmk"),
        ({"pdq": "zz"}, "not a valid pdq hash"),
        ({"pdq": value, "note": "n" * 300}, "note must be at most 255 characters"),
    ):
        r = client.post("/c/bank/NEW_BANK/signal", json=body, headers=WRITE)
        assert r.status_code == 400 and reason in r.json()["message"], r.text


def test_openapi_document(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    paths = doc["paths"]
    assert set(paths) >= {
        "/v1/check",
        "/m/lookup",
        "/m/raw_lookup",
        "/h/hash",
        "/c/banks",
        "/c/bank/{name}",
        "/c/bank/{name}/content",
        "/c/bank/{name}/signal",
    }
    assert set(paths["/m/lookup"]) == {"get", "post"}
    verdict = paths["/v1/check"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert (
        verdict == "#/components/schemas/Verdict"
        and "decision_id" in doc["components"]["schemas"]["Verdict"]["properties"]
    )
    assert client.get("/healthz").json()["bank_entries"] == 2


class AccountsAway:
    def get_many(self, user_ids: Any) -> dict[str, Record]:
        raise ConnectionError("Error 111 connecting to the account store")


def test_a_store_that_does_not_answer_is_503_with_a_retry_after(client: TestClient, services: Services) -> None:
    services.checker.accounts = AccountsAway()  # type: ignore[assignment]
    r = client.post("/v1/check", json={"text": "hello", "user_id": "u1"}, headers=CHECK)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert "does not answer (ConnectionError)" in r.json()["reason"]
