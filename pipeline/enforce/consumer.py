"""The decision consumer: the SDK for enforcement services.

An enforcement service subscribes by action with one handler per action. For
each decision, the handler is called (retrying with backoff); its outcome is
published as an EnforcementResult. A decision whose handler still fails after
the retries (or that raises PermanentError) is published as a failed result and
dead-lettered. Handlers must
be idempotent on `decision_id`: delivery is at-least-once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence

from pipeline.config import Settings
from pipeline.records import Incoming, Output, Record, dead_letter, now_ms, subject_key
from pipeline.runtime.runner import Runner

logger = logging.getLogger(__name__)


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (the platform refused the action)."""


# A handler acts on one decision and returns a short description of what it did.
Handler = Callable[[Record], str]
ACTIONS = ("allow", "remove", "review", "restrict", "end_stream", "pending")


class EnforceStage:
    """Runs handlers for decisions; a stage like any other, so it runs on the same runner."""

    inputs = ("decisions",)
    outputs = ("enforcement.results",)

    def __init__(
        self,
        enforcer: str,
        handlers: Mapping[str, Handler],
        topic_prefix: str = "mod.",
        retries: int = 3,
        backoff_s: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        unknown = set(handlers) - set(ACTIONS)
        if unknown:
            raise ValueError(f"unknown actions {sorted(unknown)}; known: {ACTIONS}")
        self.name = f"enforce-{enforcer}"
        self.enforcer = enforcer
        self.handlers = dict(handlers)
        self.topic_prefix = topic_prefix
        self.retries = retries
        self.backoff_s = backoff_s
        self.sleep = sleep

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        out: list[Output] = []
        for incoming in batch:
            d = incoming.value
            handler = self.handlers.get(d["action"])
            if handler is None:
                continue
            attempts, detail, ok = self._call(handler, d)
            out.append(Output("enforcement.results", subject_key(d["envelope"]), self._result(d, ok, attempts, detail)))
            if not ok:
                out.append(dead_letter(incoming, self.name, "enforce", detail, self.topic_prefix))
        return out

    def _call(self, handler: Handler, d: Record) -> tuple[int, str, bool]:
        delay = self.backoff_s
        for attempt in range(1, self.retries + 1):
            try:
                return attempt, handler(d), True
            except Exception as exc:  # a handler's failure is reported, retried, then dead-lettered
                detail = f"{type(exc).__name__}: {exc}"
                if isinstance(exc, PermanentError):
                    return attempt, detail, False
                logger.warning(
                    "%s: %s on %s failed (attempt %d): %s",
                    self.name,
                    d["action"],
                    d["decision_id"],
                    attempt,
                    detail,
                )
                if attempt < self.retries:
                    self.sleep(delay)
                    delay *= 2
        return self.retries, detail, False

    def _result(self, d: Record, ok: bool, attempts: int, detail: str) -> Record:
        return {
            "decision_id": d["decision_id"],
            "envelope": d["envelope"],
            "action": d["action"],
            "enforcer": self.enforcer,
            "status": "succeeded" if ok else "failed",
            "attempts": attempts,
            "detail": detail[:2000],
            "acted_at": now_ms(),
        }


class DecisionConsumer:
    """Consume decisions as consumer group `<prefix>enforcer.<name>` and run handlers by action.

    >>> DecisionConsumer(settings, "takedown", {"remove": take_down}).run()
    """

    def __init__(self, settings: Settings, name: str, handlers: Mapping[str, Handler], **options: object) -> None:
        self.stage = EnforceStage(name, handlers, topic_prefix=settings.topic_prefix, **options)  # type: ignore[arg-type]
        self.runner = Runner(settings, [self.stage], group=settings.group_id(f"enforcer.{name}"))

    def run(self) -> None:
        self.runner.run()

    def stop(self) -> None:
        self.runner.stop()
