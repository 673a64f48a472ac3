"""The webhook enforcer: POSTs each decision to a platform endpoint.

The request carries an `Idempotency-Key` header (the decision id), so an endpoint that
honours it acts once however often a decision is delivered (after a crash, a retry or a
rebalance). 5xx, 429, timeouts and connection errors are retried later with backoff by the
decision consumer (a scheduled retry, not a sleep); any other 4xx fails at once. The body is
the decision's JSON form. Each attempt is made on the consumer's poll thread, so keep
`timeout_s` short.

A platform may confirm that the action took effect in its 2xx answer, a JSON object:
`{"confirmed_at": <ms since the epoch>}`, or, for end_stream, `{"status": "cut"}` (confirmed
when the answer came). The EnforcementResult then carries `confirmed_at`; any other body
(empty, not JSON) means acknowledged, not confirmed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from pipeline.enforce.consumer import Outcome, PermanentError
from pipeline.records import Record, now_ms
from pipeline.serde import SchemaSet
from pipeline.serde.json_form import to_json

MAX_ANSWER_BYTES = 64 * 1024  # of a platform's answer read for a confirmation


class WebhookEnforcer:
    def __init__(self, url: str, timeout_s: float = 10.0, schemas: SchemaSet | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http(s), not {url!r}")
        self.url = url
        self.timeout_s = timeout_s
        self.schemas = schemas or SchemaSet()

    def __call__(self, decision: Record) -> Outcome:
        body = json.dumps(to_json(self.schemas, "Decision", decision)).encode()
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": decision["decision_id"],
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                status, answer = response.status, response.read(MAX_ANSWER_BYTES)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise ConnectionError(f"HTTP {exc.code} from {self.url}") from exc
            raise PermanentError(f"HTTP {exc.code} from {self.url}") from exc
        detail = f"HTTP {status} from {self.url}"
        confirmed_at = confirmation(answer, decision["action"], now_ms())
        if confirmed_at is None:
            return Outcome(detail)
        return Outcome(f"{detail}; confirmed at {confirmed_at}", confirmed_at)


def confirmation(answer: bytes, action: str, now: int) -> int | None:
    """When the platform's answer says the action took effect (ms), or None."""
    try:
        body: Any = json.loads(answer) if answer.strip() else None
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(body, dict):
        return None
    at = body.get("confirmed_at")
    if isinstance(at, int) and not isinstance(at, bool) and at > 0:
        return at
    if action == "end_stream" and body.get("status") == "cut":
        return now
    return None
