"""Avro encoders and decoders compiled from the schemas into plain Python functions.

fastavro interprets a schema on every call: for each field it dispatches on the type, and
for each union it tries the branches in turn. On the hot path (a Decision encoded, an
upload decoded per event) that interpretation was most of the cost. `compile_codecs`
generates, once per schema, straight-line source that does only the work of that schema,
inlining the small-integer case of Avro's variable-length longs.

The generated functions are a fast path, not a second implementation of the rules: the
Codec calls fastavro whenever a compiled function raises, so a record that either refuses
gets fastavro's answer and its error message, and the tests check that both write the same
bytes and read the same records. A schema using something compiled here does not support
(unions other than null and one type, fixed, zero-byte array items, recursive types) has
no compiled functions and is always handled by fastavro.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Encoder = Callable[[bytearray, dict[str, Any]], None]
Decoder = Callable[[bytes, int], tuple[dict[str, Any], int]]

_PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_LONG_MIN, _LONG_MAX = -(1 << 63), (1 << 63) - 1


class Unsupported(Exception):
    """The schema uses something this compiler leaves to fastavro."""


def write_long(out: bytearray, n: int) -> None:
    """Appends `n` as Avro's zig-zag variable-length long."""
    if not _LONG_MIN <= n <= _LONG_MAX:
        raise OverflowError(f"{n} does not fit a long")
    z = (n << 1) ^ (n >> 63)
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)


def read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """The zig-zag long starting at `pos`, and the position after it."""
    z = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        z |= (b & 0x7F) << shift
        if not b & 0x80:
            if z >> 64:
                raise ValueError("a variable-length long beyond 64 bits")
            return (z >> 1) ^ -(z & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("a variable-length long of more than 10 bytes")


class _Source:
    """Generated source lines and the constants they refer to."""

    def __init__(self, named: dict[str, Any]) -> None:
        self.named = named
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self._n = 0
        self._open: list[str] = []  # named types being expanded (recursion is unsupported)

    def var(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def const(self, value: Any) -> str:
        name = self.var("K")
        self.consts[name] = value
        return name

    def line(self, indent: int, text: str) -> None:
        self.lines.append("    " * indent + text)

    def resolve(self, t: Any) -> Any:
        if isinstance(t, str) and t not in _PRIMITIVES:
            if t not in self.named:
                raise Unsupported(f"unknown named type {t}")
            return self.named[t]
        if isinstance(t, dict) and t.get("type") in _PRIMITIVES and "logicalType" not in t:
            return t["type"]
        return t

    def kind(self, t: Any) -> str:
        if isinstance(t, list):
            return "union"
        if isinstance(t, str):
            return t
        if "logicalType" in t:
            raise Unsupported(f"logical type {t['logicalType']}")
        return str(t["type"])

    @contextmanager
    def expanding(self, record: dict[str, Any]) -> Iterator[None]:
        """Marks a record type as being expanded inline; raises Unsupported if it already is
        (a recursive type)."""
        name = str(record.get("name", ""))
        if name in self._open:
            raise Unsupported(f"recursive type {name}")
        self._open.append(name)
        try:
            yield
        finally:
            self._open.pop()

    def nullable(self, t: list[Any]) -> Any:
        """The other branch of a [null, X] or [X, null] union, and null's index."""
        if len(t) != 2 or "null" not in t or t[0] == t[1]:
            raise Unsupported(f"union {t}")
        return (t[1], 0) if t[0] == "null" else (t[0], 1)

    def min_size(self, t: Any) -> int:
        """1 if every value of `t` takes at least a byte, else 0."""
        t = self.resolve(t)
        kind = self.kind(t)
        if kind == "null":
            return 0
        if kind == "record":
            return max((self.min_size(f["type"]) for f in t["fields"]), default=0)
        return 1


# ---- encoders ----------------------------------------------------------------------------
def _long(src: _Source, value: str, indent: int) -> None:
    src.line(indent, f"if 0 <= {value} < 64: out.append({value} << 1)")
    src.line(indent, f"else: write_long(out, {value})")


def _length(src: _Source, value: str, indent: int) -> None:
    src.line(indent, f"if {value} < 64: out.append({value} << 1)")
    src.line(indent, f"else: write_long(out, {value})")


def _encode(src: _Source, t: Any, value: str, indent: int) -> None:
    t = src.resolve(t)
    kind = src.kind(t)
    if kind == "null":
        return
    if kind == "boolean":
        src.line(indent, f"out.append(1 if {value} else 0)")
    elif kind in ("int", "long"):
        _long(src, value, indent)
    elif kind in ("float", "double"):
        pack = src.const(struct.Struct("<f" if kind == "float" else "<d").pack)
        src.line(indent, f"out += {pack}({value})")
    elif kind in ("string", "bytes"):
        raw = src.var("s")
        src.line(indent, f"{raw} = {value}.encode()" if kind == "string" else f"{raw} = {value}")
        n = src.var("n")
        src.line(indent, f"{n} = len({raw})")
        _length(src, n, indent)
        src.line(indent, f"out += {raw}")
    elif kind == "enum":
        index = src.const({s: i for i, s in enumerate(t["symbols"])})
        i = src.var("i")
        src.line(indent, f"{i} = {index}[{value}]")
        _length(src, i, indent)
    elif kind in ("array", "map"):
        items = src.var("a")
        n = src.var("n")
        src.line(indent, f"{items} = {value}")
        src.line(indent, f"{n} = len({items})")
        src.line(indent, f"if {n}:")
        _length(src, n, indent + 1)
        item = src.var("v")
        if kind == "array":
            src.line(indent + 1, f"for {item} in {items}:")
            _encode(src, t["items"], item, indent + 2)
        else:
            key = src.var("k")
            src.line(indent + 1, f"for {key}, {item} in {items}.items():")
            _encode(src, "string", key, indent + 2)
            _encode(src, t["values"], item, indent + 2)
        src.line(indent, "out.append(0)")
    elif kind == "union":
        other, null_index = src.nullable(t)
        src.line(indent, f"if {value} is None: out.append({null_index << 1})")
        src.line(indent, "else:")
        src.line(indent + 1, f"out.append({(1 - null_index) << 1})")
        _encode(src, other, value, indent + 1)
    elif kind == "record":
        with src.expanding(t):
            record = src.var("r")
            src.line(indent, f"{record} = {value}")
            for f in t["fields"]:
                v = src.var("f")
                if "default" in f:
                    src.line(indent, f"{v} = {record}.get({f['name']!r}, {src.const(f['default'])})")
                else:
                    src.line(indent, f"{v} = {record}[{f['name']!r}]")
                _encode(src, f["type"], v, indent)
    else:
        raise Unsupported(f"type {kind}")


# ---- decoders ----------------------------------------------------------------------------
def _read_long(src: _Source, target: str, indent: int) -> None:
    src.line(indent, f"{target} = buf[pos]")
    src.line(indent, f"if {target} < 0x80: {target} = ({target} >> 1) ^ -({target} & 1); pos += 1")
    src.line(indent, f"else: {target}, pos = read_long(buf, pos)")


def _read_length(src: _Source, target: str, indent: int) -> None:
    _read_long(src, target, indent)
    src.line(indent, f"if {target} < 0 or pos + {target} > size: raise ValueError('bad length')")


def _decode(src: _Source, t: Any, target: str, indent: int) -> None:
    t = src.resolve(t)
    kind = src.kind(t)
    if kind == "null":
        src.line(indent, f"{target} = None")
    elif kind == "boolean":
        b = src.var("b")
        src.line(indent, f"{b} = buf[pos]; pos += 1")
        src.line(indent, f"if {b} > 1: raise ValueError('bad boolean')")
        src.line(indent, f"{target} = {b} == 1")
    elif kind in ("int", "long"):
        _read_long(src, target, indent)
        if kind == "int":
            src.line(indent, f"if not -0x80000000 <= {target} <= 0x7FFFFFFF: raise ValueError('int out of range')")
    elif kind in ("float", "double"):
        unpack = src.const(struct.Struct("<f" if kind == "float" else "<d").unpack_from)
        src.line(indent, f"{target} = {unpack}(buf, pos)[0]; pos += {4 if kind == 'float' else 8}")
    elif kind in ("string", "bytes"):
        n = src.var("n")
        _read_length(src, n, indent)
        end = f"pos + {n}"
        src.line(indent, f"{target} = buf[pos:{end}]" + (".decode()" if kind == "string" else "") + f"; pos += {n}")
    elif kind == "enum":
        i = src.var("i")
        _read_long(src, i, indent)
        symbols = src.const(tuple(t["symbols"]))
        src.line(indent, f"if {i} < 0: raise ValueError('bad enum index')")
        src.line(indent, f"{target} = {symbols}[{i}]")
    elif kind in ("array", "map"):
        item_type = t["items"] if kind == "array" else t["values"]
        if kind == "array" and src.min_size(item_type) == 0:
            raise Unsupported("array items of zero bytes")
        n = src.var("n")
        src.line(indent, f"{target} = []" if kind == "array" else f"{target} = {{}}")
        src.line(indent, "while True:")
        _read_long(src, n, indent + 1)
        src.line(indent + 1, f"if {n} == 0: break")
        src.line(indent + 1, f"if {n} < 0:")
        src.line(indent + 2, f"{n} = -{n}")
        _read_long(src, src.var("_"), indent + 2)  # the block's size in bytes
        src.line(indent + 1, f"if {n} > size - pos: raise ValueError('bad block count')")
        src.line(indent + 1, f"for _ in range({n}):")
        v = src.var("v")
        if kind == "array":
            _decode(src, item_type, v, indent + 2)
            src.line(indent + 2, f"{target}.append({v})")
        else:
            k = src.var("k")
            _decode(src, "string", k, indent + 2)
            _decode(src, item_type, v, indent + 2)
            src.line(indent + 2, f"{target}[{k}] = {v}")
    elif kind == "union":
        other, null_index = src.nullable(t)
        i = src.var("u")
        _read_long(src, i, indent)
        src.line(indent, f"if {i} == {null_index}: {target} = None")
        src.line(indent, f"elif {i} == {1 - null_index}:")
        _decode(src, other, target, indent + 1)
        src.line(indent, "else: raise ValueError('bad union index')")
    elif kind == "record":
        with src.expanding(t):
            fields = []
            for f in t["fields"]:
                v = src.var("f")
                _decode(src, f["type"], v, indent)
                fields.append(f"{f['name']!r}: {v}")
            src.line(indent, f"{target} = {{{', '.join(fields)}}}")
    else:
        raise Unsupported(f"type {kind}")


def compile_codec(schema: dict[str, Any], named: dict[str, Any]) -> tuple[Encoder, Decoder]:
    """An encoder (appends a record's Avro body to a bytearray) and a decoder (reads a record
    from bytes at a position; returns it and the position after it) for a record schema whose
    named types `named` holds by full name. Raises Unsupported."""
    src = _Source(named)
    src.line(0, "def encode(out, value):")
    _encode(src, schema, "value", 1)
    src.line(1, "return None")
    src.line(0, "def decode(buf, pos):")
    src.line(1, "size = len(buf)")
    _decode(src, schema, "record", 1)
    src.line(1, "return record, pos")
    scope: dict[str, Any] = {"write_long": write_long, "read_long": read_long, **src.consts}
    exec(compile("\n".join(src.lines), f"<avro {schema.get('name')}>", "exec"), scope)  # noqa: S102  # our own source
    return scope["encode"], scope["decode"]


def compile_codecs(schemas: dict[str, Any], named: dict[str, Any]) -> dict[str, tuple[Encoder, Decoder]]:
    """Compiled functions for each schema of `schemas` that the compiler supports."""
    out = {}
    for name, schema in schemas.items():
        try:
            out[name] = compile_codec(schema, named)
        except Unsupported:
            continue
    return out
