"""Browser tests of the review console: `modstream serve` in a subprocess on the test's broker
and Redis, driven by Playwright in a real headless Chromium, Debian's (`apt-get install
chromium`; Playwright's own browser downloads are never used). MODSTREAM_TEST_CHROMIUM names
another Chromium. Screenshots go to MODSTREAM_TEST_SCREENSHOTS/<test>/ if set, else to the
test's tmp_path (pytest keeps the last three runs); each test prints where."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, sync_playwright

from pipeline.config import Settings
from pipeline.dev.services import free_port

from ..conftest import settings_env

REVIEWER_TOKEN = "reviewer-token-0123456789"  # rita, scopes review and banks:write
CHECK_TOKEN = "check-only-token-0123456789"  # carl, scope check
WRITER_TOKEN = "bank-writer-token-0123456789"  # walt, scope banks:write (the HMA API)


@dataclass
class Console:
    url: str  # http://127.0.0.1:PORT
    proc: subprocess.Popen[bytes]
    log: Path
    outside: list[str] = field(default_factory=list)  # requests a page made to anywhere else


def _chromium() -> str | None:
    return os.environ.get("MODSTREAM_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = _chromium()
    if executable is None:
        message = "no Chromium: apt-get install chromium (or set MODSTREAM_TEST_CHROMIUM)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable)
        yield chromium
        chromium.close()


@pytest.fixture
def console(settings: Settings, tmp_path: Path) -> Iterator[Console]:
    """`modstream serve` with the console; a reviewer's token, a check-only one, a bank writer's."""
    port = free_port()
    tokens = {
        REVIEWER_TOKEN: {"name": "rita", "scopes": ["review", "banks:write"]},
        CHECK_TOKEN: {"name": "carl", "scopes": ["check"]},
        WRITER_TOKEN: {"name": "walt", "scopes": ["banks:write"]},
    }
    env = {
        **settings_env(settings),
        "MODSTREAM_API_TOKENS": json.dumps(tokens),
        "MODSTREAM_API_HASH_THREADS": "1",
        "MODSTREAM_CONSOLE_SECRET": secrets.token_urlsafe(32),
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "--log-level", "INFO", "serve", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    served = Console(f"http://127.0.0.1:{port}", proc, log)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{served.url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, f"modstream serve exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "modstream serve did not start"
            time.sleep(0.2)
        yield served
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture
def page(browser: Browser, console: Console) -> Iterator[Page]:
    """A page in a fresh browser context (no cookies) whose every request is noted if it goes
    anywhere but the console."""
    context = browser.new_context(base_url=console.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(30_000)

    def note(request: Request) -> None:
        if not request.url.startswith(console.url + "/"):
            console.outside.append(request.url)

    context.on("request", note)
    yield context.new_page()
    context.close()


@pytest.fixture
def shot(request: pytest.FixtureRequest, tmp_path: Path, page: Page) -> Callable[[str], Path]:
    """shot(name): a full-page screenshot of the page as it is, for people to look at."""
    root = os.environ.get("MODSTREAM_TEST_SCREENSHOTS")
    folder = Path(root) / request.node.name if root else tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    taken = iter(range(1, 100))

    def take(name: str) -> Path:
        path = folder / f"{next(taken):02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take
