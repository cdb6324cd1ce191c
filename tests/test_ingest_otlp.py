"""POST /v1/traces: OTLP/HTTP traces, binary protobuf and JSON, as the OTLP specification says."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

import orjson
import pytest
from django.test import Client
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from integrations.models import KeyRef, Span
from tests.conftest import bearer

URL = "/v1/traces"
PROTOBUF = "application/x-protobuf"
JSON = "application/json"

TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
START = 1_779_350_400_000_000_000  # 2026-05-21T08:00:00Z in nanoseconds
END = START + 1_500_000_000  # 1.5 s later


def span_id(n: int) -> bytes:
    return n.to_bytes(8, "big")


def pb_span(
    n: int = 1,
    *,
    trace_id: bytes = TRACE,
    sid: bytes | None = None,
    name: str = "POST /orders",
    start: int = START,
    end: int = END,
    attributes: dict | None = None,
    **fields,
) -> PbSpan:
    """Build a protobuf span; ``attributes`` take str, bool, int and float values."""
    span = PbSpan(
        trace_id=trace_id,
        span_id=span_id(n) if sid is None else sid,
        name=name,
        start_time_unix_nano=start,
        end_time_unix_nano=end,
        **fields,
    )
    for key, value in (attributes or {}).items():
        set_value(span.attributes.add(key=key).value, value)
    return span


def set_value(target, value) -> None:  # type: ignore[no-untyped-def]
    if isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int):
        target.int_value = value
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, bytes):
        target.bytes_value = value
    elif isinstance(value, list):
        for item in value:
            set_value(target.array_value.values.add(), item)
    elif isinstance(value, dict):
        for key, item in value.items():
            set_value(target.kvlist_value.values.add(key=key).value, item)
    else:
        target.string_value = value


def pb_request(
    *spans: PbSpan, service: str | None = "mes-p1", resource: dict | None = None
) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    attributes = dict(resource or {})
    if service is not None:
        attributes["service.name"] = service
    for key, value in attributes.items():
        set_value(resource_spans.resource.attributes.add(key=key).value, value)
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "andon.tests"
    scope_spans.spans.extend(spans)
    return request


def json_span(n: int = 1, **fields) -> dict:
    span = {
        "traceId": TRACE.hex(),
        "spanId": span_id(n).hex(),
        "name": "POST /orders",
        "kind": 2,
        "startTimeUnixNano": str(START),
        "endTimeUnixNano": str(END),
    }
    span.update(fields)
    return span


def json_request(*spans: dict, service: str = "mes-p1") -> dict:
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeSpans": [{"scope": {"name": "andon.tests"}, "spans": list(spans)}],
            }
        ]
    }


def post(client: Client, token: str | None, body: bytes, content_type: str, **headers):
    auth = bearer(token) if token else {}
    # CONTENT_TYPE again: Django's test client drops it when the body is empty.
    return client.post(
        URL, data=body, content_type=content_type, CONTENT_TYPE=content_type, **auth, **headers
    )


def post_pb(client: Client, token: str | None, request: ExportTraceServiceRequest, **headers):
    return post(client, token, request.SerializeToString(), PROTOBUF, **headers)


def post_json(client: Client, token: str | None, document: object, **headers):
    return post(client, token, orjson.dumps(document), JSON, **headers)


def pb_answer(response) -> ExportTraceServiceResponse:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == PROTOBUF
    return ExportTraceServiceResponse.FromString(response.content)


def pb_status(response) -> status_pb2.Status:  # type: ignore[no-untyped-def]
    assert response["Content-Type"] == PROTOBUF
    return status_pb2.Status.FromString(response.content)


def json_answer(response) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == JSON
    return orjson.loads(response.content)


def stored(n: int = 1) -> Span:
    return Span.objects.get(trace_id=TRACE.hex(), span_id=span_id(n).hex())


# --- Protobuf --------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_stores_a_protobuf_span_and_answers_an_empty_protobuf_response(
    client, landscape, ingest_token
):
    span = pb_span(
        7,
        parent_span_id=span_id(3),
        kind=PbSpan.SPAN_KIND_SERVER,
        attributes={
            "http.method": "POST",
            "http.status_code": 201,
            "retry": False,
            "ratio": 0.5,
            "tags": ["a", "b"],
            "order": {"qty": 40, "line": "L1"},
            "blob": b"\x01\x02",
        },
    )
    span.status.code = 2
    span.status.message = "MES answered 503"
    event = span.events.add(name="retry", time_unix_nano=START + 1_000_000)
    event.attributes.add(key="attempt").value.int_value = 2

    answer = pb_answer(post_pb(client, ingest_token, pb_request(span)))

    assert not answer.HasField("partial_success")
    row = stored(7)
    assert row.parent_span_id == span_id(3).hex()
    assert row.name == "POST /orders"
    assert row.kind == 2
    assert row.start == datetime(2026, 5, 21, 8, 0, tzinfo=UTC)
    assert row.end == datetime(2026, 5, 21, 8, 0, 1, 500_000, tzinfo=UTC)
    assert row.duration_ms == 1500.0
    assert (row.status_code, row.status_message) == (2, "MES answered 503")
    assert row.attributes == {
        "http.method": "POST",
        "http.status_code": 201,
        "retry": False,
        "ratio": 0.5,
        "tags": ["a", "b"],
        "order": {"qty": 40, "line": "L1"},
        "blob": "AQI=",
    }
    assert row.events == [
        {"name": "retry", "time": "2026-05-21T08:00:00.001000+00:00", "attributes": {"attempt": 2}}
    ]
    assert row.resource == {"service.name": "mes-p1"}
    assert row.scope == "andon.tests"
    assert row.service_name == "mes-p1"


@pytest.mark.django_db
def test_it_accepts_a_gzip_compressed_protobuf_request(client, landscape, ingest_token):
    body = gzip.compress(pb_request(pb_span(1), pb_span(2)).SerializeToString())

    response = post(client, ingest_token, body, PROTOBUF, HTTP_CONTENT_ENCODING="gzip")

    assert not pb_answer(response).HasField("partial_success")
    assert Span.objects.count() == 2


@pytest.mark.django_db
def test_it_answers_an_empty_request_with_success(client, ingest_token):
    assert not pb_answer(post_pb(client, ingest_token, ExportTraceServiceRequest())).HasField(
        "partial_success"
    )
    assert json_answer(post_json(client, ingest_token, {})) == {}


@pytest.mark.django_db
def test_it_reports_partial_success_for_bad_spans_and_stores_the_good_ones(
    client, landscape, ingest_token
):
    request = pb_request(
        pb_span(1),
        pb_span(2, trace_id=b"\x01\x02\x03"),
        pb_span(3, trace_id=bytes(16)),
        pb_span(4, sid=bytes(8)),
        pb_span(5, name="late", end=START - 1),
        pb_span(6),
    )

    answer = pb_answer(post_pb(client, ingest_token, request))

    assert answer.partial_success.rejected_spans == 4
    message = answer.partial_success.error_message
    assert "spans[1]" in message and "traceId must be 16 bytes, got 3" in message
    assert "spans[2]" in message and "traceId is all zeros" in message
    assert "spans[3]" in message and "spanId is all zeros" in message
    assert "spans[4] 'late'" in message and "is before startTimeUnixNano" in message
    assert set(Span.objects.values_list("span_id", flat=True)) == {
        span_id(1).hex(),
        span_id(6).hex(),
    }


@pytest.mark.django_db
def test_it_answers_400_with_a_bad_request_status_when_every_span_is_invalid(
    client, landscape, ingest_token
):
    response = post_pb(client, ingest_token, pb_request(pb_span(1, sid=b"\x01")))

    assert response.status_code == 400
    status = pb_status(response)
    assert status.code == 3
    assert "spanId must be 8 bytes, got 1" in status.message
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    assert detail.field_violations[0].field == "resourceSpans[0].scopeSpans[0].spans[0]"
    assert Span.objects.count() == 0


@pytest.mark.django_db
def test_it_stores_a_resent_span_once(client, landscape, ingest_token):
    request = pb_request(pb_span(1, attributes={"workorder.id": "WO-1"}), pb_span(2))

    pb_answer(post_pb(client, ingest_token, request))
    answer = pb_answer(post_pb(client, ingest_token, request))

    assert not answer.HasField("partial_success")
    assert Span.objects.count() == 2
    assert KeyRef.objects.count() == 1


@pytest.mark.django_db
def test_it_stores_a_span_repeated_within_one_request_once(client, landscape, ingest_token):
    answer = pb_answer(post_pb(client, ingest_token, pb_request(pb_span(1), pb_span(1))))

    assert not answer.HasField("partial_success")
    assert Span.objects.count() == 1


@pytest.mark.django_db
def test_it_rejects_a_malformed_protobuf_body_with_a_decodable_status(client, ingest_token):
    response = post(client, ingest_token, b"\x0a\xff\xff\xff\xff not protobuf", PROTOBUF)

    assert response.status_code == 400
    status = pb_status(response)
    assert status.code == 3
    assert "ExportTraceServiceRequest" in status.message


@pytest.mark.django_db
def test_it_refuses_more_spans_than_one_request_may_carry(
    client, landscape, ingest_token, settings
):
    settings.ANDON_MAX_BATCH_ITEMS = 2

    response = post_pb(client, ingest_token, pb_request(pb_span(1), pb_span(2), pb_span(3)))

    assert response.status_code == 413
    assert "3 spans" in pb_status(response).message
    assert Span.objects.count() == 0


@pytest.mark.django_db
def test_it_keeps_a_span_whose_strings_carry_nul_characters(client, landscape, ingest_token):
    span = pb_span(1, name="bad\x00name", attributes={"note\x00": "a\x00b", "ok": "fine"})

    pb_answer(post_pb(client, ingest_token, pb_request(span)))

    row = stored(1)
    assert row.name == "badname"
    assert row.attributes == {"note": "ab", "ok": "fine"}


@pytest.mark.django_db
def test_it_cuts_overlong_names_to_the_column_width(client, landscape, ingest_token):
    pb_answer(post_pb(client, ingest_token, pb_request(pb_span(1, name="x" * 2000))))

    assert stored(1).name == "x" * 512


# --- JSON --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_stores_a_json_span_with_hex_ids_and_string_nanos(client, landscape, ingest_token):
    span = json_span(
        1,
        traceId=TRACE.hex().upper(),
        parentSpanId=span_id(9).hex(),
        startTimeUnixNano=START,
        status={"code": 2, "message": "boom"},
        attributes=[
            {"key": "s", "value": {"stringValue": "x"}},
            {"key": "i", "value": {"intValue": "9007199254740993"}},
            {"key": "n", "value": {"intValue": 7}},
            {"key": "b", "value": {"boolValue": True}},
            {"key": "d", "value": {"doubleValue": 1.25}},
            {"key": "a", "value": {"arrayValue": {"values": [{"stringValue": "p"}]}}},
            {
                "key": "kv",
                "value": {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": "1"}}]}},
            },
            {"key": "raw", "value": {"bytesValue": "AQI="}},
            {"key": "empty", "value": {}},
        ],
        events=[{"name": "sent", "timeUnixNano": str(START), "attributes": []}],
        flags=257,
        fieldFromAFutureOtlp={"ignored": True},
    )

    answer = json_answer(post_json(client, ingest_token, json_request(span)))

    assert answer == {}
    row = stored(1)
    assert row.trace_id == TRACE.hex()
    assert row.parent_span_id == span_id(9).hex()
    assert row.kind == 2
    assert row.duration_ms == 1500.0
    assert (row.status_code, row.status_message) == (2, "boom")
    assert row.attributes == {
        "s": "x",
        "i": 9007199254740993,
        "n": 7,
        "b": True,
        "d": 1.25,
        "a": ["p"],
        "kv": {"k": 1},
        "raw": "AQI=",
        "empty": None,
    }
    assert row.events == [{"name": "sent", "time": "2026-05-21T08:00:00+00:00", "attributes": {}}]
    assert row.scope == "andon.tests"


@pytest.mark.django_db
def test_it_accepts_proto_field_names_and_enum_names_in_json(client, landscape, ingest_token):
    document = {
        "resource_spans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"string_value": "mes-p1"}}]
                },
                "scope_spans": [
                    {
                        "spans": [
                            {
                                "trace_id": TRACE.hex(),
                                "span_id": span_id(1).hex(),
                                "name": "consume",
                                "kind": "SPAN_KIND_CONSUMER",
                                "start_time_unix_nano": str(START),
                                "end_time_unix_nano": str(END),
                                "status": {"code": "STATUS_CODE_OK"},
                                "attributes": [{"key": "k", "value": {"int_value": "3"}}],
                            }
                        ]
                    }
                ],
            }
        ]
    }

    json_answer(post_json(client, ingest_token, document))

    row = stored(1)
    assert (row.kind, row.status_code, row.attributes) == (5, 1, {"k": 3})
    assert row.service_name == "mes-p1"


@pytest.mark.django_db
def test_it_accepts_gzip_compressed_json(client, landscape, ingest_token):
    body = gzip.compress(orjson.dumps(json_request(json_span(1))))

    response = post(client, ingest_token, body, JSON, HTTP_CONTENT_ENCODING="gzip")

    assert json_answer(response) == {}
    assert Span.objects.count() == 1


@pytest.mark.django_db
def test_it_reports_json_partial_success_with_rejected_spans_as_an_int64_string(
    client, landscape, ingest_token
):
    document = json_request(
        json_span(1),
        json_span(2, traceId="zz" * 16),
        json_span(3, spanId="AAAAAAAAAAE="),
        json_span(4, traceId="0" * 32),
        json_span(5, endTimeUnixNano=str(START - 1)),
        json_span(6, startTimeUnixNano="soon"),
        json_span(7),
    )

    answer = json_answer(post_json(client, ingest_token, document))

    partial = answer["partialSuccess"]
    assert partial["rejectedSpans"] == "5"
    message = partial["errorMessage"]
    assert "spans[1]" in message and "traceId is not hex" in message
    assert "spans[2]" in message and "not base64" in message
    assert "spans[3]" in message and "traceId is all zeros" in message
    assert "spans[4]" in message and "is before startTimeUnixNano" in message
    assert "spans[5]" in message and "startTimeUnixNano must be an integer" in message
    assert set(Span.objects.values_list("span_id", flat=True)) == {
        span_id(1).hex(),
        span_id(7).hex(),
    }


@pytest.mark.django_db
def test_it_rejects_malformed_json_with_a_json_status(client, ingest_token):
    response = post(client, ingest_token, b'{"resourceSpans": [', JSON)

    assert response.status_code == 400
    assert response["Content-Type"] == JSON
    body = orjson.loads(response.content)
    assert body["code"] == 3
    assert "malformed JSON" in body["message"]


@pytest.mark.django_db
def test_it_rejects_json_whose_resource_spans_is_not_an_array(client, ingest_token):
    response = post_json(client, ingest_token, {"resourceSpans": {"spans": []}})

    assert response.status_code == 400
    assert orjson.loads(response.content)["message"] == "resourceSpans must be an array"


@pytest.mark.django_db
def test_it_keeps_valid_json_spans_beside_a_malformed_scope(client, landscape, ingest_token):
    document = json_request(json_span(1))
    document["resourceSpans"][0]["scopeSpans"].append({"spans": "nope"})
    document["resourceSpans"].append(42)

    answer = json_answer(post_json(client, ingest_token, document))

    message = answer["partialSuccess"]["errorMessage"]
    assert "resourceSpans[0].scopeSpans[1].spans is not an array" in message
    assert "resourceSpans[1] is not an object" in message
    assert Span.objects.count() == 1


# --- Request-level failures ---------------------------------------------------------------


@pytest.mark.django_db
def test_it_answers_415_for_another_content_type(client, ingest_token):
    response = post(client, ingest_token, b"hello", "text/plain")

    assert response.status_code == 415
    body = orjson.loads(response.content)
    assert body["code"] == 3
    assert "text/plain" in body["message"]


@pytest.mark.django_db
def test_it_answers_413_over_the_body_limit(client, landscape, ingest_token, settings):
    settings.ANDON_MAX_BODY_BYTES = 2048
    request = pb_request(*(pb_span(n, name="n" * 100) for n in range(1, 40)))

    response = post_pb(client, ingest_token, request)

    assert response.status_code == 413
    assert pb_status(response).code == 8
    assert Span.objects.count() == 0


@pytest.mark.django_db
def test_it_answers_413_for_a_gzip_bomb(client, ingest_token, settings):
    settings.ANDON_MAX_BODY_BYTES = 64 * 1024
    bomb = gzip.compress(bytes(16 * 1024 * 1024))
    assert len(bomb) < 64 * 1024

    response = post(client, ingest_token, bomb, PROTOBUF, HTTP_CONTENT_ENCODING="gzip")

    assert response.status_code == 413
    assert "decompressed body exceeds" in pb_status(response).message


@pytest.mark.django_db
def test_it_answers_401_with_a_status_without_a_valid_token(client, landscape):
    missing = post_pb(client, None, pb_request(pb_span(1)))
    wrong = post_pb(client, "not-a-token", pb_request(pb_span(1)))

    for response in (missing, wrong):
        assert response.status_code == 401
        assert pb_status(response).code == 16
    assert Span.objects.count() == 0


@pytest.mark.django_db
def test_it_answers_403_with_a_status_to_an_operator_token(client, landscape, operator_token):
    response = post_json(client, operator_token, json_request(json_span(1)))

    assert response.status_code == 403
    assert orjson.loads(response.content)["code"] == 7
    assert Span.objects.count() == 0


@pytest.mark.django_db
def test_it_answers_405_to_a_get(client, ingest_token):
    response = client.get(URL, **bearer(ingest_token))

    assert response.status_code == 405
    assert response["Allow"] == "POST"


# --- What a span is tied to ----------------------------------------------------------------


@pytest.mark.django_db
def test_it_takes_the_correlation_id_from_andon_correlation_id(client, landscape, ingest_token):
    span = pb_span(
        1,
        attributes={
            "andon.correlation_id": "WO-1001",
            "messaging.message.conversation_id": "conv-9",
        },
    )

    pb_answer(post_pb(client, ingest_token, pb_request(span)))

    assert stored(1).correlation_id == "WO-1001"


@pytest.mark.django_db
def test_it_takes_the_correlation_id_from_the_messaging_conversation_id(
    client, landscape, ingest_token
):
    span = pb_span(1, attributes={"messaging.message.conversation_id": "conv-9"})

    pb_answer(post_pb(client, ingest_token, pb_request(span)))

    assert stored(1).correlation_id == "conv-9"


@pytest.mark.django_db
def test_it_makes_a_span_findable_by_its_business_keys(client, landscape, ingest_token):
    span = pb_span(
        1, attributes={"workorder.id": "WO-1", "lot.id": "LOT-7", "asset.id": 42, "other.id": "x"}
    )

    pb_answer(post_pb(client, ingest_token, pb_request(span)))

    row = stored(1)
    assert row.business_keys == {"workorder": "WO-1", "lot": "LOT-7", "asset": "42"}
    refs = set(KeyRef.objects.values_list("name", "value", "item_kind", "item_id", "at"))
    assert refs == {
        ("workorder", "WO-1", "s", row.pk, row.start),
        ("lot", "LOT-7", "s", row.pk, row.start),
        ("asset", "42", "s", row.pk, row.start),
    }


@pytest.mark.django_db
def test_it_uses_the_configured_business_key_attributes(client, landscape, ingest_token, settings):
    settings.ANDON_BUSINESS_KEY_ATTRIBUTES = ["batch.id"]
    span = pb_span(1, attributes={"batch.id": "B-3", "workorder.id": "WO-1"})

    pb_answer(post_pb(client, ingest_token, pb_request(span)))

    assert stored(1).business_keys == {"batch": "B-3"}
    assert list(KeyRef.objects.values_list("name", "value")) == [("batch", "B-3")]


@pytest.mark.django_db
def test_it_attributes_a_span_to_the_system_and_plant_of_its_service_name(
    client, landscape, ingest_token
):
    pb_answer(post_pb(client, ingest_token, pb_request(pb_span(1), service="mes-p1")))
    pb_answer(post_pb(client, ingest_token, pb_request(pb_span(2), service="/mes/p1")))

    for n in (1, 2):
        row = stored(n)
        assert (row.system, row.plant) == (landscape["mes1"], landscape["p1"])


@pytest.mark.django_db
def test_it_keeps_a_span_of_an_unknown_service_unattributed(client, landscape, ingest_token):
    pb_answer(post_pb(client, ingest_token, pb_request(pb_span(1), service="billing")))

    row = stored(1)
    assert (row.service_name, row.system, row.plant) == ("billing", None, None)


@pytest.mark.django_db
def test_it_lets_an_andon_plant_attribute_override_the_plant(client, landscape, ingest_token):
    request = pb_request(
        pb_span(1),
        pb_span(2, attributes={"andon.plant": "p1"}),
        service="erp",
        resource={"andon.plant": "p2"},
    )

    pb_answer(post_pb(client, ingest_token, request))

    assert stored(1).plant == landscape["p2"]
    assert stored(2).plant == landscape["p1"]
    assert stored(1).system == landscape["erp"]


@pytest.mark.django_db
def test_it_rejects_a_span_naming_an_unknown_plant(client, landscape, ingest_token):
    request = pb_request(pb_span(1), pb_span(2, attributes={"andon.plant": "p9"}))

    answer = pb_answer(post_pb(client, ingest_token, request))

    assert answer.partial_success.rejected_spans == 1
    assert "andon.plant='p9' is not a known plant" in answer.partial_success.error_message
    assert Span.objects.count() == 1


# --- Plant-scoped tokens -------------------------------------------------------------------


@pytest.mark.django_db
def test_a_plant_scoped_token_may_not_post_spans_of_another_plant(
    client, landscape, ingest_token_p1
):
    request = ExportTraceServiceRequest()
    request.resource_spans.extend(pb_request(pb_span(1), service="mes-p1").resource_spans)
    request.resource_spans.extend(pb_request(pb_span(2), service="mes-p2").resource_spans)
    request.resource_spans.extend(pb_request(pb_span(3), service="billing").resource_spans)

    answer = pb_answer(post_pb(client, ingest_token_p1, request))

    assert answer.partial_success.rejected_spans == 1
    assert "belongs to plant p2" in answer.partial_success.error_message
    assert stored(1).plant == landscape["p1"]
    assert stored(3).plant == landscape["p1"]  # unattributed spans take the token's plant
    assert not Span.objects.filter(span_id=span_id(2).hex()).exists()


@pytest.mark.django_db
def test_a_plant_scoped_token_gets_403_when_every_span_is_of_another_plant(
    client, landscape, ingest_token_p1
):
    response = post_pb(client, ingest_token_p1, pb_request(pb_span(1), service="mes-p2"))

    assert response.status_code == 403
    status = pb_status(response)
    assert status.code == 7
    assert "token is scoped to plant p1" in status.message
    assert Span.objects.count() == 0


# --- The real exporter -----------------------------------------------------------------------


def finished_spans() -> list:
    """Record three spans with the OpenTelemetry SDK, as an instrumented connector would."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "mes-p1"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("andon.tests.connector")
    with tracer.start_as_current_span("POST /orders", kind=SpanKind.SERVER) as parent:
        parent.set_attribute("workorder.id", "WO-77")
        parent.set_attribute("andon.correlation_id", "WO-77")
        with tracer.start_as_current_span("publish", kind=SpanKind.PRODUCER) as child:
            child.set_attribute("messaging.message.conversation_id", "conv-1")
            child.add_event("sent", {"bytes": 120})
        with tracer.start_as_current_span("mes call", kind=SpanKind.CLIENT) as failed:
            failed.set_status(Status(StatusCode.ERROR, "MES answered 503"))
    provider.shutdown()
    return list(memory.get_finished_spans())


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
@pytest.mark.django_db(transaction=True)
def test_the_opentelemetry_exporter_delivers_spans(
    live_server, landscape, ingest_token, compression
):
    spans = finished_spans()
    exporter = OTLPSpanExporter(
        endpoint=f"{live_server.url}/v1/traces",
        headers={"Authorization": f"Bearer {ingest_token}"},
        compression=compression,
        timeout=10,
    )

    result = exporter.export(spans)
    exporter.shutdown()

    assert result is SpanExportResult.SUCCESS
    rows = {row.name: row for row in Span.objects.all()}
    assert set(rows) == {"POST /orders", "publish", "mes call"}
    parent = rows["POST /orders"]
    sdk_parent = next(s for s in spans if s.name == "POST /orders")
    assert parent.trace_id == f"{sdk_parent.context.trace_id:032x}"
    assert parent.span_id == f"{sdk_parent.context.span_id:016x}"
    assert parent.kind == 2
    assert parent.correlation_id == "WO-77"
    assert parent.business_keys == {"workorder": "WO-77"}
    assert (parent.system, parent.plant) == (landscape["mes1"], landscape["p1"])
    assert rows["publish"].parent_span_id == parent.span_id
    assert rows["publish"].correlation_id == "conv-1"
    assert rows["publish"].events[0]["attributes"] == {"bytes": 120}
    assert (rows["mes call"].status_code, rows["mes call"].status_message) == (
        2,
        "MES answered 503",
    )
    assert rows["mes call"].scope == "andon.tests.connector"
    # The work order is also the correlation id: the indexed column finds it, no extra index row.
    assert not KeyRef.objects.filter(item_kind="s", item_id=parent.pk).exists()


@pytest.mark.django_db(transaction=True)
def test_the_opentelemetry_exporter_fails_without_a_valid_token(live_server, landscape):
    exporter = OTLPSpanExporter(
        endpoint=f"{live_server.url}/v1/traces",
        headers={"Authorization": "Bearer nope"},
        timeout=10,
    )

    result = exporter.export(finished_spans())
    exporter.shutdown()

    assert result is SpanExportResult.FAILURE
    assert Span.objects.count() == 0
