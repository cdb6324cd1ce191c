"""The OpenAPI document at /api/schema/ describes every endpoint of the contract."""

from __future__ import annotations

import json

import pytest
import yaml
from drf_spectacular.validation import validate_schema

CONTRACT_PATHS = [
    "/v1/traces",
    "/api/v1/events",
    "/api/v1/messages",
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/v1/alerts",
    "/api/v1/alerts/{id}/ack",
    "/api/v1/alerts/{id}/resolve",
    "/api/v1/silences",
    "/api/v1/silences/{id}",
]
INGEST_PATHS = ["/v1/traces", "/api/v1/events", "/api/v1/messages"]
INGEST_ERRORS = ["400", "401", "403", "413", "415", "429", "503"]


@pytest.fixture
def document(client, db) -> dict:
    response = client.get("/api/schema/")
    assert response.status_code == 200
    return json.loads(response.content)


def refs(node: object) -> set[str]:
    """Return every ``$ref`` target in a document."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                found.add(value)
            else:
                found |= refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= refs(item)
    return found


def test_it_serves_an_openapi_3_document_as_json_without_a_token(client, db):
    response = client.get("/api/schema/")

    assert response.status_code == 200
    assert "json" in response["Content-Type"]
    document = json.loads(response.content)
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"]


def test_the_document_is_valid_openapi(document):
    validate_schema(document)  # raises jsonschema.ValidationError naming the offending node


def test_it_ignores_a_stale_token(client, db):
    response = client.get("/api/schema/", HTTP_AUTHORIZATION="Bearer revoked-long-ago")

    assert response.status_code == 200


def test_it_serves_yaml_on_request(client, db):
    response = client.get("/api/schema/?format=yaml")

    assert response.status_code == 200
    assert yaml.safe_load(response.content)["openapi"].startswith("3.")


@pytest.mark.parametrize("path", CONTRACT_PATHS)
def test_it_describes_every_contract_endpoint(document, path):
    assert path in document["paths"]


@pytest.mark.parametrize("path", INGEST_PATHS)
def test_ingest_endpoints_are_posts_behind_bearer_auth(document, path):
    operation = document["paths"][path]["post"]

    assert operation["security"] == [{"bearerAuth": []}]
    assert set(INGEST_ERRORS) <= set(operation["responses"])
    for status in ("429", "503"):
        assert "Retry-After" in operation["responses"][status]["headers"]


def test_the_bearer_scheme_is_declared(document):
    scheme = document["components"]["securitySchemes"]["bearerAuth"]

    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"


@pytest.mark.parametrize("path", ["/api/v1/events", "/api/v1/messages"])
def test_event_and_message_ingest_answer_with_the_contract_shape(document, path):
    responses = document["paths"][path]["post"]["responses"]
    answer = document["components"]["schemas"]["IngestAnswer"]
    rejection = document["components"]["schemas"]["IngestRejection"]

    for status in ["202", *INGEST_ERRORS]:
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/IngestAnswer"}
    assert set(answer["required"]) == {"accepted", "duplicates", "rejected"}
    assert answer["properties"]["rejected"]["items"] == {
        "$ref": "#/components/schemas/IngestRejection"
    }
    assert set(rejection["required"]) == {"index", "id", "error"}


def test_events_accept_structured_batched_and_binary_modes(document):
    content = document["paths"]["/api/v1/events"]["post"]["requestBody"]["content"]

    assert {"application/cloudevents+json", "application/cloudevents-batch+json", "*/*"} <= set(
        content
    )
    event = document["components"]["schemas"]["CloudEvent"]
    assert set(event["required"]) == {"id", "source", "specversion", "type"}


def test_traces_accept_protobuf_and_json_and_answer_otlp(document):
    operation = document["paths"]["/v1/traces"]["post"]

    assert {"application/x-protobuf", "application/json"} <= set(
        operation["requestBody"]["content"]
    )
    ok = operation["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OtlpExportTraceServiceResponse"
    }
    bad = operation["responses"]["400"]["content"]["application/json"]["schema"]
    assert bad == {"$ref": "#/components/schemas/GoogleRpcStatus"}


def test_messages_accept_one_object_or_an_array(document):
    schema = document["paths"]["/api/v1/messages"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]

    assert schema["oneOf"][0] == {"$ref": "#/components/schemas/CapturedMessage"}
    assert schema["oneOf"][1]["type"] == "array"
    statuses = document["components"]["schemas"]["CapturedMessage"]["properties"]["status"]
    assert statuses["enum"] == ["received", "delivered", "failed", "dead_lettered"]


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_health_endpoints_need_no_auth(document, path):
    assert document["paths"][path]["get"]["security"] == []


def test_readyz_documents_its_503(document):
    responses = document["paths"]["/readyz"]["get"]["responses"]

    assert set(responses) == {"200", "503"}


def test_every_reference_resolves(document):
    schemas = document["components"]["schemas"]

    for ref in refs(document):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in schemas, ref


def test_operation_ids_are_unique(document):
    ids = [
        operation["operationId"]
        for item in document["paths"].values()
        for operation in item.values()
        if isinstance(operation, dict) and "operationId" in operation
    ]

    assert len(ids) == len(set(ids))
