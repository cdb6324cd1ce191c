"""The message explorer pages: filters, keyset pages, one message, plant scoping."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html import unescape

import orjson
import pytest
from django.test import Client

from integrations.models import Connector, KeyRef, Message, MessageAttempt
from integrations.queries import (
    Cursor,
    Direction,
    MessageFilter,
    count_messages,
    message_page,
)
from tests.conftest import bearer, make_user

T0 = datetime(2026, 5, 21, 8, 0, tzinfo=UTC)


def store(connector: Connector, external_id: str, at: datetime, **fields: object) -> Message:
    """Store one message with one attempt and its key rows, as ingest leaves it."""
    values: dict[str, object] = {
        "status": "delivered",
        "occurred_at": at,
        "last_attempt_at": at,
        "received_at": at,
        "plant_id": connector.plant_id,
    }
    values.update(fields)
    message = Message.objects.create(connector=connector, external_id=external_id, **values)
    MessageAttempt.objects.create(
        message=message,
        at=at,
        status=message.status,
        error=message.error,
        latency_ms=message.latency_ms,
        received_at=at,
    )
    for name, value in message.business_keys.items():
        KeyRef.objects.create(value=value, name=name, item_kind="m", item_id=message.pk, at=at)
    return message


def shown(response) -> list[str]:  # type: ignore[no-untyped-def]
    """Return the external ids in the explorer's table, top to bottom."""
    assert response.status_code == 200, response.content[:500]
    return re.findall(r'class="open">([^<]+)</a>', response.content.decode())


def link(response, rel: str) -> str | None:  # type: ignore[no-untyped-def]
    found = re.search(rf'<a href="(\?[^"]*)" rel="{rel}"', response.content.decode())
    return "/messages/" + unescape(found.group(1)) if found else None


@pytest.fixture
def operator(client: Client, landscape) -> Client:
    make_user("olga", "operator")
    client.login(username="olga", password="pw-olga")
    return client


@pytest.fixture
def operator_p1(client: Client, landscape) -> Client:
    make_user("piet", "operator", [landscape["p1"]])
    client.login(username="piet", password="pw-piet")
    return client


@pytest.fixture
def traffic(landscape) -> dict[str, Message]:
    c1, c2 = landscape["c1"], landscape["c2"]
    return {
        "ok": store(
            c1,
            "m-ok",
            T0,
            correlation_id="ORD-1",
            business_keys={"workorder": "WO-1", "lot": "L-7"},
            latency_ms=120,
        ),
        "failed": store(
            c1, "m-failed", T0 + timedelta(minutes=1), status="failed", error="MES answered 503"
        ),
        "p2": store(c2, "m-p2", T0 + timedelta(minutes=2), status="failed", error="timeout"),
    }


# --- The list --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_anonymous_visitors_are_sent_to_login(client):
    assert client.get("/messages/")["Location"].startswith("/login/")


def test_it_lists_messages_newest_first(operator, traffic):
    response = operator.get("/messages/")

    assert shown(response) == ["m-p2", "m-failed", "m-ok"]
    body = response.content.decode()
    assert "3 messages." in body
    assert 'class="status status-failed"' in body
    assert "MES answered 503" in body


def test_keys_link_to_their_correlation_timeline(operator, traffic):
    body = operator.get("/messages/").content.decode()

    for key in ("ORD-1", "WO-1", "L-7"):
        assert f'href="/correlations/?key={key}"' in body


def test_it_filters_by_status_and_connector(operator, traffic):
    response = operator.get("/messages/", {"status": "failed", "connector": "erp-to-mes-orders"})

    assert shown(response) == ["m-failed"]
    assert "1 message match" in response.content.decode()


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"plant": "p2"}, ["m-p2"]),
        ({"error": "answered"}, ["m-failed"]),
        ({"key": "L-7"}, ["m-ok"]),
        ({"since": "2026-05-21T08:01", "until": "2026-05-21T08:02"}, ["m-failed"]),
        ({"status": "dead_lettered"}, []),
    ],
)
def test_each_filter_narrows_the_list(operator, traffic, params, expected):
    assert shown(operator.get("/messages/", params)) == expected


def test_a_bad_filter_value_answers_400_naming_it(operator, traffic):
    response = operator.get("/messages/", {"since": "last tuesday"})

    assert response.status_code == 400
    assert "since: not an ISO 8601 time" in response.content.decode()


def test_an_operator_of_plant_1_sees_only_plant_1_messages(operator_p1, traffic):
    response = operator_p1.get("/messages/")

    assert shown(response) == ["m-failed", "m-ok"]
    assert "erp-to-mes-p2-orders" not in response.content.decode()
    assert operator_p1.get("/messages/", {"plant": "p2"}).status_code == 403


def test_the_list_runs_a_bounded_number_of_queries(
    operator, landscape, django_assert_max_num_queries
):
    for i in range(80):
        store(landscape["c1"], f"m-{i}", T0 + timedelta(seconds=i), business_keys={"wo": f"W{i}"})

    with django_assert_max_num_queries(10):
        response = operator.get("/messages/", {"connector": "erp-to-mes-orders"})

    assert len(shown(response)) == 50


# --- Keyset pages ----------------------------------------------------------------------------


@pytest.fixture
def many(landscape) -> list[str]:
    """Return 120 messages' external ids newest first; groups of 7 share one timestamp."""
    for i in range(120):
        store(landscape["c1"], f"m-{i:03d}", T0 + timedelta(seconds=i // 7))
    return list(
        Message.objects.order_by("-occurred_at", "-pk").values_list("external_id", flat=True)
    )


def test_page_2_continues_exactly_where_page_1_ended(operator, many):
    first = operator.get("/messages/")
    second = operator.get(link(first, "next"))
    third = operator.get(link(second, "next"))

    assert shown(first) == many[:50]
    assert shown(second) == many[50:100]
    assert shown(third) == many[100:]
    assert link(third, "next") is None
    assert link(first, "prev") is None


def test_newer_goes_back_to_the_page_before(operator, many):
    first = operator.get("/messages/")
    second = operator.get(link(first, "next"))
    third = operator.get(link(second, "next"))

    assert shown(operator.get(link(third, "prev"))) == many[50:100]
    assert shown(operator.get(link(second, "prev"))) == many[:50]
    assert shown(operator.get(link(third, "first"))) == many[:50]


def test_pages_keep_the_filters(operator, many, landscape):
    store(landscape["c2"], "m-other", T0)
    first = operator.get("/messages/", {"connector": "erp-to-mes-orders"})
    second = operator.get(link(first, "next"))

    assert "connector=erp-to-mes-orders" in link(first, "next")
    assert shown(second) == many[50:100]


def test_a_cursor_is_a_position_not_an_offset(many, landscape):
    # Rows arriving at the top do not shift page 2.
    messages = Message.objects.all()
    page_one = message_page(messages, None, 50)
    store(landscape["c1"], "m-new", T0 + timedelta(hours=1))

    page_two = message_page(messages, page_one.older, 50)

    assert [m.external_id for m in page_two.items] == many[50:100]


def test_a_cursor_survives_its_token(many):
    message = Message.objects.get(external_id=many[10])
    cursor = Cursor.after(Direction.OLDER, message)

    assert Cursor.decode(cursor.encode()) == cursor


def test_the_count_is_exact_up_to_the_cap_then_estimated(many):
    messages = Message.objects.all()

    assert count_messages(messages, cap=200).value == 120
    assert count_messages(messages, cap=200).exact is True
    capped = count_messages(messages, cap=100)
    assert capped.exact is False
    assert capped.value >= 101


def test_a_hub_key_with_many_messages_is_still_a_filter(landscape):
    for i in range(5):
        store(landscape["c1"], f"m-{i}", T0, correlation_id="PLANT-1")
    selected = MessageFilter(key="PLANT-1")

    assert selected.apply(Message.objects.all()).count() == 5


# --- One message -----------------------------------------------------------------------------


@pytest.fixture
def captured(client, landscape, ingest_token) -> Message:
    """A message recorded through ingest: two attempts, headers, a JSON payload."""
    Connector.objects.filter(pk=landscape["c1"].pk).update(
        sensitive_fields=["customer.email", "headers.authorization"]
    )
    reports = [
        {
            "id": "m-42",
            "connector": "erp-to-mes-orders",
            "status": status,
            "occurred_at": at,
            "correlation_id": "WO-1001",
            "business_keys": {"workorder": "WO-1001", "lot": "L-7731"},
            "latency_ms": latency,
            "error": error,
            "headers": {"content-type": "application/json", "authorization": "Bearer s3cret"},
            "payload": {"order": "WO-1001", "customer": {"email": "buyer@example.com"}},
        }
        for status, at, latency, error in [
            ("failed", "2026-05-21T08:00:00Z", 840, "MES answered 503"),
            ("delivered", "2026-05-21T08:05:00Z", 310, ""),
        ]
    ]
    response = client.post(
        "/api/v1/messages",
        data=orjson.dumps(reports),
        content_type="application/json",
        **bearer(ingest_token),
    )
    assert response.status_code == 202, response.content
    return Message.objects.get(external_id="m-42")


def test_a_message_page_shows_its_attempts_headers_and_payload(client, captured):
    make_user("ada", "admin")
    client.login(username="ada", password="pw-ada")

    body = client.get(f"/messages/{captured.pk}/").content.decode()

    assert "2026-05-21 08:00:00" in body and "2026-05-21 08:05:00" in body
    assert "MES answered 503" in body and "840 ms" in body and "310 ms" in body
    assert "Bearer s3cret" in body
    assert "buyer@example.com" in body
    assert 'href="/correlations/?key=WO-1001"' in body
    assert 'href="/correlations/?key=L-7731"' in body


def test_sensitive_fields_are_masked_for_operators(operator, captured):
    body = operator.get(f"/messages/{captured.pk}/").content.decode()

    assert "buyer@example.com" not in body
    assert "s3cret" not in body
    assert "sensitive fields masked" in body
    assert "WO-1001" in body


def test_another_plants_message_is_not_found(operator_p1, traffic):
    assert operator_p1.get(f"/messages/{traffic['failed'].pk}/").status_code == 200
    assert operator_p1.get(f"/messages/{traffic['p2'].pk}/").status_code == 404


def test_an_unknown_message_is_not_found(operator, traffic):
    assert operator.get("/messages/999999/").status_code == 404
