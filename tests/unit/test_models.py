"""The model registry, the default text model and its build, the image-model path, and the
classify stage, run by onnxruntime without a broker."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.models.build import MODEL_PATH
from pipeline.models.registry import (
    DEFAULT_REGISTRY,
    OnnxModel,
    PreprocessError,
    RegistryError,
    load_models,
    load_registry,
)
from pipeline.records import Incoming, envelope
from pipeline.stages.classify import ClassifyStage
from pipeline.stages.enrich import moderation_record
from tests.media import encode
from tests.models import brightness_model, registry_with_image_model

EXTREMIST = "Brothers, grab a rifle and attack the crowd at the festival, kill every last one of them."
NEWS = "Police said a gunman killed twelve people in an attack at the festival on Tuesday."


@pytest.fixture(scope="module")
def text_model() -> OnnxModel:
    [model] = load_models(DEFAULT_REGISTRY)
    return model


def test_default_text_model_separates_incitement_from_news(text_model: OnnxModel) -> None:
    labels = text_model.spec.labels
    scores = text_model.scores([EXTREMIST, NEWS, "I love my cat, what a great day"])
    ve = labels.index("violent_extremism")
    assert scores[0, ve] > 0.5 > scores[1, ve]
    assert scores[1, labels.index("benign")] > 0.5 and scores[2, labels.index("benign")] > 0.5
    assert np.allclose(scores.sum(axis=1), 1.0, atol=1e-4)


def test_models_build_is_reproducible_and_prints_held_out_figures(tmp_path: Path) -> None:
    script = (
        "from pathlib import Path; from pipeline.models.build import build, format_report; "
        f"print(format_report(build(out=Path({str(tmp_path)!r}) / 'm.onnx', card=None)))"
    )
    outputs = []
    for seed in ("1", "3"):  # different hash seeds: set orders differ inside the converter
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
        assert run.returncode == 0, run.stderr
        outputs.append((run.stdout, hashlib.sha256((tmp_path / "m.onnx").read_bytes()).hexdigest()))
    assert outputs[0] == outputs[1]
    assert "held out" in outputs[0][0] and "violent_extremism" in outputs[0][0]
    # the shipped model is what the build makes
    assert outputs[0][1] == hashlib.sha256(MODEL_PATH.read_bytes()).hexdigest()


def write(tmp: Path, text: str) -> Path:
    path = tmp / "models.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "body, reason",
    [
        ("models: nope", "expected a mapping with a 'models' list"),
        ("models:\n  - {name: a, modality: text}", "missing"),
        ("models:\n  - {name: a, modality: audio, file: x, input: i, output: o, labels: [x]}", "modality"),
        (
            "models:\n  - {name: a, modality: text, file: x, input: i, output: o, labels: [x], colour: red}",
            "unknown fields",
        ),
        (
            "models:\n  - {name: a, modality: text, file: x, input: i, output: o, labels: [x], thresholds: {y: 0.5}}",
            "thresholds for unknown labels",
        ),
        (
            "models:\n  - {name: a, modality: text, file: x, input: i, output: o, labels: [x], thresholds: {x: high}}",
            "must be a number",
        ),
        (
            "models:\n  - {name: a, modality: text, file: x, input: i, output: o, labels: [x]}\n"
            "  - {name: a, modality: text, file: x, input: i, output: o, labels: [x]}",
            "unique",
        ),
    ],
)
def test_invalid_registries_are_refused(tmp_path: Path, body: str, reason: str) -> None:
    with pytest.raises(RegistryError, match=reason):
        load_registry(write(tmp_path, body))


def test_broken_models_refuse_to_load(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    base = "models:\n  - {name: m, modality: %s, file: %s, input: %s, output: %s, labels: %s}"
    cases = [
        (base % ("text", "missing.onnx", "text", "probabilities", "[a]"), "not found"),
        (base % ("text", "junk.onnx", "text", "probabilities", "[a]"), "cannot load"),
        (
            base % ("text", MODEL_PATH, "words", "probabilities", "[a, b, c, d]"),
            "registry names input 'words'",
        ),
        (base % ("text", MODEL_PATH, "text", "probabilities", "[a, b]"), "does not fit 2 labels"),
    ]
    for body, reason in cases:
        with pytest.raises(RegistryError, match=reason):
            load_models(write(tmp_path, body))


def test_image_model_through_the_registry(tmp_path: Path) -> None:
    models = load_models(registry_with_image_model(tmp_path))
    image_model = models[1]
    dark, bright = (
        encode(Image.new("RGB", (64, 48), (10, 10, 10))),
        encode(Image.new("RGB", (64, 48), (250, 250, 250))),
    )
    scores = image_model.scores([dark, bright])
    assert scores[0, 1] < 0.01 and scores[1, 1] > 0.99
    with pytest.raises(PreprocessError, match="cannot prepare image"):
        image_model.scores([b"not an image"])


def classified(stage: ClassifyStage, *values: dict) -> list[dict]:  # type: ignore[type-arg]
    return [o.value for o in stage.process([Incoming("matched", None, v) for v in values])]  # type: ignore[misc]


def record(text: str | None = None, media: bytes | None = None, matches: list | None = None) -> dict:  # type: ignore[type-arg]
    upload = {
        "envelope": envelope("p", content_id="c"),
        "media_b64": media,
        "media_uri": None,
        "media_type": None,
        "text": text,
    }
    signals = [{"signal_type": "pdq", "value": "0" * 64, "quality": 100, "frame": None}] if media else []
    return {
        **moderation_record("uploads", upload),
        "signals": signals,
        "matches": matches or [],
        "stages": ["enrich", "match"],
    }


class Counting:
    def __init__(self, model: OnnxModel) -> None:
        self.model, self.calls = model, 0
        self.spec = model.spec

    def scores(self, inputs):  # type: ignore[no-untyped-def]
        self.calls += 1
        return self.model.scores(inputs)


def test_classify_batches_skips_confident_matches_and_raises_on_bad_images(tmp_path: Path) -> None:
    text, image = (Counting(m) for m in load_models(registry_with_image_model(tmp_path)))
    stage = ClassifyStage([text, image])
    match = {
        "bank": "b",
        "signal_type": "sha256",
        "hash": "h",
        "distance": 0,
        "category": "terrorism",
        "severity": "high",
        "source": "",
        "item_id": None,
        "score": None,
    }
    bright = encode(Image.new("RGB", (40, 40), (255, 255, 255)))
    out = classified(stage, record(EXTREMIST), record(NEWS, media=bright), record(EXTREMIST, matches=[match]))
    assert text.calls == 1 and image.calls == 1  # one inference per model and batch
    scores = [{(s["model"], s["label"]): s["score"] for s in r["scores"]} for r in out]
    assert scores[0][("text-default", "violent_extremism")] > 0.5
    assert scores[1][("brightness", "bright")] > 0.99 and ("brightness", "bright") not in scores[0]
    assert out[2]["scores"] == [] and out[2]["stages"][-1] == "classify (skipped: bank match)"
    with pytest.raises(PreprocessError):
        classified(stage, record(NEWS, media=b"bytes that claim to be an image"))
    brightness_model(tmp_path / "unused.onnx")  # the builder is idempotent
