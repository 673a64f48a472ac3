"""Avro in the Confluent wire format, the JSON form, and the schema registry client."""

from __future__ import annotations

import json
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from pipeline.config import TOPICS
from pipeline.dev.services import free_port
from pipeline.records import envelope
from pipeline.serde import Codec, DecodeError, EncodeError, RegistryUnavailable, SchemaSet
from pipeline.serde.json_form import from_json, to_json

ENV = envelope("p1", content_id="c1", user_id="u1", event_id="e1", occurred_at=1700000000000)
UPLOAD = {
    "envelope": ENV,
    "media_b64": b"\x00\xffbytes",
    "media_uri": None,
    "media_type": "image/png",
    "text": "hi",
    "signals": [{"signal_type": "pdq", "value": "ab" * 32, "quality": 100, "frame": None}],
}


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def test_every_topic_has_a_schema_and_every_file_parses() -> None:
    schemas = SchemaSet()
    assert set(TOPICS.values()) <= set(schemas.parsed)
    for name in (
        "Envelope",
        "Signal",
        "UploadEvent",
        "ReportEvent",
        "LiveEvent",
        "ModerationRecord",
        "Decision",
        "EnforcementResult",
        "BankEntry",
        "SharedSignal",
        "Incident",
        "ReviewTask",
        "ReviewVerdict",
        "DeadLetter",
    ):
        assert name in schemas.parsed


def test_confluent_framing(codec: Codec) -> None:
    raw = codec.encode("UploadEvent", UPLOAD)
    magic, schema_id = struct.unpack(">bI", raw[:5])
    assert magic == 0
    assert schema_id == codec.registry.id_for("x", "UploadEvent")
    assert codec.decode("UploadEvent", raw) == UPLOAD


def test_schema_ids_are_stable_and_distinct(codec: Codec) -> None:
    ids = {n: Codec().registry.id_for("s", n) for n in codec.schemas.parsed}
    assert ids == {n: codec.registry.id_for("s", n) for n in codec.schemas.parsed}
    assert len(set(ids.values())) == len(ids)


@pytest.mark.parametrize(
    "raw, reason",
    [
        (None, "empty value"),
        (b"", "no magic byte"),
        (b"plain text", "no magic byte"),
        (b"\x00\x00\x00\x00\x09rest", "unknown schema id"),
    ],
)
def test_undecodable_values_raise_decode_error(codec: Codec, raw: bytes | None, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason):
        codec.decode("UploadEvent", raw)


def test_truncated_and_trailing_bytes_and_wrong_type(codec: Codec) -> None:
    raw = codec.encode("UploadEvent", UPLOAD)
    with pytest.raises(DecodeError, match="undecodable"):
        codec.decode("UploadEvent", raw[:12])
    with pytest.raises(DecodeError, match="trailing bytes"):
        codec.decode("UploadEvent", raw + b"xx")
    with pytest.raises(DecodeError, match="written as modstream.UploadEvent"):
        codec.decode("Decision", raw)


def test_encode_rejects_records_that_do_not_fit(codec: Codec) -> None:
    with pytest.raises(EncodeError):
        codec.encode("UploadEvent", {"envelope": {"event_id": 5}})


def test_json_form_round_trip_with_base64_bytes(codec: Codec) -> None:
    as_json = to_json(codec.schemas, "UploadEvent", UPLOAD)
    assert as_json["media_b64"] == "AP9ieXRlcw=="
    assert from_json(codec.schemas, "UploadEvent", json.loads(json.dumps(as_json))) == UPLOAD


def test_json_form_fills_defaults_and_rejects_bad_input(codec: Codec) -> None:
    minimal = from_json(
        codec.schemas, "UploadEvent", {"envelope": {"event_id": "e", "platform_id": "p", "occurred_at": 1}}
    )
    assert minimal["media_b64"] is None and minimal["envelope"]["content_id"] is None
    with pytest.raises(EncodeError, match="unknown field"):
        from_json(codec.schemas, "UploadEvent", {**UPLOAD, "extra": 1})
    with pytest.raises(EncodeError, match="required field missing"):
        from_json(codec.schemas, "UploadEvent", {"text": "no envelope"})
    with pytest.raises(EncodeError, match="invalid base64"):
        from_json(codec.schemas, "UploadEvent", {"envelope": ENV, "media_b64": "not base64!"})
    with pytest.raises(EncodeError, match="is not one of"):
        from_json(codec.schemas, "ReportEvent", {"envelope": ENV, "reporter_id": "r", "reason": "boredom"})
    with pytest.raises(EncodeError, match="expected long"):
        from_json(codec.schemas, "UploadEvent", {"envelope": {**ENV, "occurred_at": "yesterday"}})


class FakeRegistry(BaseHTTPRequestHandler):
    """Just enough of the Confluent Schema Registry REST API."""

    schemas: dict[int, str] = {}
    subjects: dict[str, int] = {}
    busy = False  # answers 503 to everything while set

    def do_POST(self) -> None:  # noqa: N802
        if self._busy():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        subject = self.path.split("/")[2]
        schema_id = self.subjects.setdefault(subject, 100 + len(self.subjects))
        self.schemas[schema_id] = body["schema"]
        self._reply({"id": schema_id})

    def do_GET(self) -> None:  # noqa: N802
        if self._busy():
            return
        schema_id = int(self.path.rsplit("/", 1)[1])
        if schema_id not in self.schemas:
            self.send_response(404)
            self.end_headers()
            return
        self._reply({"schema": self.schemas[schema_id]})

    def _busy(self) -> bool:
        if self.busy:
            self.send_response(503)
            self.end_headers()
        return self.busy

    def _reply(self, obj: Any) -> None:
        data = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def test_schema_registry_ids() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        writer = Codec(registry_url=url)
        raw = writer.encode("UploadEvent", UPLOAD, "mod.uploads-value")
        assert struct.unpack(">bI", raw[:5]) == (0, 100)
        reader = Codec(registry_url=url)  # a fresh process: fetches the schema by id
        assert reader.decode("UploadEvent", raw) == UPLOAD
        with pytest.raises(DecodeError, match="not in registry"):
            reader.decode("UploadEvent", b"\x00\x00\x00\x03\xe7body")
    finally:
        server.shutdown()
        server.server_close()


class BusyRegistry(FakeRegistry):
    """A registry that answers every request with 503."""

    busy = True


def test_a_registry_that_does_not_answer_is_unavailable_not_a_bad_record() -> None:
    framed = Codec().encode("UploadEvent", UPLOAD)  # a schema id the registries below do not know yet
    server = ThreadingHTTPServer(("127.0.0.1", 0), BusyRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for url in (f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{server.server_address[1]}"):
            codec = Codec(registry_url=url)  # refused, then HTTP 503
            with pytest.raises(RegistryUnavailable):
                codec.encode("UploadEvent", UPLOAD, "mod.uploads-value")
            with pytest.raises(RegistryUnavailable) as caught:
                codec.decode("UploadEvent", framed)
            assert isinstance(caught.value, ConnectionError)  # what a runner takes for "redo later"
    finally:
        server.shutdown()
        server.server_close()
