"""The `modstream` command: dev services, topics, stages, produce/tail, banks and the demo."""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, Any

import click

from pipeline.config import TOPICS, Settings
from pipeline.dev import services

logger = logging.getLogger(__name__)


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "ts": record.created,
                "level": record.levelname,
                "logger": record.name,
                "msg": record.getMessage(),
            }
        )


def configure_logging(level: str, json_logs: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonLogFormatter() if json_logs else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


@click.group()
@click.option("--log-level", default="INFO", envvar="MODSTREAM_LOG_LEVEL", show_default=True)
@click.option("--json-logs", is_flag=True, envvar="MODSTREAM_JSON_LOGS", help="Log JSON lines.")
@click.pass_context
def main(ctx: click.Context, log_level: str, json_logs: bool) -> None:
    """modstream: a content-moderation pipeline on Kafka."""
    configure_logging(log_level, json_logs)
    try:
        ctx.obj = services.resolve(Settings.from_env())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


def settings_of(ctx: click.Context) -> Settings:
    settings: Settings = ctx.obj
    if not settings.bootstrap_servers:
        raise click.ClickException("no Kafka configured: set MODSTREAM_BOOTSTRAP_SERVERS or run `modstream dev up`")
    return settings


# ---- dev services ------------------------------------------------------------
@main.group()
def dev() -> None:
    """The embedded broker and Redis for laptops and CI."""


@dev.command("up")
@click.pass_context
def dev_up(ctx: click.Context) -> None:
    """Start the embedded broker and Redis in the background."""
    state = services.up(ctx.obj)
    click.echo(f"broker {state.bootstrap_servers}\nredis  {state.redis_url}")


@dev.command("down")
@click.pass_context
def dev_down(ctx: click.Context) -> None:
    """Stop them."""
    click.echo("stopped" if services.down(ctx.obj) else "nothing was running")


@dev.command("status")
@click.pass_context
def dev_status(ctx: click.Context) -> None:
    """Say what runs."""
    state = services.read_state(ctx.obj)
    if state is None:
        click.echo("not running")
        sys.exit(1)
    click.echo(
        f"broker {state.bootstrap_servers} (pid {state.broker_pid})\n"
        f"redis  {state.redis_url} ({'pid ' + str(state.redis_pid) if state.redis_pid else 'external'})"
    )


# ---- topics and stages -------------------------------------------------------
@main.group()
def topics() -> None:
    """Topic administration."""


@topics.command("create")
@click.pass_context
def topics_create(ctx: click.Context) -> None:
    """Create every topic of the topic map (idempotent)."""
    from pipeline.runtime.topics import create_topics

    for name, status in sorted(create_topics(settings_of(ctx)).items()):
        click.echo(f"{name}\t{status}")


@main.command()
@click.argument("stages", nargs=-1, required=True)
@click.pass_context
def run(ctx: click.Context, stages: tuple[str, ...]) -> None:
    """Run STAGES (enrich, match, decide, enforce-log, or all). Several pipeline stages run fused."""
    from pipeline.runtime.app import App, run_all

    app = App(settings_of(ctx))
    try:
        run_all(app.runners(list(stages)))
    except ValueError as exc:  # an unknown stage, or a broken model registry or policy
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()


# ---- produce and tail --------------------------------------------------------
topic_choice = click.Choice(sorted(TOPICS))


@main.command()
@click.argument("topic", type=topic_choice)
@click.argument("source", type=click.File("r"), default="-")
@click.pass_context
def produce(ctx: click.Context, topic: str, source: IO[str]) -> None:
    """Produce JSON lines from SOURCE (a file or -) to TOPIC as Avro."""
    from pipeline.records import record_key
    from pipeline.sdk import ModerationProducer
    from pipeline.serde.avro import EncodeError
    from pipeline.serde.json_form import from_json

    producer = ModerationProducer(settings_of(ctx))
    count = 0
    for lineno, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            value = from_json(producer.codec.schemas, TOPICS[topic], json.loads(line))
            producer.send(topic, value, key=record_key(topic, value))
        except (json.JSONDecodeError, EncodeError, KeyError) as exc:
            raise click.ClickException(f"line {lineno}: {exc}") from exc
        count += 1
    producer.flush()
    click.echo(f"produced {count} records to {producer.settings.topic(topic)}", err=True)


@main.command()
@click.argument("topic", type=topic_choice)
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record, not the end.")
@click.option("--max", "max_records", type=int, default=0, help="Stop after N records.")
@click.option("--timeout", type=float, default=0.0, help="Stop after S seconds without a record.")
@click.option("--with-key", is_flag=True, help="Print {key, value} objects.")
@click.pass_context
def tail(
    ctx: click.Context, topic: str, from_beginning: bool, max_records: int, timeout: float, with_key: bool
) -> None:
    """Print TOPIC's records as JSON lines."""
    from pipeline.runtime.reader import read_topic

    for key, value in read_topic(settings_of(ctx), topic, from_beginning, max_records, timeout):
        click.echo(json.dumps({"key": key, "value": value} if with_key else value, sort_keys=False))


# ---- banks ----------------------------------------------------------------------
@main.group()
def bank() -> None:
    """Hash banks: import, add media, list, export, delete."""


@bank.command("import")
@click.argument("source", type=click.File("r"))
@click.option("--bank", "bank_name", default="imported", show_default=True, help="Bank for rows without one.")
@click.option("--source-name", default="import", show_default=True, help="Recorded as each entry's source.")
@click.pass_context
def bank_import(ctx: click.Context, source: IO[str], bank_name: str, source_name: str) -> None:
    """Import SOURCE, a CSV of signal_type,hash,category,severity[,bank]."""
    from pipeline.banks import admin

    try:
        entries = admin.parse_csv(source, bank_name, source_name)
    except admin.BankInputError as exc:
        raise click.ClickException(f"nothing imported: {exc}") from exc
    click.echo(f"imported {admin.publish(settings_of(ctx), entries)} entries")


@bank.command("add-media")
@click.argument("files", type=click.Path(exists=True, dir_okay=False), nargs=-1, required=True)
@click.option("--bank", "bank_name", required=True)
@click.option("--category", required=True)
@click.option("--severity", default="high", show_default=True)
@click.pass_context
def bank_add_media(ctx: click.Context, files: tuple[str, ...], bank_name: str, category: str, severity: str) -> None:
    """Hash media FILES (images, videos) and bank their hashes."""
    from pathlib import Path

    from pipeline.banks import admin
    from pipeline.signals.media import MediaError

    entries = []
    for name in files:
        try:
            entries += admin.media_entries(
                Path(name).read_bytes(), bank_name, category, severity, "add-media", Path(name).name
            )
        except (MediaError, admin.BankInputError) as exc:
            raise click.ClickException(f"{name}: {exc}") from exc
    click.echo(f"banked {admin.publish(settings_of(ctx), entries)} hashes from {len(files)} files")


@bank.command("list")
@click.pass_context
def bank_list(ctx: click.Context) -> None:
    """Entries per bank and signal type."""
    from pipeline.banks import admin

    for (name, kind), n in sorted(admin.counts(settings_of(ctx)).items()):
        click.echo(f"{name}\t{kind}\t{n}")


@bank.command("export")
@click.option("--bank", "bank_name", default=None, help="Only this bank.")
@click.pass_context
def bank_export(ctx: click.Context, bank_name: str | None) -> None:
    """Print the banks as CSV (the import format)."""
    from pipeline.banks import admin

    admin.export_csv(admin.current(settings_of(ctx), bank_name), sys.stdout)


@bank.command("delete")
@click.argument("bank_name")
@click.option("--signal-type", default=None)
@click.option("--hash", "value", default=None)
@click.pass_context
def bank_delete(ctx: click.Context, bank_name: str, signal_type: str | None, value: str | None) -> None:
    """Delete one entry (--signal-type and --hash) or a whole bank."""
    from pipeline.banks import admin

    if bool(signal_type) != bool(value):
        raise click.ClickException("give both --signal-type and --hash, or neither to delete the whole bank")
    click.echo(f"deleted {admin.delete(settings_of(ctx), bank_name, signal_type, value)} entries")


# ---- models ----------------------------------------------------------------------
@main.group()
def models() -> None:
    """Classifier models."""


@models.command("build")
def models_build() -> None:
    """Train the default text model from the corpus, write it as ONNX with its model card."""
    from pipeline.models.build import CARD_PATH, MODEL_PATH, build, format_report

    click.echo(format_report(build()))
    click.echo(f"wrote {MODEL_PATH.name} and {CARD_PATH.name}")


@models.command("check")
@click.argument("registry", type=click.Path(exists=True, dir_okay=False), required=False)
@click.pass_context
def models_check(ctx: click.Context, registry: str | None) -> None:
    """Load every model of REGISTRY (default: the configured one) and run it once."""
    from pathlib import Path

    from pipeline.models.registry import DEFAULT_REGISTRY, RegistryError, load_models

    settings: Settings = ctx.obj
    path = Path(registry or settings.models or DEFAULT_REGISTRY)
    try:
        for model in load_models(path, settings.onnx_providers, settings.onnx_threads):
            click.echo(f"{model.spec.name}\t{model.spec.modality}\t{','.join(model.providers)}\tok")
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from exc


# ---- policy, review, deadlines, transparency -------------------------------------------
@main.group()
def policy() -> None:
    """Moderation policy files."""


def _load_policy(ctx: click.Context, path: str) -> Any:
    from pathlib import Path

    from pipeline.models.registry import DEFAULT_REGISTRY, RegistryError, load_registry
    from pipeline.policy.engine import PolicyError, load_policy

    settings: Settings = ctx.obj
    try:
        specs = load_registry(Path(settings.models) if settings.models else DEFAULT_REGISTRY)
        thresholds = {(s.name, label): t for s in specs for label, t in s.thresholds.items()}
        return load_policy(Path(path), thresholds)
    except (PolicyError, RegistryError) as exc:
        raise click.ClickException(str(exc)) from exc


@policy.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def policy_check(ctx: click.Context, file: str) -> None:
    """Validate a policy FILE."""
    p = _load_policy(ctx, file)
    click.echo(f"ok: policy {p.policy_id} version {p.version}, {len(p.rules)} rules, default {p.default.action}")


@policy.command("test")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.argument("cases", type=click.File("r"))
@click.pass_context
def policy_test(ctx: click.Context, file: str, cases: IO[str]) -> None:
    """Run CASES (JSON lines: {"name", "record", "reports"?, "expect": {"action", "rule"?}}) through FILE."""
    from pipeline.policy.engine import Facts
    from pipeline.serde import SchemaSet
    from pipeline.serde.avro import EncodeError
    from pipeline.serde.json_form import from_json

    p, schemas, failed, total = _load_policy(ctx, file), SchemaSet(), 0, 0
    for lineno, line in enumerate(cases, 1):
        if not line.strip():
            continue
        total += 1
        try:
            case = json.loads(line)
            record = from_json(schemas, "ModerationRecord", case["record"])
        except (json.JSONDecodeError, KeyError, EncodeError) as exc:
            raise click.ClickException(f"case on line {lineno}: {exc}") from exc
        outcome = p.evaluate(Facts(record, case.get("reports"), bool(case.get("incident_active"))))
        expect = case.get("expect", {})
        ok = outcome.rule.action == expect.get("action", outcome.rule.action) and outcome.rule.id == expect.get(
            "rule", outcome.rule.id
        )
        failed += not ok
        click.echo(f"{'PASS' if ok else 'FAIL'} {case.get('name', f'line {lineno}')}: {outcome.explanation}")
    click.echo(f"{total - failed} passed, {failed} failed")
    if failed:
        sys.exit(1)


@main.group()
def review() -> None:
    """The human review queue."""


@review.command("list")
@click.option("--limit", type=int, default=50)
@click.pass_context
def review_list(ctx: click.Context, limit: int) -> None:
    """Open review tasks, most urgent first."""
    from datetime import UTC, datetime

    from pipeline.policy.review import open_tasks

    for t in open_tasks(settings_of(ctx))[:limit]:
        due = datetime.fromtimestamp(t["deadline"] / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        what = t["envelope"].get("content_id") or t["envelope"].get("stream_id")
        click.echo(f"{t['task_id']}  p{t['priority']:<3} due {due}  {what}  {t['reason']}")


@review.command("decide")
@click.argument("task_id")
@click.argument("action", type=click.Choice(["allow", "remove", "restrict", "end_stream"]))
@click.option("--category", default=None)
@click.option("--note", default="")
@click.option("--reviewer", envvar="USER", default="reviewer")
@click.pass_context
def review_decide(
    ctx: click.Context, task_id: str, action: str, category: str | None, note: str, reviewer: str
) -> None:
    """Record a verdict on TASK_ID; decide turns it into the final decision."""
    from pipeline.policy.review import decide

    try:
        decide(settings_of(ctx), task_id, action, reviewer, category, note)
    except KeyError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"verdict {action} on {task_id} recorded")


@main.command()
@click.option("--interval", type=float, default=30.0, show_default=True)
@click.option("--once", is_flag=True, help="Check once and exit.")
@click.option(
    "--warn-hours", type=float, default=4.0, show_default=True, help="Escalate this long before the deadline."
)
@click.pass_context
def escalate(ctx: click.Context, interval: float, once: bool, warn_hours: float) -> None:
    """Create urgent review tasks for reported items nearing their 24-hour deadline."""
    import time

    from pipeline.policy.deadlines import DeadlineEscalator
    from pipeline.runtime.app import connect_redis
    from pipeline.sdk import ModerationProducer
    from pipeline.state.reports import RedisReportStore

    settings = settings_of(ctx)
    escalator = DeadlineEscalator(RedisReportStore(connect_redis(settings.redis_url)), int(warn_hours * 3_600_000))
    producer = ModerationProducer(settings)
    while True:
        tasks = escalator.run_once()
        for task in tasks:
            producer.send("review", task.value or {}, key=str(task.key))
        producer.flush()
        if tasks:
            click.echo(f"escalated {len(tasks)} item(s)")
        if once:
            return
        time.sleep(interval)


@main.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--chart", type=click.Path(dir_okay=False), default=None, help="Also write an HTML chart here.")
@click.pass_context
def report(ctx: click.Context, fmt: str, chart: str | None) -> None:
    """The transparency report: actions per category, time to action, reported items within 24 h."""
    from pathlib import Path

    from pipeline.policy.transparency import build_report, format_html, format_text
    from pipeline.records import now_ms
    from pipeline.runtime.reader import read_all

    settings = settings_of(ctx)
    data = build_report(
        read_all(settings, "decisions"),
        read_all(settings, "reports"),
        read_all(settings, "enforcement.results"),
        now_ms(),
    )
    click.echo(json.dumps(data, indent=2) if fmt == "json" else format_text(data))
    if chart:
        Path(chart).write_text(format_html(data))


# ---- demo ---------------------------------------------------------------------
@main.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the pipeline on the embedded defaults and print each decision."""
    from pipeline.demo import run_demo

    settings: Settings = ctx.obj
    started = None
    if not settings.bootstrap_servers:
        started = services.up(settings)
        settings = services.resolve(settings)
    try:
        ok = run_demo(settings, echo=click.echo)
    finally:
        if started is not None:
            services.down(settings)
    sys.exit(0 if ok else 1)
