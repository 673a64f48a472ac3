"""The JSON form of every record: plain objects, bytes as base64, nulls for absent optionals.

Used by `modstream produce` and `modstream tail`. Input is checked against the
schema: unknown fields and wrong types are errors, not silently dropped.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pipeline.serde.avro import EncodeError, SchemaSet


def to_json(schemas: SchemaSet, record_type: str, record: dict[str, Any]) -> dict[str, Any]:
    out = _walk(schemas.expanded[record_type], record, _encode_bytes, path=record_type)
    assert isinstance(out, dict)
    return out


def from_json(schemas: SchemaSet, record_type: str, obj: Any) -> dict[str, Any]:
    out = _walk(schemas.expanded[record_type], obj, _decode_bytes, path=record_type, strict=True)
    if not isinstance(out, dict):
        raise EncodeError(f"{record_type}: expected a JSON object")
    return out


def _encode_bytes(value: Any, path: str) -> Any:
    return base64.b64encode(value).decode("ascii")


def _decode_bytes(value: Any, path: str) -> Any:
    if not isinstance(value, str):
        raise EncodeError(f"{path}: expected base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise EncodeError(f"{path}: invalid base64: {exc}") from exc


def _walk(schema: Any, value: Any, on_bytes: Any, path: str, strict: bool = False) -> Any:
    if isinstance(schema, list):  # union: our unions are ["null", T]
        if value is None:
            if "null" not in schema:
                raise EncodeError(f"{path}: null not allowed")
            return None
        branches = [s for s in schema if s != "null"]
        return _walk(branches[0], value, on_bytes, path, strict)
    kind = schema if isinstance(schema, str) else schema["type"]
    if kind == "record":
        if not isinstance(value, dict):
            raise EncodeError(f"{path}: expected an object")
        names = {f["name"] for f in schema["fields"]}
        unknown = set(value) - names
        if strict and unknown:
            raise EncodeError(f"{path}: unknown field(s) {sorted(unknown)}")
        out = {}
        for f in schema["fields"]:
            sub = f"{path}.{f['name']}"
            if f["name"] in value:
                out[f["name"]] = _walk(f["type"], value[f["name"]], on_bytes, sub, strict)
            elif "default" in f:
                out[f["name"]] = f["default"]
            else:
                raise EncodeError(f"{sub}: required field missing")
        return out
    if kind == "array":
        if not isinstance(value, list):
            raise EncodeError(f"{path}: expected a list")
        return [_walk(schema["items"], v, on_bytes, f"{path}[{i}]", strict) for i, v in enumerate(value)]
    if kind == "map":
        if not isinstance(value, dict):
            raise EncodeError(f"{path}: expected an object")
        return {k: _walk(schema["values"], v, on_bytes, f"{path}.{k}", strict) for k, v in value.items()}
    if kind == "bytes":
        return on_bytes(value, path)
    if kind == "enum":
        if value not in schema["symbols"]:
            raise EncodeError(f"{path}: {value!r} is not one of {schema['symbols']}")
        return value
    if strict:
        _check_primitive(kind, value, path)
    return value


_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "int": (int,),
    "long": (int,),
    "float": (int, float),
    "double": (int, float),
    "null": (type(None),),
}


def _check_primitive(kind: str, value: Any, path: str) -> None:
    allowed = _PRIMITIVES.get(kind)
    if allowed is None:
        return
    if not isinstance(value, allowed) or (kind != "boolean" and isinstance(value, bool)):
        raise EncodeError(f"{path}: expected {kind}, got {type(value).__name__}")
