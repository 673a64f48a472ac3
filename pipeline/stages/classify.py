"""classify: scores the text and images of each record with the registry's ONNX models.

All records of a batch go through each model together (one inference call per model
and batch). A record that a bank already matched with high confidence (a match within
`skip_distance`; exact matches have distance 0) passes through unclassified: its
decision does not need a model. A record whose input cannot be prepared (an image the
model cannot read) raises, so the runner dead-letters it alone.

Image models get the media bytes from the media store, by the record's `media_ref` (enrich
put them there, whether they came inline or by reference); without a store, or once the
bytes have expired from it, the record's image is not scored. Records that still carry
their media inline (enriched before media travelled by reference) are scored from it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from pipeline.records import Incoming, Output, Record, subject_key
from pipeline.state.media import MediaStore, media_bytes

logger = logging.getLogger(__name__)


class Model(Protocol):
    @property
    def spec(self) -> Any: ...

    def scores(self, inputs: Sequence[Any]) -> np.ndarray: ...


def text_of(record: Record) -> str | None:
    """The content's own text: an upload's text or a stream's title (not a reporter's words)."""
    event = record["upload"] or record["live"]
    return event.get("text") if event else None


def image_of(record: Record, media: MediaStore | None) -> bytes | None:
    """The image bytes, if enrich recognised the media as an image (it has a PDQ hash)."""
    if not any(s["signal_type"] == "pdq" for s in record["signals"]):
        return None
    return media_bytes(record, media) or None


class ClassifyStage:
    name = "classify"
    inputs = ("matched",)
    outputs = ("classified",)

    def __init__(
        self,
        models: Sequence[Model],
        skip_matched: bool = True,
        skip_distance: int = 16,
        media: MediaStore | None = None,
    ) -> None:
        self.models = list(models)
        self.skip_matched = skip_matched
        self.skip_distance = skip_distance
        self.media = media

    def confident_match(self, record: Record) -> bool:
        return self.skip_matched and any(m["distance"] <= self.skip_distance for m in record["matches"])

    def _images(self, records: list[Record], todo: list[int]) -> dict[int, bytes | None]:
        images = {i: image_of(records[i], self.media) for i in todo}
        missing = sum(1 for i, data in images.items() if data is None and records[i].get("media_ref"))
        if missing:
            logger.warning("media of %d records is not in the media store (expired?): images not scored", missing)
        return images

    def process(self, batch: Sequence[Incoming]) -> list[Output]:
        records = [dict(r.value) for r in batch]
        todo = [i for i, r in enumerate(records) if not self.confident_match(r)]
        scores: dict[int, list[Record]] = {i: [] for i in todo}
        images: dict[int, bytes | None] | None = None  # read once per batch, for every image model
        for model in self.models:
            items: list[tuple[int, Any]]
            if model.spec.modality == "text":
                items = [(i, x) for i in todo if (x := text_of(records[i]))]
            else:
                images = self._images(records, todo) if images is None else images
                items = [(i, data) for i in todo if (data := images[i])]
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
