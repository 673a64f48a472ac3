"""Wire formats: Avro in the Confluent framing, and the JSON form for people and tools."""

from pipeline.serde.avro import Codec, DecodeError, EncodeError, RegistryUnavailable, SchemaSet

__all__ = ["Codec", "DecodeError", "EncodeError", "RegistryUnavailable", "SchemaSet"]
