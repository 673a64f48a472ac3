"""match: looks every signal of a record up in the hash banks and records the matches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pipeline.records import Incoming, Output, Record, subject_key


class BankLookup(Protocol):
    def match_exact(self, signal_type: str, value: str) -> list[Record]: ...


class MatchStage:
    name = "match"
    inputs = ("enriched",)

    def __init__(self, banks: BankLookup) -> None:
        self.banks = banks

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        out = []
        for incoming in batch:
            record = dict(incoming.value)
            matches = [
                m for s in record["signals"] for m in self.banks.match_exact(s["signal_type"], s["value"])
            ]
            record["matches"] = matches
            record["stages"] = [*record["stages"], "match"]
            out.append(Output("matched", subject_key(record["envelope"]), record))
        return out
