"""Avro serialization in the Confluent wire format.

A value on the wire is: magic byte 0, a 4-byte big-endian schema id, then the
Avro binary body. Schema ids come from a `Registry`: by default the local
schema files (the id is a stable hash of the schema's canonical form, so every
process agrees without talking to anything), or a Confluent Schema Registry
when `MODSTREAM_SCHEMA_REGISTRY_URL` is set.
"""

from __future__ import annotations

import io
import json
import struct
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any, Protocol

import fastavro
from fastavro.schema import to_parsing_canonical_form
from fastavro.types import Schema

from pipeline.serde.compiled import compile_codecs

NAMESPACE = "modstream"
MAGIC = 0
_HEADER = struct.Struct(">bI")
SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


class DecodeError(ValueError):
    """Bytes that are not a valid record of the expected type. Carries the raw value."""

    def __init__(self, message: str, raw: bytes | None = None) -> None:
        super().__init__(message)
        self.raw = raw


class EncodeError(ValueError):
    """A record that does not fit its schema."""


class RegistryUnavailable(ConnectionError):
    """The schema registry did not answer (refused, timed out, a server error): no record's
    fault; what needed it is tried again later (the runner redoes the batch)."""


class SchemaSet:
    """All record schemas of `schemas/`, parsed with their shared named types.

    Files reference each other by full name (`modstream.Envelope`); they are
    parsed in dependency order whatever the file order.
    """

    def __init__(self, directory: Path = SCHEMA_DIR) -> None:
        raw = {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.avsc"))}
        if not raw:
            raise FileNotFoundError(f"no .avsc files in {directory}")
        self.named: dict[str, Any] = {}
        self.parsed: dict[str, Schema] = {}
        pending = dict(raw)
        while pending:
            progressed = False
            for name, schema in list(pending.items()):
                try:
                    self.parsed[name] = fastavro.parse_schema(schema, self.named)
                except fastavro.schema.UnknownType:
                    continue
                del pending[name]
                progressed = True
            if not progressed:
                raise ValueError(f"schemas with unresolvable references: {sorted(pending)}")
        self.expanded = {
            name: fastavro.parse_schema(fastavro.schema.expand_schema(s), _write_hint=False)
            for name, s in self.parsed.items()
        }
        # The same, marked as parsed so that fastavro does not parse them again on every call.
        self.ready = {name: fastavro.parse_schema(fastavro.schema.expand_schema(s)) for name, s in self.parsed.items()}
        self.record_unions = {name: _record_unions(s) for name, s in self.parsed.items()}

    def __getitem__(self, name: str) -> Schema:
        return self.parsed[name]

    def tagged(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        """`record` with each value of a ["null", SomeRecord] field tagged with its branch
        (fastavro's tuple notation): fastavro then skips validating the value against every
        branch of the union, which is most of the cost of encoding such a record."""
        unions = self.record_unions[name]
        if not unions:
            return record
        tagged = dict(record)
        for field, branch in unions:
            value = tagged.get(field)
            if value is not None and not isinstance(value, tuple):
                tagged[field] = (branch, value)
        return tagged

    def canonical(self, name: str) -> str:
        return to_parsing_canonical_form(self.expanded[name])

    def full_schema_json(self, name: str) -> str:
        """The schema with every named type inlined, as a registry wants it."""
        return json.dumps(fastavro.schema.expand_schema(self.parsed[name]))


class Registry(Protocol):
    def id_for(self, subject: str, record_type: str) -> int: ...
    def schema_for(self, schema_id: int) -> Schema: ...


class LocalRegistry:
    """Schema ids from the local files: a 31-bit CRC of the canonical form."""

    def __init__(self, schemas: SchemaSet) -> None:
        self.schemas = schemas
        self._ids = {n: zlib.crc32(schemas.canonical(n).encode()) & 0x7FFFFFFF for n in schemas.parsed}
        self._by_id = {i: schemas.ready[n] for n, i in self._ids.items()}

    def id_for(self, subject: str, record_type: str) -> int:
        return self._ids[record_type]

    def schema_for(self, schema_id: int) -> Schema:
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise DecodeError(f"unknown schema id {schema_id}") from None


class ConfluentRegistry:
    """A Confluent Schema Registry over its REST API; ids and schemas are cached."""

    def __init__(self, url: str, schemas: SchemaSet, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.schemas = schemas
        self.timeout_s = timeout_s
        self._ids: dict[tuple[str, str], int] = {}
        self._by_id: dict[int, Schema] = {}

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code >= 500 or exc.code == 429:
                raise RegistryUnavailable(f"schema registry {self.url}: HTTP {exc.code}") from exc
            raise
        except OSError as exc:  # refused, unreachable, timed out
            raise RegistryUnavailable(f"schema registry {self.url}: {exc}") from exc

    def id_for(self, subject: str, record_type: str) -> int:
        key = (subject, record_type)
        if key not in self._ids:
            schema = self.schemas.full_schema_json(record_type)
            reply = self._call("POST", f"/subjects/{subject}/versions", {"schema": schema})
            self._ids[key] = int(reply["id"])
            self._by_id[self._ids[key]] = self.schemas.ready[record_type]
        return self._ids[key]

    def schema_for(self, schema_id: int) -> Schema:
        if schema_id not in self._by_id:
            try:
                reply = self._call("GET", f"/schemas/ids/{schema_id}")
            except urllib.error.HTTPError as exc:
                raise DecodeError(f"schema id {schema_id} not in registry: {exc}") from exc
            self._by_id[schema_id] = fastavro.parse_schema(json.loads(reply["schema"]))
        return self._by_id[schema_id]


class Codec:
    """Encodes and decodes records of named types to and from Confluent-framed Avro."""

    def __init__(self, schemas: SchemaSet | None = None, registry_url: str = "") -> None:
        self.schemas = schemas or SchemaSet()
        self.registry: Registry = (
            ConfluentRegistry(registry_url, self.schemas) if registry_url else LocalRegistry(self.schemas)
        )
        self._headers: dict[tuple[str, str], bytes] = {}
        # Straight-line functions per schema (pipeline.serde.compiled); fastavro stays the
        # reference: it answers whenever a compiled function raises, and resolves versions.
        compiled = compile_codecs(self.schemas.parsed, self.schemas.named)
        self._encoders = {name: enc for name, (enc, _) in compiled.items()}
        self._decoders = {name: dec for name, (_, dec) in compiled.items()}

    def encode(self, record_type: str, record: dict[str, Any], subject: str = "") -> bytes:
        header = self._headers.get((subject, record_type))
        if header is None:
            schema_id = self.registry.id_for(subject or record_type, record_type)
            header = self._headers[(subject, record_type)] = _HEADER.pack(MAGIC, schema_id)
        encoder = self._encoders.get(record_type)
        if encoder is not None:
            out = bytearray(header)
            try:
                encoder(out, record)
                return bytes(out)
            except Exception:  # noqa: S110  # fastavro below gives the answer and its message
                pass
        buf = io.BytesIO()
        buf.write(header)
        try:
            fastavro.schemaless_writer(buf, self.schemas.ready[record_type], self.schemas.tagged(record_type, record))
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"{record_type}: {_brief(exc)}") from exc
        return buf.getvalue()

    def decode(self, record_type: str, raw: bytes | None) -> dict[str, Any]:
        if raw is None:
            raise DecodeError(f"{record_type}: empty value", raw)
        if len(raw) < _HEADER.size or raw[0] != MAGIC:
            raise DecodeError(f"{record_type}: not Confluent-framed Avro (no magic byte 0)", raw)
        _, schema_id = _HEADER.unpack_from(raw)
        try:
            writer = self.registry.schema_for(schema_id)
            reader = self.schemas.ready[record_type]
            written_as = str(writer.get("name", "")) if isinstance(writer, dict) else ""
            if written_as and isinstance(reader, dict) and written_as != reader["name"]:
                raise DecodeError(f"{record_type}: record was written as {written_as}", raw)
            record: Any = self._compiled_decode(record_type, writer is reader, raw)
            if record is None:
                buf = io.BytesIO(raw)
                buf.seek(_HEADER.size)
                # Resolution is only needed when the writer used another schema version.
                record = fastavro.schemaless_reader(buf, writer, None if writer is reader else reader)
                if buf.tell() != len(raw):
                    raise DecodeError(f"{record_type}: {len(raw) - buf.tell()} trailing bytes", raw)
        except DecodeError as exc:
            exc.raw = raw
            raise
        except RegistryUnavailable:
            raise
        except Exception as exc:  # fastavro raises many types on garbage; all mean "undecodable"
            raise DecodeError(f"{record_type}: undecodable Avro body: {_brief(exc)}", raw) from exc
        if not isinstance(record, dict):
            raise DecodeError(f"{record_type}: decoded to {type(record).__name__}, not a record", raw)
        return record

    def _compiled_decode(self, record_type: str, same_schema: bool, raw: bytes) -> dict[str, Any] | None:
        """The record by the compiled decoder when the writer's schema is the reader's; None
        when there is none, or when it refuses (fastavro then answers, with its message)."""
        decoder = self._decoders.get(record_type) if same_schema else None
        if decoder is None:
            return None
        try:
            record, end = decoder(raw, _HEADER.size)
        except Exception:
            return None
        return record if end == len(raw) else None


_PRIMITIVES = frozenset({"null", "string", "bytes", "int", "long", "float", "double", "boolean"})


def _record_unions(schema: Any) -> list[tuple[str, str]]:
    """(field, record type name) for each field of `schema` typed ["null", <a record type>]."""
    out = []
    for f in schema.get("fields", []) if isinstance(schema, dict) else []:
        branches = f["type"] if isinstance(f["type"], list) else []
        named = [b for b in branches if b != "null"]
        if len(named) == 1 and len(branches) == 2 and isinstance(named[0], str) and named[0] not in _PRIMITIVES:
            out.append((f["name"], named[0]))
    return out


def _brief(exc: BaseException, limit: int = 300) -> str:
    """An exception as one short line: fastavro puts whole schemas into its messages."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[:limit] + "..."
