"""classify: scores the text and images of each record with the registry's ONNX models.

All records of a batch go through each model together (one inference call per model
and batch). A record that a bank already matched with high confidence (a match within
`skip_distance`; exact matches have distance 0) passes through unclassified: its
decision does not need a model. A record whose input cannot be prepared (an image the
model cannot read) raises, so the runner dead-letters it alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from pipeline.records import Incoming, Output, Record, subject_key


class Model(Protocol):
    @property
    def spec(self) -> Any: ...

    def scores(self, inputs: Sequence[Any]) -> np.ndarray: ...


def text_of(record: Record) -> str | None:
    """The content's own text: an upload's text or a stream's title (not a reporter's words)."""
    event = record["upload"] or record["live"]
    return event.get("text") if event else None


def image_of(record: Record) -> bytes | None:
    """Inline image bytes, if enrich recognised the media as an image (it has a PDQ hash)."""
    if not any(s["signal_type"] == "pdq" for s in record["signals"]):
        return None
    event = record["upload"] or record["live"] or {}
    data: bytes | None = event.get("media_b64") or event.get("frame_b64")
    return data


class ClassifyStage:
    name = "classify"
    inputs = ("matched",)
    outputs = ("classified",)

    def __init__(self, models: Sequence[Model], skip_matched: bool = True, skip_distance: int = 16) -> None:
        self.models = list(models)
        self.skip_matched = skip_matched
        self.skip_distance = skip_distance

    def confident_match(self, record: Record) -> bool:
        return self.skip_matched and any(m["distance"] <= self.skip_distance for m in record["matches"])

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        records = [dict(r.value) for r in batch]
        todo = [i for i, r in enumerate(records) if not self.confident_match(r)]
        scores: dict[int, list[Record]] = {i: [] for i in todo}
        for model in self.models:
            pick = text_of if model.spec.modality == "text" else image_of
            items = [(i, x) for i in todo if (x := pick(records[i]))]
            if not items:
                continue
            probabilities = model.scores([x for _, x in items])
            for (i, _), row in zip(items, probabilities, strict=True):
                scores[i] += [
                    {"model": model.spec.name, "label": label, "score": float(p)}
                    for label, p in zip(model.spec.labels, row, strict=True)
                ]
        out = []
        for i, record in enumerate(records):
            skipped = i not in scores
            record["scores"] = [] if skipped else scores[i]
            record["stages"] = [
                *record["stages"],
                "classify (skipped: bank match)" if skipped else "classify",
            ]
            out.append(Output("classified", subject_key(record["envelope"]), record))
        return out
