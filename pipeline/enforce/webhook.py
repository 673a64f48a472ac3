"""The webhook enforcer: POSTs each decision to a platform endpoint.

The request carries an `Idempotency-Key` header (the decision id), so an endpoint that
honours it acts once however often a decision is delivered (after a crash, a retry or a
rebalance). 5xx, 429 and connection errors are retried with backoff by the decision
consumer; any other 4xx fails at once. The body is the decision's JSON form.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from pipeline.enforce.consumer import PermanentError
from pipeline.records import Record
from pipeline.serde import SchemaSet
from pipeline.serde.json_form import to_json


class WebhookEnforcer:
    def __init__(self, url: str, timeout_s: float = 10.0, schemas: SchemaSet | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must be http(s), not {url!r}")
        self.url = url
        self.timeout_s = timeout_s
        self.schemas = schemas or SchemaSet()

    def __call__(self, decision: Record) -> str:
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
                return f"HTTP {response.status} from {self.url}"
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise ConnectionError(f"HTTP {exc.code} from {self.url}") from exc
            raise PermanentError(f"HTTP {exc.code} from {self.url}") from exc
