"""exchange: signed hash sharing between platforms, in three stages (`modstream run exchange`).

- publish: this platform's shareable signals (`shared.signals`, written by decide) are signed
  with its Ed25519 key and published on the exchange topic, on the cluster the partners
  share. Only what the ExchangeSignal schema holds leaves: hashes, category, severity, the
  platform id, an incident id; never content, content ids or user data.
- import: partners' records from the exchange are verified (known, active partner; a good
  signature; not stale, not from the future; not a replay of a signature already seen at
  another place of the topic), then, by the partner's trust for the category: `auto` banks
  the hash in `partner.<name>` (the policy may act on it directly), `review` in
  `partner-review.<name>` (its matches go to review), `ignore` drops it. The entry keeps its
  provenance: source `partner:<name>`, signed_at, incident_id. A partner's retraction removes
  its entry; a dispute about this platform's signal is counted. A refused record is
  dead-lettered with the reason, and nothing unsigned enters a bank.
- feedback: a reviewer's verdict on an item that matched a partner's hash confirms that
  partner's signal (remove) or overturns it (allow): counted per partner, and an overturn
  sends a signed dispute back to the exchange.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from prometheus_client import Counter

from pipeline.exchange.partners import PartnerTable, partner_bank, partner_of_bank, trust_of
from pipeline.exchange.signing import SignatureError, exchange_key, load_public, verify
from pipeline.policy.engine import UPHELD
from pipeline.records import Incoming, Output, Record, dead_letter_value, now_ms, record_key

logger = logging.getLogger(__name__)

REFUSED = Counter("modstream_exchange_refused_total", "Exchange records refused", ["reason"])
IMPORTED = Counter("modstream_exchange_imported_total", "Partner signals imported", ["partner", "trust"])
FUTURE_SKEW_MS = 5 * 60 * 1000


class Counts(Protocol):
    def count(self, name: str, what: str, ids: list[str]) -> None: ...


class ReplayGuard(Protocol):
    def first_seen(self, digests: list[tuple[str, str]], ttl_s: int) -> list[str]:
        """For each (signature digest, position), the position where the digest was first seen."""
        ...


class BankLookup(Protocol):
    def match_batch(self, signal_lists: list[list[Record]]) -> list[list[Record]]: ...


class PublishStage:
    name = "exchange-publish"
    inputs = ("shared.signals",)
    outputs = ("exchange",)

    def __init__(self, platform_id: str, sign: Callable[[Record], Record], remember: int = 100_000) -> None:
        self.platform_id = platform_id
        self.sign = sign
        self.remember = remember
        self._published: dict[tuple[str, str, str | None], None] = {}  # recently published, oldest first

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        out = []
        for incoming in batch:
            s = incoming.value
            if s["source_platform"] != self.platform_id:
                continue  # only this platform's own signals are signed by it
            seen = (s["signal_type"], s["hash"].lower(), s["incident_id"])
            if seen in self._published:
                continue  # the same hash removed again: partners have it already
            self._published[seen] = None
            if len(self._published) > self.remember:
                del self._published[next(iter(self._published))]
            record = {
                "kind": "signal",
                "signal_type": s["signal_type"],
                "hash": s["hash"].lower(),
                "category": s["category"],
                "severity": s["severity"],
                "platform_id": self.platform_id,
                "incident_id": s["incident_id"],
                "about_platform": None,
                "signed_at": s["shared_at"],
            }
            out.append(Output("exchange", exchange_key(record), self.sign(record)))
        return out


class ImportStage:
    name = "exchange-import"
    inputs = ("exchange",)
    outputs = ("banks", "dlq")

    def __init__(
        self,
        platform_id: str,
        partners: PartnerTable,
        replays: ReplayGuard,
        counts: Counts,
        exchange_topic: str,
        max_age_s: int,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.platform_id = platform_id
        self.partners = partners
        self.replays = replays
        self.counts = counts
        self.exchange_topic = exchange_topic
        self.max_age_s = max_age_s
        self.clock = clock

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        theirs = [r for r in batch if r.value["platform_id"] != self.platform_id]
        checked = [(r, self._check(r.value)) for r in theirs]
        signed = [(r, p) for r, p in checked if not isinstance(p, str)]
        positions = [f"{r.partition}/{r.offset}" for r, _ in signed]
        digests = [hashlib.sha256(r.value["signature"]).hexdigest() for r, _ in signed]
        first = (
            self.replays.first_seen(list(zip(digests, positions, strict=True)), self.max_age_s * 2) if signed else []
        )
        replayed = {id(r) for (r, _), at, pos in zip(signed, first, positions, strict=True) if at != pos}
        out: list[Output] = []
        for incoming, partner in checked:
            if isinstance(partner, str) or id(incoming) in replayed:
                reason = partner if isinstance(partner, str) else "replayed: this signature was already received"
                out.append(self._refuse(incoming, reason))
                continue
            out += self._apply(incoming, partner)
        return out

    def _check(self, r: Record) -> Record | str:
        """The signing partner, or why the record is refused."""
        partner = self.partners.by_platform(r["platform_id"])
        if partner is None:
            return f"unknown partner: platform {r['platform_id']!r} is not registered"
        if partner["status"] != "active":
            return f"removed partner: {partner['name']}"
        try:
            verify(r, load_public(partner["public_key"]))
        except SignatureError as exc:
            return f"{exc} (partner {partner['name']})"
        now = self.clock()
        if r["signed_at"] < now - self.max_age_s * 1000:
            return f"stale: signed {(now - r['signed_at']) // 1000} s ago, more than {self.max_age_s} s"
        if r["signed_at"] > now + FUTURE_SKEW_MS:
            return "signed in the future"
        return partner

    def _apply(self, incoming: Incoming, partner: Record) -> list[Output]:
        r, name = incoming.value, partner["name"]
        if r["kind"] == "dispute":
            if r["about_platform"] == self.platform_id:
                logger.warning("partner %s disputes our %s signal %s", name, r["signal_type"], r["hash"])
                self.counts.count(name, "disputes_received", [r["signature"].hex()])
            return []
        if r["kind"] == "retraction":  # the partner withdraws its own hash, whatever its trust
            return [
                Output("banks", f"{partner_bank(name, trust)}/{r['signal_type']}/{r['hash'].lower()}", None)
                for trust in ("auto", "review")
            ]
        trust = trust_of(partner, r["category"])
        if trust == "ignore":
            return []
        entry = {
            "bank": partner_bank(name, trust),
            "signal_type": r["signal_type"],
            "hash": r["hash"].lower(),
            "category": r["category"],
            "severity": r["severity"],
            "source": f"partner:{name}",
            "added_at": r["signed_at"],
            "item_id": None,
            "incident_id": r["incident_id"],
            "signed_at": r["signed_at"],
        }
        IMPORTED.labels(name, trust).inc()
        self.counts.count(name, "imported", [r["signature"].hex()])
        return [Output("banks", record_key("banks", entry), entry)]

    def _refuse(self, incoming: Incoming, reason: str) -> Output:
        REFUSED.labels(reason.split(":")[0].split(" (")[0]).inc()
        partner = self.partners.by_platform(incoming.value["platform_id"])
        if partner is not None:
            self.counts.count(partner["name"], "refused", [f"{incoming.partition}/{incoming.offset}"])
        logger.warning(
            "refused exchange record %s[%d]@%d: %s", self.exchange_topic, incoming.partition, incoming.offset, reason
        )
        letter = dead_letter_value(
            self.exchange_topic,
            incoming.partition,
            incoming.offset,
            incoming.key,
            incoming.raw,
            self.name,
            "exchange",
            reason,
        )
        return Output("dlq", incoming.key, letter)


class FeedbackStage:
    name = "exchange-feedback"
    inputs = ("decisions",)
    outputs = ("exchange",)

    def __init__(
        self,
        platform_id: str,
        banks: BankLookup,
        partners: PartnerTable,
        counts: Counts,
        sign: Callable[[Record], Record],
    ) -> None:
        self.platform_id = platform_id
        self.banks = banks
        self.partners = partners
        self.counts = counts
        self.sign = sign

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        verdicts = [r.value for r in batch if r.value["rule_id"] == "human-review" and r.value["signals"]]
        if not verdicts:
            return []
        out: list[Output] = []
        for d, matches in zip(verdicts, self.banks.match_batch([d["signals"] for d in verdicts]), strict=True):
            for m in matches:
                name = partner_of_bank(m["bank"])
                partner = self.partners.get(name) if name else None
                if partner is None:
                    continue
                if d["action"] in UPHELD:
                    self.counts.count(partner["name"], "confirmed", [f"{d['decision_id']}:{m['hash']}"])
                elif d["action"] == "allow":
                    self.counts.count(partner["name"], "disputed", [f"{d['decision_id']}:{m['hash']}"])
                    out.append(self._dispute(d, m, partner))
        return out

    def _dispute(self, d: Record, m: Record, partner: Record) -> Output:
        record: dict[str, Any] = {
            "kind": "dispute",
            "signal_type": m["signal_type"],
            "hash": m["hash"],
            "category": m["category"],
            "severity": m["severity"],
            "platform_id": self.platform_id,
            "incident_id": None,
            "about_platform": partner["platform_id"],
            "signed_at": d["decided_at"],
        }
        return Output("exchange", exchange_key(record), self.sign(record))
