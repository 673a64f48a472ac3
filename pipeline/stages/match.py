"""match: looks every signal of a record up in the hash banks and records the matches.
Exact hashes by lookup; PDQ and video frames through the batched perceptual indexes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pipeline.records import Incoming, Output, Record, subject_key


class BankLookup(Protocol):
    def match_batch(self, signal_lists: list[list[Record]]) -> list[list[Record]]: ...


class MatchStage:
    name = "match"
    inputs = ("enriched",)
    outputs = ("matched",)

    def __init__(self, banks: BankLookup) -> None:
        self.banks = banks

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        all_matches = self.banks.match_batch([r.value["signals"] for r in batch])
        out = []
        for incoming, matches in zip(batch, all_matches, strict=True):
            record = {**incoming.value, "matches": matches, "stages": [*incoming.value["stages"], "match"]}
            out.append(Output("matched", subject_key(record["envelope"]), record))
        return out
