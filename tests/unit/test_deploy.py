"""The deployment files against the code: Kubernetes manifests, KEDA autoscaling, the compose
file, the Prometheus alerts and the Grafana dashboard.

What each process consumes is derived from the code (the runners `modstream run` builds), not
written down here: a stage that gains an input topic fails these tests until its ScaledObject
has a trigger for it. Every metric the dashboard and the alerts name must be one the code
registers, with the labels the code gives it.

Kubernetes objects are validated against the Kubernetes JSON schemas that the
kubernetes-validate package ships (offline, strict: an unknown field is an error); the KEDA
ScaledObject and the Prometheus operator's PodMonitor, which those schemas do not cover,
against the fields their CRDs require. The `docker compose` plugin is not available where these
tests run, so docker-compose.yml is checked structurally here, not by `docker compose config`.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import pkgutil
import re
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

import pipeline
import pipeline.app as app_module
from pipeline.app import STAGES, App
from pipeline.banks.table import BankTable
from pipeline.cli import main as cli_main
from pipeline.config import TOPICS, Settings
from pipeline.exchange.partners import PartnerTable
from pipeline.exchange.signing import keygen
from pipeline.policy.incidents import IncidentTable
from pipeline.runtime import metrics
from pipeline.runtime.runner import Runner

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
K8S_VERSION = "1.29.0"  # the oldest Kubernetes the manifests are meant for
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/version",
)
# `modstream run` knows the stages of pipeline.app and the exchange; escalate and serve are commands of their own.
RUN_PROCESSES = (*STAGES, "exchange")
COMMANDS = ("escalate", "serve")
# Not autoscaled: retro keeps one shard of the recent uploads per process and must see all of
# its shard's bank entries (scale it with shards); the exchange is three low-volume groups, one
# of them on the partners' cluster.
NOT_AUTOSCALED = {"retro", "exchange"}
# Labels Prometheus adds to every series it scrapes (static, DNS or PodMonitor discovery).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "app_kubernetes_io_component"}
PROMETHEUS_OWN: dict[str, set[str]] = {"up": set()}  # series Prometheus makes itself, with their own labels
SCRAPE_JOB = "modstream"


# ---- loading ------------------------------------------------------------------------------
@functools.cache
def k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    """Every object of deploy/k8s (read once: treat as read-only)."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert isinstance(doc, dict), f"{path.name}: an empty or non-object document"
            out.append((path.name, doc))
    return out


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_objects() if doc["kind"] == kind]


def config_env() -> dict[str, str]:
    """The environment every pod gets: the modstream ConfigMap and Secret."""
    config = next(d for d in of_kind("ConfigMap") if d["metadata"]["name"] == "modstream")
    secret = next(d for d in of_kind("Secret") if d["metadata"]["name"] == "modstream")
    return {**config["data"], **secret["stringData"]}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment["metadata"]["name"]
    return containers[0]


def pod_env(deployment: dict[str, Any]) -> dict[str, str]:
    """A Deployment's environment (values only; fieldRefs are left out)."""
    return config_env() | {e["name"]: e["value"] for e in container(deployment).get("env", []) if "value" in e}


def deployments_by_process() -> dict[str, dict[str, Any]]:
    """Deployments by the process they run: `run X` -> X, or the command (escalate, serve)."""
    out: dict[str, dict[str, Any]] = {}
    for d in of_kind("Deployment"):
        args = container(d)["args"]
        name = args[1] if args[0] == "run" else args[0]
        assert args[0] == "run" and len(args) == 2 or args[0] in COMMANDS, f"{d['metadata']['name']}: args {args}"
        assert name not in out, f"two Deployments run {name}"
        out[name] = d
    return out


@pytest.fixture(scope="module")
def exchange_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("exchange")
    keygen(folder / "exchange.key", folder / "exchange.pub")
    return folder / "exchange.key"


class _Follower:
    """Stands in for the topic followers, which would connect to Kafka."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.caught_up = threading.Event()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def is_alive(self) -> bool:
        return True

    def wait_caught_up(self, *args: Any) -> None:
        pass


@pytest.fixture
def runners_of(monkeypatch: pytest.MonkeyPatch, exchange_key: Path) -> Any:
    """process, env -> the runners `modstream run process` builds with that environment, from the
    real wiring (pipeline.app) with no broker, Redis or model behind it."""
    monkeypatch.setattr(app_module, "TopicFollower", _Follower)
    monkeypatch.setattr(app_module, "BankFollower", _Follower)

    def build(process: str, env: dict[str, str]) -> tuple[Settings, list[Runner]]:
        settings = Settings.from_env(env)
        if settings.exchange_private_key:  # the pod's path; the key itself comes from a Secret
            settings = settings.with_(exchange_private_key=str(exchange_key))
        app = App(settings)
        app._redis = mock.MagicMock()
        app._banks = BankTable(app.match_config())
        app._models = []
        app._incidents = IncidentTable()
        app._partners = PartnerTable()
        return settings, app.runners([process])

    return build


# ---- the code's metrics --------------------------------------------------------------------
def code_metrics() -> dict[str, set[str]]:
    """Every exported series name of the metrics the pipeline's modules define, with its labels."""
    for info in pkgutil.walk_packages(pipeline.__path__, "pipeline."):
        if not info.name.endswith("__main__"):
            importlib.import_module(info.name)
    registered = {family.name: family.type for family in REGISTRY.collect()}
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("_count", "_sum", "_created"),
    }
    out: dict[str, set[str]] = {}
    for name, module in list(sys.modules.items()):
        if not name.startswith("pipeline"):
            continue
        for obj in vars(module).values():
            if isinstance(obj, MetricWrapperBase | metrics.BatchHistogram):
                family = next(iter(obj.describe()))
                assert registered.get(family.name) == family.type, f"{family.name} is not in the registry"
                # prometheus_client keeps the label names in _labelnames
                labels = set(obj.labelnames if isinstance(obj, metrics.BatchHistogram) else obj._labelnames)
                for suffix in suffixes[family.type]:
                    out[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return out


def runner_names(runners_of: Any) -> set[str]:
    """The `stage` label values the code uses: the runners' names, and the escalator's."""
    names = {"escalate"}  # pipeline/cli.py registers the escalator's health under this name
    for process, d in deployments_by_process().items():
        if process in RUN_PROCESSES:
            names |= {r.name for r in runners_of(process, pod_env(d))[1]}
    return names


# ---- PromQL ---------------------------------------------------------------------------------
def children(node: Any) -> list[Any]:
    """The sub-expressions of a parsed PromQL node."""
    if isinstance(node, promql_parser.VectorSelector | promql_parser.NumberLiteral | promql_parser.StringLiteral):
        return []
    if isinstance(node, promql_parser.MatrixSelector):
        return [node.vector_selector]
    if isinstance(node, promql_parser.Call):
        return list(node.args)
    if isinstance(node, promql_parser.AggregateExpr):
        return [node.expr] + ([node.param] if node.param is not None else [])
    if isinstance(node, promql_parser.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
        return [node.expr]
    raise AssertionError(f"unexpected PromQL node {type(node).__name__}")


def selectors(node: Any) -> Iterator[Any]:
    """Every vector selector in a parsed PromQL expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    for child in children(node):
        yield from selectors(child)


def groupings(node: Any) -> Iterator[tuple[list[str], Any]]:
    """(labels, aggregated expression) of every `... by (labels)` aggregation."""
    modifier = getattr(node, "modifier", None) if isinstance(node, promql_parser.AggregateExpr) else None
    if modifier is not None and modifier.type == promql_parser.AggModifierType.By:
        yield list(modifier.labels), node.expr
    for child in children(node):
        yield from groupings(child)


def check_promql(expr: str, known: dict[str, set[str]], label_values: dict[str, set[str]], where: str) -> set[str]:
    """Parses `expr` and checks its metrics, label names and label values against the code;
    returns the metric names it uses."""
    expr = expr.replace("$__rate_interval", "5m")  # Grafana's, not PromQL
    tree = promql_parser.parse(expr)
    used = set()
    known = known | PROMETHEUS_OWN
    for vs in selectors(tree):
        name = vs.name
        assert name, f"{where}: a selector without a metric name in {expr}"
        assert name in known, f"{where}: {name} is not a metric the code exports"
        used.add(name)
        for matcher in vs.matchers.matchers:
            assert matcher.name in known[name] | TARGET_LABELS, f"{where}: {name} has no label {matcher.name!r}"
            values = label_values.get(matcher.name)
            if values is None or "$" in matcher.value or name == "modstream_consumer_lag":
                continue  # lag is labelled by the full topic name, as librdkafka reports it
            regex = matcher.op in (promql_parser.MatchOp.Re, promql_parser.MatchOp.NotRe)
            for value in matcher.value.split("|") if regex else [matcher.value]:
                assert value in values, f"{where}: {name}{{{matcher.name}={value!r}}}: the code sets no such value"
    for labels, inner in groupings(tree):
        inner_labels = set().union(*(known[vs.name] for vs in selectors(inner)))
        for label in labels:
            assert label in inner_labels | TARGET_LABELS, f"{where}: grouping by {label!r}, which {expr} has not"
    return used


@pytest.fixture
def promql_context(runners_of: Any) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    metrics.record_deadlines(0, 0, 0, None, 0)  # the deadline states the escalator exports
    states = {s.labels["state"] for f in REGISTRY.collect() if f.name == "modstream_deadline_items" for s in f.samples}
    values = {
        "topic": set(TOPICS),  # records in/out and latency are labelled by the short topic name
        "stage": runner_names(runners_of),
        "state": states,
        "job": {SCRAPE_JOB},
    }
    return code_metrics(), values


# ---- Kubernetes ---------------------------------------------------------------------------
def test_kustomization_names_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert {i["name"]: i["newTag"] for i in kustomization["images"]} == {"modstream": VERSION}


def test_every_process_has_a_deployment(runners_of: Any) -> None:
    deployments = deployments_by_process()
    assert set(deployments) == {*RUN_PROCESSES, *COMMANDS}
    assert set(COMMANDS) <= set(cli_main.commands)  # type: ignore[attr-defined]  # a click.Group
    for process in RUN_PROCESSES:  # each is a process `modstream run` really builds
        assert runners_of(process, pod_env(deployments[process]))[1]
    with pytest.raises(ValueError, match="unknown stage"):
        runners_of("no-such-stage", config_env())


def test_labels_name_every_object() -> None:
    for filename, doc in k8s_objects():
        labels = doc["metadata"].get("labels", {})
        where = f"{filename}: {doc['kind']} {doc['metadata']['name']}"
        assert set(LABELS) <= set(labels), where
        assert labels["app.kubernetes.io/name"] == labels["app.kubernetes.io/part-of"] == "modstream", where
        assert labels["app.kubernetes.io/version"] == VERSION, where
    for process, d in deployments_by_process().items():
        labels, template = d["metadata"]["labels"], d["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/component"] == process
        assert d["metadata"]["name"] == f"modstream-{process}"
        assert {k: template[k] for k in LABELS} == {k: labels[k] for k in LABELS}
        selector = d["spec"]["selector"]["matchLabels"]
        # A selector cannot change once applied: the version stays out of it.
        assert selector.items() <= template.items() and "app.kubernetes.io/version" not in selector
        assert container(d)["image"] == f"modstream:{VERSION}"


def test_probes_and_resources() -> None:
    env = config_env()
    for process, d in deployments_by_process().items():
        c = container(d)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        if process == "serve":
            path, port = "/healthz", int(pod_env(d)["MODSTREAM_API_PORT"])
            # The default host, 127.0.0.1, is out of the kubelet's reach.
            assert pod_env(d)["MODSTREAM_API_HOST"] == "0.0.0.0"
        else:
            path, port = "/health", int(env["MODSTREAM_METRICS_PORT"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            get = c[probe]["httpGet"]
            assert get["path"] == path and ports[get["port"]] == port, f"{process} {probe}"
        # Stages load banks and models before their health server starts: startup allows for it.
        assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] >= 300, process
        requests, limits = c["resources"]["requests"], c["resources"]["limits"]
        assert {"cpu", "memory"} <= set(requests) and "memory" in limits, process
        assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 60  # runner.FLUSH_TIMEOUT_S


def test_scaled_objects_cover_exactly_each_stages_input_topics(runners_of: Any) -> None:
    scaled = {so["spec"]["scaleTargetRef"]["name"]: so for so in of_kind("ScaledObject")}
    deployments = deployments_by_process()
    assert set(scaled) <= {d["metadata"]["name"] for d in deployments.values()}
    partitions = int(config_env()["MODSTREAM_PARTITIONS"])
    for process in RUN_PROCESSES:
        d = deployments[process]
        settings, runners = runners_of(process, pod_env(d))
        if process in NOT_AUTOSCALED:
            assert d["metadata"]["name"] not in scaled and d["spec"]["replicas"] == 1, process
            continue
        so = scaled[d["metadata"]["name"]]
        assert "replicas" not in d["spec"], f"{process}: KEDA sets the replicas"
        expected = {(r.group, settings.topic(t)) for r in runners for t in r.input_topics}
        triggers = so["spec"]["triggers"]
        got = [(t["metadata"]["consumerGroup"], t["metadata"]["topic"]) for t in triggers]
        assert sorted(got) == sorted(expected), process
        for t in triggers:
            assert t["type"] == "kafka"
            assert t["metadata"]["bootstrapServers"] == settings.bootstrap_servers
            assert int(t["metadata"]["lagThreshold"]) > 0
        spec = so["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions, process


# KEDA's ScaledObject CRD (keda.sh/v1alpha1) and the Prometheus operator's PodMonitor
# (monitoring.coreos.com/v1): the fields their schemas require and the types of those used here.
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"type": "string"},
                        "apiVersion": {"type": "string"},
                    },
                },
                **{
                    k: {"type": "integer", "minimum": 0}
                    for k in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount")
                },
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                        },
                    },
                },
            },
        },
    },
}
POD_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}}},
                "podMetricsEndpoints": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"port": {"type": "string"}}},
                },
            },
        },
    },
}
KAFKA_TRIGGER_KEYS = {
    "bootstrapServers", "consumerGroup", "topic", "lagThreshold", "activationLagThreshold", "offsetResetPolicy",
    "allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag", "limitToPartitionsWithLag",
    "partitionLimitation", "version", "sasl", "tls",
}  # fmt: skip


def test_manifests_match_their_schemas() -> None:
    for filename, doc in k8s_objects():
        if doc["kind"] == "ScaledObject":
            jsonschema.validate(doc, SCALED_OBJECT)
            for trigger in doc["spec"]["triggers"]:
                assert set(trigger["metadata"]) <= KAFKA_TRIGGER_KEYS, f"{filename}: {set(trigger['metadata'])}"
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    jsonschema.validate(yaml.safe_load((ROOT / "deploy/prometheus/podmonitor.yaml").read_text()), POD_MONITOR)
    # The check has teeth: a misspelt field is refused.
    broken = copy.deepcopy(of_kind("Deployment")[0])
    container(broken)["livenessProbe"]["httpGet"]["prot"] = 9400
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_pod_monitor_scrapes_every_process_with_metrics() -> None:
    monitor = yaml.safe_load((ROOT / "deploy/prometheus/podmonitor.yaml").read_text())["spec"]
    for process, d in deployments_by_process().items():
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert monitor["selector"]["matchLabels"].items() <= labels.items()
        assert labels[monitor["jobLabel"]] == SCRAPE_JOB
        ports = {p["name"] for p in container(d)["ports"]}
        assert ("metrics" in ports) == (process != "serve"), process  # the API serves no /metrics
    assert [e["port"] for e in monitor["podMetricsEndpoints"]] == ["metrics"]


# ---- Prometheus and Grafana -----------------------------------------------------------------
def test_alerts_use_only_metrics_the_code_exports(promql_context: Any) -> None:
    known, values = promql_context
    rules = [
        r for g in yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())["groups"] for r in g["rules"]
    ]
    used: dict[str, set[str]] = {}
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule.get("alert")
        assert re.fullmatch(r"\d+[smh]", rule["for"]) and rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        used[rule["alert"]] = check_promql(rule["expr"], known, values, rule["alert"])
    assert len(used) == len(rules), "alert names must be unique"
    # The four the operators asked for: lag growing, dead letters, reports past 20 h, a stage unhealthy.
    exprs = {r["alert"]: r["expr"] for r in rules}
    assert any("deriv(modstream_consumer_lag" in e for e in exprs.values())
    assert any('modstream_records_out_total{topic="dlq"}' in e for e in exprs.values())
    assert any('modstream_deadline_items{state="past_20h"}' in e for e in exprs.values())
    assert any("modstream_healthy" in e for e in exprs.values())


def test_dashboard_parses_and_uses_only_metrics_the_code_exports(promql_context: Any) -> None:
    known, values = promql_context
    dashboard = json.loads((ROOT / "deploy/grafana/modstream.json").read_text())
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = [(p["title"], x, y) for p in panels for x, y in grid_cells(p["gridPos"])]
    assert len({(x, y) for _, x, y in cells}) == len(cells), "panels overlap"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    label_values = re.fullmatch(r"label_values\((\w+), *(\w+)\)", variables["stage"]["definition"])
    assert label_values and label_values[2] in known[label_values[1]]
    used = set()
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used |= check_promql(target["expr"], known, values, panel["title"])
    # What the dashboard is for: throughput, lag, latency, errors and dead letters, health, deadlines.
    wanted = {
        "modstream_records_in_total", "modstream_records_out_total", "modstream_consumer_lag",
        "modstream_end_to_end_seconds_bucket", "modstream_errors_total", "modstream_healthy",
        "modstream_deadline_items", "modstream_deadline_oldest_age_seconds",
    }  # fmt: skip
    assert wanted <= used


def grid_cells(pos: dict[str, int]) -> list[tuple[int, int]]:
    """The cells of Grafana's 24-column grid a panel covers."""
    assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
    return [(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])]


def test_grafana_and_prometheus_provisioning_fit_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    datasource = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert [d["url"] for d in datasource["datasources"]] == ["http://prometheus:9090"] and "prometheus" in compose
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/modstream.yaml").read_text())
    mounts = dict(v.rsplit(":", 2)[:2] for v in compose["grafana"]["volumes"])
    assert mounts["./deploy/grafana"] == provider["providers"][0]["options"]["path"]
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["job_name"] == SCRAPE_JOB
    scraped = {n for sd in job["dns_sd_configs"] for n in sd["names"]}
    with_metrics = {s for s, spec in compose.items() if spec.get("environment", {}).get("MODSTREAM_METRICS_PORT")}
    assert scraped == with_metrics - {"serve", "topics"}
    assert {sd["port"] for sd in job["dns_sd_configs"]} == {
        int(compose["enrich"]["environment"]["MODSTREAM_METRICS_PORT"])
    }
    rule_mounts = dict(v.rsplit(":", 2)[:2] for v in compose["prometheus"]["volumes"])
    assert rule_mounts["./deploy/prometheus/alerts.yaml"] in prometheus["rule_files"]


# ---- docker-compose.yml (structural: no `docker compose` plugin where these tests run) ------
def test_compose_runs_the_same_processes(runners_of: Any) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    k8s_args = {process: container(d)["args"] for process, d in deployments_by_process().items()}
    commands = {name: s["command"] for name, s in services.items() if s.get("image") == f"modstream:{VERSION}"}
    assert commands.pop("topics") == ["topics", "create"]
    assert sorted(commands.values()) == sorted(k8s_args.values())  # one service per process, as in deploy/k8s
    for name, spec in services.items():
        where = f"service {name}"
        assert set(spec.get("depends_on", {})) <= set(services), where
        assert set(spec.get("profiles", [])) <= {"webhook", "exchange", "observability"}, where
        env = spec.get("environment", {})
        assert all(isinstance(v, str | int) for v in env.values()), f"{where}: environment values are strings"
        for volume in spec.get("volumes", []):
            host = volume.split(":")[0]
            if host.startswith("./deploy/"):
                assert (ROOT / host).exists(), f"{where}: {host}"
        if name not in commands:
            continue
        command = spec["command"]
        process = command[1] if command[0] == "run" else command[0]
        assert spec["depends_on"]["topics"] == {"condition": "service_completed_successfully"}, where
        port, path = ("8080", "/healthz") if process == "serve" else (env["MODSTREAM_METRICS_PORT"], "/health")
        assert f"http://localhost:{port}{path}" in " ".join(spec["healthcheck"]["test"]), where
        assert env["MODSTREAM_TOPIC_PREFIX"] == config_env()["MODSTREAM_TOPIC_PREFIX"], where
        if process in RUN_PROCESSES:  # the compose environment builds the process too
            assert runners_of(process, {k: interpolate(str(v)) for k, v in env.items()})[1], where


def interpolate(value: str) -> str:
    """Compose's ${NAME:-default}, with what a user must set for the optional profiles."""
    user = {"MODSTREAM_WEBHOOK_URL": "https://platform.example.org/moderation/enforce"}
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: user.get(m[1], m[2]), value)


# ---- the metrics the deployment relies on -----------------------------------------------------
def test_lag_of_a_revoked_partition_is_dropped() -> None:
    def stats(lags: dict[int, int]) -> str:
        partitions = {str(p): {"consumer_lag": lag} for p, lag in lags.items()} | {"-1": {"consumer_lag": -1}}
        return json.dumps({"topics": {"mod.x": {"partitions": partitions}}})

    def lag(partition: int) -> float | None:
        return REGISTRY.get_sample_value(
            "modstream_consumer_lag", {"stage": "t-lag", "topic": "mod.x", "partition": str(partition)}
        )

    metrics.record_lag("t-lag", stats({0: 5, 1: 7}), {("mod.x", 0), ("mod.x", 1)})
    assert (lag(0), lag(1)) == (5, 7)
    metrics.record_lag("t-lag", stats({0: 6, 1: 7}), {("mod.x", 0)})  # partition 1 went to another member
    assert (lag(0), lag(1)) == (6, None)


def test_health_gauge_follows_each_runners_check() -> None:
    state = {"healthy": True}
    metrics.register_health("t-health", lambda: dict(state))
    try:
        assert REGISTRY.get_sample_value("modstream_healthy", {"stage": "t-health"}) == 1
        state["healthy"] = False  # read at scrape time
        assert REGISTRY.get_sample_value("modstream_healthy", {"stage": "t-health"}) == 0
    finally:
        metrics.unregister_health("t-health")
    assert REGISTRY.get_sample_value("modstream_healthy", {"stage": "t-health"}) is None


@pytest.mark.integration
def test_deadline_backlog_of_the_report_store(redis_url: str) -> None:
    import redis

    from pipeline.records import now_ms
    from pipeline.state.reports import RedisReportStore

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = RedisReportStore(client, prefix=f"test-deploy-{now_ms()}:")
    now = now_ms()
    hour = 3_600_000
    ages = {"fresh": 1 * hour, "at-risk": 21 * hour, "late": 30 * hour}
    store.add_reports(
        [
            {
                "envelope": {"event_id": f"e-{c}", "content_id": c, "occurred_at": now - age},
                "reporter_id": "r",
                "reason": "x",
            }
            for c, age in ages.items()
        ]
    )
    backlog = store.backlog(now)
    assert backlog[:3] == (3, 2, 1)
    assert backlog.oldest_reported_at == now - ages["late"]
    store.resolve("late", now)
    assert store.backlog(now)[:3] == (2, 1, 0)
    metrics.record_deadlines(*store.backlog(now), now)
    assert REGISTRY.get_sample_value("modstream_deadline_items", {"state": "past_20h"}) == 1
    assert REGISTRY.get_sample_value("modstream_deadline_oldest_age_seconds") == pytest.approx(21 * 3600)
