"""POST /api/v1/events: CloudEvents 1.0 in structured, binary and batched modes."""

from __future__ import annotations

import base64
import gzip
from datetime import UTC, datetime

import orjson
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent as CoreCloudEvent
from cloudevents.v1.conversion import to_binary, to_structured
from cloudevents.v1.http import CloudEvent
from django.db import connection

from integrations.models import Event, KeyRef
from tests.conftest import bearer

URL = "/api/v1/events"
STRUCTURED = "application/cloudevents+json"
BATCHED = "application/cloudevents-batch+json"
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def make_event(number: int = 1, **attributes: object) -> dict[str, object]:
    """Return a valid work-order event with ``attributes`` changed (``...`` removes one)."""
    event: dict[str, object] = {
        "specversion": "1.0",
        "id": f"evt-{number}",
        "source": "/erp",
        "type": "erp.workorder.released",
        "subject": f"WO-{number}",
        "time": "2026-05-21T08:00:00Z",
        "datacontenttype": "application/json",
        "data": {"order": f"WO-{number}", "qty": 40},
    }
    event.update(attributes)
    return {k: v for k, v in event.items() if v is not ...}


def post(client, token: str, body: object, content_type: str = STRUCTURED, **extra):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(URL, data=raw, content_type=content_type, **bearer(token), **extra)


def post_binary(client, token: str, headers: dict[str, str], body: bytes, content_type: str):  # type: ignore[no-untyped-def]
    return client.post(URL, data=body, content_type=content_type, headers=headers, **bearer(token))


def assert_rejected(response, error_part: str, index: int = 0) -> None:  # type: ignore[no-untyped-def]
    body = response.json()
    errors = [r["error"] for r in body["rejected"] if r["index"] == index]
    assert errors, body
    assert error_part in errors[0], errors[0]


# --- Modes ------------------------------------------------------------------------------------


def test_it_stores_a_structured_event_with_every_attribute(client, landscape, ingest_token):
    event = make_event(
        source="/mes/p1",
        type="mes.workorder.acknowledged",
        dataschema="https://schemas.example/ack.json",
        correlationid="WO-1",
        causationid="erp-evt-1",
        traceparent=TRACEPARENT,
        workorder="WO-1",
        lot=4711,
        priority=3,
        urgent=True,
    )

    response = post(client, ingest_token, event)

    assert response.status_code == 202, response.content
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    stored = Event.objects.get()
    assert (stored.source, stored.event_id, stored.type) == (
        "/mes/p1",
        "evt-1",
        "mes.workorder.acknowledged",
    )
    assert stored.specversion == "1.0"
    assert stored.subject == "WO-1"
    assert stored.time == datetime(2026, 5, 21, 8, 0, tzinfo=UTC)
    assert stored.occurred_at == stored.time
    assert stored.datacontenttype == "application/json"
    assert stored.dataschema == "https://schemas.example/ack.json"
    assert stored.data == {"order": "WO-1", "qty": 40}
    assert stored.data_base64 == ""
    assert stored.correlation_id == "WO-1"
    assert stored.causation_id == "erp-evt-1"
    assert stored.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert stored.parent_span_id == "b7ad6b7169203331"
    assert stored.extensions == {
        "correlationid": "WO-1",
        "causationid": "erp-evt-1",
        "traceparent": TRACEPARENT,
        "workorder": "WO-1",
        "lot": 4711,
        "priority": 3,
        "urgent": True,
    }
    assert stored.business_keys == {"workorder": "WO-1", "lot": "4711"}
    assert stored.system == landscape["mes1"]
    assert stored.plant == landscape["p1"]
    refs = set(KeyRef.objects.values_list("item_kind", "item_id", "name", "value", "at"))
    assert refs == {
        ("e", stored.pk, "workorder", "WO-1", stored.occurred_at),
        ("e", stored.pk, "lot", "4711", stored.occurred_at),
    }


def test_it_stores_a_binary_mode_event_from_its_headers(client, landscape, ingest_token):
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "bin-1",
        "ce-source": "/erp",
        "ce-type": "erp.workorder.released",
        "ce-subject": "WO-7",
        "ce-time": "2026-05-21T08:00:00.250+02:00",
        "ce-correlationid": "WO-7",
        "ce-shipment": "SH-9",
        "ce-traceparent": TRACEPARENT,
    }

    response = post_binary(
        client, ingest_token, headers, b'{"order": "WO-7"}', "application/json; charset=utf-8"
    )

    assert response.status_code == 202, response.content
    stored = Event.objects.get()
    assert (stored.event_id, stored.subject, stored.correlation_id) == ("bin-1", "WO-7", "WO-7")
    assert stored.time == datetime(2026, 5, 21, 6, 0, 0, 250000, tzinfo=UTC)
    assert stored.datacontenttype == "application/json; charset=utf-8"
    assert stored.data == {"order": "WO-7"}
    assert stored.extensions == {
        "correlationid": "WO-7",
        "shipment": "SH-9",
        "traceparent": TRACEPARENT,
    }
    assert stored.business_keys == {"shipment": "SH-9"}
    assert stored.trace_id == "0af7651916cd43dd8448eb211c80319c"
    assert stored.system == landscape["erp"]
    assert KeyRef.objects.filter(item_kind="e", item_id=stored.pk, value="SH-9").exists()


def test_it_keeps_a_non_json_binary_body_as_base64(client, landscape, ingest_token):
    headers = {"ce-specversion": "1.0", "ce-id": "b1", "ce-source": "/erp", "ce-type": "x.y"}

    response = post_binary(client, ingest_token, headers, b"\x00\x01raw bytes", "text/csv")

    assert response.status_code == 202, response.content
    stored = Event.objects.get()
    assert stored.data is None
    assert base64.b64decode(stored.data_base64) == b"\x00\x01raw bytes"
    assert stored.datacontenttype == "text/csv"


def test_it_stores_a_binary_mode_event_without_a_body(client, landscape, ingest_token):
    headers = {"ce-specversion": "1.0", "ce-id": "b2", "ce-source": "/erp", "ce-type": "x.y"}

    response = post_binary(client, ingest_token, headers, b"", "application/json")

    assert response.status_code == 202, response.content
    stored = Event.objects.get()
    assert stored.data is None
    assert stored.data_base64 == ""


def test_it_rejects_binary_mode_json_that_does_not_parse(client, landscape, ingest_token):
    headers = {"ce-specversion": "1.0", "ce-id": "b3", "ce-source": "/erp", "ce-type": "x.y"}

    response = post_binary(client, ingest_token, headers, b"{not json", "application/json")

    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]
    assert not Event.objects.exists()


def test_it_rejects_a_binary_header_with_an_invalid_attribute_name(client, landscape, ingest_token):
    headers = {
        "ce-specversion": "1.0",
        "ce-id": "b4",
        "ce-source": "/erp",
        "ce-type": "x.y",
        "ce-my-ext": "1",
    }

    response = post_binary(client, ingest_token, headers, b"{}", "application/json")

    assert response.status_code == 400
    assert_rejected(response, "'my-ext' is invalid")


def test_it_rejects_a_percent_encoded_nul_in_a_header(client, landscape, ingest_token):
    headers = {"ce-specversion": "1.0", "ce-id": "b5", "ce-source": "/erp", "ce-type": "x%00y"}

    response = post_binary(client, ingest_token, headers, b"{}", "application/json")

    assert response.status_code == 400
    assert_rejected(response, "NUL character")
    assert not Event.objects.exists()


def test_it_stores_a_batch(client, landscape, ingest_token):
    events = [make_event(n) for n in range(1, 4)]

    response = post(client, ingest_token, events, BATCHED)

    assert response.status_code == 202, response.content
    assert response.json() == {"accepted": 3, "duplicates": 0, "rejected": []}
    assert sorted(Event.objects.values_list("event_id", flat=True)) == ["evt-1", "evt-2", "evt-3"]


def test_it_accepts_plain_json_as_one_event_or_a_batch(client, landscape, ingest_token):
    single = post(client, ingest_token, make_event(1), "application/json")
    batch = post(client, ingest_token, [make_event(2), make_event(3)], "application/json")

    assert single.status_code == 202 and single.json()["accepted"] == 1
    assert batch.status_code == 202 and batch.json()["accepted"] == 2
    assert Event.objects.count() == 3


def test_it_accepts_an_empty_batch(client, landscape, ingest_token):
    response = post(client, ingest_token, [], BATCHED)

    assert response.status_code == 202
    assert response.json() == {"accepted": 0, "duplicates": 0, "rejected": []}


def test_it_uses_receipt_time_when_an_event_has_no_time(client, landscape, ingest_token):
    event = make_event(time=...)
    before = datetime.now(UTC)

    response = post(client, ingest_token, event)

    assert response.status_code == 202
    stored = Event.objects.get()
    assert stored.time is None
    assert stored.occurred_at == stored.received_at
    assert stored.received_at >= before


# --- The cloudevents SDK ----------------------------------------------------------------------


def sdk_event(number: int) -> CloudEvent:
    return CloudEvent(
        {
            "id": f"sdk-{number}",
            "type": "erp.workorder.released",
            "source": "/erp",
            "subject": f"WO-{number}",
            "correlationid": f"WO-{number}",
            "workorder": f"WO-{number}",
            "traceparent": TRACEPARENT,
        },
        {"order": f"WO-{number}", "qty": number},
    )


def test_it_accepts_the_sdk_structured_mode(client, landscape, ingest_token):
    headers, body = to_structured(sdk_event(1))

    response = post(client, ingest_token, body, headers["content-type"])

    assert response.status_code == 202, response.content
    stored = Event.objects.get()
    assert (stored.event_id, stored.subject, stored.correlation_id) == ("sdk-1", "WO-1", "WO-1")
    assert stored.data == {"order": "WO-1", "qty": 1}
    assert stored.time is not None
    assert stored.business_keys == {"workorder": "WO-1"}


def test_it_accepts_the_sdk_binary_mode(client, landscape, ingest_token):
    headers, body = to_binary(sdk_event(2))
    content_type = headers.pop("content-type", "application/json")

    response = post_binary(client, ingest_token, headers, body, content_type)

    assert response.status_code == 202, response.content
    stored = Event.objects.get()
    assert (stored.event_id, stored.subject) == ("sdk-2", "WO-2")
    assert stored.data == {"order": "WO-2", "qty": 2}
    assert stored.parent_span_id == "b7ad6b7169203331"


def test_it_accepts_sdk_structured_events_sent_as_a_batch(client, landscape, ingest_token):
    batch = b"[" + b",".join(to_structured(sdk_event(n))[1] for n in range(1, 6)) + b"]"

    response = post(client, ingest_token, batch, BATCHED)

    assert response.status_code == 202, response.content
    assert response.json()["accepted"] == 5
    assert Event.objects.filter(correlation_id="WO-3", subject="WO-3").count() == 1


def test_it_decodes_percent_encoded_headers_of_the_core_sdk(client, landscape, ingest_token):
    event = CoreCloudEvent(
        attributes={
            "id": "core-1",
            "type": "erp.workorder.released",
            "source": "/erp",
            "specversion": "1.0",
            "subject": "WO 1 é%",
            "datacontenttype": "application/json",
        },
        data={"order": "WO 1"},
    )
    message = ce_http.to_binary_event(event)
    headers = dict(message.headers)
    content_type = headers.pop("content-type")

    response = post_binary(client, ingest_token, headers, message.body, content_type)

    assert response.status_code == 202, response.content
    stored = Event.objects.get()
    assert stored.subject == "WO 1 é%"
    assert stored.data == {"order": "WO 1"}


def test_it_accepts_the_core_sdk_structured_mode(client, landscape, ingest_token):
    event = CoreCloudEvent(
        attributes={"id": "core-2", "type": "t.x", "source": "/mes/p2", "specversion": "1.0"},
        data=b"\x00binary",
    )
    message = ce_http.to_structured_event(event)

    response = post(client, ingest_token, message.body, message.headers["content-type"])

    assert response.status_code == 202, response.content
    stored = Event.objects.get()
    assert base64.b64decode(stored.data_base64) == b"\x00binary"
    assert stored.plant_id == landscape["p2"].pk


# --- Duplicates -------------------------------------------------------------------------------


def test_it_counts_the_same_event_twice_as_a_duplicate(client, landscape, ingest_token):
    first = post(client, ingest_token, make_event(1))
    again = post(client, ingest_token, make_event(1, type="changed"))

    assert first.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert again.status_code == 202
    assert again.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    assert Event.objects.get().type == "erp.workorder.released"


def test_it_counts_a_resent_batch_as_duplicates(client, landscape, ingest_token):
    batch = [make_event(n) for n in range(1, 4)]

    post(client, ingest_token, batch, BATCHED)
    again = post(client, ingest_token, batch + [make_event(4)], BATCHED)

    assert again.json() == {"accepted": 1, "duplicates": 3, "rejected": []}
    assert Event.objects.count() == 4


def test_it_stores_an_event_repeated_inside_a_batch_once(client, landscape, ingest_token):
    response = post(client, ingest_token, [make_event(1), make_event(1), make_event(2)], BATCHED)

    assert response.json() == {"accepted": 2, "duplicates": 1, "rejected": []}
    assert Event.objects.count() == 2


def test_it_tells_events_of_different_sources_apart(client, landscape, ingest_token):
    response = post(client, ingest_token, [make_event(1), make_event(1, source="/mes/p1")], BATCHED)

    assert response.json()["accepted"] == 2


# --- Partial batches and bad items ------------------------------------------------------------


def test_it_keeps_valid_siblings_of_an_invalid_event(client, landscape, ingest_token):
    batch = [make_event(1), make_event(2, time="yesterday"), make_event(3)]

    response = post(client, ingest_token, batch, BATCHED)

    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    assert body["rejected"] == [
        {"index": 1, "id": "evt-2", "error": "time is not an RFC 3339 timestamp: 'yesterday'"}
    ]
    assert sorted(Event.objects.values_list("event_id", flat=True)) == ["evt-1", "evt-3"]


@pytest.mark.parametrize(
    ("attributes", "error"),
    [
        ({"id": ...}, "id is required"),
        ({"id": ""}, "id must not be empty"),
        ({"source": ...}, "source is required"),
        ({"type": ""}, "type must not be empty"),
        ({"specversion": ...}, "specversion is required"),
        ({"specversion": "0.3"}, "specversion must be '1.0'"),
        ({"id": 42}, "id must be a string, not a number"),
        ({"subject": ["WO-1"]}, "subject must be a string, not an array"),
        ({"time": "2026-05-21 08:00"}, "time is not an RFC 3339 timestamp"),
        ({"time": "2026-05-21T08:00:00"}, "time is not an RFC 3339 timestamp"),
        ({"time": "2026-02-30T08:00:00Z"}, "time is not a valid timestamp"),
        ({"time": 1716278400}, "time must be an RFC 3339 timestamp string"),
        ({"traceparent": "00-abc-def-01"}, "traceparent is not a W3C traceparent"),
        ({"traceparent": "00-" + "0" * 32 + "-b7ad6b7169203331-01"}, "traceparent"),
        ({"traceparent": "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"}, "traceparent"),
        ({"traceparent": TRACEPARENT + "-extra"}, "traceparent"),
        ({"traceparent": 7}, "traceparent must be a string"),
        ({"data_base64": "aGVsbG8="}, "data and data_base64 are mutually exclusive"),
        ({"data": ..., "data_base64": "not base64!"}, "data_base64 is not valid base64"),
        ({"Workorder": "WO-1"}, "attribute name 'Workorder' is invalid"),
        ({"work_order": "WO-1"}, "attribute name 'work_order' is invalid"),
        ({"extra": {"a": 1}}, "extension extra must be a string, number or boolean"),
        ({"extra": [1]}, "extension extra must be a string, number or boolean"),
        ({"correlationid": True}, "extension correlationid must be a string"),
        ({"plant": "p9"}, "extension plant names an unknown plant: 'p9'"),
        ({"source": "s" * 513}, "source exceeds 512 characters"),
        ({"id": "i" * 513}, "id exceeds 512 characters"),
        ({"type": "t" * 256}, "type exceeds 255 characters"),
        ({"subject": "s" * 513}, "subject exceeds 512 characters"),
        ({"datacontenttype": "x" * 256}, "datacontenttype exceeds 255 characters"),
        ({"dataschema": "x" * 1025}, "dataschema exceeds 1024 characters"),
        ({"correlationid": "c" * 256}, "extension correlationid exceeds 255 characters"),
        ({"causationid": "c" * 513}, "extension causationid exceeds 512 characters"),
        ({"workorder": "w" * 256}, "extension workorder exceeds 255 characters"),
        ({"subject": "WO-\u00001"}, "NUL character"),
    ],
)
def test_it_rejects_an_invalid_event_naming_the_attribute(
    client, landscape, ingest_token, attributes, error
):
    response = post(client, ingest_token, make_event(1, **attributes))

    assert response.status_code == 400
    body = response.json()
    assert body["accepted"] == 0 and body["duplicates"] == 0
    assert_rejected(response, error)
    assert not Event.objects.exists()


def test_it_rejects_data_nested_too_deeply_to_store(client, landscape, ingest_token):
    deep = b"[" * 400 + b"]" * 400
    body = b'{"specversion":"1.0","id":"d","source":"/erp","type":"t","data":' + deep + b"}"

    response = post(client, ingest_token, body)

    assert response.status_code == 400
    assert_rejected(response, "data cannot be stored")


def test_it_rejects_a_batch_item_that_is_not_an_object(client, landscape, ingest_token):
    response = post(client, ingest_token, [make_event(1), "evt-2", 3], BATCHED)

    assert response.status_code == 202
    assert [r["error"] for r in response.json()["rejected"]] == [
        "an event must be a JSON object, not a string",
        "an event must be a JSON object, not a number",
    ]


# --- Bad requests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "status", "error"),
    [
        (b'{"specversion": "1.0",', STRUCTURED, 400, "malformed JSON"),
        (b"", STRUCTURED, 400, "request body is empty"),
        (b"  ", BATCHED, 400, "request body is empty"),
        (b"[]", STRUCTURED, 400, "must be one JSON object"),
        (b"{}", BATCHED, 400, "must be a JSON array"),
        (b'"evt"', "application/json", 400, "must be a CloudEvent object or an array"),
        (b"id=1", "text/plain", 415, "unsupported Content-Type 'text/plain'"),
        (b"{}", "application/cloudevents+avro", 415, "unsupported Content-Type"),
    ],
)
def test_it_answers_a_bad_request_naming_the_problem(
    client, landscape, ingest_token, body, content_type, status, error
):
    response = post(client, ingest_token, body, content_type)

    assert response.status_code == status
    assert error in response.json()["error"]
    assert not Event.objects.exists()


def test_it_refuses_more_events_than_the_batch_limit(client, landscape, ingest_token, settings):
    settings.ANDON_MAX_BATCH_ITEMS = 3

    response = post(client, ingest_token, [make_event(n) for n in range(4)], BATCHED)

    assert response.status_code == 413
    assert "limit of 3" in response.json()["error"]
    assert not Event.objects.exists()


def test_it_accepts_a_gzip_body(client, landscape, ingest_token):
    body = gzip.compress(orjson.dumps([make_event(1), make_event(2)]))

    response = post(client, ingest_token, body, BATCHED, HTTP_CONTENT_ENCODING="gzip")

    assert response.status_code == 202, response.content
    assert Event.objects.count() == 2


def test_it_refuses_a_body_over_the_size_limit(client, landscape, ingest_token, settings):
    settings.ANDON_MAX_BODY_BYTES = 4096
    batch = [make_event(n, data={"pad": "x" * 100}) for n in range(100)]

    response = post(client, ingest_token, batch, BATCHED)

    assert response.status_code == 413
    assert "4096-byte limit" in response.json()["error"]
    assert not Event.objects.exists()


def test_it_refuses_a_30_mib_body(client, landscape, ingest_token):
    body = b'[{"pad": "' + b"x" * (30 * 1024 * 1024) + b'"}]'

    response = post(client, ingest_token, body, BATCHED)

    assert response.status_code == 413
    assert "exceeds" in response.json()["error"]


def test_it_refuses_a_gzip_bomb(client, landscape, ingest_token):
    bomb = gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]", compresslevel=9)
    assert len(bomb) < 1024 * 1024

    response = post(client, ingest_token, bomb, BATCHED, HTTP_CONTENT_ENCODING="gzip")

    assert response.status_code == 413
    assert "decompressed body exceeds" in response.json()["error"]


def test_it_answers_get_with_405(client, ingest_token):
    response = client.get(URL, **bearer(ingest_token))

    assert response.status_code == 405


# --- Who may post -----------------------------------------------------------------------------


def test_it_refuses_a_request_without_a_token(client, landscape):
    response = client.post(URL, data=orjson.dumps(make_event()), content_type=STRUCTURED)

    assert response.status_code == 401
    assert not Event.objects.exists()


def test_it_refuses_an_unknown_token(client, landscape):
    response = post(client, "andon_not-a-token", make_event())

    assert response.status_code == 401


def test_it_refuses_an_operator_token(client, landscape, operator_token):
    response = post(client, operator_token, make_event())

    assert response.status_code == 403
    assert not Event.objects.exists()


def test_it_refuses_a_plant_scoped_token_posting_another_plants_events(
    client, landscape, ingest_token_p1
):
    batch = [make_event(1, source="/mes/p2"), make_event(2, source="/erp", plant="p2")]

    response = post(client, ingest_token_p1, batch, BATCHED)

    assert response.status_code == 403
    assert [r["index"] for r in response.json()["rejected"]] == [0, 1]
    assert "scoped to plant p1" in response.json()["rejected"][0]["error"]
    assert not Event.objects.exists()


def test_it_keeps_a_scoped_tokens_own_events_in_a_mixed_batch(client, landscape, ingest_token_p1):
    batch = [
        make_event(1, source="/mes/p1"),
        make_event(2, source="/mes/p2"),
        make_event(3, source="/unknown"),
    ]

    response = post(client, ingest_token_p1, batch, BATCHED)

    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1]
    plants = dict(Event.objects.values_list("event_id", "plant__key"))
    assert plants == {"evt-1": "p1", "evt-3": "p1"}


# --- Attribution ------------------------------------------------------------------------------


def test_it_stores_an_event_of_an_unknown_source_unattributed(client, landscape, ingest_token):
    response = post(client, ingest_token, make_event(source="urn:unknown:thing"))

    assert response.status_code == 202
    stored = Event.objects.get()
    assert stored.system is None
    assert stored.plant is None


def test_it_lets_the_plant_extension_override_the_systems_plant(client, landscape, ingest_token):
    response = post(client, ingest_token, make_event(source="/erp", plant="p2"))

    assert response.status_code == 202
    stored = Event.objects.get()
    assert stored.system == landscape["erp"]
    assert stored.plant == landscape["p2"]
    assert stored.extensions == {"plant": "p2"}


# --- Cost -------------------------------------------------------------------------------------


def count_queries(callback) -> int:  # type: ignore[no-untyped-def]
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        callback()
    return len(queries)


def test_it_writes_a_batch_with_as_many_queries_as_a_single_event(client, landscape, ingest_token):
    post(client, ingest_token, make_event(0, workorder="WO-0"))  # the token is touched once
    small = count_queries(lambda: post(client, ingest_token, make_event(1, workorder="WO-1")))
    batch = [make_event(n, workorder=f"WO-{n}", lot=f"L-{n}") for n in range(2, 202)]
    large = count_queries(lambda: post(client, ingest_token, batch, BATCHED))

    assert large == small
    assert KeyRef.objects.count() == 1 + 1 + 400
