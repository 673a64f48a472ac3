"""Runs N copies of a command as child processes: `modstream run --processes N` starts N
members of a stage's consumer group on one host.

Each child gets its own instance id (so exactly-once transactional ids differ) and, when a
metrics port is set, its own port (port + i). SIGTERM and SIGINT are passed on to every
child; a child that dies unexpectedly (a crash, the OOM killer) is started again after a
pause, so one failure does not take a member out of the group for good.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence

logger = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0


class Supervisor:
    def __init__(self, argv: Sequence[str], count: int, instance_id: str, metrics_port: int = 0) -> None:
        if count < 1:
            raise ValueError("--processes must be at least 1")
        self.argv = list(argv)
        self.count = count
        self.instance_id = instance_id
        self.metrics_port = metrics_port
        self.children: list[subprocess.Popen[bytes] | None] = [None] * count
        self._stop = threading.Event()

    def _env(self, i: int) -> dict[str, str]:
        env = {**os.environ, "MODSTREAM_INSTANCE_ID": f"{self.instance_id}-{i}"}
        if self.metrics_port:
            env["MODSTREAM_METRICS_PORT"] = str(self.metrics_port + i)
        return env

    def _start(self, i: int) -> None:
        self.children[i] = subprocess.Popen(self.argv, env=self._env(i))
        logger.info("started member %d (pid %d)", i, self.children[i].pid)  # type: ignore[union-attr]

    def stop(self) -> None:
        self._stop.set()
        for child in self.children:
            if child is not None and child.poll() is None:
                child.send_signal(signal.SIGTERM)

    def run(self, install_signal_handlers: bool = True) -> int:
        """Runs until stopped; returns the worst exit status of the children at the end."""
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        for i in range(self.count):
            self._start(i)
        while not self._stop.wait(0.5):
            for i, child in enumerate(self.children):
                code = child.poll() if child is not None else None
                if code is not None and not self._stop.is_set():
                    logger.error("member %d exited with status %d; restarting in %.0f s", i, code, RESTART_DELAY_S)
                    time.sleep(RESTART_DELAY_S)
                    self._start(i)
        codes = []
        for child in self.children:
            if child is not None:
                try:
                    codes.append(child.wait(60))
                except subprocess.TimeoutExpired:
                    child.kill()
                    codes.append(child.wait())
        return max((abs(c) for c in codes), default=0)
