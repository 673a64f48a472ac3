"""The audit trail of operators' writes: who did what, when, on the `audit` topic.

An `Auditor` writes one AuditRecord per write and waits for the broker to acknowledge it; it
also logs the same facts as the JSON line of the `pipeline.api.audit` logger
(pipeline.api.publish.audit), so a log shipper sees them too. The console audits each
verdict, escalation, bank disable and incident declare, accept, seed media or close once it
has succeeded; the API's bank writes are audited by `audited_bank_writer`, which produces the
record with the entries (the writer's name comes from the entries' `source`, `api:NAME`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any, Protocol

from pipeline.api.publish import BankWriter, audit
from pipeline.config import Settings
from pipeline.records import Record, envelope
from pipeline.sdk import ModerationProducer
from pipeline.serde import Codec


class Auditor(Protocol):
    def __call__(self, who: str, action: str, via: str, subject: str | None = None, **details: Any) -> Record:
        """Records the write (blocking until the broker has it; DeliveryError if not) and returns
        the AuditRecord. `subject`: the content id the write concerns, if any."""
        ...


def audit_record(
    platform_id: str, who: str, action: str, via: str, subject: str | None = None, **details: Any
) -> Record:
    return {
        "envelope": envelope(platform_id, content_id=subject),
        "who": who,
        "action": action,
        "via": via,
        "details": json.dumps(details, sort_keys=True, default=str),
    }


class TopicAuditor:
    """Writes AuditRecords to the `audit` topic, each acknowledged before the call returns."""

    def __init__(self, settings: Settings, codec: Codec | None = None) -> None:
        self.settings = settings
        self.codec = codec

    def __call__(self, who: str, action: str, via: str, subject: str | None = None, **details: Any) -> Record:
        audit(who, action, via=via, subject=subject, **details)  # the log line, whatever Kafka says
        record = audit_record(self.settings.platform_id, who, action, via, subject, **details)
        self.publish(record)
        return record

    def publish(self, record: Record) -> None:
        with ModerationProducer(self.settings, self.codec) as producer:
            producer.send("audit", record, key=record["who"])


def audited_bank_writer(write: BankWriter, auditor: TopicAuditor) -> BankWriter:
    """A BankWriter whose every write (the API's) is audited on the topic once the entries are
    acknowledged; the endpoint has logged its audit line already."""

    def write_and_audit(entries: Iterable[Record]) -> int:
        entries = list(entries)
        count = write(entries)
        by_writer: dict[str, list[Record]] = {}
        for e in entries:
            by_writer.setdefault(e["source"].removeprefix("api:"), []).append(e)
        for who, mine in sorted(by_writer.items()):
            hashes = [{"bank": e["bank"], "signal_type": e["signal_type"], "hash": e["hash"]} for e in mine]
            auditor.publish(audit_record(auditor.settings.platform_id, who, "bank.add", "api", hashes=hashes))
        return count

    return write_and_audit
