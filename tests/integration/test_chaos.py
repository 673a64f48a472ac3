"""Chaos: every stage in its own process, SIGKILLed at random under steady load, loses no
decision, creates one review task per reported item and counts each strike once.

The test process produces a steady mix for 30-90 s: clean uploads (small photos,
short texts), uploads of banked media (removed, with a strike) and report bursts (several
distinct reporters on one clean item: one review task). Meanwhile a chaos thread SIGKILLs
a random stage process every 2-4 s and starts the same command again at once, decide more
often than the others. Every other decide process is a variant that kills itself at the
worst moment for review claims: after `process()` returned (the batch's claims are in
Redis) and before the runner produced its outputs. Then the killing stops, every consumer
group drains to the end of its inputs, and the topics and Redis are checked. Every broken
invariant is listed with its evidence in one failure.

The urgent tasks of the 24-hour deadline are made as `modstream escalate --once` makes
them, but by a DeadlineEscalator over this test's items only: the command escalates every
due item of the shared Redis, other tests' included.
"""

from __future__ import annotations

import collections
import json
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline.app import connect_redis
from pipeline.config import Settings
from pipeline.policy.deadlines import DeadlineEscalator
from pipeline.policy.engine import DEFAULT_POLICY
from pipeline.records import Output, Record, stable_id
from pipeline.runtime.reader import read_all
from pipeline.sdk import ModerationProducer
from pipeline.state.accounts import PREFIX as ACCOUNT_PREFIX
from pipeline.state.reports import RedisReportStore
from tests.media import encode, photo

from ..conftest import settings_env
from .test_pipeline import bank

pytestmark = pytest.mark.integration

# The load runs for at least MIN_LOAD_S and until the chaos has done its part (every stage
# killed, decide at least twice, one claim kill), at most MAX_LOAD_S: restarts take seconds
# on a busy machine.
MIN_LOAD_S, MAX_LOAD_S = 30.0, 90.0
UPLOADS_PER_S = 20
BURSTS_PER_S = 1.0
BATCH_SIZE = 50
KILL_EVERY_S = (2.0, 4.0)
MIN_UP_S = 1.0  # a process is killed only once it has been consuming this long
CLAIM_KILLER_GRACE_S = 15.0  # the claim-killing decide is left this long to kill itself
DRAIN_TIMEOUT_S = 180.0
STAGES = ("enrich", "match", "classify", "decide", "enforce-account")
# Consumer group (short name) and input topics of each stage process.
GROUPS = {
    "enrich": ("uploads", "reports"),
    "match": ("enriched",),
    "classify": ("matched",),
    "decide": ("classified", "review.verdicts"),
    "enforcer.account": ("decisions", "enforcement.retry"),
}
OFFENDERS = 6  # users who upload banked media
CLEAN_PHOTOS = 60
TEXTS = ("lunch with friends", "new bike day", "sunset at the lake", "my cat again", "exam results are in")

# decide, killed between its claims and their acknowledgement: after `process()` returns
# (reports counted and review tasks claimed in Redis) and before the runner produces the
# outputs. It dies on the first batch from the CHAOS_KILL_AT-th on that carries the review
# task of a reported item (at the latest 40 batches later), and writes what the lost batch
# held to CHAOS_EVIDENCE first.
CLAIM_KILLER = textwrap.dedent("""
    import json, logging, os, signal
    from pipeline.app import App
    from pipeline.cli import configure_logging
    from pipeline.config import Settings
    from pipeline.runtime.runner import Runner

    configure_logging("INFO", False)
    kill_at = int(os.environ["CHAOS_KILL_AT"])
    app = App(Settings.from_env())
    stage = app.build("decide")
    process = stage.process
    batches = 0

    def process_then_die(batch):
        global batches
        out = process(batch)
        batches += 1
        reports = [r.value["envelope"]["event_id"] for r in batch if r.value.get("kind") == "report"]
        tasks = [o.value for o in out if o.topic == "review" and o.value["envelope"]["event_id"] in reports]
        logging.info("claim killer: batch %d of %d records, %d reported items' tasks", batches, len(batch), len(tasks))
        if batches >= kill_at and (tasks or batches >= kill_at + 40):
            lost = {
                "batch": batches,
                "records": len(batch),
                "reports": reports,
                "review_tasks": [[t["envelope"]["content_id"], t["task_id"]] for t in tasks],
                "decisions": [
                    [o.value["envelope"]["event_id"], o.value["action"], o.value["decision_id"]]
                    for o in out if o.topic == "decisions"
                ],
            }
            with open(os.environ["CHAOS_EVIDENCE"], "a") as f:
                f.write(json.dumps(lost) + "\\n")
                f.flush()
                os.fsync(f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    stage.process = process_then_die
    Runner(app.settings, [stage], app.codec).run()
""")


@dataclass
class Member:
    """One stage process; `ready_at` is when its log said it was assigned partitions."""

    popen: subprocess.Popen[bytes]
    claim_killer: bool
    log_from: int  # where its lines start in the stage's log
    ready_at: float | None = None


@dataclass
class Fleet:
    """The stage processes: started, killed and restarted by the chaos thread, which also
    restarts a process that died by itself and records each death.

    A kill lands only on a process that has been consuming for MIN_UP_S: a process killed
    while it starts (imports, group join: seconds on a busy machine) has nothing in flight."""

    settings: Settings
    logs: Path
    rng: random.Random
    members: dict[str, Member] = field(default_factory=dict)
    kills: collections.Counter[str] = field(default_factory=collections.Counter)
    claim_kills: int = 0
    unexpected: list[str] = field(default_factory=list)  # deaths nobody asked for
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def evidence(self) -> Path:
        return self.logs / "claim-kills.jsonl"

    def log(self, stage: str) -> Path:
        return self.logs / f"{stage}.log"

    def start(self, stage: str, claim_killer: bool = False) -> None:
        env = settings_env(self.settings) | {"MODSTREAM_BATCH_SIZE": str(BATCH_SIZE)}
        if claim_killer:
            script = self.logs / "claim_killer.py"
            script.write_text(CLAIM_KILLER)
            args = [str(script)]
            env |= {"CHAOS_KILL_AT": str(self.rng.randint(3, 5)), "CHAOS_EVIDENCE": str(self.evidence)}
        else:
            args = ["-m", "pipeline", "run", stage]
        with self.log(stage).open("ab") as log:
            log.write(f"---- start {'claim-killer' if claim_killer else 'plain'} at {time.time():.3f}\n".encode())
            log.flush()
            popen = subprocess.Popen([sys.executable, *args], env=env, stdout=log, stderr=subprocess.STDOUT)
            self.members[stage] = Member(popen, claim_killer, log.tell())

    def up_for(self, stage: str) -> float:
        """How long the stage's process has been consuming (0 if it is not yet)."""
        m = self.members[stage]
        if m.ready_at is None:
            with self.log(stage).open("rb") as log:
                log.seek(m.log_from)
                if f"stage {stage} assigned".encode() in log.read():
                    m.ready_at = time.monotonic()
        return 0.0 if m.ready_at is None else time.monotonic() - m.ready_at

    def kill(self, stage: str) -> None:
        """SIGKILL the stage's process and start the same stage again; decide alternates
        between the plain process and the claim-killing variant."""
        m = self.members[stage]
        m.popen.send_signal(signal.SIGKILL)
        m.popen.wait(30)
        self.kills[stage] += 1
        self.start(stage, claim_killer=stage == "decide" and not m.claim_killer)

    def reap(self, restart: bool = True) -> None:
        """Restarts what died by itself: the claim-killing decide (expected; the plain one
        follows), anything else (recorded as unexpected)."""
        for stage, m in list(self.members.items()):
            code = m.popen.poll()
            if code is None:
                continue
            if m.claim_killer and code == -signal.SIGKILL:
                self.claim_kills += 1
            else:
                self.unexpected.append(f"{stage} exited with {code} (see {self.log(stage).name})")
            if restart:
                self.start(stage)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not all(self.up_for(s) for s in STAGES):
            with self.lock:
                self.reap()
            assert time.monotonic() < deadline, f"stages not consuming after {timeout_s:.0f} s\n{fleet_tails(self)}"
            time.sleep(0.2)

    def chaos(self, stop: threading.Event) -> None:
        """Every 2-4 s, SIGKILL a random stage among those consuming, decide twice as likely
        and stages killed less often more likely. The claim-killing decide is left to kill
        itself, unless it lives on for long."""
        next_kill = time.monotonic() + self.rng.uniform(*KILL_EVERY_S)
        while not stop.is_set():
            with self.lock:
                self.reap()
                if time.monotonic() >= next_kill:
                    victims = [
                        s
                        for s in STAGES
                        if self.up_for(s) > (CLAIM_KILLER_GRACE_S if self.members[s].claim_killer else MIN_UP_S)
                    ]
                    if victims:
                        weights = [(2 if s == "decide" else 1) / (1 + self.kills[s]) for s in victims]
                        self.kill(self.rng.choices(victims, weights)[0])
                        next_kill = time.monotonic() + self.rng.uniform(*KILL_EVERY_S)
            stop.wait(0.1)

    def done(self) -> bool:
        """The chaos has done its part: every stage killed, decide twice, one claim kill."""
        with self.lock:
            return all(self.kills[s] for s in STAGES) and self.kills["decide"] >= 2 and self.claim_kills >= 1

    def calm(self, timeout_s: float) -> None:
        """No more random kills. A claim-killing decide still running is killed, or, if no
        claim kill happened yet, gets `timeout_s` to kill itself on the backlog first; then the
        plain one takes over."""
        deadline = time.monotonic() + timeout_s
        while self.members["decide"].claim_killer and not self.claim_kills and time.monotonic() < deadline:
            with self.lock:
                self.reap()
            time.sleep(0.2)
        with self.lock:
            self.reap()
            if self.members["decide"].claim_killer:
                self.kill("decide")

    def stop(self) -> list[str]:
        """SIGTERM every process; returns those that did not stop cleanly."""
        self.reap(restart=False)
        bad = []
        for stage, m in self.members.items():
            if m.popen.poll() is not None:
                continue
            m.popen.send_signal(signal.SIGTERM)
            try:
                code = m.popen.wait(30)
            except subprocess.TimeoutExpired:
                m.popen.kill()
                code = m.popen.wait(30)
            if code != 0:
                bad.append(f"{stage} exited with {code} on SIGTERM")
        return bad

    def tail(self, stage: str, lines: int = 30) -> str:
        text = self.log(stage).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


def lag(settings: Settings, consumers: dict[str, Consumer]) -> dict[str, int]:
    """Records not yet committed by each stage's consumer group, over all its inputs."""
    out = {}
    for group, topics in GROUPS.items():
        consumer = consumers[group]
        tps = [TopicPartition(settings.topic(t), p) for t in topics for p in range(settings.partitions)]
        behind = 0
        for tp in consumer.committed(tps, timeout=10):
            low, high = consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=10)
            behind += max(0, high - (tp.offset if tp.offset >= 0 else low))
        out[group] = behind
    return out


def drain(settings: Settings, fleet: Fleet, timeout_s: float) -> float:
    """Waits until every group has committed the end of all its inputs, twice in a row a
    second apart; returns the time it took."""
    consumers = {g: Consumer(settings.consumer_config(settings.group_id(g))) for g in GROUPS}
    started = time.monotonic()
    try:
        quiet = 0
        behind: dict[str, int] = {}
        while quiet < 2:
            if time.monotonic() - started > timeout_s:
                raise AssertionError(f"not drained after {timeout_s:.0f} s: {behind}\n" + fleet_tails(fleet))
            with fleet.lock:
                fleet.reap()
            behind = lag(settings, consumers)
            quiet = quiet + 1 if not any(behind.values()) else 0
            time.sleep(1)
        return time.monotonic() - started
    finally:
        for c in consumers.values():
            c.close()


def fleet_tails(fleet: Fleet) -> str:
    return "\n".join(f"---- {s}.log\n{fleet.tail(s)}" for s in STAGES)


@dataclass
class Load:
    """What the test process sent."""

    uploads: dict[str, Record] = field(default_factory=dict)  # event id -> {content_id, user_id, banned}
    reports: dict[str, Record] = field(default_factory=dict)  # event id -> {content_id, reporter_id}
    bursts: dict[str, list[str]] = field(default_factory=dict)  # content id -> its reports' event ids


def send_load(
    settings: Settings,
    run: str,
    rng: random.Random,
    banned: list[bytes],
    clean: list[bytes],
    enough: Callable[[float], bool],
) -> Load:
    """Steady load until `enough(seconds so far)`: uploads at UPLOADS_PER_S (one in ten banked
    media), a report burst on a recent clean photo every 1 / BURSTS_PER_S s."""
    producer = ModerationProducer(settings)
    load = Load()
    photos: list[tuple[float, str, str]] = []  # (sent at, content id, owner) of clean photos not yet reported
    scheduled: list[tuple[float, str, str, str, str]] = []  # (due, content id, owner, reporter, reason)
    started = time.monotonic()
    sent = bursts = 0
    last_flush = started
    loading = True
    while loading or scheduled:
        now = time.monotonic()
        elapsed = now - started
        loading = loading and not enough(elapsed)
        while loading and sent < elapsed * UPLOADS_PER_S:
            content_id = f"chaos-{run}-c{sent}"
            if sent % 10 == 0:
                user = f"chaos-{run}-bad{(sent // 10) % OFFENDERS}"
                eid = producer.send_upload(content_id, user, media=banned[(sent // 10) % len(banned)])
            elif sent % 10 < 6:
                user = f"chaos-{run}-u{sent % 17}"
                eid = producer.send_upload(content_id, user, media=clean[sent % len(clean)])
                photos.append((now, content_id, user))
            else:
                user = f"chaos-{run}-u{sent % 17}"
                eid = producer.send_upload(content_id, user, text=f"{TEXTS[sent % len(TEXTS)]} #{sent}")
            load.uploads[eid] = {"content_id": content_id, "user_id": user, "banned": sent % 10 == 0}
            sent += 1
        while loading and bursts < elapsed * BURSTS_PER_S and photos and photos[0][0] < now - 0.5:
            # 3-6 distinct reporters, over about a second, sometimes one of them twice.
            _, content_id, owner = photos.pop(rng.randrange(len(photos) // 2 + 1))
            reporters = [f"chaos-{run}-r{bursts}-{j}" for j in range(rng.randint(3, 6))]
            if rng.random() < 0.5:
                reporters.append(reporters[0])
            for reporter in reporters:
                reason = rng.choice(("violent_extremism", "hate", "terrorism", "graphic_violence"))
                scheduled.append((now + rng.uniform(0, 1.2), content_id, owner, reporter, reason))
            load.bursts[content_id] = []
            bursts += 1
        scheduled.sort()
        while scheduled and scheduled[0][0] <= now:
            _, content_id, owner, reporter, reason = scheduled.pop(0)
            eid = producer.send_report(content_id, reporter, reason, owner_id=owner)
            load.reports[eid] = {"content_id": content_id, "reporter_id": reporter}
            load.bursts[content_id].append(eid)
        if now - last_flush > 1:
            producer.flush()
            last_flush = now
        time.sleep(0.02)
    producer.flush()
    return load


class OnlyThese:
    """The report store's deadlines, limited to some items (Redis is shared with other tests)."""

    def __init__(self, store: RedisReportStore, content_ids: set[str]) -> None:
        self.store = store
        self.content_ids = content_ids

    def due(self, before_ms: int) -> list[tuple[str, int, Record]]:
        return [d for d in self.store.due(before_ms) if d[0] in self.content_ids]

    def mark_escalated(self, content_id: str) -> bool:
        return self.store.mark_escalated(content_id)


def escalate(settings: Settings, store: OnlyThese) -> int:
    """`modstream escalate --once --warn-hours 48`, over `store`."""
    producer = ModerationProducer(settings)

    def publish(tasks: list[Output]) -> None:
        for task in tasks:
            producer.send("review", task.value or {}, key=str(task.key))
        producer.flush()

    return DeadlineEscalator(store, 48 * 3_600_000).run_once(publish)


def test_sigkilled_stages_lose_no_decision_and_double_no_task_or_strike(settings: Settings, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:10]
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    banned = [encode(photo(5000 + i, (160, 120)), quality=90) for i in range(4)]
    clean = [encode(photo(6000 + i, (96, 72)), quality=85) for i in range(CLEAN_PHOTOS)]
    # Every process of the run reads the same policy, whatever happens to the file meanwhile:
    # a new version re-decides redelivered events under new decision ids (and strikes again).
    policy = tmp_path / "policy.yaml"
    policy.write_text((Path(settings.policy) if settings.policy else DEFAULT_POLICY).read_text())
    settings = settings.with_(policy=str(policy))
    producer = ModerationProducer(settings)
    for media in banned:
        bank(producer, media)  # tvec, critical: removed by bank-match-severe, with a strike

    fleet = Fleet(settings, tmp_path, random.Random(seed + 1))
    stop = threading.Event()
    chaos = threading.Thread(target=fleet.chaos, args=(stop,), daemon=True)
    try:
        for stage in STAGES:
            fleet.start(stage, claim_killer=stage == "decide")
        fleet.wait_ready(120)
        started = time.monotonic()
        chaos.start()
        load_started = time.monotonic()
        load = send_load(
            settings, run, rng, banned, clean, lambda s: s >= MAX_LOAD_S or (s >= MIN_LOAD_S and fleet.done())
        )
        load_s = time.monotonic() - load_started
        stop.set()
        chaos.join(60)
        fleet.calm(60)
        drained_s = drain(settings, fleet, DRAIN_TIMEOUT_S)
        total_s = time.monotonic() - started

        problems: list[str] = []
        decisions = read_all(settings, "decisions")
        reviews = read_all(settings, "review")
        results = read_all(settings, "enforcement.results")
        dead = read_all(settings, "dlq")
        by_event: dict[str, list[Record]] = collections.defaultdict(list)
        for d in decisions:
            by_event[d["envelope"]["event_id"]].append(d)
        lost = (
            json.loads("[" + ",".join(fleet.evidence.read_text().splitlines()) + "]") if fleet.evidence.exists() else []
        )

        # 1. Every upload and every report has a decision; nothing was dead-lettered.
        undecided = [e for e in [*load.uploads, *load.reports] if e not in by_event]
        if undecided:
            problems.append(f"{len(undecided)} events without a decision, e.g. {undecided[:5]}")
        if dead:
            problems.append(f"{len(dead)} dead letters, e.g. {dead[0]['stage']}: {dead[0]['reason']}")

        # 2. Every banked upload was removed, by every decision on it.
        not_removed = {
            e: sorted({d["action"] for d in by_event[e]})
            for e, u in load.uploads.items()
            if u["banned"] and (not by_event[e] or any(d["action"] != "remove" for d in by_event[e]))
        }
        if not_removed:
            problems.append(f"{len(not_removed)} banked uploads not removed: {dict(list(not_removed.items())[:5])}")

        # 3. Every burst has exactly one review task id (repeats of that task are allowed).
        redis = connect_redis(settings.redis_url)
        lost_tasks = {cid for batch in lost for cid, _ in batch["review_tasks"]}
        task_ids: dict[str, set[str]] = collections.defaultdict(set)
        for t in reviews:
            if t["decision_id"] is not None:  # decide's tasks; the escalator's have none
                task_ids[t["envelope"]["content_id"]].add(t["task_id"])
        for cid, reports in load.bursts.items():
            if len(task_ids[cid]) != 1:
                problems.append(
                    f"burst on {cid}: {len(task_ids[cid])} review task ids {sorted(task_ids[cid])}; "
                    f"claim owner in Redis {redis.hget(f'modstream:item:{cid}', 'review_task')!r}; "
                    f"a claim-killed batch held its task: {cid in lost_tasks}; decisions on its reports: "
                    + str([(e[:8], [(d["rule_id"], d["action"]) for d in by_event[e]]) for e in reports])
                )

        # 4. Strikes: the account holds one per distinct removal decision with a strike, and
        # each banked upload has one such decision however often it was redelivered.
        struck: dict[str, set[str]] = collections.defaultdict(set)  # user -> decision ids
        removals: dict[str, set[tuple[str, str]]] = collections.defaultdict(set)  # event -> (decision id, version)
        for d in decisions:
            user = d["envelope"]["user_id"]
            if user and user.startswith(f"chaos-{run}-") and d["action"] == "remove" and "strike" in d["effects"]:
                struck[user].add(d["decision_id"])
                removals[d["envelope"]["event_id"]].add((d["decision_id"], d["policy_version"]))
        for user in sorted({u["user_id"] for u in load.uploads.values() if u["banned"]}):
            strikes = int(redis.hget(ACCOUNT_PREFIX + user, "strikes") or 0)
            events = redis.smembers(ACCOUNT_PREFIX + user + ":strike_events")
            mine = [e for e, u in load.uploads.items() if u["banned"] and u["user_id"] == user]
            twice = {e[:8]: sorted(removals[e]) for e in mine if len(removals[e]) > 1}
            if strikes != len(struck[user]) or strikes != len(mine) or twice:
                problems.append(
                    f"{user}: {strikes} strikes in Redis, {len(struck[user])} removal decisions with a strike, "
                    f"{len(mine)} banked uploads sent; strike events not decisions: "
                    f"{sorted(events - struck[user])[:5]}, decisions not struck: {sorted(struck[user] - events)[:5]}; "
                    f"uploads with several removal decisions (decision id, policy version): {twice}"
                )
        acted = {r["decision_id"] for r in results if r["enforcer"] == "account" and r["status"] == "succeeded"}
        unenforced = sorted({i for ids in struck.values() for i in ids} - acted)
        if unenforced:
            problems.append(f"{len(unenforced)} removals without a succeeded account result, e.g. {unenforced[:5]}")

        # 5. The deadline escalator makes one urgent task per open reported item, once.
        store = OnlyThese(RedisReportStore(redis), set(load.bursts))
        escalated = escalate(settings, store)
        again = escalate(settings, store)
        if escalated != len(load.bursts) or again != 0:
            problems.append(f"escalated {escalated} of {len(load.bursts)} reported items, then {again} more")
        urgent: dict[str, set[str]] = collections.defaultdict(set)
        for t in read_all(settings, "review"):
            if t["decision_id"] is None and t["envelope"]["content_id"] in load.bursts:
                urgent[t["envelope"]["content_id"]].add(t["task_id"])
        wrong = {c: sorted(urgent[c]) for c in load.bursts if urgent[c] != {stable_id(c, "deadline")}}
        if wrong:
            problems.append(
                f"{len(wrong)} reported items without their one urgent task: {dict(list(wrong.items())[:5])}"
            )

        summary = (
            f"seed {seed}; {load_s:.0f} s of load: {len(load.uploads)} uploads "
            f"({sum(u['banned'] for u in load.uploads.values())} banked), "
            f"{len(load.reports)} reports in {len(load.bursts)} bursts; kills {dict(fleet.kills)}, "
            f"{fleet.claim_kills} claim kills (lost batches: {[(b['batch'], len(b['review_tasks'])) for b in lost]}); "
            f"{len(decisions)} decisions (policy versions {sorted({d['policy_version'] for d in decisions})}), "
            f"{len(reviews)} review tasks; drained in {drained_s:.1f} s, "
            f"{total_s:.1f} s in all"
        )
        print(summary)
        if not fleet.done():
            problems.append(f"not enough chaos in {MAX_LOAD_S:.0f} s: every stage killed, decide twice, a claim kill")
    finally:
        stop.set()
        if chaos.is_alive():
            chaos.join(60)
        stopped = fleet.stop()
    problems += fleet.unexpected + stopped
    assert not problems, summary + "\n" + "\n".join(problems) + "\n" + fleet_tails(fleet)
