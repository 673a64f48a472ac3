"""The OpenAPI document of the API (/openapi.json): Starlette's SchemaGenerator reads each
endpoint's docstring (the YAML after `---`); the shared schemas are here."""

from __future__ import annotations

from typing import Any

from starlette.schemas import SchemaGenerator

_NULLABLE_STRING = {"type": "string", "nullable": True}
_MATCH = {
    "type": "object",
    "properties": {
        "bank": {"type": "string"},
        "signal_type": {"type": "string"},
        "hash": {"type": "string"},
        "distance": {"type": "integer"},
        "category": {"type": "string"},
        "severity": {"type": "string"},
        "source": {"type": "string"},
        "item_id": _NULLABLE_STRING,
        "score": {"type": "number", "nullable": True},
        "incident_id": _NULLABLE_STRING,
    },
}
_SIGNAL = {
    "type": "object",
    "required": ["signal_type", "value"],
    "properties": {
        "signal_type": {"type": "string", "enum": ["md5", "sha256", "pdq", "video_pdq", "video_md5", "video_sha256"]},
        "value": {"type": "string"},
        "quality": {"type": "integer", "minimum": 0, "maximum": 100, "nullable": True},
        "frame": {"type": "integer", "nullable": True},
    },
}
COMPONENTS: dict[str, Any] = {
    "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    "responses": {
        "Error": {
            "description": "an error, with the reason",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    },
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["reason"],
            "properties": {
                "reason": {"type": "string"},
                "message": {"type": "string", "description": "the same text, on the HMA paths (HMA's ErrorResponse)"},
                "verdict": {"$ref": "#/components/schemas/Verdict"},
            },
        },
        "CheckRequest": {
            "type": "object",
            "additionalProperties": False,
            "description": "media_b64, media_uri, text and hashes: at least one; the media once",
            "properties": {
                "event_id": {"type": "string", "description": "filled if missing; a retry with it is the same event"},
                "content_id": {"type": "string"},
                "user_id": {"type": "string"},
                "platform_id": {"type": "string", "description": "default: MODSTREAM_PLATFORM_ID"},
                "occurred_at": {"type": "integer", "description": "ms since the epoch; default: now"},
                "media_b64": {"type": "string", "format": "byte"},
                "media_uri": {"type": "string", "description": "fetched by the enrich stage's rules"},
                "media_type": {"type": "string"},
                "text": {"type": "string"},
                "hashes": {
                    "oneOf": [
                        {"type": "object", "additionalProperties": {"type": "string"}},
                        {"type": "array", "items": _SIGNAL},
                    ]
                },
            },
        },
        "Verdict": {
            "type": "object",
            "properties": {
                "event_id": {"type": "string"},
                "decision_id": {"type": "string", "description": "the id of the pipeline's decision on this event"},
                "action": {
                    "type": "string",
                    "enum": ["allow", "remove", "review", "restrict", "end_stream", "pending"],
                },
                "rule": {"type": "string"},
                "explanation": {"type": "string"},
                "category": _NULLABLE_STRING,
                "severity": _NULLABLE_STRING,
                "incident_id": _NULLABLE_STRING,
                "policy_id": {"type": "string"},
                "policy_version": {"type": "string"},
                "effects": {"type": "array", "items": {"type": "string"}},
                "thresholds": {"type": "object", "additionalProperties": {"type": "number"}},
                "matches": {"type": "array", "items": _MATCH},
                "scores": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "model": {"type": "string"},
                            "label": {"type": "string"},
                            "score": {"type": "number"},
                        },
                    },
                },
                "signals": {"type": "array", "items": _SIGNAL},
                "video_frames": {"type": "integer"},
                "media_error": _NULLABLE_STRING,
                "decided_at": {"type": "integer"},
                "published": {"type": "boolean"},
            },
        },
        "HmaMatch": {
            "type": "object",
            "required": ["bank_content_id", "distance"],
            "properties": {"bank_content_id": {"type": "integer"}, "distance": {"type": "string"}},
        },
        "HmaLookup": {
            "type": "object",
            "additionalProperties": {
                "oneOf": [
                    {"type": "array", "items": {"$ref": "#/components/schemas/HmaMatch"}},
                    {
                        "type": "object",
                        "additionalProperties": {"type": "array", "items": {"$ref": "#/components/schemas/HmaMatch"}},
                    },
                ]
            },
        },
        "HmaRawLookup": {
            "type": "object",
            "required": ["matches"],
            "properties": {
                "matches": {
                    "type": "array",
                    "items": {"oneOf": [{"type": "integer"}, {"$ref": "#/components/schemas/HmaMatch"}]},
                }
            },
        },
        "HmaUpload": {
            "type": "object",
            "description": "one file, its field named by its content type",
            "properties": {
                "photo": {"type": "string", "format": "binary"},
                "video": {"type": "string", "format": "binary"},
            },
        },
        "HmaBank": {
            "type": "object",
            "required": ["name", "matching_enabled_ratio"],
            "properties": {"name": {"type": "string"}, "matching_enabled_ratio": {"type": "number"}},
        },
        "HmaBankContent": {
            "type": "object",
            "required": ["id", "signals"],
            "properties": {
                "id": {"type": "integer"},
                "signals": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
    },
}


def schema_generator() -> SchemaGenerator:
    return SchemaGenerator(
        {
            "openapi": "3.0.3",
            "info": {
                "title": "modstream API",
                "version": "1",
                "description": "The synchronous check and an HMA-compatible matcher API over modstream's banks. "
                "Send Authorization: Bearer TOKEN; each endpoint needs a scope (check, banks:read, banks:write).",
            },
            "security": [{"bearer": []}],
            "components": COMPONENTS,
        }
    )
