"""The model registry: which ONNX models the classify stage runs, and how.

A YAML file lists models; each has a name, a modality (text or image), an ONNX file
(relative to the registry file), input and output names, labels in output order, and
per-label thresholds (`review` and optionally `remove`; a plain number is a review
threshold). Image models also give the input size, layout and normalisation.

    models:
      - name: text-default
        modality: text
        file: data/text-default.onnx
        input: text
        output: probabilities
        labels: [benign, graphic_violence, hate, violent_extremism]
        thresholds: {violent_extremism: {review: 0.5, remove: 0.9}, hate: 0.6}

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
        unknown = set(m) - {
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
        }
        if unknown:
            raise RegistryError(f"{where}: unknown fields {sorted(unknown)}")
        if m["modality"] not in MODALITIES:
            raise RegistryError(f"{where}: modality must be one of {MODALITIES}")
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
        if spec.input not in inputs or spec.output not in outputs:
            raise RegistryError(
                f"model {spec.name}: has inputs {sorted(inputs)} and outputs {sorted(outputs)}, "
                f"the registry names input {spec.input!r} and output {spec.output!r}"
            )
        probe = self.scores(["test"] if spec.modality == "text" else [_blank_png(spec.size)])
        if probe.shape != (1, len(spec.labels)):
            raise RegistryError(
                f"model {spec.name}: output shape {probe.shape[1:]} does not fit {len(spec.labels)} labels"
            )

    def scores(self, inputs: Sequence[Any]) -> np.ndarray:
        if self.spec.modality == "text":
            feed = np.array([str(t) for t in inputs], dtype=object).reshape(-1, 1)
        else:
            feed = np.stack([preprocess_image(b, self.spec) for b in inputs])
        out = self.session.run([self.spec.output], {self.spec.input: feed})[0]
        return np.asarray(out, dtype=np.float32).reshape(len(inputs), -1)


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
