"""The review console through Starlette's TestClient, with a fake backend for Kafka and Redis:
sessions and sign-in, CSRF and origin checks, escaping, the item page's evidence and veiled
media, verdicts, escalation, bank search (near PDQ hashes too, through the real backend's
search over a BankTable) and incident writes (declare, accept a proposal, add seed media,
close) and their audit, the report's charts."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.testclient import TestClient

from pipeline.api import console
from pipeline.api.app import Services, build_services, create_app
from pipeline.api.auth import TokenTable
from pipeline.api.console import charts
from pipeline.api.console.audit import audit_record, audited_bank_writer
from pipeline.api.console.backend import KafkaBackend
from pipeline.api.console.html import esc, tag, time_left
from pipeline.api.console.session import COOKIE, Sessions
from pipeline.api.settings import ApiSettings
from pipeline.banks.table import BankTable, MatchConfig
from pipeline.config import Settings
from pipeline.records import Record, envelope, now_ms
from pipeline.signals.media import MediaError, MediaLimits
from tests.media import encode, photo

REVIEW_TOKEN = "review-token-0123456789"  # rita: review and banks:write
VERDICTS_TOKEN = "verdicts-only-token-0123456789"  # vera: review alone
CHECK_TOKEN = "check-token-0123456789"
JPEG = encode(photo(21, (64, 48)))
DIGEST = "ab" * 32
HOSTILE = '<script>alert("x")</script>'
SECRET = b"s" * 32
PDQ = "5a" * 32


def near(value: str, bits: int) -> str:
    """`value`, a 256-bit hash, with its lowest `bits` bits flipped: at Hamming distance `bits`."""
    return f"{int(value, 16) ^ ((1 << bits) - 1):064x}"


def entry(bank: str, signal_type: str, value: str) -> Record:
    return {"bank": bank, "signal_type": signal_type, "hash": value, "category": "terrorism"} | {
        "severity": "critical",
        "source": "ops",
        "added_at": 0,
    }


def task(task_id: str, content_id: str, priority: int, deadline: int, reason: str = "report burst") -> Record:
    return {
        "task_id": task_id,
        "envelope": envelope("local", content_id=content_id, user_id="uploader-1"),
        "priority": priority,
        "deadline": deadline,
        "reason": reason,
        "decision_id": f"d-{task_id}",
        "created_at": now_ms(),
    }


class FakeBackend:
    """The console's backend, in memory; records what the pages asked it to write."""

    def __init__(self) -> None:
        now = now_ms()
        self.tasks = [task("t-urgent", "c-1", 100, now + 3_600_000), task("t-late", "c-2", 8, now - 60_000, HOSTILE)]
        self.written: list[tuple[Any, ...]] = []
        self.audits: list[Record] = []  # writes
        self.signins: list[Record] = []  # console.sign_in, sign_out and sign_in_refused
        self.stored_media = {DIGEST: JPEG, "cd" * 32: b"<html><script>alert(1)</script></html>"}
        # The bank search is the real backend's, over a bank table; bank "strict" matches PDQ within 8.
        self.table = BankTable(MatchConfig(bank_thresholds={"strict": 8}))
        self.table.load([entry("tvec", "md5", "0" * 32)])
        self.incident_list: list[Record] = []

    def audit(self, who: str, action: str, via: str, subject: str | None = None, **details: Any) -> Record:
        record = audit_record("local", who, action, via, subject, **details)
        (self.signins if action.startswith("console.") else self.audits).append(record)
        return record

    def open_tasks(self) -> list[Record]:
        return list(self.tasks)

    def decision(self, decision_id: str, since_ms: int) -> Record | None:
        return {
            "decision_id": decision_id,
            "action": "review",
            "rule_id": "report-burst",
            "policy_id": "default",
            "policy_version": "7",
            "explanation": "review by rule report-burst: 3 distinct reporter(s)",
            "category": "terrorism",
            "severity": None,
            "thresholds": {"violent_extremism": 0.5},
            "decided_at": now_ms(),
            "signals": [{"signal_type": "sha256", "value": DIGEST, "quality": None, "frame": None}],
            "matches": [
                {"bank": "tvec", "signal_type": "pdq", "hash": "f" * 64, "distance": 12, "category": "terrorism"}
                | {"severity": "critical"}
            ],
            "scores": [{"model": "text-default", "label": "violent_extremism", "score": 0.71}],
        }

    def reports(self, content_id: str) -> dict[str, Any] | None:
        reasons = {"terrorism": 2, "hate": 1}
        return {"distinct_reporters": 3, "trust": 1.5, "reasons": reasons, "first_reported_at": now_ms()}

    def content(self, content_id: str) -> dict[str, Any] | None:
        return {"text": f"caption {HOSTILE}", "signals": []}

    def media(self, ref: str) -> bytes | None:
        return self.stored_media.get(ref.removeprefix("sha256:"))

    def decide(self, task_id: str, action: str, reviewer: str, category: str | None, note: str) -> Record:
        self.written.append(("verdict", task_id, action, reviewer, category, note))
        self.tasks = [t for t in self.tasks if t["task_id"] != task_id]
        return {}

    def escalate(self, task: Record, reviewer: str, note: str) -> Record:
        self.written.append(("escalate", task["task_id"], reviewer, note))
        return task

    def bank_entries(self, value: str) -> list[Record]:
        return KafkaBackend(Settings(), self.table, self.audit).bank_entries(value)

    def bank_counts(self) -> dict[str, int]:
        return {"tvec/md5": len(self.table), "removed/pdq": 3}

    def disable(self, bank: str, signal_type: str, value: str) -> int:
        self.written.append(("disable", bank, signal_type, value))
        return 1

    def incidents(self) -> list[Record]:
        return self.incident_list

    def declare(
        self, title: str, category: str, severity: str, media: list[Path], hashes: list[tuple[str, str]], reason: str
    ) -> tuple[Record, int]:
        incident = {"incident_id": "inc-1", "title": title, "status": "active", "category": category}
        incident |= {
            "severity": severity,
            "declared_at": now_ms(),
            "closed_at": None,
            "signals": hashes,
            "reason": reason,
        }
        self.incident_list.append(incident)
        self.written.append(("declare", title, [p.read_bytes() for p in media], hashes))
        return incident, len(hashes)

    def _incident(self, incident_id: str, status: str) -> Record:
        """The incident, if it has `status`: KeyError if there is none, ValueError if not, as crisis's."""
        found = next((i for i in self.incident_list if i["incident_id"] == incident_id), None)
        if found is None:
            raise KeyError(incident_id)
        if found["status"] != status:
            raise ValueError(f"incident {incident_id} is {found['status']}, not {status}")
        return found

    def add_media(self, incident_id: str, media: list[Path]) -> int:
        self._incident(incident_id, "active")
        if any(not p.read_bytes().startswith(b"\xff\xd8") for p in media):
            raise MediaError("not an image or a video")
        self.written.append(("add_media", incident_id, [(p.name, p.read_bytes()) for p in media]))
        return 8 * len(media)

    def close_incident(self, incident_id: str) -> Record:
        if incident_id not in {i["incident_id"] for i in self.incident_list}:
            raise KeyError(incident_id)
        self.written.append(("close", incident_id))
        return {}

    def accept(self, incident_id: str, reason: str) -> tuple[Record, int]:
        proposed = self._incident(incident_id, "proposed")
        proposed |= {"status": "active", "reason": reason or proposed["reason"]}
        self.written.append(("accept", incident_id, reason))
        return proposed, len(proposed["signals"])

    def report(self) -> dict[str, Any]:
        return {
            "rows": [
                {"category": "terrorism", "action": "remove", "count": 4, "p50_s": 2.0, "p90_s": 3.0, "p99_s": 4.0}
            ],
            "reported_actioned_within_24h": 5,
            "reported_actioned_after_24h": 1,
            "reported_overdue_open": 0,
            "reported_open_within_deadline": 2,
            "enforcement_results": {"done": 4},
            "live": {},
            "incidents": [],
        }


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def client(backend: FakeBackend) -> Iterator[TestClient]:
    tokens = TokenTable.from_config(
        json.dumps(
            {
                REVIEW_TOKEN: {"name": "rita", "scopes": ["review", "banks:write"]},
                VERDICTS_TOKEN: {"name": "vera", "scopes": ["review"]},
                CHECK_TOKEN: ["check"],
            }
        ),
        "",
        "",
    )
    api = ApiSettings(tokens, hash_threads=1)
    publisher = SimpleNamespace(close=lambda: None)
    services: Services = build_services(api, "local", BankTable(), publisher, len, MediaLimits(), None, None)  # type: ignore[arg-type]
    services.console = console.build(backend, tokens, console.ConsoleSettings(SECRET, 3600))  # type: ignore[arg-type]
    with TestClient(create_app(services), follow_redirects=False) as c:
        yield c


def sign_in(client: TestClient, token: str = REVIEW_TOKEN) -> str:
    """Signs in as the reviewer; returns the session's CSRF token (from the queue page's form)."""
    r = client.post("/console/login", data={"token": token})
    assert r.status_code == 303 and r.headers["location"] == "/console/queue"
    page = client.get("/console/queue")
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found
    return found.group(1)


# ---- sessions and sign-in ---------------------------------------------------------------------
def test_a_session_cookie_is_signed_and_expires() -> None:
    sessions = Sessions(SECRET, 60)
    session, cookie = sessions.issue("rita", "d" * 64, now=1000)
    assert sessions.read(cookie, now=1001) == session
    assert sessions.read(cookie, now=1061) is None  # expired
    payload, signature = cookie.split(".")
    other, elsewhere = Sessions(b"x" * 32, 60).issue("rita", "d" * 64, now=1000)
    assert sessions.read(elsewhere, now=1001) is None  # signed with another secret
    assert sessions.read(payload[:-2] + "AA." + signature, now=1001) is None  # tampered
    assert sessions.read("", now=1001) is None and sessions.read("garbage", now=1001) is None
    assert other.csrf != session.csrf  # each session its own CSRF token
    with pytest.raises(ValueError):
        Sessions(b"short", 60)


def test_sign_in_needs_a_token_with_the_review_scope(client: TestClient) -> None:
    assert client.get("/console/queue").headers["location"] == "/console/login"
    r = client.post("/console/login", data={"token": CHECK_TOKEN})
    assert r.status_code == 403 and "lacks the review scope" in r.text
    assert "set-cookie" not in r.headers
    r = client.post("/console/login", data={"token": "not-a-token-at-all-0000"})
    assert r.status_code == 401 and "Unknown token" in r.text and "set-cookie" not in r.headers
    r = client.post("/console/login", data={"token": REVIEW_TOKEN})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "Path=/console" in cookie
    assert "samesite=strict" in cookie.lower() and "Secure" not in cookie  # plain HTTP here
    assert REVIEW_TOKEN not in cookie
    assert "rita" in client.get("/console/queue").text
    assert not [p for p in client.get("/openapi.json").json()["paths"] if p.startswith("/console")]


def test_sign_ins_sign_outs_and_refusals_are_audited(client: TestClient, backend: FakeBackend) -> None:
    assert client.post("/console/login", data={"token": "not-a-token"}).status_code == 401
    assert client.post("/console/login", data={"token": CHECK_TOKEN}).status_code == 403
    csrf = sign_in(client)
    assert client.post("/console/logout", data={"csrf": csrf}).status_code == 303
    seen = [(a["action"], a["via"]) for a in backend.signins]
    assert seen == [
        ("console.sign_in_refused", "console"),  # a known token without the review scope
        ("console.sign_in", "console"),
        ("console.sign_out", "console"),
    ]  # an unknown token names nobody: logged only
    assert [a["who"] for a in backend.signins[1:]] == ["rita", "rita"]
    assert backend.audits == []


def test_a_reviewers_token_alone_gives_verdicts_but_writes_no_bank_or_incident(
    client: TestClient, backend: FakeBackend
) -> None:
    csrf = sign_in(client, VERDICTS_TOKEN)
    writes = [
        ("/console/banks/disable", {"bank": "tvec", "signal_type": "md5", "hash": "ab" * 16}),
        ("/console/incidents/declare", {"title": "t", "category": "terrorism", "severity": "high"}),
        ("/console/incidents/inc-1/close", {}),
        ("/console/incidents/inc-1/accept", {}),
    ]
    for path, fields in writes:
        r = client.post(path, data={"csrf": csrf, **fields})
        assert r.status_code == 403 and "vera lacks the banks:write scope" in r.text, path
    assert backend.written == [] and backend.audits == []


def test_a_token_removed_from_the_configuration_ends_its_sessions(client: TestClient) -> None:
    sign_in(client)
    assert client.get("/console/queue").status_code == 200
    client.app.state.console.tokens = TokenTable.from_config(json.dumps({CHECK_TOKEN: ["check"]}), "", "")  # type: ignore[attr-defined]
    assert client.get("/console/queue").headers["location"] == "/console/login"


def test_sign_out_ends_the_session_in_the_browser(client: TestClient) -> None:
    csrf = sign_in(client)
    r = client.post("/console/logout", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert f'{COOKIE}=""' in r.headers["set-cookie"] and "Max-Age=0" in r.headers["set-cookie"]
    assert client.get("/console/queue").status_code == 303


def test_form_posts_need_the_sessions_csrf_token_and_this_origin(client: TestClient, backend: FakeBackend) -> None:
    url = "/console/item/t-urgent/verdict"
    anonymous = TestClient(client.app, follow_redirects=False)
    assert anonymous.post(url, data={"action": "remove", "csrf": "x"}).status_code == 403
    csrf = sign_in(client)
    assert client.post(url, data={"action": "remove"}).status_code == 403
    assert client.post(url, data={"action": "remove", "csrf": csrf + "x"}).status_code == 403
    cross = {"Origin": "https://evil.example"}
    assert client.post(url, data={"action": "remove", "csrf": csrf}, headers=cross).status_code == 403
    cross = {"Sec-Fetch-Site": "cross-site"}
    assert client.post(url, data={"action": "remove", "csrf": csrf}, headers=cross).status_code == 403
    assert client.post("/console/login", data={"token": REVIEW_TOKEN}, headers=cross).status_code == 403
    assert backend.written == [] and backend.audits == []
    same = {"Origin": "http://testserver"}
    r = client.post(url, data={"action": "remove", "csrf": csrf, "note": "propaganda"}, headers=same)
    assert r.status_code == 303 and r.headers["location"] == "/console/queue?done=verdict"
    assert backend.written == [("verdict", "t-urgent", "remove", "rita", None, "propaganda")]


# ---- the queue and an item --------------------------------------------------------------------
def test_the_queue_keeps_the_backends_order_shows_time_left_and_escapes(client: TestClient) -> None:
    sign_in(client)
    r = client.get("/console/queue")
    assert r.status_code == 200
    assert "default-src 'none'" in r.headers["content-security-policy"] and r.headers["cache-control"] == "no-store"
    assert r.text.index("t-urgent") < r.text.index("t-late")
    assert "1h 0m left" in r.text or "59m left" in r.text
    assert "overdue by 1m" in r.text and 'class="overdue"' in r.text
    assert HOSTILE not in r.text and esc(HOSTILE) in r.text


def test_an_item_shows_its_evidence_veiled_media_and_verdict_keys(client: TestClient) -> None:
    sign_in(client)
    r = client.get("/console/item/t-late")
    assert r.status_code == 200
    for shown in ("report-burst", "default version 7", "tvec", "f" * 64, "0.710", "violent_extremism 0.5", "×2"):
        assert shown in r.text
    assert 'class="media veiled"' in r.text and f'src="/console/media/{DIGEST}"' in r.text
    assert 'data-key="v"' in r.text
    for key, action in (("r", "remove"), ("a", "allow"), ("t", "restrict"), ("e", "escalate")):
        assert f'value="{action}" data-key="{key}"' in r.text
    assert 'value="end_stream"' not in r.text  # an upload, not a stream
    assert '<button type="submit" disabled hidden' in r.text  # first, so Enter in the note field sends nothing
    assert 'name="category" value="terrorism"' in r.text
    assert HOSTILE not in r.text
    assert client.get("/console/item/no-such-task").status_code == 404


def test_media_is_served_only_as_an_image_or_a_video(client: TestClient) -> None:
    assert client.get(f"/console/media/{DIGEST}").status_code == 303  # signed in only
    sign_in(client)
    r = client.get(f"/console/media/{DIGEST}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content == JPEG
    assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get(f"/console/media/{'cd' * 32}").status_code == 404  # HTML, whatever its name
    assert client.get(f"/console/media/{'ef' * 32}").status_code == 404
    assert client.get("/console/media/..%2f..%2fetc").status_code == 404


def test_escalation_and_verdicts_are_audited(client: TestClient, backend: FakeBackend) -> None:
    csrf = sign_in(client)
    r = client.post("/console/item/t-late/verdict", data={"action": "escalate", "csrf": csrf, "note": "graphic"})
    assert r.status_code == 303 and r.headers["location"] == "/console/queue?done=escalate"
    r = client.post("/console/item/t-late/verdict", data={"action": "allow", "csrf": csrf, "category": ""})
    assert r.status_code == 303
    r = client.post("/console/item/t-late/verdict", data={"action": "allow", "csrf": csrf})
    assert r.status_code == 409  # decided already
    assert client.post("/console/item/t-urgent/verdict", data={"action": "pending", "csrf": csrf}).status_code == 400
    assert backend.written == [
        ("escalate", "t-late", "rita", "graphic"),
        ("verdict", "t-late", "allow", "rita", None, ""),
    ]
    assert [(a["who"], a["action"], a["via"], a["envelope"]["content_id"]) for a in backend.audits] == [
        ("rita", "review.escalate", "console", "c-2"),
        ("rita", "review.verdict", "console", "c-2"),
    ]
    assert json.loads(backend.audits[1]["details"]) == {
        "task_id": "t-late",
        "verdict": "allow",
        "category": None,
        "note": "",
    }
    assert "Verdict recorded" in client.get("/console/queue?done=verdict").text


# ---- banks, incidents, report -----------------------------------------------------------------
def test_a_bank_entry_is_found_by_hash_and_disabled(client: TestClient, backend: FakeBackend) -> None:
    csrf = sign_in(client)
    r = client.get("/console/banks", params={"hash": "0" * 32})
    assert r.status_code == 200 and 'data-bank="tvec"' in r.text and "<svg" in r.text
    assert "No bank holds" in client.get("/console/banks", params={"hash": "1" * 32}).text
    form = {"csrf": csrf, "bank": "tvec", "signal_type": "md5", "hash": "0" * 32}
    r = client.post("/console/banks/disable", data=form)
    assert r.status_code == 303 and "done=disabled" in r.headers["location"]
    assert client.post("/console/banks/disable", data=form | {"hash": "xyz"}).status_code == 400
    assert backend.written == [("disable", "tvec", "md5", "0" * 32)]
    [audit] = backend.audits
    assert (audit["who"], audit["action"]) == ("rita", "bank.disable")
    assert json.loads(audit["details"]) == {"bank": "tvec", "signal_type": "md5", "hash": "0" * 32}


def test_bank_search_by_a_pdq_hash_finds_near_entries_within_each_banks_threshold(
    client: TestClient, backend: FakeBackend
) -> None:
    backend.table.load(
        [
            entry("tvec", "pdq", PDQ),  # the hash itself
            entry("tvec", "pdq", near(PDQ, 12)),  # within the default threshold, 31
            entry("tvec", "pdq", near(PDQ, 40)),  # beyond it
            entry("strict", "pdq", near(PDQ, 5)),  # within this bank's own threshold, 8
            entry("strict", "pdq", near(PDQ, 12)),  # beyond it
            entry("files", "sha256", PDQ),  # the same 64 hex digits as a SHA-256: an exact match
            entry("files", "sha256", near(PDQ, 1)),  # exact types are never near
        ]
    )
    found = backend.bank_entries(PDQ.upper())
    assert [(e["bank"], e["signal_type"], e["hash"], e["distance"]) for e in found] == [
        ("files", "sha256", PDQ, 0),
        ("tvec", "pdq", PDQ, 0),
        ("strict", "pdq", near(PDQ, 5), 5),
        ("tvec", "pdq", near(PDQ, 12), 12),
    ]
    csrf = sign_in(client)
    r = client.get("/console/banks", params={"hash": PDQ})
    shown = re.findall(r'<tr data-bank="([^"]+)" data-hash="([0-9a-f]+)" data-distance="(\d+)">', r.text)
    assert shown == [
        ("files", PDQ, "0"),
        ("tvec", PDQ, "0"),
        ("strict", near(PDQ, 5), "5"),
        ("tvec", near(PDQ, 12), "12"),
    ]
    assert "<th>Distance</th>" in r.text and '<td class="num">12</td>' in r.text and '<td class="num">-</td>' in r.text
    assert f'name="hash" value="{near(PDQ, 12)}"' in r.text  # a near entry is disabled by its own hash
    far = client.get("/console/banks", params={"hash": near(PDQ, 256)}).text  # every bit flipped
    assert "or a PDQ hash within its threshold of it" in far and "<table" not in far.split("bank-search")[1]
    r = client.post(
        "/console/banks/disable", data={"csrf": csrf, "bank": "strict", "signal_type": "pdq"} | {"hash": near(PDQ, 5)}
    )
    assert r.status_code == 303 and backend.written == [("disable", "strict", "pdq", near(PDQ, 5))]


def test_an_incident_is_declared_with_hashes_and_media_then_closed(client: TestClient, backend: FakeBackend) -> None:
    csrf = sign_in(client)
    fields = {"csrf": csrf, "title": "attack stream", "category": "terrorism", "severity": "critical"}
    fields |= {"hashes": f"md5,{'1' * 32}\n# a comment\n\npdq {'2' * 64}\n"}
    r = client.post("/console/incidents/declare", data=fields, files=[("media", ("clip.jpg", JPEG, "image/jpeg"))])
    assert r.status_code == 303 and r.headers["location"] == "/console/incidents?done=declared"
    assert backend.written == [("declare", "attack stream", [JPEG], [("md5", "1" * 32), ("pdq", "2" * 64)])]
    page = client.get("/console/incidents?done=declared").text
    assert 'data-incident="inc-1" data-status="active"' in page and "/console/incidents/inc-1/close" in page
    bad = fields | {"hashes": "md5"}
    assert client.post("/console/incidents/declare", data=bad).status_code == 400
    assert client.post("/console/incidents/inc-1/close", data={"csrf": csrf}).status_code == 303
    assert client.post("/console/incidents/inc-404/close", data={"csrf": csrf}).status_code == 404
    assert [a["action"] for a in backend.audits] == ["incident.declare", "incident.close"]
    assert json.loads(backend.audits[0]["details"])["hashes"] == 2


def proposed(incident_id: str = "inc-p") -> Record:
    """An Incident as flood detection proposes it (pipeline.stages.flood)."""
    return {
        "incident_id": incident_id,
        "title": f"possible flood {HOSTILE}",
        "status": "proposed",
        "declared_at": now_ms(),
        "closed_at": None,
        "signals": [{"signal_type": "pdq", "value": PDQ, "quality": 100, "frame": None}],
        "category": "terrorism",
        "severity": "high",
        "reason": f"flood detection: 30 distinct accounts {HOSTILE}",
    }


def test_a_proposed_incident_is_listed_apart_and_accepted(client: TestClient, backend: FakeBackend) -> None:
    backend.incident_list = [proposed()]
    csrf = sign_in(client)
    page = client.get("/console/incidents").text
    listed = page.split('id="proposed"')[1].split('id="incidents"')[0]
    assert (
        'data-incident="inc-p" data-status="proposed"' in listed
        and 'action="/console/incidents/inc-p/accept"' in listed
    )
    assert "30 distinct accounts" in listed and "<td>1</td>" in listed  # its reason and its one hash
    assert 'data-incident="inc-p"' not in page.split('id="incidents"')[1]  # not among the declared ones
    assert HOSTILE not in page and esc(HOSTILE) in page
    url = "/console/incidents/inc-p/accept"
    assert client.post(url, data={"reason": "confirmed"}).status_code == 403  # no CSRF token
    assert (
        client.post(
            url, data={"csrf": csrf, "reason": "confirmed"}, headers={"Origin": "https://evil.example"}
        ).status_code
        == 403
    )
    assert backend.written == [] and backend.audits == []
    r = client.post(url, data={"csrf": csrf, "reason": "confirmed"})
    assert r.status_code == 303 and r.headers["location"] == "/console/incidents?done=accepted"
    assert backend.written == [("accept", "inc-p", "confirmed")]
    [audit] = backend.audits
    assert (audit["who"], audit["action"], audit["via"]) == ("rita", "incident.accept", "console")
    details = json.loads(audit["details"])
    assert details["incident_id"] == "inc-p" and details["hashes"] == 1 and details["reason"] == "confirmed"
    page = client.get("/console/incidents?done=accepted").text
    assert "Incident accepted" in page and "No proposed incidents." in page
    assert 'data-incident="inc-p" data-status="active"' in page and "/console/incidents/inc-p/media" in page
    assert client.post(url, data={"csrf": csrf}).status_code == 409  # accepted already
    assert client.post("/console/incidents/inc-404/accept", data={"csrf": csrf}).status_code == 404
    assert len(backend.audits) == 1


def test_seed_media_is_added_to_an_active_incident(client: TestClient, backend: FakeBackend) -> None:
    backend.incident_list = [
        proposed("inc-p"),
        proposed("inc-1") | {"status": "active"},
        proposed("inc-2") | {"status": "closed"},
    ]
    csrf = sign_in(client)
    page = client.get("/console/incidents").text
    assert page.count('enctype="multipart/form-data"') == 2  # inc-1's row, and the declaration
    assert 'action="/console/incidents/inc-1/media"' in page and "/console/incidents/inc-2/media" not in page
    url = "/console/incidents/inc-1/media"
    files = [("media", ("a.jpg", JPEG, "image/jpeg")), ("media", ("b.jpg", JPEG, "image/jpeg"))]
    assert client.post(url, data={}, files=files).status_code == 403  # no CSRF token
    r = client.post(url, data={"csrf": csrf}, files=files)
    assert r.status_code == 303 and r.headers["location"] == "/console/incidents?done=media"
    digest = hashlib.sha256(JPEG).hexdigest()
    assert backend.written == [("add_media", "inc-1", [(f"seed-{digest}", JPEG)])]  # named by content, once
    [audit] = backend.audits
    assert (audit["who"], audit["action"], audit["via"]) == ("rita", "incident.add_media", "console")
    assert json.loads(audit["details"]) == {"incident_id": "inc-1", "media_sha256": [digest], "hashes": 8}
    assert "Seed media added" in client.get("/console/incidents?done=media").text
    empty = [("media", ("", b"", "application/octet-stream"))]
    assert client.post(url, data={"csrf": csrf}, files=empty).status_code == 400
    html = [("media", ("x.html", b"<html></html>", "text/html"))]
    r = client.post(url, data={"csrf": csrf}, files=html)
    assert r.status_code == 400 and "not an image or a video" in r.text
    assert client.post("/console/incidents/inc-2/media", data={"csrf": csrf}, files=files).status_code == 409
    assert client.post("/console/incidents/inc-p/media", data={"csrf": csrf}, files=files).status_code == 409
    assert client.post("/console/incidents/inc-404/media", data={"csrf": csrf}, files=files).status_code == 404
    assert len(backend.written) == len(backend.audits) == 1


def test_the_report_page_draws_its_charts(client: TestClient) -> None:
    sign_in(client)
    r = client.get("/console/report")
    assert r.status_code == 200
    assert r.text.count("<svg") == 2 and "decided within 24 h: 5 (62%)" in r.text
    assert "terrorism / remove" in r.text and "p50 2.0 s" in r.text


def test_charts_scale_and_escape() -> None:
    svg = charts.bars([("a<b", 10, ""), ("c", 5, "note")], "title")
    assert "a&lt;b" in svg and 'width="330"' in svg and 'width="165"' in svg
    assert charts.bars([], "t") == "<p>Nothing yet.</p>" and charts.stacked([("x", 0)], "t") == "<p>Nothing yet.</p>"
    assert "x: 1 (25%)" in charts.stacked([("x", 1), ("y", 3)], "t")
    assert tag("a", "<b>", href='"x"') == '<a href="&quot;x&quot;">&lt;b&gt;</a>'
    assert time_left(10 * 60_000, 0) == "10m left" and time_left(0, 26 * 3_600_000) == "overdue by 1d 2h"


# ---- audit ------------------------------------------------------------------------------------
def test_api_bank_writes_are_audited_per_writer_after_the_write() -> None:
    published: list[Record] = []
    auditor = SimpleNamespace(settings=SimpleNamespace(platform_id="local"), publish=published.append)
    writes: list[list[Record]] = []
    write = audited_bank_writer(lambda entries: writes.append(list(entries)) or len(writes[-1]), auditor)  # type: ignore[arg-type]
    entries = [
        {"bank": "b", "signal_type": "md5", "hash": "0" * 32, "source": "api:coop"},
        {"bank": "b", "signal_type": "pdq", "hash": "1" * 64, "source": "api:coop"},
    ]
    assert write(iter(entries)) == 2 and writes == [entries]
    [record] = published
    assert (record["who"], record["action"], record["via"]) == ("coop", "bank.add", "api")
    assert len(json.loads(record["details"])["hashes"]) == 2
