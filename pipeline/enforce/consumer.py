"""The decision consumer: the SDK for enforcement services.

An enforcement service subscribes by action with one handler per action. For each
decision, the handler is called once, inline; its outcome is published as an
EnforcementResult (with the number of attempts it took). A retryable failure is not
retried on the poll thread: the stage writes an `EnforcementRetry` record (topic
`enforcement.retry`) due after an exponential backoff, and reads it back when it is due
(the runner holds its partition until then, see `not_before`, without blocking the poll
loop). After the last attempt, or on PermanentError, the failure is published as a failed
result and the record in hand (the decision, or its last retry record, which carries the
decision) is dead-lettered. A handler's error of the `unavailable` kinds (its own store,
such as the account enforcer's Redis, does not answer) spends no attempt: it goes up to the
runner, which redoes the batch once the store answers.

Every enforcer reads the one retry topic and acts only on its own retries. Handlers must
be idempotent on `decision_id`: delivery is at-least-once, and a decision redelivered after
a crash may start a second chain of retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pipeline.config import Settings
from pipeline.records import Incoming, Output, Record, dead_letter, now_ms, subject_key
from pipeline.runtime.runner import Runner

logger = logging.getLogger(__name__)


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help (the platform refused the action)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a handler did, when it has more to say than a description: `confirmed_at` is when
    the platform confirmed the action took effect (ms; for end_stream: the stream was cut)."""

    detail: str
    confirmed_at: int | None = None


# A handler acts on one decision and returns a short description of what it did (or an Outcome).
Handler = Callable[[Record], str | Outcome]
ACTIONS = ("allow", "remove", "review", "restrict", "end_stream", "pending")


class EnforceStage:
    """Runs handlers for decisions; a stage like any other, so it runs on the same runner.

    `retries` is the number of attempts in all; the wait before attempt n + 1 is
    `backoff_s * 2 ** (n - 1)`, at most `max_backoff_s`. `clock` gives the time in ms.
    A batch gets `batch_budget_s` of handler time: once it is spent (a hung endpoint), the
    batch's remaining decisions are not attempted but scheduled at once as retries, with
    no attempt counted, so the poll loop is never held much longer than the budget.
    """

    inputs = ("decisions", "enforcement.retry")
    outputs = ("enforcement.results", "enforcement.retry", "dlq")

    def __init__(
        self,
        enforcer: str,
        handlers: Mapping[str, Handler],
        topic_prefix: str = "mod.",
        retries: int = 3,
        backoff_s: float = 0.2,
        max_backoff_s: float = 300.0,
        batch_budget_s: float = 5.0,
        clock: Callable[[], int] = now_ms,
        unavailable: tuple[type[BaseException], ...] = (),
    ) -> None:
        unknown = set(handlers) - set(ACTIONS)
        if unknown:
            raise ValueError(f"unknown actions {sorted(unknown)}; known: {ACTIONS}")
        if retries < 1:
            raise ValueError(f"retries is the number of attempts, at least 1, not {retries}")
        self.name = f"enforce-{enforcer}"
        self.enforcer = enforcer
        self.handlers = dict(handlers)
        self.topic_prefix = topic_prefix
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.batch_budget_ms = int(batch_budget_s * 1000)
        self.clock = clock
        self.unavailable = unavailable

    def not_before(self, record: Incoming) -> int | None:
        """A retry of this enforcer is not processed before its due time."""
        if record.topic == "enforcement.retry" and record.value["enforcer"] == self.enforcer:
            due: int = record.value["due_at"]
            return due
        return None

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        out: list[Output] = []
        spent_after = self.clock() + self.batch_budget_ms
        for incoming in batch:
            if incoming.topic == "enforcement.retry":
                if incoming.value["enforcer"] != self.enforcer:
                    continue  # another enforcer's retry
                d, attempt = incoming.value["decision"], incoming.value["attempt"] + 1
            else:
                d, attempt = incoming.value, 1
            handler = self.handlers.get(d["action"])
            if handler is None:
                continue
            if self.clock() > spent_after:  # the budget is spent: try it later, off this batch
                retry = self._retry(d, attempt - 1, "not attempted: the batch's time budget was spent", delay=False)
                out.append(Output("enforcement.retry", subject_key(d["envelope"]), retry))
                continue
            out += self._attempt(incoming, handler, d, attempt)
        return out

    def _attempt(self, incoming: Incoming, handler: Handler, d: Record, attempt: int) -> list[Output]:
        key = subject_key(d["envelope"])
        try:
            done = handler(d)
        except self.unavailable:
            raise
        except Exception as exc:  # a handler's failure is reported, scheduled again, then dead-lettered
            detail = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, PermanentError) and attempt < self.retries:
                logger.warning(
                    "%s: %s on %s failed (attempt %d of %d), retrying: %s",
                    self.name,
                    d["action"],
                    d["decision_id"],
                    attempt,
                    self.retries,
                    detail,
                )
                return [Output("enforcement.retry", key, self._retry(d, attempt, detail))]
            return [
                Output("enforcement.results", key, self._result(d, False, attempt, detail)),
                dead_letter(incoming, self.name, "enforce", f"after {attempt} attempt(s): {detail}", self.topic_prefix),
            ]
        outcome = done if isinstance(done, Outcome) else Outcome(done)
        result = self._result(d, True, attempt, outcome.detail, outcome.confirmed_at)
        return [Output("enforcement.results", key, result)]

    def backoff_ms(self, attempt: int) -> int:
        """The wait after failed attempt `attempt` (1 for the first)."""
        return int(min(self.backoff_s * 2 ** (attempt - 1), self.max_backoff_s) * 1000)

    def _retry(self, d: Record, attempt: int, error: str, delay: bool = True) -> Record:
        return {
            "decision": d,
            "enforcer": self.enforcer,
            "attempt": attempt,
            "due_at": self.clock() + (self.backoff_ms(attempt) if delay else 0),
            "last_error": error[:2000],
        }

    def _result(self, d: Record, ok: bool, attempts: int, detail: str, confirmed_at: int | None = None) -> Record:
        return {
            "decision_id": d["decision_id"],
            "envelope": d["envelope"],
            "action": d["action"],
            "enforcer": self.enforcer,
            "status": "succeeded" if ok else "failed",
            "attempts": attempts,
            "detail": detail[:2000],
            "acted_at": self.clock(),
            "confirmed_at": confirmed_at,
        }


class DecisionConsumer:
    """Consume decisions (and this enforcer's due retries) as consumer group
    `<prefix>enforcer.<name>` and run handlers by action.

    >>> DecisionConsumer(settings, "takedown", {"remove": take_down}).run()
    """

    def __init__(self, settings: Settings, name: str, handlers: Mapping[str, Handler], **options: object) -> None:
        self.stage = EnforceStage(name, handlers, topic_prefix=settings.topic_prefix, **options)  # type: ignore[arg-type]
        self.runner = Runner(settings, [self.stage], group=settings.group_id(f"enforcer.{name}"))

    def run(self) -> None:
        self.runner.run()

    def stop(self) -> None:
        self.runner.stop()
