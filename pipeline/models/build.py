"""`modstream models build`: trains the default text model and writes it as ONNX.

TF-IDF over word unigrams and bigrams with a logistic regression, trained with
scikit-learn on the project's corpus (models/corpus.py), converted with skl2onnx so
that the ONNX graph itself takes raw strings: lower-casing, tokenising and TF-IDF run
inside it. Held out: a quarter of the templates of every label, so the figures are
for sentence patterns the model never saw. Deterministic: the same corpus gives the
same model and the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.models.corpus import CORPUS, read

DATA = Path(__file__).parent / "data"
MODEL_PATH = DATA / "text-default.onnx"
CARD_PATH = Path(__file__).parent / "MODEL_CARD.md"
LABELS = ("benign", "graphic_violence", "hate", "violent_extremism")


@dataclass
class BuildReport:
    train_rows: int
    test_rows: int
    per_label: dict[str, tuple[float, float, int]]  # label -> (precision, recall, support)
    flagged: tuple[float, float]  # any harmful label vs benign: (precision, recall)
    onnx_max_diff: float


def split(rows: list[tuple[str, str, str]]) -> tuple[list[int], list[int]]:
    """Train and test row indexes: every fourth template of each label is held out."""
    templates = sorted({(label, t) for _, label, t in rows}, key=lambda lt: (lt[0], int(lt[1].rsplit("-", 1)[1])))
    held = set()
    for label in LABELS:
        mine = [t for lab, t in templates if lab == label]
        held |= set(mine[3::4] or mine[-1:])
    test = [i for i, (_, _, t) in enumerate(rows) if t in held]
    train = [i for i, (_, _, t) in enumerate(rows) if t not in held]
    return train, test


def to_onnx_bytes(model: object) -> bytes:
    import onnx
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import StringTensorType

    vectorizer, classifier = model.steps[0][1], model.steps[-1][1]  # type: ignore[attr-defined]
    # The tokenizer inside the graph uses scikit-learn's token pattern (word characters, two
    # or more), not skl2onnx's default separators, so both give the same tokens.
    options = {id(classifier): {"zipmap": False}, id(vectorizer): {"tokenexp": r"\w\w+"}}
    onx = to_onnx(model, initial_types=[("text", StringTensorType([None, 1]))], options=options, target_opset=17)
    for node in onx.graph.node:
        # skl2onnx leaves the locale to onnxruntime's default, en_US.UTF-8, which many
        # machines (and containers) lack; C.UTF-8 is always there and lower-cases alike.
        if node.op_type == "StringNormalizer":
            node.attribute.append(onnx.helper.make_attribute("locale", "C.UTF-8"))
    # skl2onnx lists opsets in set order, which varies with the hash seed: sort for stable bytes.
    opsets = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    onx.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets)
    onx.doc_string = "modstream default text model: raw strings in, probabilities of " + ", ".join(LABELS)
    return onx.SerializeToString()


def build(corpus: Path = CORPUS, out: Path = MODEL_PATH, card: Path | None = CARD_PATH) -> BuildReport:
    import onnxruntime as ort
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import precision_recall_fscore_support
    from sklearn.pipeline import Pipeline

    rows = read(corpus)
    train, test = split(rows)
    texts = np.array([r[0] for r in rows], dtype=object)
    labels = np.array([r[1] for r in rows], dtype=object)
    model = Pipeline(
        [
            ("tfidf", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)),
            ("clf", LogisticRegression(C=20.0, class_weight="balanced", max_iter=5000)),
        ]
    ).fit(texts[train], labels[train])
    assert tuple(model.classes_) == LABELS, model.classes_

    predicted = model.predict(texts[test])
    p, r, _, s = precision_recall_fscore_support(labels[test], predicted, labels=list(LABELS), zero_division=0)
    flag_true, flag_pred = labels[test] != "benign", predicted != "benign"
    tp = int((flag_true & flag_pred).sum())
    flagged = (tp / max(1, int(flag_pred.sum())), tp / max(1, int(flag_true.sum())))

    data = to_onnx_bytes(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    onnx_probs = session.run(["probabilities"], {"text": texts[test].reshape(-1, 1)})[0]
    diff = float(np.abs(onnx_probs - model.predict_proba(texts[test])).max())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    report = BuildReport(
        len(train),
        len(test),
        {lab: (float(p[i]), float(r[i]), int(s[i])) for i, lab in enumerate(LABELS)},
        flagged,
        diff,
    )
    if card is not None:
        card.write_text(model_card(report))
    return report


def format_report(report: BuildReport) -> str:
    lines = [
        f"trained on {report.train_rows} sentences, held out {report.test_rows} (unseen templates)",
        f"{'label':20} {'precision':>9} {'recall':>7} {'support':>8}",
    ]
    for label, (p, r, s) in report.per_label.items():
        lines.append(f"{label:20} {p:>9.2f} {r:>7.2f} {s:>8}")
    lines.append(f"{'any harmful label':20} {report.flagged[0]:>9.2f} {report.flagged[1]:>7.2f}")
    lines.append(f"ONNX vs scikit-learn: max probability difference {report.onnx_max_diff:.1e}")
    return "\n".join(lines)


def model_card(report: BuildReport) -> str:
    return f"""# Model card: text-default

Written by `modstream models build`; do not edit by hand.

## What it is
A text classifier for moderation, shipped with modstream so the classify stage works out of
the box: TF-IDF over word unigrams and bigrams and a multinomial logistic regression
(scikit-learn), exported with skl2onnx. The ONNX graph takes raw strings (shape [N, 1]) and
returns `probabilities` over {", ".join(LABELS)} in that order.

## Data
`pipeline/models/data/text_corpus.csv`: {report.train_rows + report.test_rows} English sentences written by
the project from templates (`pipeline/models/corpus.py`), about violent extremist incitement
and glorification, hate against generic stand-in groups, graphic violence, and benign text,
including news reporting, condemnation and discussion of attacks, which must not be flagged.
No real user content and no real group names.

## Evaluation (held-out templates)
{format_report(report)}

## Limits
- The corpus is small and synthetic. Held-out sentences come from unseen templates but share
  the vocabulary of the training ones, so these figures overstate how well it does on real
  posts. Treat it as a working default and a reference for plugging in a platform's own model.
- Bag of words: it can be fooled by negation, sarcasm, quotation, misspelling and
  coded language, and it does not understand context beyond word pairs.
- English only.
- Its scores should send content to human review; removal on its score alone needs a
  platform's own validated model and thresholds.
"""
