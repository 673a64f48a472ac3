"""The compiled Avro functions agree with fastavro: the same bytes for random records of every
schema, the same records back, and the same answer (a record, or a refusal) for corrupted
bytes and for records that do not fit."""

from __future__ import annotations

import io
import random
import string
from typing import Any

import fastavro
import pytest

from pipeline.serde import Codec, DecodeError, EncodeError
from pipeline.serde.compiled import Unsupported, compile_codec, read_long, write_long

RECORDS_PER_SCHEMA = 40


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def random_value(t: Any, named: dict[str, Any], rng: random.Random, depth: int = 0) -> Any:
    """A random valid value of Avro type `t` (parsed form, named types by full name)."""
    if isinstance(t, str) and t in named:
        t = named[t]
    if isinstance(t, list):
        branch = rng.choice(t)
        return None if branch == "null" else random_value(branch, named, rng, depth)
    kind = t if isinstance(t, str) else t["type"]
    if isinstance(t, dict) and kind in ("string", "long", "int", "boolean", "bytes", "float", "double"):
        t = kind
    if kind == "null":
        return None
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, 1, -1, 63, 64, -65, 2**31 - 1, -(2**31), rng.randrange(-(2**31), 2**31)])
    if kind == "long":
        return rng.choice([0, 63, 64, -64, -65, 2**63 - 1, -(2**63), rng.randrange(-(2**63), 2**63)])
    if kind in ("float", "double"):
        return rng.choice([0.0, 1.5, -2.25, 0.1 if kind == "double" else 0.5])
    if kind == "string":
        return "".join(rng.choice(string.ascii_letters + "é€ 😀") for _ in range(rng.choice([0, 1, 5, 70, 200])))
    if kind == "bytes":
        return rng.randbytes(rng.choice([0, 1, 63, 64, 300]))
    if kind == "enum":
        return rng.choice(t["symbols"])
    if kind == "array":
        n = 0 if depth > 2 else rng.choice([0, 1, 3, 70])
        return [random_value(t["items"], named, rng, depth + 1) for _ in range(n)]
    if kind == "map":
        n = 0 if depth > 2 else rng.choice([0, 1, 3])
        return {f"k{i}": random_value(t["values"], named, rng, depth + 1) for i in range(n)}
    if kind == "record":
        return {f["name"]: random_value(f["type"], named, rng, depth + 1) for f in t["fields"]}
    raise AssertionError(f"no generator for {t}")


def fastavro_bytes(codec: Codec, name: str, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, codec.schemas.ready[name], codec.schemas.tagged(name, record))
    return buf.getvalue()


def fastavro_record(codec: Codec, name: str, body: bytes) -> Any:
    buf = io.BytesIO(body)
    record = fastavro.schemaless_reader(buf, codec.schemas.ready[name])
    if buf.tell() != len(body):
        raise ValueError("trailing bytes")
    return record


def test_every_schema_is_compiled(codec: Codec) -> None:
    assert set(codec._encoders) == set(codec.schemas.parsed)
    assert set(codec._decoders) == set(codec.schemas.parsed)


def test_same_bytes_and_records_as_fastavro_for_random_records(codec: Codec) -> None:
    rng = random.Random(7)
    for name, schema in codec.schemas.parsed.items():
        encode, decode = codec._encoders[name], codec._decoders[name]
        for _ in range(RECORDS_PER_SCHEMA):
            record = random_value(schema, codec.schemas.named, rng)
            expected = fastavro_bytes(codec, name, record)
            out = bytearray()
            encode(out, record)
            assert bytes(out) == expected, name
            decoded, end = decode(expected, 0)
            assert end == len(expected)
            assert decoded == fastavro_record(codec, name, expected), name


def test_missing_fields_take_their_defaults_as_in_fastavro(codec: Codec) -> None:
    rng = random.Random(3)
    for name, schema in codec.schemas.parsed.items():
        record = random_value(schema, codec.schemas.named, rng)
        for field in schema["fields"]:
            if "default" in field:
                del record[field["name"]]
        out = bytearray()
        codec._encoders[name](out, record)
        assert bytes(out) == fastavro_bytes(codec, name, record), name


def test_corrupted_bytes_get_fastavros_answer(codec: Codec) -> None:
    """Truncated, extended and bit-flipped values: the codec (compiled first) answers as
    fastavro alone does, a record or DecodeError."""
    rng = random.Random(11)
    checked = refused = 0
    for name, schema in codec.schemas.parsed.items():
        for _ in range(10):
            raw = codec.encode(name, random_value(schema, codec.schemas.named, rng))
            header, body = raw[:5], raw[5:]
            variants = [body[: rng.randrange(len(body) + 1)], body + b"\x00"]
            for _ in range(6):
                flipped = bytearray(body)
                if flipped:
                    flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
                variants.append(bytes(flipped))
            for variant in variants:
                try:
                    expected = fastavro_record(codec, name, variant)
                except Exception:
                    expected = DecodeError
                try:
                    got = codec.decode(name, header + variant)
                except DecodeError:
                    got = DecodeError
                    refused += 1
                assert got == expected, (name, variant)
                checked += 1
    assert refused > checked // 10  # the corruptions were not all harmless


@pytest.mark.parametrize(
    "record",
    [
        {"envelope": None},  # a record field given null
        {"text": 3},  # a string given a number
        {"media_b64": "text"},  # bytes given a string
        {"signals": [{"signal_type": "pdq", "value": 1, "quality": None, "frame": None}]},
        {"envelope": {"event_id": "e", "platform_id": "p", "occurred_at": "soon"}},
        {"envelope": {"event_id": "e", "platform_id": "p", "occurred_at": 2**63}},
    ],
)
def test_records_that_do_not_fit_are_refused_as_by_fastavro(codec: Codec, record: dict[str, Any]) -> None:
    from pipeline.records import envelope

    upload = {"envelope": envelope("p"), "media_b64": None, "media_uri": None, "media_type": None, "text": "t"}
    upload.update(record)
    with pytest.raises(Exception):  # noqa: B017  # whatever fastavro raises, as fastavro
        fastavro_bytes(codec, "UploadEvent", upload)
    with pytest.raises(EncodeError):
        codec.encode("UploadEvent", upload)


def test_values_fastavro_converts_are_written_as_fastavro_writes_them(codec: Codec) -> None:
    """fastavro writes a float given for a long; the codec gives the same bytes (by fastavro)."""
    from pipeline.records import envelope

    env = {**envelope("p", event_id="e", occurred_at=0), "occurred_at": 12.0}
    upload = {"envelope": env, "media_b64": None, "media_uri": None, "media_type": None, "text": "t"}
    assert codec.encode("UploadEvent", upload)[5:] == fastavro_bytes(codec, "UploadEvent", upload)


def test_long_helpers_round_trip_and_refuse_what_is_not_a_long() -> None:
    for n in (0, 1, -1, 63, 64, -64, -65, 2**31, 2**63 - 1, -(2**63)):
        out = bytearray()
        write_long(out, n)
        assert read_long(bytes(out), 0) == (n, len(out))
    with pytest.raises(OverflowError):
        write_long(bytearray(), 2**63)
    with pytest.raises(ValueError):
        read_long(b"\xff" * 11, 0)
    with pytest.raises(ValueError):  # ten bytes, but more than 64 bits
        read_long(b"\xff" * 9 + b"\x7f", 0)
    with pytest.raises(IndexError):
        read_long(b"\xff", 0)


def test_what_the_compiler_leaves_to_fastavro() -> None:
    two = {"type": "record", "name": "T", "fields": [{"name": "a", "type": ["string", "long"]}]}
    nulls = {"type": "record", "name": "N", "fields": [{"name": "a", "type": {"type": "array", "items": "null"}}]}
    tree = {"type": "record", "name": "Tree", "fields": [{"name": "kids", "type": {"type": "array", "items": "Tree"}}]}
    for schema in (two, nulls, tree):
        with pytest.raises(Unsupported):
            compile_codec(schema, {"Tree": tree})
