"""The OpenAPI document at ``/api/schema/``: DRF endpoints plus the plain Django views.

drf-spectacular describes DRF views by itself. The three ingest endpoints and
the health endpoints are plain Django views (one body read, one parse, no DRF
machinery), so :func:`add_plain_views`, a spectacular post-processing hook,
merges hand-written path items for them. Keep those in step with CONTRACT.md.
"""

from __future__ import annotations

import copy
from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.plumbing import build_bearer_security_scheme_object
from drf_spectacular.renderers import (
    OpenApiJsonRenderer,
    OpenApiJsonRenderer2,
    OpenApiYamlRenderer,
    OpenApiYamlRenderer2,
)
from drf_spectacular.views import SpectacularAPIView

Schema = dict[str, Any]


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """Documents ``console.auth.BearerTokenAuthentication`` as the ``bearerAuth`` scheme."""

    target_class = "console.auth.BearerTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):  # type: ignore[no-untyped-def]
        return BEARER_SCHEME


class SchemaView(SpectacularAPIView):
    """Serves the OpenAPI document, as JSON unless YAML is asked for (``?format=yaml``)."""

    renderer_classes = [
        OpenApiJsonRenderer,
        OpenApiJsonRenderer2,
        OpenApiYamlRenderer,
        OpenApiYamlRenderer2,
    ]


BEARER_SCHEME: Schema = {
    **build_bearer_security_scheme_object(header_name="Authorization", token_prefix="Bearer"),
    "description": (
        "An API token (`python manage.py createtoken NAME --role ingest|operator|admin`). "
        "Missing or bad token: 401; wrong role or plant: 403."
    ),
}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


# --- Components ---------------------------------------------------------------------

_ANY_VALUE: Schema = {
    "type": "object",
    "description": "OTLP AnyValue: exactly one of the fields is set.",
    "properties": {
        "stringValue": {"type": "string"},
        "boolValue": {"type": "boolean"},
        "intValue": {"oneOf": [{"type": "string"}, {"type": "integer", "format": "int64"}]},
        "doubleValue": {"type": "number", "format": "double"},
        "bytesValue": {"type": "string", "format": "byte"},
        "arrayValue": {
            "type": "object",
            "properties": {"values": {"type": "array", "items": _ref("OtlpAnyValue")}},
        },
        "kvlistValue": {
            "type": "object",
            "properties": {"values": {"type": "array", "items": _ref("OtlpKeyValue")}},
        },
    },
}

_INT64 = {
    "oneOf": [{"type": "string", "pattern": "^[0-9]+$"}, {"type": "integer", "format": "int64"}],
    "description": "A 64-bit integer, as a decimal string or a number.",
}

_ATTRIBUTES: Schema = {"type": "array", "items": _ref("OtlpKeyValue")}

COMPONENT_SCHEMAS: dict[str, Schema] = {
    "IngestRejection": {
        "type": "object",
        "required": ["index", "id", "error"],
        "properties": {
            "index": {"type": "integer", "description": "Position of the item in the batch."},
            "id": {"type": "string", "description": "The item's id, empty when it had none."},
            "error": {"type": "string", "description": "What is wrong with the item."},
        },
    },
    "IngestAnswer": {
        "type": "object",
        "description": (
            "What happened to each item of a batch. Valid items are kept even when "
            "siblings are rejected. A request-level failure also carries `error`."
        ),
        "required": ["accepted", "duplicates", "rejected"],
        "properties": {
            "accepted": {"type": "integer", "description": "Items stored now."},
            "duplicates": {
                "type": "integer",
                "description": "Items already stored before (re-sent), accepted and stored once.",
            },
            "rejected": {"type": "array", "items": _ref("IngestRejection")},
            "error": {"type": "string", "description": "Why the whole request failed."},
        },
    },
    "CloudEvent": {
        "type": "object",
        "description": (
            "A CloudEvents 1.0 event in structured JSON form; `(source, id)` identifies it. "
            "Further attributes are extensions."
        ),
        "required": ["id", "source", "specversion", "type"],
        "properties": {
            "id": {"type": "string", "example": "4f6c2a1e-0d8b-4b7e-9d51-3f1c2b7a9e01"},
            "source": {"type": "string", "format": "uri-reference", "example": "/erp"},
            "specversion": {"type": "string", "enum": ["1.0"]},
            "type": {"type": "string", "example": "erp.workorder.released"},
            "subject": {
                "type": "string",
                "description": "The business entity key.",
                "example": "WO-1001",
            },
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"type": "string", "example": "application/json"},
            "dataschema": {"type": "string", "format": "uri"},
            "data": {"description": "The event payload (any JSON value)."},
            "data_base64": {"type": "string", "format": "byte"},
            "correlationid": {"type": "string", "description": "Extension: correlation id."},
            "causationid": {"type": "string", "description": "Extension: id of the cause."},
            "traceparent": {
                "type": "string",
                "description": "Extension: W3C trace context of the producing span.",
            },
            "plant": {"type": "string", "description": "Extension: plant key."},
        },
        "additionalProperties": True,
    },
    "CapturedMessage": {
        "type": "object",
        "description": (
            "An integration message report; `(connector, id)` identifies a message and "
            "reporting it again with a new status records a new attempt. An unknown "
            "connector is registered as `discovered`."
        ),
        "required": ["id", "connector", "status", "occurred_at"],
        "properties": {
            "id": {"type": "string", "example": "m-42"},
            "connector": {"type": "string", "example": "erp-to-mes-orders"},
            "status": {
                "type": "string",
                "enum": ["received", "delivered", "failed", "dead_lettered"],
            },
            "occurred_at": {"type": "string", "format": "date-time"},
            "correlation_id": {"type": "string", "example": "WO-1001"},
            "business_keys": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "example": {"workorder": "WO-1001"},
            },
            "latency_ms": {"type": "integer", "minimum": 0},
            "error": {"type": "string", "example": "MES answered 503"},
            "headers": {"type": "object", "additionalProperties": {"type": "string"}},
            "payload": {"description": "The captured body as JSON (any JSON value)."},
            "payload_b64": {
                "type": "string",
                "format": "byte",
                "description": "The captured body, base64, for non-JSON bodies (not with payload).",
            },
            "plant": {
                "type": "string",
                "description": "Plant key of the message (default: the connector's plant).",
            },
        },
        "additionalProperties": True,
    },
    "OtlpAnyValue": _ANY_VALUE,
    "OtlpKeyValue": {
        "type": "object",
        "required": ["key"],
        "properties": {"key": {"type": "string"}, "value": _ref("OtlpAnyValue")},
    },
    "OtlpSpan": {
        "type": "object",
        "required": ["traceId", "spanId", "name", "startTimeUnixNano", "endTimeUnixNano"],
        "properties": {
            "traceId": {"type": "string", "pattern": "^[0-9a-fA-F]{32}$"},
            "spanId": {"type": "string", "pattern": "^[0-9a-fA-F]{16}$"},
            "parentSpanId": {"type": "string", "pattern": "^([0-9a-fA-F]{16})?$"},
            "traceState": {"type": "string"},
            "name": {"type": "string"},
            "kind": {"type": "integer", "minimum": 0, "maximum": 5},
            "startTimeUnixNano": _INT64,
            "endTimeUnixNano": _INT64,
            "attributes": {
                **_ATTRIBUTES,
                "description": (
                    "`andon.correlation_id` (else `messaging.message.conversation_id`) "
                    "correlates the span; business-key attributes (default `workorder.id`, "
                    "`lot.id`, `asset.id`, `shipment.id`) make it findable by those keys."
                ),
            },
            "events": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "timeUnixNano": _INT64,
                        "name": {"type": "string"},
                        "attributes": _ATTRIBUTES,
                    },
                },
            },
            "links": {"type": "array", "items": {"type": "object"}},
            "status": {
                "type": "object",
                "properties": {
                    "code": {"type": "integer", "enum": [0, 1, 2]},
                    "message": {"type": "string"},
                },
            },
        },
    },
    "OtlpExportTraceServiceRequest": {
        "type": "object",
        "description": "OTLP/JSON `ExportTraceServiceRequest` (hex ids, integer enums).",
        "properties": {
            "resourceSpans": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "resource": {
                            "type": "object",
                            "description": "`service.name` attributes the spans to a system.",
                            "properties": {"attributes": _ATTRIBUTES},
                        },
                        "scopeSpans": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "scope": {
                                        "type": "object",
                                        "properties": {
                                            "name": {"type": "string"},
                                            "version": {"type": "string"},
                                        },
                                    },
                                    "spans": {"type": "array", "items": _ref("OtlpSpan")},
                                    "schemaUrl": {"type": "string"},
                                },
                            },
                        },
                        "schemaUrl": {"type": "string"},
                    },
                },
            }
        },
    },
    "OtlpExportTraceServiceResponse": {
        "type": "object",
        "properties": {
            "partialSuccess": {
                "type": "object",
                "description": "Present when some spans were rejected.",
                "properties": {
                    "rejectedSpans": _INT64,
                    "errorMessage": {"type": "string"},
                },
            }
        },
    },
    "GoogleRpcStatus": {
        "type": "object",
        "description": "`google.rpc.Status`, the OTLP error body.",
        "properties": {
            "code": {"type": "integer"},
            "message": {"type": "string"},
            "details": {"type": "array", "items": {"type": "object"}},
        },
    },
    "Liveness": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok"]}},
    },
    "Readiness": {
        "type": "object",
        "required": ["status", "checks"],
        "properties": {
            "status": {"type": "string", "enum": ["ready", "unavailable"]},
            "checks": {
                "type": "object",
                "description": "`ok`, `not configured` (Redis without REDIS_URL) or `error: ...`.",
                "properties": {
                    "database": {"type": "string", "example": "ok"},
                    "redis": {"type": "string", "example": "not configured"},
                },
                "additionalProperties": {"type": "string"},
            },
        },
    },
}

# --- Path items -----------------------------------------------------------------------

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
}

_CONTENT_ENCODING: Schema = {
    "name": "Content-Encoding",
    "in": "header",
    "required": False,
    "description": "`gzip` or `identity`; the size limit applies after decompression.",
    "schema": {"type": "string", "enum": ["gzip", "identity"]},
}

_INGEST_SECURITY = [{"bearerAuth": []}]

_ERROR_TEXTS = {
    "400": "Nothing in the request was acceptable, or the body could not be read.",
    "401": "Missing or invalid bearer token.",
    "403": "The token's role may not ingest, or its plant scope excludes every item.",
    "405": "Only POST is allowed.",
    "413": "The body exceeds the size limit (20 MiB by default) after decompression.",
    "415": "Unsupported content type or content encoding.",
    "429": "Too many requests; retry after `Retry-After` seconds.",
    "503": "Overloaded or the database is unavailable; retry after `Retry-After` seconds.",
}


def _json_answer_responses(accepted: str) -> dict[str, Schema]:
    """Responses of the CloudEvents and messages endpoints: the CONTRACT answer throughout."""
    answer = {"application/json": {"schema": _ref("IngestAnswer")}}
    responses: dict[str, Schema] = {"202": {"description": accepted, "content": answer}}
    for status, text in _ERROR_TEXTS.items():
        responses[status] = {"description": text, "content": copy.deepcopy(answer)}
        if status in ("429", "503"):
            responses[status]["headers"] = copy.deepcopy(_RETRY_AFTER)
    return responses


def _otlp_responses() -> dict[str, Schema]:
    """Responses of ``/v1/traces``: OTLP bodies in the request's content type."""

    def content(schema: str) -> Schema:
        return {
            "application/x-protobuf": {"schema": {"type": "string", "format": "binary"}},
            "application/json": {"schema": _ref(schema)},
        }

    responses: dict[str, Schema] = {
        "200": {
            "description": (
                "Accepted; `partialSuccess` counts and explains rejected spans. "
                "Encoded like the request (protobuf or JSON)."
            ),
            "content": content("OtlpExportTraceServiceResponse"),
        }
    }
    for status, text in _ERROR_TEXTS.items():
        responses[status] = {
            "description": f"{text} Body: `google.rpc.Status`.",
            "content": content("GoogleRpcStatus"),
        }
        if status in ("429", "503"):
            responses[status]["headers"] = copy.deepcopy(_RETRY_AFTER)
    return responses


def _ce_header(name: str, text: str) -> Schema:
    return {
        "name": f"ce-{name}",
        "in": "header",
        "required": False,
        "description": text,
        "schema": {"type": "string"},
    }


PLAIN_PATHS: dict[str, dict[str, Schema]] = {
    "/v1/traces": {
        "post": {
            "operationId": "ingest_traces",
            "summary": "Ingest OTLP/HTTP traces",
            "description": (
                "OTLP/HTTP trace export exactly as the OTLP specification says. Idempotent: "
                "a re-sent span (`traceId`, `spanId`) is stored once. A span's system comes "
                "from the resource attribute `service.name`."
            ),
            "tags": ["ingest"],
            "security": _INGEST_SECURITY,
            "parameters": [_CONTENT_ENCODING],
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-protobuf": {
                        "schema": {
                            "type": "string",
                            "format": "binary",
                            "description": "A protobuf-encoded `ExportTraceServiceRequest`.",
                        }
                    },
                    "application/json": {"schema": _ref("OtlpExportTraceServiceRequest")},
                },
            },
            "responses": _otlp_responses(),
        }
    },
    "/api/v1/events": {
        "post": {
            "operationId": "ingest_events",
            "summary": "Ingest CloudEvents 1.0",
            "description": (
                "Structured (`application/cloudevents+json`), batched "
                "(`application/cloudevents-batch+json`) and binary mode (attributes in "
                "`ce-*` headers, the body is the event's data in any other content type). "
                "Idempotent on `(source, id)`."
            ),
            "tags": ["ingest"],
            "security": _INGEST_SECURITY,
            "parameters": [
                _CONTENT_ENCODING,
                _ce_header("id", "Binary mode: the event id (required there)."),
                _ce_header("source", "Binary mode: the event source (required there)."),
                _ce_header("specversion", "Binary mode: `1.0` (required there)."),
                _ce_header("type", "Binary mode: the event type (required there)."),
                _ce_header("subject", "Binary mode: the business entity key."),
                _ce_header("time", "Binary mode: RFC 3339 event time."),
                _ce_header("correlationid", "Binary mode: the correlation id extension."),
                _ce_header("causationid", "Binary mode: the causation id extension."),
                _ce_header("traceparent", "Binary mode: W3C trace context extension."),
                _ce_header("plant", "Binary mode: plant key extension."),
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/cloudevents+json": {"schema": _ref("CloudEvent")},
                    "application/cloudevents-batch+json": {
                        "schema": {"type": "array", "items": _ref("CloudEvent")}
                    },
                    "*/*": {
                        "schema": {
                            "description": "Binary mode: the event's data; attributes in ce-*."
                        }
                    },
                },
            },
            "responses": _json_answer_responses(
                "Stored what was acceptable; rejected items are listed."
            ),
        }
    },
    "/api/v1/messages": {
        "post": {
            "operationId": "ingest_messages",
            "summary": "Capture integration messages",
            "description": (
                "One message report or an array of them. Idempotent on `(connector, id)`; "
                "a new status on a known message records a new attempt."
            ),
            "tags": ["ingest"],
            "security": _INGEST_SECURITY,
            "parameters": [_CONTENT_ENCODING],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                _ref("CapturedMessage"),
                                {"type": "array", "items": _ref("CapturedMessage")},
                            ]
                        }
                    }
                },
            },
            "responses": _json_answer_responses(
                "Stored what was acceptable; rejected items are listed."
            ),
        }
    },
    "/healthz": {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness",
            "description": "Answers while the process runs; does not touch the database.",
            "tags": ["health"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Alive.",
                    "content": {"application/json": {"schema": _ref("Liveness")}},
                }
            },
        }
    },
    "/readyz": {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness",
            "description": "Checks the database (`SELECT 1`) and Redis (`PING`) where configured.",
            "tags": ["health"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Every dependency answers.",
                    "content": {"application/json": {"schema": _ref("Readiness")}},
                },
                "503": {
                    "description": "A dependency is down; `checks` names it.",
                    "content": {"application/json": {"schema": _ref("Readiness")}},
                },
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "description": (
                "Prometheus text exposition of Andon's own health: ingest counters, "
                "request latency histogram, rows per store, connectors by status."
            ),
            "tags": ["health"],
            "security": [],
            "responses": {
                "200": {
                    "description": "Text exposition format 0.0.4.",
                    "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
                }
            },
        }
    },
    "/api/schema/": {
        "get": {
            "operationId": "schema",
            "summary": "This OpenAPI document",
            "description": "JSON by default; `?format=yaml` for YAML.",
            "tags": ["schema"],
            "security": [],
            "parameters": [
                {
                    "name": "format",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string", "enum": ["json", "yaml"]},
                }
            ],
            "responses": {
                "200": {
                    "description": "The OpenAPI 3 document.",
                    "content": {
                        "application/vnd.oai.openapi+json": {"schema": {"type": "object"}},
                        "application/json": {"schema": {"type": "object"}},
                        "application/vnd.oai.openapi": {"schema": {"type": "string"}},
                        "application/yaml": {"schema": {"type": "string"}},
                    },
                }
            },
        }
    },
}


def add_plain_views(result: Schema, generator, request, public: bool) -> Schema:  # type: ignore[no-untyped-def]
    """Merge the plain views' path items, their component schemas and ``bearerAuth``.

    A hand-written operation replaces one spectacular generated for the same path
    and method (a DRF pass-through to a plain view would be described wrongly);
    every other generated operation is kept.
    """
    paths: dict[str, Schema] = result.setdefault("paths", {})
    for path, item in PLAIN_PATHS.items():
        merged = paths.setdefault(path, {})
        for method, operation in item.items():
            merged[method] = copy.deepcopy(operation)
    result["paths"] = dict(sorted(paths.items()))

    components: Schema = result.setdefault("components", {})
    schemas: Schema = components.setdefault("schemas", {})
    for name, schema in COMPONENT_SCHEMAS.items():
        schemas.setdefault(name, copy.deepcopy(schema))
    components["schemas"] = dict(sorted(schemas.items()))
    components.setdefault("securitySchemes", {})["bearerAuth"] = copy.deepcopy(BEARER_SCHEME)

    tags = result.setdefault("tags", [])
    known = {tag.get("name") for tag in tags}
    for name, text in (
        ("ingest", "Connectors post events, spans and messages."),
        ("health", "Probes and Prometheus metrics; no authentication."),
    ):
        if name not in known:
            tags.append({"name": name, "description": text})
    return result
