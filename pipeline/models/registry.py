"""The model registry: which ONNX models the classify stage runs, and how.

A YAML file lists models; each has a name, a modality (text or image), an ONNX file
(relative to the registry file), input and output names, labels in output order, and
per-label thresholds (`review` and optionally `remove`; a plain number is a review
threshold). Image models also give the input size, layout and normalisation.

A text model either takes raw strings (input shape [N, 1], tokenising inside the graph), or
names a `tokenizer` (a `tokenizers` JSON file): then the batch is tokenised here in one call,
each text cut at `max_length` tokens (default 128), and the model gets the token ids as
`input` and, if it names one, the attention mask as `mask` (int64, [N, tokens]), padded to
the longest text of what it is given. It is given `micro_batch` texts at a time (default 16),
the batch's texts sorted by length so that each inference pads little; 0 gives it the whole
batch in one inference (better on a GPU). On a CPU a transformer's cost is its tokens, padding
included: one inference over 500 posts padded to the longest is slower than one per post,
micro-batches of 16 of similar length are 1.5 times faster (docs/decisions/0002-text-model.md).

    models:
      - name: my-text-model
        modality: text
        file: my-model.onnx
        tokenizer: my-tokenizer.json
        max_length: 256
        micro_batch: 16
        input: input_ids
        mask: attention_mask
        output: probabilities
        labels: [benign, graphic_violence, hate, violent_extremism]
        thresholds: {violent_extremism: {review: 0.5, remove: 0.9}, hate: 0.6}

The default text model also names `encoder` (a sentence encoder whose weights ship in an
installed package, see models/encoder.py) and `head` (the classification head that `modstream
models build` trains, kept in the repository): its `file` and `tokenizer` are then made from
the two on first use, where they are missing or older than the head.

Loading checks everything and runs each model once: a broken registry stops the
stage at start with a clear error, never at the first record.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

DEFAULT_REGISTRY = Path(__file__).parent / "models.yaml"
MODALITIES = ("text", "image")


class RegistryError(ValueError):
    """The registry or one of its models cannot be used; the message says which and why."""


class PreprocessError(ValueError):
    """One record's input cannot be turned into model input."""


@dataclass(frozen=True)
class Threshold:
    review: float
    remove: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    modality: str
    file: Path
    input: str
    output: str
    labels: tuple[str, ...]
    thresholds: Mapping[str, Threshold] = field(default_factory=dict)
    size: tuple[int, int] = (224, 224)  # image models: width, height
    layout: str = "NCHW"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    tokenizer: Path | None = None  # text models: a `tokenizers` JSON file
    max_length: int = 128  # text models with a tokenizer: tokens kept of each text
    mask: str | None = None  # text models with a tokenizer: the attention mask input
    micro_batch: int = 16  # text models with a tokenizer: texts per inference (0: the whole batch)
    encoder: str | None = None  # a packaged encoder to join with `head` into `file`
    head: Path | None = None


FIELDS = {
    "name",
    "modality",
    "file",
    "input",
    "output",
    "labels",
    "thresholds",
    "size",
    "layout",
    "mean",
    "std",
    "tokenizer",
    "max_length",
    "micro_batch",
    "mask",
    "encoder",
    "head",
}
TEXT_ONLY = {"tokenizer", "max_length", "micro_batch", "mask", "encoder", "head"}


def _threshold(model: str, label: str, value: Any) -> Threshold:
    if isinstance(value, int | float):
        return Threshold(float(value))
    if isinstance(value, dict) and "review" in value and set(value) <= {"review", "remove"}:
        return Threshold(float(value["review"]), None if value.get("remove") is None else float(value["remove"]))
    raise RegistryError(f"model {model}: threshold of {label!r} must be a number or {{review, remove}}")


def load_registry(path: Path = DEFAULT_REGISTRY) -> list[ModelSpec]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RegistryError(f"cannot read model registry {path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), list):
        raise RegistryError(f"{path}: expected a mapping with a 'models' list")
    specs: list[ModelSpec] = []
    for i, m in enumerate(doc["models"]):
        where = f"{path}: model {i + 1}"
        if not isinstance(m, dict):
            raise RegistryError(f"{where}: expected a mapping")
        missing = {"name", "modality", "file", "input", "output", "labels"} - set(m)
        if missing:
            raise RegistryError(f"{where}: missing {sorted(missing)}")
        unknown = set(m) - FIELDS
        if unknown:
            raise RegistryError(f"{where}: unknown fields {sorted(unknown)}")
        if m["modality"] not in MODALITIES:
            raise RegistryError(f"{where}: modality must be one of {MODALITIES}")
        if m["modality"] != "text" and TEXT_ONLY & set(m):
            raise RegistryError(f"{where}: {sorted(TEXT_ONLY & set(m))} are for text models")
        if {"mask", "max_length", "micro_batch"} & set(m) and "tokenizer" not in m:
            raise RegistryError(f"{where}: mask, max_length and micro_batch need a tokenizer")
        max_length, micro_batch = m.get("max_length", 128), m.get("micro_batch", 16)
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 3:
            raise RegistryError(f"{where}: max_length must be a whole number of tokens, at least 3")
        if not isinstance(micro_batch, int) or isinstance(micro_batch, bool) or micro_batch < 0:
            raise RegistryError(f"{where}: micro_batch must be a whole number of texts (0: the whole batch)")
        if "encoder" in m:
            from pipeline.models.encoder import ENCODERS

            if m["encoder"] not in ENCODERS:
                raise RegistryError(f"{where}: unknown encoder {m['encoder']!r}, known: {sorted(ENCODERS)}")
            if "head" not in m or "tokenizer" not in m:
                raise RegistryError(f"{where}: an encoder needs a head and a tokenizer")
        elif "head" in m:
            raise RegistryError(f"{where}: a head needs an encoder")
        labels = tuple(str(x) for x in m["labels"])
        thresholds = {str(k): _threshold(m["name"], k, v) for k, v in (m.get("thresholds") or {}).items()}
        if set(thresholds) - set(labels):
            raise RegistryError(f"{where}: thresholds for unknown labels {sorted(set(thresholds) - set(labels))}")
        if m.get("layout", "NCHW") not in ("NCHW", "NHWC"):
            raise RegistryError(f"{where}: layout must be NCHW or NHWC")
        specs.append(
            ModelSpec(
                name=str(m["name"]),
                modality=m["modality"],
                file=(path.parent / m["file"]).resolve(),
                input=str(m["input"]),
                output=str(m["output"]),
                labels=labels,
                thresholds=thresholds,
                size=tuple(m.get("size", (224, 224))),  # type: ignore[arg-type]
                layout=m.get("layout", "NCHW"),
                mean=tuple(m.get("mean", (0.0, 0.0, 0.0))),  # type: ignore[arg-type]
                std=tuple(m.get("std", (1.0, 1.0, 1.0))),  # type: ignore[arg-type]
                tokenizer=(path.parent / m["tokenizer"]).resolve() if "tokenizer" in m else None,
                max_length=max_length,
                micro_batch=micro_batch,
                mask=str(m["mask"]) if "mask" in m else None,
                encoder=str(m["encoder"]) if "encoder" in m else None,
                head=(path.parent / m["head"]).resolve() if "head" in m else None,
            )
        )
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise RegistryError(f"{path}: model names must be unique: {names}")
    return specs


class OnnxModel:
    """One model in an onnxruntime session; `scores` takes a batch and returns (N, labels)."""

    def __init__(self, spec: ModelSpec, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 1) -> None:
        import onnxruntime as ort

        if spec.encoder:
            spec = _materialise(spec)
        self.spec = spec
        if not spec.file.is_file():
            raise RegistryError(f"model {spec.name}: file {spec.file} not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        available = ort.get_available_providers()
        chosen = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(spec.file), options, providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types for any bad model
            raise RegistryError(f"model {spec.name}: onnxruntime cannot load {spec.file.name}: {exc}") from exc
        self.providers = self.session.get_providers()
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        named = [n for n in (spec.input, spec.mask) if n]
        if not set(named) <= inputs or spec.output not in outputs:
            raise RegistryError(
                f"model {spec.name}: has inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
                f"the registry names input{'s' if len(named) > 1 else ''} {', '.join(map(repr, named))} "
                f"and output {spec.output!r}"
            )
        self.tokenizer: Any = None
        self.pad_id = 0
        if spec.tokenizer is not None:
            from pipeline.models.encoder import load_tokenizer, pad_id_of

            try:
                self.tokenizer = load_tokenizer(spec.tokenizer, spec.max_length)
                self.pad_id = pad_id_of(self.tokenizer)
            except Exception as exc:  # tokenizers raises plain Exceptions for unreadable files
                raise RegistryError(f"model {spec.name}: cannot load tokenizer {spec.tokenizer}: {exc}") from exc
        probe = self.scores(["test"] if spec.modality == "text" else [_blank_png(spec.size)])
        if probe.shape != (1, len(spec.labels)):
            raise RegistryError(
                f"model {spec.name}: output shape {probe.shape[1:]} does not fit {len(spec.labels)} labels"
            )

    def scores(self, inputs: Sequence[Any]) -> np.ndarray:
        """Scores [N, labels]: one inference for the batch, or, for a tokenised text model, one
        per micro-batch of texts of similar length (the batch tokenised in one call)."""
        if self.tokenizer is not None:
            return self._text_scores([str(t) for t in inputs])
        if self.spec.modality == "text":
            feed = np.array([str(t) for t in inputs], dtype=object).reshape(-1, 1)
        else:
            feed = np.stack([preprocess_image(b, self.spec) for b in inputs])
        out = self.session.run([self.spec.output], {self.spec.input: feed})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(inputs), -1)

    def _text_scores(self, texts: list[str]) -> np.ndarray:
        from pipeline.models.encoder import micro_batches, padded

        token_ids = [e.ids for e in self.tokenizer.encode_batch_fast(texts)]
        parts = []
        for group in micro_batches(token_ids, self.spec.micro_batch):
            ids, mask = padded([token_ids[i] for i in group], self.pad_id)
            feed = {self.spec.input: ids, **({self.spec.mask: mask} if self.spec.mask else {})}
            parts.append((group, np.asarray(self.session.run([self.spec.output], feed)[0], np.float32)))
        out = np.empty((len(texts), parts[0][1].reshape(len(parts[0][0]), -1).shape[1]), dtype=np.float32)
        for group, scores in parts:
            out[group] = scores.reshape(len(group), -1)
        return out


def _materialise(spec: ModelSpec) -> ModelSpec:
    """The spec with its joined model and tokenizer built, if they are missing or stale."""
    from dataclasses import replace

    from pipeline.models.encoder import EncoderError, ensure_built

    assert spec.head is not None and spec.tokenizer is not None
    if not spec.head.is_file():
        raise RegistryError(f"model {spec.name}: head {spec.head} not found")
    try:
        file, tokenizer = ensure_built(spec.encoder or "", spec.head, spec.file, spec.tokenizer, spec.name)
    except EncoderError as exc:
        raise RegistryError(f"model {spec.name}: {exc}") from exc
    return replace(spec, file=file, tokenizer=tokenizer)


def preprocess_image(data: bytes, spec: ModelSpec) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", spec.size)
        rgb = np.asarray(image.convert("RGB").resize(spec.size), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise PreprocessError(f"model {spec.name}: cannot prepare image: {exc}") from exc
    normalised: np.ndarray = (rgb - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return normalised.transpose(2, 0, 1) if spec.layout == "NCHW" else normalised


def _blank_png(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (128, 128, 128)).save(buf, format="PNG")
    return buf.getvalue()


def load_models(path: Path, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 1) -> list[OnnxModel]:
    return [OnnxModel(spec, providers, threads) for spec in load_registry(path)]
