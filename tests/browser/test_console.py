"""The review console in a real browser, against a running pipeline through the broker and
Redis: a reviewer signs in, works the queue most urgent first, looks at an item's evidence
with its media veiled until revealed, removes it with a key, and the verdict becomes a final
decision; sign-in without the review scope, sessions and CSRF; disabling a bank entry;
declaring and closing an incident; accepting an incident flood detection proposed and adding
seed media to it. Every write, the API's too, shows up on the audit topic."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from playwright.sync_api import Page, expect

from pipeline.app import PIPELINE, App
from pipeline.banks import admin
from pipeline.config import Settings
from pipeline.policy import crisis
from pipeline.policy.review import open_tasks
from pipeline.records import Record, now_ms, stable_id
from pipeline.sdk import ModerationProducer
from pipeline.signals.media import MediaLimits, media_signals
from tests.integration.helpers import collect, running
from tests.media import encode, photo

from .conftest import CHECK_TOKEN, REVIEWER_TOKEN, WRITER_TOKEN, Console

pytestmark = pytest.mark.integration

Shot = Callable[[str], Path]


def sign_in(page: Page, token: str = REVIEWER_TOKEN) -> None:
    page.goto("/console/")
    expect(page).to_have_url(re.compile(r"/console/login$"))
    page.fill("input[name=token]", token)
    page.click("#signin button[type=submit]")


def audited(settings: Settings, action: str, who: str = "rita") -> list[Record]:
    """The audit records of `action` by `who`, waiting until there is one."""
    records = collect(settings, "audit", lambda rs: any(r["action"] == action and r["who"] == who for r in rs), 30)
    return [r for r in records if r["action"] == action and r["who"] == who]


def eventually(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {timeout_s} s"
        time.sleep(0.2)


def test_a_reviewer_removes_the_most_urgent_item_with_a_key(
    settings: Settings, console: Console, page: Page, shot: Shot
) -> None:
    run = uuid.uuid4().hex[:8]
    reported, news_1, news_2 = f"reported-{run}", f"news-1-{run}", f"news-2-{run}"
    news = [encode(photo(3101), quality=90), encode(photo(3102), quality=90)]
    entries = [
        e for i, data in enumerate(news) for e in admin.media_entries(data, "benign.news", "news", "low", "t", f"n{i}")
    ]
    admin.publish(settings, entries)
    app = App(settings)
    producer = ModerationProducer(settings)
    try:
        with running(settings, [app.build(n) for n in PIPELINE]):
            producer.send_upload(reported, "uploader-1", media=encode(photo(3100), quality=90), text="my holiday")
            producer.flush()
            collect(settings, "decisions", lambda ds: any(d["envelope"]["content_id"] == reported for d in ds))
            for i in range(3):  # a burst of reports from distinct reporters: review, priority 8
                producer.send_report(reported, f"reporter-{i}-{run}", "terrorism", text="glorifies the attack")
            # Two matches of benign news footage (review, priority 4); the older one's deadline comes first.
            producer.send_upload(news_1, "uploader-2", media=news[0], occurred_at=now_ms() - 60_000)
            producer.send_upload(news_2, "uploader-3", media=news[1])
            producer.flush()
            mine = {reported, news_1, news_2}
            collect(settings, "review", lambda ts: mine <= {t["envelope"]["content_id"] for t in ts})
            queue = [t for t in open_tasks(settings) if t["envelope"]["content_id"] in mine]  # what the CLI lists
            assert [t["envelope"]["content_id"] for t in queue] == [reported, news_1, news_2]
            assert [t["priority"] for t in queue] == [8, 4, 4] and queue[1]["deadline"] < queue[2]["deadline"]

            sign_in(page)
            expect(page).to_have_url(re.compile(r"/console/queue$"))
            shown = page.locator("#queue tbody tr").evaluate_all("rows => rows.map(r => r.dataset.task)")
            assert [t for t in shown if t in {q["task_id"] for q in queue}] == [q["task_id"] for q in queue]
            expect(page.locator(f'tr[data-task="{queue[0]["task_id"]}"] time.left')).to_have_text(
                re.compile(r"^(23h|1d 0h)")
            )
            shot("queue")

            page.click(f'tr[data-task="{queue[0]["task_id"]}"] a')
            expect(page.locator("h1")).to_have_text(f"Review {reported}")
            expect(page.locator("body")).to_contain_text("report-burst")
            expect(page.locator("body")).to_contain_text("Distinct reporters")
            expect(page.locator("#media")).to_have_class(re.compile(r"\bveiled\b"))
            loaded = "img => img.complete && img.naturalWidth > 0"
            eventually(lambda: page.eval_on_selector("#media img", loaded), "the media came from the media store")
            expect(page.locator("#media img")).to_have_css("filter", "blur(24px) grayscale(1)")
            expect(page.locator(".keys")).to_contain_text("r remove")
            shot("item-veiled")

            page.keyboard.press("v")
            expect(page.locator("#media")).not_to_have_class(re.compile(r"\bveiled\b"))
            expect(page.locator("#media img")).to_have_css("filter", "none")
            shot("item-revealed")

            note = page.locator("#verdict input[name=note]")
            note.click()
            page.keyboard.type("three reporters, attack footage")  # its r, a, t and e are text, not verdicts
            page.keyboard.press("Enter")  # sends nothing
            expect(page).to_have_url(re.compile(f"/console/item/{queue[0]['task_id']}$"))
            note.blur()
            page.keyboard.press("r")
            expect(page).to_have_url(re.compile(r"/console/queue\?done=verdict$"))
            expect(page.locator(f'tr[data-task="{queue[0]["task_id"]}"]')).to_have_count(0)
            expect(page.locator(f'tr[data-task="{queue[1]["task_id"]}"]')).to_have_count(1)
            shot("queue-after-verdict")

            task_id = queue[0]["task_id"]
            verdicts = collect(settings, "review.verdicts", lambda vs: any(v["task_id"] == task_id for v in vs))
            [verdict] = [v for v in verdicts if v["task_id"] == task_id]
            assert (verdict["action"], verdict["reviewer"], verdict["category"]) == ("remove", "rita", "terrorism")
            assert verdict["note"] == "three reporters, attack footage"
            final = stable_id(task_id, "verdict")
            decisions = collect(settings, "decisions", lambda ds: any(d["decision_id"] == final for d in ds))
            [decision] = [d for d in decisions if d["decision_id"] == final]

            page.click("nav >> text=Transparency report")  # what `modstream report` says, with charts
            expect(page.locator("svg.chart")).to_have_count(2)
            expect(page.locator("table.report")).to_contain_text("remove")
            shot("report")
    finally:
        app.close()
    assert (decision["action"], decision["rule_id"], decision["envelope"]["content_id"]) == (
        "remove",
        "human-review",
        reported,
    )
    assert "by reviewer rita" in decision["explanation"]
    [record] = audited(settings, "review.verdict")
    assert record["via"] == "console" and record["envelope"]["content_id"] == reported
    assert console.outside == []  # nothing loaded from anywhere else


def test_sign_in_is_refused_without_the_review_scope(
    settings: Settings, console: Console, page: Page, shot: Shot
) -> None:
    sign_in(page, CHECK_TOKEN)
    expect(page.locator(".message.error")).to_have_text("carl lacks the review scope the console needs.")
    shot("refused")
    assert page.context.cookies() == []
    page.goto("/console/queue")
    expect(page).to_have_url(re.compile(r"/console/login$"))

    sign_in(page)
    expect(page).to_have_url(re.compile(r"/console/queue$"))
    [cookie] = page.context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/console")
    assert page.evaluate("document.cookie") == ""  # no script can read the session
    expect(page.locator("nav .who")).to_have_text("rita")
    page.click("nav .signout button")
    expect(page).to_have_url(re.compile(r"/console/login$"))
    assert page.context.cookies() == []
    assert console.outside == []
    for action, who in (("console.sign_in_refused", "carl"), ("console.sign_in", "rita"), ("console.sign_out", "rita")):
        assert {r["via"] for r in audited(settings, action, who)} == {"console"}, action


def test_writes_need_the_session_and_its_csrf_token(settings: Settings, console: Console, page: Page) -> None:
    entry = admin.bank_entry("csrf-bank", "md5", uuid.uuid4().hex, "terrorism", "critical", "test")
    admin.publish(settings, [entry])
    form = {"bank": entry["bank"], "signal_type": "md5", "hash": entry["hash"]}
    with httpx.Client(base_url=console.url, follow_redirects=False) as client:
        assert client.post("/console/banks/disable", data=form | {"csrf": "guess"}).status_code == 403
        r = client.post("/console/login", data={"token": REVIEWER_TOKEN})
        assert r.status_code == 303
        csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/console/queue").text)
        assert csrf is not None
        assert client.post("/console/banks/disable", data=form).status_code == 403
        assert client.post("/console/banks/disable", data=form | {"csrf": "guess"}).status_code == 403
        evil = {"Origin": "http://attacker.test"}
        assert client.post("/console/banks/disable", data=form | {"csrf": csrf[1]}, headers=evil).status_code == 403
        forged = client.cookies["modstream_console"].replace(".", ".x", 1)
        client.cookies.set("modstream_console", forged, path="/console")
        assert client.get("/console/queue").status_code == 303  # back to sign-in

    # A page on another site that posts the form: the browser sends no session (SameSite=Strict).
    sign_in(page)
    expect(page).to_have_url(re.compile(r"/console/queue$"))
    attack = (
        f'<form id="f" method="post" action="{console.url}/console/banks/disable">'
        + "".join(f'<input name="{k}" value="{v}">' for k, v in form.items())
        + '<input name="csrf" value="guess"></form><script>document.getElementById("f").submit()</script>'
    )
    page.route("http://attacker.test/", lambda route: route.fulfill(content_type="text/html", body=attack))
    page.goto("http://attacker.test/")
    expect(page.locator("h1")).to_have_text("Refused")
    assert page.url == f"{console.url}/console/banks/disable"
    assert [e["hash"] for e in admin.current(settings, "csrf-bank")] == [entry["hash"]]


def test_a_bank_entry_is_found_by_hash_and_disabled(
    settings: Settings, console: Console, page: Page, shot: Shot
) -> None:
    value = uuid.uuid4().hex
    admin.publish(settings, [admin.bank_entry("tvec", "md5", value, "terrorism", "critical", "ops")])
    sign_in(page)
    expect(page).to_have_url(re.compile(r"/console/queue$"))

    def found() -> bool:  # the server follows the bank topic: the entry arrives within a second
        page.goto(f"/console/banks?hash={value}")
        return page.locator('#bank-results tr[data-bank="tvec"]').count() == 1

    eventually(found, "the entry reached the console")
    shot("search")
    page.click('#bank-results tr[data-bank="tvec"] button')
    expect(page.locator(".message")).to_contain_text("Entry disabled")
    assert admin.current(settings, "tvec") == []  # a tombstone on the bank topic

    def gone() -> bool:
        page.goto(f"/console/banks?hash={value}")
        return page.locator("#bank-results", has_text="No bank holds").count() == 1

    eventually(gone, "the disabled entry left the console's bank table")
    shot("disabled")
    [record] = audited(settings, "bank.disable")
    assert record["via"] == "console" and value in record["details"]
    assert console.outside == []


def test_an_incident_is_declared_and_closed(settings: Settings, console: Console, page: Page, shot: Shot) -> None:
    title = f"attack stream {uuid.uuid4().hex[:6]}"
    md5, pdq = uuid.uuid4().hex, "3c" * 32
    sign_in(page)
    page.goto("/console/incidents")
    page.fill("#declare input[name=title]", title)
    page.fill("#declare textarea[name=hashes]", f"md5,{md5}\npdq,{pdq}")
    page.set_input_files(
        "#declare input[name=media]",
        files=[{"name": "still.jpg", "mimeType": "image/jpeg", "buffer": encode(photo(3200), quality=90)}],
    )
    shot("declare-form")
    page.click("#declare button[type=submit]")
    expect(page.locator(".message")).to_contain_text("Incident declared")
    [incident] = [i for i in crisis.incidents(settings) if i["title"] == title]
    assert incident["status"] == "active" and incident["category"] == "terrorism"
    banked = {
        (e["signal_type"], e["hash"]) for e in admin.current(settings, crisis.incident_bank(incident["incident_id"]))
    }
    assert {("md5", md5), ("pdq", pdq)} <= banked and len(banked) > 2  # and the still's hashes
    row = page.locator(f'tr[data-incident="{incident["incident_id"]}"]')
    expect(row).to_have_attribute("data-status", "active")
    shot("declared")

    row.locator("button", has_text="Close").click()
    expect(page.locator(".message")).to_contain_text("Incident closed")
    expect(page.locator(f'tr[data-incident="{incident["incident_id"]}"]')).to_have_attribute("data-status", "closed")
    shot("closed")
    [closed] = [i for i in crisis.incidents(settings) if i["incident_id"] == incident["incident_id"]]
    assert closed["status"] == "closed" and closed["closed_at"] >= closed["declared_at"]
    [declared] = audited(settings, "incident.declare")
    assert incident["incident_id"] in declared["details"]
    assert len(audited(settings, "incident.close")) == 1
    assert console.outside == []


def test_a_proposed_incident_is_accepted_and_given_more_seed_media(
    settings: Settings, console: Console, page: Page, shot: Shot
) -> None:
    # The Incident flood detection proposes (pipeline.stages.flood): the copies' SHA-256 and PDQ.
    run = uuid.uuid4().hex[:8]
    incident_id = f"inc-flood-{run}"
    copy = encode(photo(3300), quality=90)
    seeds = [{**s, "frame": None} for s in media_signals(copy, MediaLimits()) if s["signal_type"] in ("sha256", "pdq")]
    proposal = {
        "incident_id": incident_id,
        "title": f"possible flood: 25 accounts uploaded the same content in 10 minutes ({run})",
        "status": "proposed",
        "declared_at": now_ms(),
        "closed_at": None,
        "signals": seeds,
        "category": "terrorism",
        "severity": "high",
        "reason": "flood detection: 25 distinct accounts uploaded copies of one piece of content within 10 minutes",
    }
    with ModerationProducer(settings) as producer:
        producer.send("incidents", proposal, key=incident_id)

    sign_in(page)
    expect(page).to_have_url(re.compile(r"/console/queue$"))
    page.click("nav >> text=Incidents")
    row = page.locator(f'#proposed tr[data-incident="{incident_id}"]')
    expect(row).to_have_attribute("data-status", "proposed")
    expect(page.locator(f'#incidents tr[data-incident="{incident_id}"]')).to_have_count(0)
    shot("proposed")

    row.locator("input[name=reason]").fill("confirmed: attack footage")
    row.locator("button", has_text="Accept").click()
    expect(page.locator(".message")).to_contain_text("Incident accepted")
    declared = page.locator(f'#incidents tr[data-incident="{incident_id}"]')
    expect(declared).to_have_attribute("data-status", "active")
    expect(page.locator(f'#proposed tr[data-incident="{incident_id}"]')).to_have_count(0)
    shot("accepted")
    [incident] = [i for i in crisis.incidents(settings) if i["incident_id"] == incident_id]  # on mod.incidents
    assert (incident["status"], incident["reason"]) == ("active", "confirmed: attack footage")
    bank = crisis.incident_bank(incident_id)
    banked = {(e["signal_type"], e["hash"]) for e in admin.current(settings, bank)}
    assert banked == {(s["signal_type"], s["value"]) for s in seeds}
    [accepted] = audited(settings, "incident.accept")
    assert accepted["via"] == "console"
    assert json.loads(accepted["details"])["incident_id"] == incident_id

    # More seed media from the incident's row.
    declared.locator("summary", has_text="Add media").click()
    more = encode(photo(3301), quality=90)
    declared.locator("input[name=media]").set_input_files(
        files=[{"name": "still.jpg", "mimeType": "image/jpeg", "buffer": more}]
    )
    shot("add-media")
    declared.locator("button", has_text="Add").click()
    expect(page.locator(".message")).to_contain_text("Seed media added")
    added = {(s["signal_type"], s["value"]) for s in media_signals(more, MediaLimits()) if s["signal_type"] == "sha256"}
    assert added <= {(e["signal_type"], e["hash"]) for e in admin.current(settings, bank)}
    [incident] = [i for i in crisis.incidents(settings) if i["incident_id"] == incident_id]
    assert len(incident["signals"]) > len(seeds) and incident["status"] == "active"
    expect(page.locator(f'#incidents tr[data-incident="{incident_id}"] td').nth(7)).to_have_text(
        str(len(incident["signals"]))
    )
    shot("media-added")
    [media] = audited(settings, "incident.add_media")
    assert json.loads(media["details"])["incident_id"] == incident_id
    assert console.outside == []


def test_api_bank_writes_are_audited_on_the_topic_too(settings: Settings, console: Console) -> None:
    value = uuid.uuid4().hex * 2
    auth = {"Authorization": f"Bearer {WRITER_TOKEN}"}
    r = httpx.post(f"{console.url}/c/bank/PARTNER_Y/signal", json={"pdq": value}, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    [record] = audited(settings, "bank.add", who="walt")
    assert record["via"] == "api"
    assert json.loads(record["details"])["hashes"] == [{"bank": "PARTNER_Y", "signal_type": "pdq", "hash": value}]


def test_the_audit_topic_keeps_its_records(settings: Settings) -> None:
    resource = ConfigResource(ConfigResource.Type.TOPIC, settings.topic("audit"))
    admin = AdminClient(settings.admin_config())
    configs = admin.describe_configs([resource])[resource].result()
    assert configs["retention.ms"].value == "-1"  # not the broker's default week
