"""Decide and enforce through the broker and Redis: policy versions, report bursts, the
24-hour deadline, review verdicts, the webhook enforcer across a crash, live suspension."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from pipeline.app import App, connect_redis
from pipeline.banks.admin import media_entries, publish
from pipeline.config import Settings
from pipeline.enforce.consumer import EnforceStage
from pipeline.enforce.webhook import WebhookEnforcer
from pipeline.policy.engine import DEFAULT_POLICY, load_policy
from pipeline.records import Incoming, envelope, now_ms
from pipeline.runtime.runner import Runner
from pipeline.sdk import ModerationProducer
from pipeline.serde import Codec
from pipeline.stages.decide import DecideStage
from pipeline.stages.enrich import moderation_record
from pipeline.state import reports
from pipeline.state.accounts import RedisAccountStore
from pipeline.state.reports import RedisReportStore
from tests.media import encode, photo

from .helpers import collect, event_ids, running, wait_banked
from .test_cli import cli

pytestmark = pytest.mark.integration
STAGES = ("enrich", "match", "classify", "decide")


def app_for(settings: Settings, **changes: object) -> App:
    return App(settings.with_(**changes))


def decisions_for(settings: Settings, ids: list[str], timeout_s: float = 90) -> dict[str, dict]:  # type: ignore[type-arg]
    found = collect(settings, "decisions", lambda ds: set(ids) <= set(event_ids(ds)), timeout_s)
    return {d["envelope"]["event_id"]: d for d in found}


def test_a_new_policy_version_applies_to_new_events(settings: Settings, tmp_path: Path) -> None:
    v1 = app_for(settings)
    producer = ModerationProducer(settings)
    with running(settings, [v1.build(n) for n in STAGES]):
        first = producer.send_upload("c-1", "u1", text="lovely weather")
        producer.flush()
        decisions_for(settings, [first])
    doc = yaml.safe_load(DEFAULT_POLICY.read_text())
    base = doc["version"]
    doc["version"] = f"{base}.1"
    doc["default"] = {"id": "default-review", "action": "review"}  # v2: nothing passes unreviewed
    (tmp_path / "v2.yaml").write_text(yaml.safe_dump(doc))
    v2 = app_for(settings, policy=str(tmp_path / "v2.yaml"))
    with running(settings, [v2.build(n) for n in STAGES]):
        second = producer.send_upload("c-2", "u1", text="lovely weather")
        producer.flush()
        d = decisions_for(settings, [first, second])
    assert (d[first]["policy_version"], d[first]["rule_id"], d[first]["action"]) == (base, "default-allow", "allow")
    assert (d[second]["policy_version"], d[second]["rule_id"], d[second]["action"]) == (
        f"{base}.1",
        "default-review",
        "review",
    )


def reviews_for(settings: Settings, content_id: str, wait_s: float = 3.0) -> list[dict]:  # type: ignore[type-arg]
    """Review tasks of an item. Tasks are produced with the decisions already read; the wait
    lets any extra (wrong) task show up too."""
    time.sleep(wait_s)
    tasks = collect(settings, "review", lambda ts: False, timeout_s=3)
    return [t for t in tasks if t["envelope"]["content_id"] == content_id]


def test_report_bursts_distinct_reporters_vs_one_reporter(settings: Settings) -> None:
    app = app_for(settings)
    producer = ModerationProducer(settings)
    with running(settings, [app.build(n) for n in STAGES]):
        producer.send_upload("c-burst", "owner", text="a post")
        producer.send_upload("c-spam", "owner", text="another post")
        producer.flush()
        burst = [producer.send_report("c-burst", f"reporter-{i}", "violent_extremism") for i in range(6)]
        spam = [producer.send_report("c-spam", "same-reporter", "violent_extremism") for _ in range(6)]
        producer.flush()
        d = decisions_for(settings, burst + spam)
        burst_tasks = reviews_for(settings, "c-burst")
        spam_tasks = reviews_for(settings, "c-spam", 0)
    assert len(burst_tasks) == 1 and burst_tasks[0]["priority"] == 8
    assert burst_tasks[0]["deadline"] - min(d[e]["envelope"]["occurred_at"] for e in burst) == 24 * 3600 * 1000
    assert {d[e]["rule_id"] for e in burst} >= {"report-burst"}
    assert spam_tasks == [] and {d[e]["action"] for e in spam} == {"pending"}


def test_item_reaching_its_deadline_is_escalated(settings: Settings) -> None:
    app = app_for(settings)
    producer = ModerationProducer(settings)
    long_ago = now_ms() - 21 * 3600 * 1000  # first reported 21 hours ago, still undecided
    with running(settings, [app.build(n) for n in STAGES]):
        eid = producer.send_report("c-old", "reporter-1", "hate", occurred_at=long_ago)
        producer.flush()
        assert decisions_for(settings, [eid])[eid]["action"] == "pending"
    out = cli(settings, "escalate", "--once")
    assert out.returncode == 0 and "escalated 1 item(s)" in out.stdout, out.stderr
    assert "escalated" not in cli(settings, "escalate", "--once").stdout  # once per item
    [task] = reviews_for(settings, "c-old", 0)
    assert task["priority"] == 100 and "deadline in 3.0 h" in task["reason"]
    assert task["deadline"] == long_ago + 24 * 3600 * 1000


def test_verdict_becomes_a_decision_and_an_enforcement_result(settings: Settings) -> None:
    app = app_for(settings)
    producer = ModerationProducer(settings)
    pipeline = [app.build(n) for n in STAGES]
    with running(settings, pipeline, [app.build("enforce-log")], [app.build("enforce-account")]):
        upload = producer.send_upload("c-v", "owner-v", media=encode(photo(77)), text="a photo")
        producer.flush()
        # Reports come after the post is up: uploads and reports are different topics, so a report
        # sent at once could be read first, before enrich has stored who owns the item.
        decisions_for(settings, [upload])
        reports = [producer.send_report("c-v", f"r{i}", "terrorism") for i in range(3)]
        producer.flush()
        decisions_for(settings, reports)
        listed = cli(settings, "review", "list")
        [task] = reviews_for(settings, "c-v", 1)
        assert task["task_id"] in listed.stdout
        out = cli(
            settings,
            "review",
            "decide",
            task["task_id"],
            "remove",
            "--category",
            "terrorism",
            "--note",
            "propaganda",
            "--reviewer",
            "ana",
        )
        assert out.returncode == 0, out.stderr
        final = collect(settings, "decisions", lambda ds: any(x["rule_id"] == "human-review" for x in ds))
        [verdict] = [x for x in final if x["rule_id"] == "human-review"]
        results = collect(
            settings,
            "enforcement.results",
            lambda rs: (
                {(r["decision_id"], r["enforcer"]) for r in rs}
                >= {(verdict["decision_id"], "log"), (verdict["decision_id"], "account")}
            ),
        )
        listed_after = cli(settings, "review", "list")
    assert verdict["action"] == "remove" and verdict["category"] == "terrorism"
    assert "ana" in verdict["explanation"] and "propaganda" in verdict["explanation"]
    account = [r for r in results if r["decision_id"] == verdict["decision_id"] and r["enforcer"] == "account"][0]
    assert account["status"] == "succeeded" and "1 strike" in account["detail"]
    assert task["task_id"] not in listed_after.stdout
    trust = app.report_store().aggregate("c-v")["trust"]
    assert trust == pytest.approx(3 * 2 / 3)  # each reporter now upheld once: (1 + 1) / (1 + 2)


class Platform(BaseHTTPRequestHandler):
    """A platform endpoint that honours Idempotency-Key and fails the first two tries of each."""

    tries: dict[str, int] = {}
    effective: dict[str, int] = {}
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802
        key = self.headers["Idempotency-Key"]
        json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            self.tries[key] = self.tries.get(key, 0) + 1
            fail = self.tries[key] <= 2
            if not fail and key not in self.effective:
                self.effective[key] = 1
            elif not fail:
                pass  # a repeat of an applied action: acknowledged, not applied again
        self.send_response(503 if fail else 200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def platform() -> Iterator[str]:
    Platform.tries, Platform.effective = {}, {}
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Platform)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/moderation"
    httpd.shutdown()
    httpd.server_close()


def test_a_verdict_strikes_the_owner_though_the_reports_came_before_the_upload(settings: Settings) -> None:
    app = app_for(settings)
    producer = ModerationProducer(settings)
    with running(settings, [app.build(n) for n in STAGES], [app.build("enforce-account")]):
        # Uploads and reports are different topics: reports can be read before their upload.
        reports = [producer.send_report("c-early", f"early-{i}", "terrorism") for i in range(3)]
        producer.flush()
        decisions_for(settings, reports)
        [task] = reviews_for(settings, "c-early", 0)
        assert task["envelope"]["user_id"] is None  # nobody knew whose post it was
        upload = producer.send_upload("c-early", "owner-e", media=encode(photo(78)), text="a photo")
        producer.flush()
        decisions_for(settings, [upload])
        assert cli(settings, "review", "decide", task["task_id"], "remove", "--reviewer", "ana").returncode == 0
        final = collect(settings, "decisions", lambda ds: any(x["rule_id"] == "human-review" for x in ds))
        [verdict] = [x for x in final if x["rule_id"] == "human-review"]
        results = collect(
            settings,
            "enforcement.results",
            lambda rs: any(r["decision_id"] == verdict["decision_id"] for r in rs),
        )
    assert verdict["envelope"]["user_id"] == "owner-e"
    [account] = [r for r in results if r["decision_id"] == verdict["decision_id"]]
    assert account["status"] == "succeeded" and "1 strike" in account["detail"]


def test_webhook_delivers_one_effective_action_per_decision_across_a_crash(settings: Settings, platform: str) -> None:
    producer = ModerationProducer(settings)
    app = app_for(settings)
    policy = app.policy()
    from pipeline.stages.decide import decision

    decisions = []
    for i in range(20):
        record = {
            "envelope": {
                "event_id": f"e{i}",
                "platform_id": "p",
                "occurred_at": now_ms(),
                "content_id": f"c{i}",
                "stream_id": None,
                "user_id": "u",
            },
            "kind": "upload",
            "signals": [],
            "matches": [],
            "scores": [],
        }
        decisions.append(decision(record, policy, "remove", "test", "test"))
        producer.send("decisions", decisions[-1])
    producer.flush()

    def stage() -> EnforceStage:
        return EnforceStage(
            "webhook", {"remove": WebhookEnforcer(platform)}, settings.topic_prefix, retries=5, backoff_s=0.01
        )

    group = settings.group_id("enforcer.webhook")
    crashed = threading.Event()

    class Crash(Exception):
        pass

    def crash() -> None:  # the process dies after acting, before committing its offsets
        crashed.set()
        raise Crash

    def run_until_crash() -> None:
        try:
            first.run(False)
        except Crash:
            # A dead process stops heartbeating and the group moves on; this one's consumer is
            # left open by the crash (it would heartbeat on), so it leaves, committing nothing.
            if first._consumer is not None:
                first._consumer.close()

    first = Runner(settings, [stage()], group=group, before_commit=crash)
    thread = threading.Thread(target=run_until_crash, daemon=True)
    thread.start()
    assert crashed.wait(60)
    thread.join(30)
    with running(settings, [stage()], group=group):
        results = collect(
            settings,
            "enforcement.results",
            lambda rs: {r["decision_id"] for r in rs} >= {d["decision_id"] for d in decisions},
        )
    keys = {d["decision_id"] for d in decisions}
    assert set(Platform.effective) == keys and all(n == 1 for n in Platform.effective.values())
    assert sum(Platform.tries.values()) > 3 * len(keys) - 1  # retries, and redeliveries after the crash
    assert all(r["status"] == "succeeded" and r["attempts"] >= 1 for r in results)


def test_severe_violation_suspends_live_access(settings: Settings) -> None:
    app = app_for(settings)
    banned = photo(901)
    publish(settings, media_entries(encode(banned), "tvec", "terrorism", "critical", "gifct", "img-901"))
    accounts = RedisAccountStore(app.redis)
    user = f"streamer-{settings.topic_prefix}"
    accounts.set_verified(user)
    producer = ModerationProducer(settings)
    first, second = f"s-1-{settings.topic_prefix}", f"s-2-{settings.topic_prefix}"  # stream state is in shared Redis
    with running(settings, [app.build(n) for n in STAGES], [app.build("live")], [app.build("enforce-account")]):
        start = producer.send_live_started(first, user, title="my stream")
        frame = producer.send_live_frame(first, user, 0, encode(banned, quality=70))
        producer.flush()
        d = decisions_for(settings, [start, frame])
        collect(
            settings, "enforcement.results", lambda rs: any(r["decision_id"] == d[frame]["decision_id"] for r in rs)
        )
        again = producer.send_live_started(second, user, title="back again")
        producer.flush()
        d2 = decisions_for(settings, [again])
    assert d[start]["action"] == "allow"
    assert d[frame]["action"] == "end_stream" and "suspend_live" in d[frame]["effects"]
    assert accounts.get_many([user])[user]["live_suspended"] is True
    assert d2[again]["action"] == "end_stream" and d2[again]["rule_id"] == "live-suspended"


def test_an_active_incident_tightens_the_policy(settings: Settings) -> None:
    text = "Our brothers will strike the parliament soon, be ready."  # scored between review and remove
    producer = ModerationProducer(settings)
    app = app_for(settings)
    with running(settings, [app.build(n) for n in STAGES]):
        calm = producer.send_upload("c-calm", "u1", text=text)
        producer.flush()
        assert decisions_for(settings, [calm])[calm]["rule_id"] == "classifier-review-extremism"
    incident = {
        "incident_id": "inc-1",
        "title": "attack livestreamed",
        "status": "active",
        "declared_at": now_ms(),
        "closed_at": None,
        "signals": [],
    }
    producer.send("incidents", incident, key="inc-1")
    producer.flush()
    crisis_app = app_for(settings)  # a decide process started during the crisis reads the incident topic
    with running(settings, [crisis_app.build(n) for n in STAGES]):
        crisis = producer.send_upload("c-crisis", "u1", text=text)
        producer.flush()
        d = decisions_for(settings, [crisis])[crisis]
        producer.send("incidents", {**incident, "status": "closed", "closed_at": now_ms()}, key="inc-1")
        producer.flush()
        deadline = time.monotonic() + 5
        while crisis_app.incidents().active() and time.monotonic() < deadline:
            time.sleep(0.05)
        after = producer.send_upload("c-after", "u1", text=text)
        producer.flush()
        d_after = decisions_for(settings, [after])[after]
    # A classifier score alone never removes; during the incident it goes to urgent review.
    assert d["action"] == "review" and d["rule_id"] == "crisis-classifier-review"
    assert d["incident_id"] == "inc-1" and "(incident inc-1)" in d["explanation"]
    assert d_after["rule_id"] == "classifier-review-extremism"  # closing the incident relaxes it again
    crisis_app.close()
    app.close()


def test_a_reported_item_the_banks_condemn_is_removed_without_review(settings: Settings) -> None:
    image = photo(902)
    producer = ModerationProducer(settings)
    app = app_for(settings)
    with running(settings, [app.build(n) for n in STAGES]):
        upload = producer.send_upload("c-later", "owner-l", media=encode(image), text="holiday")
        producer.flush()
        assert decisions_for(settings, [upload])[upload]["action"] == "allow"
        # Later a partner banks the image; then one person reports the post.
        entries = media_entries(encode(image), "partner", "terrorism", "high", "partner", "img-902")
        publish(settings, entries)
        wait_banked(app.banks(), entries)
        report = producer.send_report("c-later", "reporter-1", "terrorism")
        producer.flush()
        d = decisions_for(settings, [report])[report]
    assert d["action"] == "remove" and d["rule_id"] == "bank-match"
    assert d["envelope"]["user_id"] == "owner-l"  # the owner, from the stored upload, for the strike
    assert reviews_for(settings, "c-later", 0) == []
    assert app.report_store().aggregate("c-later")["actioned_at"] == d["decided_at"]


def test_an_invalid_policy_stops_the_stage_at_start(settings: Settings, tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text(
        "policy_id: p\nversion: '9'\ndefault: {action: allow}\n"
        "rules:\n  - {id: r, when: {phase: moon}, action: remove}\n"
    )
    out = cli(settings.with_(policy=str(bad)), "run", "decide", timeout=60)
    assert out.returncode != 0 and "unknown conditions ['phase']" in out.stderr


def test_review_claims_and_deadlines_in_redis_survive_redelivery_and_the_end_of_time(redis_url: str) -> None:
    client = connect_redis(redis_url)
    prefix = f"modstream-test-{uuid.uuid4().hex[:8]}:"
    store = RedisReportStore(client, prefix)
    codec = Codec()

    def reports(*reporters: str) -> list[Incoming]:
        out = []
        for i, reporter in enumerate(reporters):
            env = envelope("p", content_id="c-eot", user_id="owner", occurred_at=2**63 - 1)  # a broken clock
            event = {"envelope": env, "reporter_id": reporter, "reason": "terrorism", "text": None}
            out.append(Incoming("classified", b"c-eot", moderation_record("reports", event), 0, i))
        return out

    try:
        burst = reports("r0", "r1", "r2")
        before = now_ms()
        [task] = [o.value for o in DecideStage(load_policy(), store).process(burst) if o.topic == "review"]
        codec.encode("ReviewTask", task)  # the deadline fits a long
        assert before + 24 * 3600 * 1000 <= task["deadline"] <= now_ms() + 24 * 3600 * 1000
        # The process dies before its outputs are acknowledged; another one redoes the batch.
        [again] = [o.value for o in DecideStage(load_policy(), store).process(burst) if o.topic == "review"]
        assert (again["task_id"], again["envelope"], again["deadline"]) == (
            task["task_id"],
            task["envelope"],
            task["deadline"],
        )
        assert [o for o in DecideStage(load_policy(), store).process(reports("r3", "r4")) if o.topic == "review"] == []
        [(content_id, deadline, _)] = store.due(task["deadline"])
        assert (content_id, deadline) == ("c-eot", task["deadline"])
    finally:
        client.delete(*client.keys(prefix + "*"))


def test_a_verdict_cut_off_before_or_after_it_is_counted_is_counted_once_when_redone(redis_url: str) -> None:
    client = connect_redis(redis_url)
    prefix = f"modstream-test-{uuid.uuid4().hex[:8]}:"
    store = RedisReportStore(client, prefix)
    counted = store._verdict

    def cut_off(before: bool) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            store._verdict = counted  # once
            if not before:
                counted(*args, **kwargs)
            raise redis.ConnectionError("connection lost")

        return call

    def trust(reporter: str) -> dict[str, str]:
        return client.hgetall(f"{prefix}reporter:{reporter}")  # type: ignore[no-any-return]

    try:
        for item, before in (("c-before", True), ("c-after", False)):
            reports = [
                {"envelope": envelope("p", content_id=item), "reporter_id": r, "reason": "spam", "text": None}
                for r in ("r1", "r2")
            ]
            store.add_reports(reports)
            store._verdict = cut_off(before)
            with pytest.raises(redis.ConnectionError):
                store.verdict(item, True, f"verdict-{item}")
            store.verdict(item, True, f"verdict-{item}")  # the batch, redone
            store.verdict(item, True, f"verdict-{item}")  # and redelivered
        assert trust("r1") == trust("r2") == {"total": "2", "upheld": "2"}  # two items, each counted once
    finally:
        client.delete(*client.keys(prefix + "*"))


def test_the_content_store_finds_content_remembered_up_to_its_ttl_ago(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = connect_redis(redis_url)
    prefix = f"modstream-test-{uuid.uuid4().hex[:8]}:"
    store = RedisReportStore(client, prefix)

    def upload(content_id: str, text: str) -> dict:  # type: ignore[type-arg]
        event = {"envelope": envelope("p", content_id=content_id, user_id="u1"), "text": text, "signals": None}
        record = moderation_record("uploads", {**event, "media_b64": None, "media_uri": None, "media_type": None})
        record["signals"] = [{"signal_type": "md5", "value": "0" * 32, "quality": None, "frame": None}]
        return record

    start = now_ms()
    try:
        monkeypatch.setattr(reports, "now_ms", lambda: start)
        store.remember_content([upload("old", "first"), upload("both", "before")])
        monkeypatch.setattr(reports, "now_ms", lambda: start + 40 * 24 * 3600 * 1000)  # weeks later
        store.remember_content([upload("both", "after")])
        monkeypatch.setattr(reports, "now_ms", lambda: start + (reports.CONTENT_TTL_S - 60) * 1000)
        legacy = {"signals": [], "given": [], "text": "kept by an earlier version", "user_id": "u2"}
        client.set(prefix + "content:legacy", json.dumps(legacy))  # one key per upload, as before
        old, both, never, earlier = store.recall_content(["old", "both", "never", "legacy"])
        assert earlier == legacy
        assert old is not None and (old["text"], old["user_id"], old["signals"][0]["signal_type"]) == (
            "first",
            "u1",
            "md5",
        )
        assert both is not None and both["text"] == "after"  # the newest wins
        assert never is None
        # Each week's bucket expires CONTENT_TTL_S after the week ends, so nothing is kept for ever.
        keys = client.keys(prefix + "content-week:*")
        assert len(keys) == 2
        for key in keys:
            week_ends_s = (int(key.rsplit(":", 1)[1]) + 1) * reports.CONTENT_BUCKET_MS // 1000
            expires_s = (time.time() * 1000 + client.pttl(key)) / 1000
            assert abs(expires_s - (week_ends_s + reports.CONTENT_TTL_S)) < 5
    finally:
        client.delete(*client.keys(prefix + "*"))
