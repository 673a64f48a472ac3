"""Settings of the HTTP API, from `MODSTREAM_API_*` environment variables.

They sit beside the process `Settings` (pipeline.config), which the API uses for everything
else (Kafka, Redis, media limits, policy, models). Token secrets are kept only as SHA-256
digests once read, and never printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from pipeline.api.auth import TokenTable

MIB = 1024 * 1024


@dataclass(frozen=True)
class ApiSettings:
    tokens: TokenTable
    max_request_bytes: int = 16 * MIB  # larger request bodies get 413
    hash_threads: int = 0  # threads hashing, matching and classifying; 0: the number of CPUs
    fetch_threads: int = 32  # threads fetching media by URI (I/O bound, each ends at its own deadline)
    publish_timeout_s: float = 5.0  # how long a check waits for Kafka to acknowledge its upload event
    queue_budget_ms: int = 500  # how long a check may wait for a free hashing thread before a 503
    max_in_flight: int = 0  # checks in progress beyond which the API answers 503; 0: 32 per hashing thread
    bank_category: str = "unspecified"  # category of entries added through the HMA API without one
    bank_severity: str = "high"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ApiSettings:
        env = dict(os.environ if env is None else env)

        def get(name: str, default: str = "") -> str:
            return env.get(f"MODSTREAM_API_{name}", default)

        base = cls(TokenTable({}))
        settings = cls(
            tokens=TokenTable.from_config(get("TOKENS"), get("TOKENS_FILE"), get("ANONYMOUS_SCOPES")),
            max_request_bytes=int(get("MAX_REQUEST_BYTES", str(base.max_request_bytes))),
            hash_threads=int(get("HASH_THREADS", str(base.hash_threads))),
            fetch_threads=int(get("FETCH_THREADS", str(base.fetch_threads))),
            publish_timeout_s=float(get("PUBLISH_TIMEOUT_S", str(base.publish_timeout_s))),
            queue_budget_ms=int(get("QUEUE_BUDGET_MS", str(base.queue_budget_ms))),
            max_in_flight=int(get("MAX_IN_FLIGHT", str(base.max_in_flight))),
            bank_category=get("BANK_CATEGORY", base.bank_category),
            bank_severity=get("BANK_SEVERITY", base.bank_severity),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.max_request_bytes < 1024:
            raise ValueError("MODSTREAM_API_MAX_REQUEST_BYTES must be at least 1024")
        if self.hash_threads < 0 or self.fetch_threads < 1 or self.max_in_flight < 0:
            raise ValueError(
                "MODSTREAM_API_FETCH_THREADS must be positive, _HASH_THREADS and _MAX_IN_FLIGHT 0 (automatic) or more"
            )
        if self.queue_budget_ms < 0:
            raise ValueError("MODSTREAM_API_QUEUE_BUDGET_MS must be 0 or more")
        if self.publish_timeout_s <= 0:
            raise ValueError("MODSTREAM_API_PUBLISH_TIMEOUT_S must be positive")

    @property
    def threads(self) -> int:
        return self.hash_threads or os.cpu_count() or 2

    @property
    def in_flight_limit(self) -> int:
        """Beyond it a check is refused at once (503, Retry-After) rather than queued for
        seconds: a synchronous caller is better served by a fast "retry" than a late verdict."""
        return self.max_in_flight or 32 * self.threads
