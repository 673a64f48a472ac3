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
@click.option(
    "--processes", type=click.IntRange(min=1), default=1, show_default=True, help="Members of the group to start."
)
@click.pass_context
def run(ctx: click.Context, stages: tuple[str, ...], processes: int) -> None:
    """Run STAGES (enrich, match, classify, decide, enforce-log, ..., or all). Several pipeline
    stages run fused in one process; --processes N starts N such processes."""
    from pipeline.app import App, run_all

    settings = settings_of(ctx)
    if processes > 1:
        from pipeline.runtime.supervisor import Supervisor

        argv = [sys.executable, "-m", "pipeline", "--log-level", logging.getLevelName(logging.getLogger().level)]
        sys.exit(Supervisor([*argv, "run", *stages], processes, settings.instance_id, settings.metrics_port).run())
    app = App(settings)
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
    """Produce JSON lines from SOURCE (a file or -) to TOPIC as Avro.

    A record with an envelope gets the envelope's missing event_id (a new id), platform_id
    (MODSTREAM_PLATFORM_ID) and occurred_at (now) filled in."""
    from pipeline.records import fill_envelope, record_key
    from pipeline.sdk import DeliveryError, ModerationProducer, RecordTooLarge
    from pipeline.serde.avro import EncodeError
    from pipeline.serde.json_form import from_json

    settings = settings_of(ctx)
    producer = ModerationProducer(settings)
    schema: Any = producer.codec.schemas[TOPICS[topic]]
    has_envelope = any(f["name"] == "envelope" for f in schema["fields"])
    count = 0
    for lineno, line in enumerate(source, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            if has_envelope and isinstance(obj, dict):
                obj["envelope"] = fill_envelope(obj.get("envelope"), settings.platform_id)
            value = from_json(producer.codec.schemas, TOPICS[topic], obj)
            producer.send(topic, value, key=record_key(topic, value))
        except (json.JSONDecodeError, EncodeError, KeyError, RecordTooLarge, DeliveryError) as exc:
            raise click.ClickException(f"line {lineno}: {exc}") from exc
        count += 1
    try:
        producer.flush()
    except DeliveryError as exc:
        raise click.ClickException(str(exc)) from exc
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

    try:
        for key, value in read_topic(settings_of(ctx), topic, from_beginning, max_records, timeout):
            click.echo(json.dumps({"key": key, "value": value} if with_key else value, sort_keys=False))
    except ConnectionError as exc:  # the schema registry does not answer
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc


@main.group()
def dlq() -> None:
    """Dead letters: putting them back once their cause is fixed."""


@dlq.command("replay")
@click.option("--stage", help="Only letters of this stage (enrich, decide, enforce-webhook, ...).")
@click.option("--kind", "error_type", help="Only letters of this kind (decode, process, enforce, ...).")
@click.option("--since", help="Only letters that failed at or after this time (ISO 8601, UTC if no zone).")
@click.option("--dry-run", is_flag=True, help="Count what would be replayed; produce nothing.")
@click.pass_context
def dlq_replay(ctx: click.Context, stage: str | None, error_type: str | None, since: str | None, dry_run: bool) -> None:
    """Produce dead-lettered records back to the topics they were consumed from, with their keys
    and bytes, so the stages try them again. Every letter on the topic when it starts is looked
    at; stages are idempotent by event id, so a record replayed twice is decided once."""
    from datetime import UTC, datetime

    from pipeline.runtime.dlq import replay

    since_ms = None
    if since:
        try:
            at = datetime.fromisoformat(since)
        except ValueError as exc:
            raise click.BadParameter(f"{since!r} is not an ISO 8601 time", param_hint="--since") from exc
        since_ms = int((at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp() * 1000)

    def select(letter: dict[str, Any]) -> bool:
        return (
            (stage is None or letter["stage"] == stage)
            and (error_type is None or letter["error_type"] == error_type)
            and (since_ms is None or letter["failed_at"] >= since_ms)
        )

    try:
        done = replay(settings_of(ctx), select, dry_run)
    except (RuntimeError, ConnectionError) as exc:  # not acknowledged; the schema registry does not answer
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    verb = "would replay" if dry_run else "replayed"
    for topic, n in sorted(done.produced.items()):
        click.echo(f"{verb} {n} to {topic}")
    for reason, n in sorted(done.skipped.items()):
        click.echo(f"skipped {n}: {reason}")
    click.echo(f"{verb} {sum(done.produced.values())}; {done.unselected} not selected")


# ---- banks ----------------------------------------------------------------------
@main.group()
def bank() -> None:
    """Hash banks: import, add media, list, export, delete."""


@bank.command("import")
@click.argument("source", type=click.File("r"))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["modstream", "pytx", "local_file", "tcap"]),
    default=None,
    help="Detected from the content when left out.",
)
@click.option("--bank", "bank_name", default="imported", show_default=True, help="Bank for rows without one.")
@click.option("--category", default="", help="Category for rows without one (local_file rows have none).")
@click.option("--severity", default="high", show_default=True, help="Severity for rows without one.")
@click.option("--source-name", default="import", show_default=True, help="Recorded as each entry's source.")
@click.pass_context
def bank_import(
    ctx: click.Context,
    source: IO[str],
    fmt: str | None,
    bank_name: str,
    category: str,
    severity: str,
    source_name: str,
) -> None:
    """Import SOURCE, a bank file: modstream CSV (signal_type,hash,category,severity[,bank]),
    a python-threatexchange dataset CSV, a ThreatExchange local_file or a TCAP/GIFCT-style
    CSV (hash,algorithm,category). One bad line imports nothing."""
    from pipeline.banks import admin

    try:
        parsed = admin.parse(source, bank_name, source_name, fmt, category, severity)
    except admin.BankInputError as exc:
        raise click.ClickException(f"nothing imported: {exc}") from exc
    skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(parsed.skipped.items()))
    note = f"; left out {skipped} rows (false positives in pytx's opinion)" if skipped else ""
    click.echo(f"imported {admin.publish(settings_of(ctx), parsed.entries)} entries{note}")


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
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["modstream", "pytx", "local_file", "tcap"]),
    default="modstream",
    show_default=True,
)
@click.pass_context
def bank_export(ctx: click.Context, bank_name: str | None, fmt: str) -> None:
    """Print the banks in an import format; signal types the format cannot name are left out."""
    from pipeline.banks import admin

    left_out = admin.export(admin.current(settings_of(ctx), bank_name), sys.stdout, fmt)
    for kind, n in sorted(left_out.items()):
        click.echo(f"left out {n} {kind} entries: the {fmt} format has no name for them", err=True)


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


# ---- crisis protocol -----------------------------------------------------------------
@main.group()
def incident() -> None:
    """Crisis incidents: declare, add media, close, list, accept a proposed one."""


def _hashes_csv(path: str | None) -> list[tuple[str, str]]:
    """signal_type,hash rows (a header line is allowed)."""
    if not path:
        return []
    rows = []
    for lineno, line in enumerate(open(path), 1):  # noqa: SIM115 (read through once)
        parts = [p.strip() for p in line.strip().split(",")]
        if not parts[0] or parts[0].lower() in ("signal_type", "#"):
            continue
        if len(parts) < 2:
            raise click.ClickException(f"{path} line {lineno}: expected signal_type,hash")
        rows.append((parts[0], parts[1]))
    return rows


@incident.command("declare")
@click.option("--title", required=True)
@click.option("--category", required=True)
@click.option("--severity", default="critical", show_default=True)
@click.option("--media", "media", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Seed media files.")
@click.option("--hashes", type=click.Path(exists=True, dir_okay=False), help="CSV of signal_type,hash seed hashes.")
@click.option("--reason", default="", help="Why; recorded with the incident.")
@click.pass_context
def incident_declare(
    ctx: click.Context,
    title: str,
    category: str,
    severity: str,
    media: tuple[str, ...],
    hashes: str | None,
    reason: str,
) -> None:
    """Declare an incident: bank and share its seed hashes at once, tighten the policy."""
    from pathlib import Path

    from pipeline.banks.admin import BankInputError
    from pipeline.policy.crisis import declare
    from pipeline.signals.media import MediaError

    try:
        found, n = declare(
            settings_of(ctx), title, category, severity, [Path(m) for m in media], _hashes_csv(hashes), reason
        )
    except (MediaError, BankInputError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{found['incident_id']}\tactive\t{n} hashes banked in incident.{found['incident_id']} and shared")


@incident.command("add-media")
@click.argument("incident_id")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def incident_add_media(ctx: click.Context, incident_id: str, files: tuple[str, ...]) -> None:
    """Bank and share more seed media for an active incident."""
    from pathlib import Path

    from pipeline.policy.crisis import add_media
    from pipeline.signals.media import MediaError

    try:
        n = add_media(settings_of(ctx), incident_id, [Path(f) for f in files])
    except (KeyError, ValueError, MediaError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{n} hashes banked and shared for {incident_id}")


@incident.command("close")
@click.argument("incident_id")
@click.pass_context
def incident_close(ctx: click.Context, incident_id: str) -> None:
    """Close an incident: the policy relaxes; its bank stays."""
    from pipeline.policy.crisis import close

    try:
        close(settings_of(ctx), incident_id)
    except KeyError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{incident_id}\tclosed")


@incident.command("accept")
@click.argument("incident_id")
@click.option("--reason", default="")
@click.pass_context
def incident_accept(ctx: click.Context, incident_id: str, reason: str) -> None:
    """Turn a proposed incident (flood detection) into a declared one."""
    from pipeline.policy.crisis import accept

    try:
        found, n = accept(settings_of(ctx), incident_id, reason)
    except (KeyError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{found['incident_id']}\tactive\t{n} hashes banked and shared")


@incident.command("list")
@click.pass_context
def incident_list(ctx: click.Context) -> None:
    """Incidents, newest first."""
    from datetime import UTC, datetime

    from pipeline.policy.crisis import incidents

    for i in incidents(settings_of(ctx)):
        when = datetime.fromtimestamp(i["declared_at"] / 1000, UTC).strftime("%Y-%m-%d %H:%M")
        click.echo(
            f"{i['incident_id']}\t{i['status']}\t{when}\t{i['category']}\t{len(i['signals'])} hashes\t{i['title']}"
        )


# ---- exchange and partners ---------------------------------------------------------
@main.group()
def exchange() -> None:
    """Signed hash sharing with partner platforms (run it with `modstream run exchange`)."""


@exchange.command("keygen")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=".", show_default=True)
@click.option("--name", default="exchange", show_default=True, help="File name stem.")
def exchange_keygen(out_dir: str, name: str) -> None:
    """Write an Ed25519 key pair: NAME.key (private, for MODSTREAM_EXCHANGE_PRIVATE_KEY) and NAME.pub."""
    from pathlib import Path

    from pipeline.exchange.signing import keygen

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    private, public = folder / f"{name}.key", folder / f"{name}.pub"
    if private.exists():
        raise click.ClickException(f"{private} exists; not overwriting a key")
    keygen(private, public)
    click.echo(f"wrote {private} (keep it secret) and {public} (give it to partners)")


@exchange.command("retract")
@click.option("--signal-type", required=True)
@click.option("--hash", "value", required=True)
@click.pass_context
def exchange_retract(ctx: click.Context, signal_type: str, value: str) -> None:
    """Withdraw a hash this platform shared: partners remove it from their banks."""
    from pipeline.exchange.admin import retract
    from pipeline.exchange.signing import SignatureError

    try:
        retract(settings_of(ctx), signal_type, value)
    except SignatureError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"retracted {signal_type} {value.lower()}")


@main.group()
def partners() -> None:
    """Partner platforms of the exchange and how far their signals are trusted."""


@partners.command("add")
@click.argument("name")
@click.option("--public-key", "public_key", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--trust", type=click.Choice(["auto", "review", "ignore"]), required=True)
@click.option("--platform-id", default=None, help="The platform id its signals carry (default: NAME).")
@click.option("--category-trust", multiple=True, help="CATEGORY=LEVEL, overriding --trust for a category.")
@click.pass_context
def partners_add(
    ctx: click.Context, name: str, public_key: str, trust: str, platform_id: str | None, category_trust: tuple[str, ...]
) -> None:
    """Register (or update) partner NAME with its public key and trust level."""
    from pathlib import Path

    from pipeline.exchange.admin import add_partner
    from pipeline.exchange.signing import SignatureError

    overrides = dict(item.split("=", 1) for item in category_trust if "=" in item)
    try:
        add_partner(settings_of(ctx), name, Path(public_key).read_text(), trust, platform_id, overrides)
    except (SignatureError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"partner {name} added with trust {trust}")


@partners.command("remove")
@click.argument("name")
@click.pass_context
def partners_remove(ctx: click.Context, name: str) -> None:
    """Stop accepting NAME's signals."""
    from pipeline.exchange.admin import remove_partner

    try:
        remove_partner(settings_of(ctx), name)
    except KeyError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"partner {name} removed")


@partners.command("list")
@click.pass_context
def partners_list(ctx: click.Context) -> None:
    """Partners, their trust, and how their signals fared: imported, refused, confirmed and
    disputed by our reviewers, and disputes they sent about ours."""
    from pipeline.app import connect_redis
    from pipeline.exchange.admin import list_partners

    settings = settings_of(ctx)
    click.echo("name\tplatform\ttrust\tstatus\timported\trefused\tconfirmed\tdisputed\tdisputes_received")
    for p in list_partners(settings, connect_redis(settings.redis_url)):
        click.echo(
            "\t".join(
                str(p[k])
                for k in ("name", "platform_id", "trust", "status", "imported", "refused", "confirmed", "disputed")
            )
            + f"\t{p['disputes_received']}"
        )


# ---- models ----------------------------------------------------------------------
@main.group()
def models() -> None:
    """Classifier models."""


@models.command("build")
@click.option(
    "--encoder",
    type=click.Choice(["e5-small", "use-m3"]),
    default="e5-small",
    show_default=True,
    help="The pretrained sentence encoder (its weights ship in an installed package).",
)
@click.option("--threads", type=int, default=0, help="onnxruntime threads for embedding the corpus (0: all cores).")
def models_build(encoder: str, threads: int) -> None:
    """Train the default text model's head on the corpus and the dev sets, calibrate its
    thresholds on their out-of-fold scores, evaluate them on the held-out set, and write the
    head, the registry entry and the model card. Prints per-language precision and recall at
    each threshold."""
    from pipeline.models.build import CARD_PATH, HEAD_PATH, REGISTRY_PATH, build, format_report
    from pipeline.models.encoder import EncoderError

    try:
        report = build(threads=threads, encoder_name=encoder)
    except EncoderError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_report(report))
    click.echo(f"wrote {HEAD_PATH.name}, {REGISTRY_PATH.name} and {CARD_PATH.name}")


@models.command("check")
@click.argument("registry", type=click.Path(exists=True, dir_okay=False), required=False)
@click.pass_context
def models_check(ctx: click.Context, registry: str | None) -> None:
    """Load every model of REGISTRY (default: the configured one) and run it once. The default
    text model's files are made on first use: this makes them ahead of time."""
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

    from pipeline.app import REDIS_UNAVAILABLE, connect_redis
    from pipeline.policy.deadlines import DeadlineEscalator
    from pipeline.records import Output, now_ms
    from pipeline.runtime import metrics
    from pipeline.sdk import DeliveryError, ModerationProducer
    from pipeline.state.reports import RedisReportStore

    settings = settings_of(ctx)
    store = RedisReportStore(connect_redis(settings.redis_url))
    escalator = DeadlineEscalator(store, int(warn_hours * 3_600_000))
    producer = ModerationProducer(settings)
    heartbeat = metrics.Heartbeat(stale_after_s=max(60.0, 3 * interval))
    if settings.metrics_port and not once:  # /metrics (the deadline backlog) and /health, like a stage's
        metrics.serve(settings.metrics_port)
        metrics.register_health(
            "escalate", lambda: {"healthy": heartbeat.age() < heartbeat.stale_after_s, "stage": "escalate"}
        )

    def publish(tasks: list[Output]) -> None:
        for task in tasks:
            producer.send("review", task.value or {}, key=str(task.key))
        producer.flush()  # raises DeliveryError unless every task is acknowledged

    while True:
        try:
            escalated = escalator.run_once(publish)  # marks items escalated only once acknowledged
            now = now_ms()
            metrics.record_deadlines(*store.backlog(now), now)
        except DeliveryError as exc:
            if once:
                raise click.ClickException(f"review tasks not acknowledged: {exc}") from exc
            logger.warning("review tasks not acknowledged, retrying next round: %s", exc)
            escalated = 0
        except REDIS_UNAVAILABLE as exc:  # no beat: /health turns unhealthy if it lasts
            if once:
                raise click.ClickException(f"a store does not answer ({type(exc).__name__}: {exc})") from exc
            logger.error("a store does not answer, retrying next round: %s: %s", type(exc).__name__, exc)
            time.sleep(interval)
            continue
        if escalated:
            click.echo(f"escalated {escalated} item(s)")
        heartbeat.beat()
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
        accounts=read_all(settings, "accounts"),
        incidents=read_all(settings, "incidents"),
    )
    click.echo(json.dumps(data, indent=2) if fmt == "json" else format_text(data))
    if chart:
        Path(chart).write_text(format_html(data))


# ---- HTTP API -------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", envvar="MODSTREAM_API_HOST", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, envvar="MODSTREAM_API_PORT", show_default=True)
@click.option("--access-log/--no-access-log", default=True, envvar="MODSTREAM_API_ACCESS_LOG", show_default=True)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, access_log: bool) -> None:
    """Serve the HTTP API: POST /v1/check (synchronous check), the HMA-compatible /m, /h and /c
    endpoints and /openapi.json. Tokens: MODSTREAM_API_TOKENS or MODSTREAM_API_TOKENS_FILE."""
    from pipeline.api.app import serve as serve_api
    from pipeline.api.settings import ApiSettings
    from pipeline.app import App

    settings = settings_of(ctx)
    try:
        api = ApiSettings.from_env()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    app = App(settings)
    try:
        serve_api(app, api, host, port, access_log)
    except ValueError as exc:  # a broken model registry or policy
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()


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
