"""POST /api/v1/messages: connectors report their messages' attempts and payloads."""

from __future__ import annotations

import base64
import gzip
from datetime import UTC, datetime

import orjson
import pytest
from django.db import connection

from integrations.models import Connector, KeyRef, Message, MessageAttempt
from tests.conftest import bearer

URL = "/api/v1/messages"


def report(**fields: object) -> dict[str, object]:
    """Return CONTRACT's example report with ``fields`` changed (``...`` removes one)."""
    item: dict[str, object] = {
        "id": "m-42",
        "connector": "erp-to-mes-orders",
        "status": "failed",
        "occurred_at": "2026-05-21T08:00:00Z",
        "correlation_id": "WO-1001",
        "business_keys": {"workorder": "WO-1001"},
        "latency_ms": 840,
        "error": "MES answered 503",
        "headers": {"content-type": "application/json"},
        "payload": {"order": "WO-1001", "qty": 40},
    }
    item.update(fields)
    return {k: v for k, v in item.items() if v is not ...}


def post(client, token: str, body: object, content_type: str = "application/json", **extra):  # type: ignore[no-untyped-def]
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return client.post(URL, data=raw, content_type=content_type, **bearer(token), **extra)


def at(minute: int, second: int = 0) -> datetime:
    return datetime(2026, 5, 21, 8, minute, second, tzinfo=UTC)


def attempts(message: Message) -> list[tuple[datetime, str]]:
    return list(message.attempts.order_by("at", "id").values_list("at", "status"))


# --- Recording --------------------------------------------------------------------------------


def test_it_records_the_contract_example(client, landscape, ingest_token):
    response = post(client, ingest_token, report())

    assert response.status_code == 202, response.content
    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    message = Message.objects.get()
    assert message.connector == landscape["c1"]
    assert message.external_id == "m-42"
    assert message.status == "failed"
    assert message.occurred_at == at(0)
    assert message.last_attempt_at == at(0)
    assert message.correlation_id == "WO-1001"
    assert message.business_keys == {"workorder": "WO-1001"}
    assert message.latency_ms == 840
    assert message.error == "MES answered 503"
    assert message.headers == {"content-type": "application/json"}
    assert message.content_type == "application/json"
    assert bytes(message.payload) == b'{"order":"WO-1001","qty":40}'
    assert message.attempt_count == 1
    assert message.plant == landscape["p1"]
    assert attempts(message) == [(at(0), "failed")]
    attempt = message.attempts.get()
    assert (attempt.latency_ms, attempt.error) == (840, "MES answered 503")
    assert list(KeyRef.objects.values_list("item_kind", "item_id", "name", "value", "at")) == [
        ("m", message.pk, "workorder", "WO-1001", at(0))
    ]


def test_it_records_an_array_of_reports(client, landscape, ingest_token):
    batch = [report(id=f"m-{n}") for n in range(5)]

    response = post(client, ingest_token, batch)

    assert response.json() == {"accepted": 5, "duplicates": 0, "rejected": []}
    assert Message.objects.count() == 5
    assert MessageAttempt.objects.count() == 5
    assert KeyRef.objects.filter(item_kind="m").count() == 5


def test_it_keeps_a_base64_payload_as_bytes(client, landscape, ingest_token):
    raw = b"\x02ORDER;WO-1001;40\x03"
    item = report(payload=..., headers=..., payload_b64=base64.b64encode(raw).decode())

    response = post(client, ingest_token, item)

    assert response.status_code == 202, response.content
    message = Message.objects.get()
    assert bytes(message.payload) == raw
    assert message.content_type == "application/octet-stream"


def test_it_takes_the_content_type_from_the_headers_whatever_their_case(
    client, landscape, ingest_token
):
    item = report(
        payload=...,
        headers={"Content-Type": "application/xml", "X-Trace": "1"},
        payload_b64=base64.b64encode(b"<order/>").decode(),
    )

    post(client, ingest_token, item)

    message = Message.objects.get()
    assert message.content_type == "application/xml"
    assert message.headers == {"Content-Type": "application/xml", "X-Trace": "1"}


def test_it_records_a_report_without_optional_fields(client, landscape, ingest_token):
    item = {
        "id": "m-1",
        "connector": "erp-to-mes-orders",
        "status": "received",
        "occurred_at": "2026-05-21T10:00:00+02:00",
        "some_future_field": {"ignored": True},
    }

    response = post(client, ingest_token, item)

    assert response.status_code == 202, response.content
    message = Message.objects.get()
    assert message.occurred_at == at(0)
    assert message.payload is None
    assert message.content_type == ""
    assert message.latency_ms is None
    assert message.business_keys == {}
    assert not KeyRef.objects.exists()


# --- Attempts and duplicates ------------------------------------------------------------------


def test_it_records_a_new_status_as_a_new_attempt(client, landscape, ingest_token):
    post(client, ingest_token, report(status="failed", occurred_at="2026-05-21T08:00:00Z"))
    response = post(
        client,
        ingest_token,
        report(status="delivered", occurred_at="2026-05-21T08:05:00Z", error=..., latency_ms=120),
    )

    assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    message = Message.objects.get()
    assert attempts(message) == [(at(0), "failed"), (at(5), "delivered")]
    assert message.attempt_count == 2
    assert message.status == "delivered"
    assert message.error == ""
    assert message.latency_ms == 120
    assert message.occurred_at == at(0)
    assert message.last_attempt_at == at(5)


def test_it_does_not_regress_the_status_for_a_late_report(client, landscape, ingest_token):
    post(client, ingest_token, report(status="delivered", occurred_at="2026-05-21T08:05:00Z"))
    response = post(
        client, ingest_token, report(status="received", occurred_at="2026-05-21T08:00:00Z")
    )

    assert response.json()["accepted"] == 1
    message = Message.objects.get()
    assert message.status == "delivered"
    assert message.attempt_count == 2
    assert message.last_attempt_at == at(5)
    assert message.occurred_at == at(0)


def test_it_counts_the_same_report_twice_as_a_duplicate(client, landscape, ingest_token):
    first = post(client, ingest_token, report())
    again = post(client, ingest_token, report(error="changed", latency_ms=1))

    assert first.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert again.status_code == 202
    assert again.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    message = Message.objects.get()
    assert message.attempt_count == 1
    assert message.error == "MES answered 503"
    assert MessageAttempt.objects.count() == 1


def test_it_counts_the_same_time_with_another_offset_as_the_same_report(
    client, landscape, ingest_token
):
    post(client, ingest_token, report(occurred_at="2026-05-21T08:00:00Z"))
    again = post(client, ingest_token, report(occurred_at="2026-05-21T10:00:00+02:00"))

    assert again.json()["duplicates"] == 1


def test_it_merges_several_reports_of_one_message_in_a_batch(client, landscape, ingest_token):
    batch = [
        report(status="received", occurred_at="2026-05-21T08:00:00Z", error=...),
        report(status="dead_lettered", occurred_at="2026-05-21T08:09:00Z", error="gave up"),
        report(status="failed", occurred_at="2026-05-21T08:03:00Z"),
        report(status="failed", occurred_at="2026-05-21T08:03:00Z"),
        report(id="m-43", status="delivered"),
    ]

    response = post(client, ingest_token, batch)

    assert response.json() == {"accepted": 4, "duplicates": 1, "rejected": []}
    message = Message.objects.get(external_id="m-42")
    assert attempts(message) == [
        (at(0), "received"),
        (at(3), "failed"),
        (at(9), "dead_lettered"),
    ]
    assert message.attempt_count == 3
    assert message.status == "dead_lettered"
    assert message.error == "gave up"
    assert message.occurred_at == at(0)
    assert message.last_attempt_at == at(9)
    assert Message.objects.get(external_id="m-43").attempt_count == 1


def test_it_adds_a_batch_of_reports_to_a_stored_message(client, landscape, ingest_token):
    post(client, ingest_token, report(status="received", occurred_at="2026-05-21T08:00:00Z"))
    batch = [
        report(status="failed", occurred_at="2026-05-21T08:02:00Z"),
        report(status="received", occurred_at="2026-05-21T08:00:00Z"),
        report(status="delivered", occurred_at="2026-05-21T08:04:00Z", error=...),
    ]

    response = post(client, ingest_token, batch)

    assert response.json() == {"accepted": 2, "duplicates": 1, "rejected": []}
    message = Message.objects.get()
    assert message.attempt_count == 3
    assert message.status == "delivered"
    assert message.error == ""


def test_it_keeps_the_first_payload_and_correlation(client, landscape, ingest_token):
    post(client, ingest_token, report(payload=..., headers=..., correlation_id=...))
    post(client, ingest_token, report(status="delivered", payload={"v": 1}, correlation_id="A"))
    post(
        client,
        ingest_token,
        report(
            status="received",
            occurred_at="2026-05-21T07:59:00Z",
            payload={"v": 2},
            correlation_id="B",
            business_keys={"lot": "L-1", "workorder": "WO-9"},
        ),
    )

    message = Message.objects.get()
    assert bytes(message.payload) == b'{"v":1}'
    assert message.content_type == "application/json"
    assert message.correlation_id == "A"
    assert message.business_keys == {"workorder": "WO-1001", "lot": "L-1"}
    keys = set(KeyRef.objects.filter(item_id=message.pk).values_list("name", "value"))
    assert keys == {("workorder", "WO-1001"), ("lot", "L-1"), ("workorder", "WO-9")}
    assert message.attempt_count == 3


def test_it_indexes_every_key_value_a_batch_reports(client, landscape, ingest_token):
    batch = [
        report(status="received", business_keys={"workorder": "WO-1"}),
        report(status="failed", business_keys={"workorder": "WO-2", "lot": "L-1"}),
    ]

    post(client, ingest_token, batch)

    message = Message.objects.get()
    assert message.business_keys == {"workorder": "WO-1", "lot": "L-1"}
    keys = set(KeyRef.objects.filter(item_id=message.pk).values_list("name", "value"))
    assert keys == {("workorder", "WO-1"), ("workorder", "WO-2"), ("lot", "L-1")}


def test_it_stores_number_business_keys_as_strings(client, landscape, ingest_token):
    post(client, ingest_token, report(business_keys={"lot": 4711, "asset": "A-1"}))

    message = Message.objects.get()
    assert message.business_keys == {"lot": "4711", "asset": "A-1"}
    assert set(KeyRef.objects.values_list("name", "value")) == {("lot", "4711"), ("asset", "A-1")}


# --- Connectors and plants --------------------------------------------------------------------


def test_it_registers_an_unknown_connector_as_discovered(client, landscape, ingest_token):
    batch = [report(connector="legacy-edi"), report(id="m-43", connector="legacy-edi")]

    response = post(client, ingest_token, batch)

    assert response.json()["accepted"] == 2
    connector = Connector.objects.get(key="legacy-edi")
    assert connector.status == "discovered"
    assert (connector.source, connector.target, connector.plant) == (None, None, None)
    assert Message.objects.filter(connector=connector).count() == 2
    assert Message.objects.filter(connector=connector, plant__isnull=True).count() == 2


def test_it_reuses_a_discovered_connector(client, landscape, ingest_token):
    post(client, ingest_token, report(connector="legacy-edi"))
    post(client, ingest_token, report(id="m-43", connector="legacy-edi"))

    assert Connector.objects.filter(key="legacy-edi").count() == 1
    assert Message.objects.filter(connector__key="legacy-edi").count() == 2


def test_it_takes_the_plant_field_over_the_connectors(client, landscape, ingest_token):
    post(client, ingest_token, report(plant="p2"))

    assert Message.objects.get().plant == landscape["p2"]


# --- Partial batches and bad items ------------------------------------------------------------


def test_it_keeps_valid_siblings_of_an_invalid_report(client, landscape, ingest_token):
    batch = [report(id="m-1"), report(id="m-2", status="lost"), report(id="m-3")]

    response = post(client, ingest_token, batch)

    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    assert body["rejected"] == [
        {
            "index": 1,
            "id": "m-2",
            "error": "status must be one of received, delivered, failed, dead_lettered, not 'lost'",
        }
    ]
    assert sorted(Message.objects.values_list("external_id", flat=True)) == ["m-1", "m-3"]


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        ({"id": ...}, "id is required"),
        ({"id": ""}, "id must not be empty"),
        ({"id": 42}, "id must be a string, not a number"),
        ({"id": "m" * 256}, "id exceeds 255 characters"),
        ({"connector": ...}, "connector is required"),
        ({"connector": "c" * 129}, "connector exceeds 128 characters"),
        ({"status": ...}, "status is required"),
        ({"status": "FAILED"}, "status must be one of"),
        ({"status": 3}, "status must be one of"),
        ({"occurred_at": ...}, "occurred_at is required"),
        ({"occurred_at": "21.05.2026 08:00"}, "occurred_at is not an RFC 3339 timestamp"),
        ({"occurred_at": "2026-05-21T08:00:00"}, "occurred_at is not an RFC 3339 timestamp"),
        ({"correlation_id": 7}, "correlation_id must be a string"),
        ({"correlation_id": "c" * 256}, "correlation_id exceeds 255 characters"),
        ({"business_keys": ["WO-1"]}, "business_keys must be an object"),
        ({"business_keys": {"workorder": None}}, "business_keys.workorder must be a string"),
        ({"business_keys": {"workorder": True}}, "business_keys.workorder must be a string"),
        ({"business_keys": {"workorder": "w" * 256}}, "business_keys.workorder exceeds 255"),
        ({"business_keys": {"k" * 65: "v"}}, "exceeds 64 characters"),
        ({"latency_ms": -1}, "latency_ms must be a non-negative integer"),
        ({"latency_ms": "840"}, "latency_ms must be a non-negative integer"),
        ({"latency_ms": 1.5}, "latency_ms must be a non-negative integer"),
        ({"latency_ms": True}, "latency_ms must be a non-negative integer"),
        ({"latency_ms": 2**40}, "latency_ms must be a non-negative integer"),
        ({"error": {"code": 503}}, "error must be a string, not an object"),
        ({"headers": "content-type: x"}, "headers must be an object"),
        ({"headers": {"x-retry": 3}}, "headers.x-retry must be a string, not a number"),
        ({"payload_b64": "AAAA"}, "payload and payload_b64 are mutually exclusive"),
        ({"payload": ..., "payload_b64": "%%%"}, "payload_b64 is not valid base64"),
        ({"payload": ..., "payload_b64": 12}, "payload_b64 must be a base64 string"),
        ({"plant": "p9"}, "plant names an unknown plant: 'p9'"),
        ({"error": "bad \u0000 byte"}, "NUL character"),
        ({"headers": {"content-type": "x" * 256}}, "content-type exceeds 255 characters"),
    ],
)
def test_it_rejects_an_invalid_report_naming_the_field(
    client, landscape, ingest_token, fields, error
):
    response = post(client, ingest_token, report(**fields))

    assert response.status_code == 400
    body = response.json()
    assert body["accepted"] == 0
    assert len(body["rejected"]) == 1 and body["rejected"][0]["index"] == 0
    assert error in body["rejected"][0]["error"], body["rejected"][0]["error"]
    assert not Message.objects.exists()
    assert not Connector.objects.filter(status="discovered").exists()


def test_it_rejects_a_payload_nested_too_deeply_to_store(client, landscape, ingest_token):
    body = orjson.dumps(report(payload=...))[:-1] + b',"payload":' + b"[" * 300 + b"]" * 300 + b"}"

    response = post(client, ingest_token, body)

    assert response.status_code == 400
    assert "payload cannot be stored" in response.json()["rejected"][0]["error"]


def test_it_rejects_an_array_item_that_is_not_an_object(client, landscape, ingest_token):
    response = post(client, ingest_token, [report(), ["m-43"]])

    assert response.status_code == 202
    assert response.json()["rejected"] == [
        {"index": 1, "id": "", "error": "a message report must be a JSON object, not an array"}
    ]


# --- Bad requests -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "status", "error"),
    [
        (b'{"id": "m-1",', "application/json", 400, "malformed JSON"),
        (b"", "application/json", 400, "request body is empty"),
        (b'"m-1"', "application/json", 400, "must be a message object or an array"),
        (b"id=m-1", "text/plain", 415, "unsupported Content-Type 'text/plain'"),
    ],
)
def test_it_answers_a_bad_request_naming_the_problem(
    client, landscape, ingest_token, body, content_type, status, error
):
    response = post(client, ingest_token, body, content_type)

    assert response.status_code == status
    assert error in response.json()["error"]
    assert not Message.objects.exists()


def test_it_accepts_an_empty_array(client, landscape, ingest_token):
    response = post(client, ingest_token, [])

    assert response.status_code == 202
    assert response.json() == {"accepted": 0, "duplicates": 0, "rejected": []}


def test_it_refuses_more_reports_than_the_batch_limit(client, landscape, ingest_token, settings):
    settings.ANDON_MAX_BATCH_ITEMS = 2

    response = post(client, ingest_token, [report(id=f"m-{n}") for n in range(3)])

    assert response.status_code == 413
    assert "limit of 2" in response.json()["error"]
    assert not Message.objects.exists()


def test_it_accepts_a_gzip_body(client, landscape, ingest_token):
    body = gzip.compress(orjson.dumps([report(id="m-1"), report(id="m-2")]))

    response = post(client, ingest_token, body, HTTP_CONTENT_ENCODING="gzip")

    assert response.status_code == 202, response.content
    assert Message.objects.count() == 2


def test_it_refuses_a_body_over_the_size_limit(client, landscape, ingest_token, settings):
    settings.ANDON_MAX_BODY_BYTES = 2048
    batch = [report(id=f"m-{n}") for n in range(20)]

    response = post(client, ingest_token, batch)

    assert response.status_code == 413
    assert "2048-byte limit" in response.json()["error"]
    assert not Message.objects.exists()


def test_it_refuses_a_30_mib_body(client, landscape, ingest_token):
    body = orjson.dumps(report(error="x" * (30 * 1024 * 1024)))

    response = post(client, ingest_token, body)

    assert response.status_code == 413
    assert not Message.objects.exists()


def test_it_refuses_a_gzip_bomb(client, landscape, ingest_token):
    bomb = gzip.compress(b"[" + b" " * (64 * 1024 * 1024) + b"]", compresslevel=9)

    response = post(client, ingest_token, bomb, HTTP_CONTENT_ENCODING="gzip")

    assert response.status_code == 413
    assert "decompressed body exceeds" in response.json()["error"]


def test_an_ingest_token_may_post_but_not_list_messages(client, ingest_token):
    response = client.get(URL, **bearer(ingest_token))

    assert response.status_code == 403


# --- Who may post -----------------------------------------------------------------------------


def test_it_refuses_a_request_without_a_token(client, landscape):
    response = client.post(URL, data=orjson.dumps(report()), content_type="application/json")

    assert response.status_code == 401
    assert not Message.objects.exists()


def test_it_refuses_an_unknown_token(client, landscape):
    response = post(client, "andon_wrong", report())

    assert response.status_code == 401


def test_it_refuses_an_operator_token(client, landscape, operator_token):
    response = post(client, operator_token, report())

    assert response.status_code == 403
    assert not Message.objects.exists()


def test_it_refuses_a_plant_scoped_token_reporting_another_plants_messages(
    client, landscape, ingest_token_p1
):
    batch = [report(connector="erp-to-mes-p2-orders"), report(id="m-43", plant="p2")]

    response = post(client, ingest_token_p1, batch)

    assert response.status_code == 403
    rejected = response.json()["rejected"]
    assert [r["index"] for r in rejected] == [0, 1]
    assert "scoped to plant p1" in rejected[0]["error"]
    assert not Message.objects.exists()


def test_it_keeps_a_scoped_tokens_own_messages_in_a_mixed_batch(client, landscape, ingest_token_p1):
    batch = [
        report(id="m-1"),
        report(id="m-2", connector="erp-to-mes-p2-orders"),
        report(id="m-3", connector="legacy-edi"),
    ]

    response = post(client, ingest_token_p1, batch)

    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    assert [r["index"] for r in body["rejected"]] == [1]
    plants = dict(Message.objects.values_list("external_id", "plant__key"))
    assert plants == {"m-1": "p1", "m-3": "p1"}
    assert Connector.objects.get(key="legacy-edi").status == "discovered"


# --- Cost -------------------------------------------------------------------------------------


def count_queries(callback) -> int:  # type: ignore[no-untyped-def]
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        callback()
    return len(queries)


def test_it_writes_a_batch_with_as_many_queries_as_a_single_report(client, landscape, ingest_token):
    post(client, ingest_token, report(id="m-0"))  # the token is touched once
    small = count_queries(lambda: post(client, ingest_token, report(id="m-1", connector="new-1")))
    batch = [
        report(
            id=f"m-{n % 50}",
            connector=f"new-{n % 3 + 2}",
            occurred_at=f"2026-05-21T08:{n % 60:02d}:00Z",
        )
        for n in range(200)
    ]
    large = count_queries(lambda: post(client, ingest_token, batch))

    assert large == small
    assert Message.objects.filter(connector__key__startswith="new-").count() == 1 + 150
    assert MessageAttempt.objects.count() == 1 + 1 + 200


def test_it_refuses_a_scoped_token_reporting_on_another_plants_stored_message(
    client, landscape, ingest_token, ingest_token_p1
):
    post(client, ingest_token, report(connector="legacy-edi", plant="p2"))

    response = post(
        client,
        ingest_token_p1,
        [report(connector="legacy-edi", status="delivered"), report(id="m-43")],
    )

    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 1
    assert body["rejected"] == [
        {
            "index": 0,
            "id": "m-42",
            "error": "token is scoped to plant p1; this message belongs to another plant",
        }
    ]
    message = Message.objects.get(connector__key="legacy-edi")
    assert (message.status, message.attempt_count, message.plant) == ("failed", 1, landscape["p2"])
