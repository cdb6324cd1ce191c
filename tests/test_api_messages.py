"""GET /api/v1/messages and /api/v1/messages/{id}: captured messages, read back by scripts."""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from django.test import Client

from integrations.api_messages import MessageDetailSerializer, MessageSerializer
from integrations.models import Connector, Message
from tests.conftest import bearer, make_user

URL = "/api/v1/messages"


def report(external_id: str, at: str, **fields: object) -> dict[str, object]:
    """Return a message report on erp-to-mes-orders at 2026-05-21T``at``Z."""
    item: dict[str, object] = {
        "id": external_id,
        "connector": "erp-to-mes-orders",
        "status": "delivered",
        "occurred_at": f"2026-05-21T{at}Z",
    }
    item.update(fields)
    return item


def capture(client: Client, token: str, *reports: dict[str, object]) -> None:
    """Record reports through the ingest endpoint, as a connector would."""
    response = client.post(URL, data=orjson.dumps(list(reports)), **_json(), **bearer(token))
    assert response.status_code == 202, response.content
    assert response.json()["rejected"] == []


def _json() -> dict[str, str]:
    return {"content_type": "application/json"}


def get(client: Client, token: str, url: str = URL, **params: object):  # type: ignore[no-untyped-def]
    return client.get(url, params, **bearer(token))


def ids(response) -> list[str]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.content
    return [m["external_id"] for m in response.json()["results"]]


def pk(external_id: str) -> int:
    return Message.objects.get(external_id=external_id).pk


@pytest.fixture
def traffic(client, landscape, ingest_token):
    """Four messages: two of plant 1's orders connector, one of plant 2's, one unattributed."""
    capture(
        client,
        ingest_token,
        report(
            "m-1",
            "08:00:00",
            correlation_id="ORD-1",
            business_keys={"workorder": "WO-1", "lot": "L-7"},
            latency_ms=120,
            headers={"content-type": "application/json", "authorization": "Basic c2VjcmV0"},
            payload={"order": "WO-1", "customer": {"email": "a@example.com"}},
        ),
        report("m-2", "08:01:00", status="failed", error="MES answered 503", latency_ms=900),
        report("m-2", "08:02:00", status="failed", error="MES answered 504", latency_ms=950),
        report(
            "m-3",
            "08:03:00",
            connector="erp-to-mes-p2-orders",
            status="failed",
            error="timeout",
            business_keys={"workorder": "WO-2"},
        ),
        report("m-4", "08:04:00", connector="legacy-ftp", status="received"),
    )


# --- Shape ----------------------------------------------------------------------------------


def test_it_lists_messages_newest_first_in_the_contract_shape(client, traffic, operator_token):
    response = get(client, operator_token)

    assert ids(response) == ["m-4", "m-3", "m-2", "m-1"]
    body = response.json()
    assert body["count"] == 4
    assert body["count_exact"] is True
    assert body["next"] is None and body["previous"] is None
    m2 = body["results"][2]
    assert m2["id"] == pk("m-2")
    assert m2["connector"] == "erp-to-mes-orders"
    assert m2["status"] == "failed"
    assert m2["plant"] == "p1"
    assert m2["occurred_at"] == "2026-05-21T08:01:00Z"
    assert m2["last_attempt_at"] == "2026-05-21T08:02:00Z"
    assert (m2["attempt_count"], m2["latency_ms"], m2["error"]) == (2, 950, "MES answered 504")
    assert m2["attempts"] == [
        {
            "at": "2026-05-21T08:01:00Z",
            "status": "failed",
            "latency_ms": 900,
            "error": "MES answered 503",
            "replay": None,
        },
        {
            "at": "2026-05-21T08:02:00Z",
            "status": "failed",
            "latency_ms": 950,
            "error": "MES answered 504",
            "replay": None,
        },
    ]
    m1 = body["results"][3]
    assert m1["correlation_id"] == "ORD-1"
    assert m1["business_keys"] == {"workorder": "WO-1", "lot": "L-7"}
    assert m1["content_type"] == "application/json"
    assert "payload" not in m1 and "headers" not in m1


def test_the_documented_fields_are_the_answered_fields(client, traffic, admin_token):
    listed = get(client, admin_token).json()["results"][0]
    one = get(client, admin_token, f"{URL}/{pk('m-1')}").json()

    assert set(listed) == set(MessageSerializer().fields)
    assert set(one) == set(MessageDetailSerializer().fields)


def test_the_schema_describes_both_read_endpoints(client, db):
    document = json.loads(client.get("/api/schema/").content)

    listing = document["paths"]["/api/v1/messages"]
    assert {"get", "post"} <= set(listing)
    assert {p["name"] for p in listing["get"]["parameters"]} >= {
        "connector",
        "status",
        "key",
        "since",
        "until",
        "plant",
        "error",
        "cursor",
    }
    assert "get" in document["paths"]["/api/v1/messages/{id}"]


def test_posting_still_ingests_on_the_same_route(client, landscape, ingest_token):
    capture(client, ingest_token, report("m-9", "09:00:00"))

    assert Message.objects.get().external_id == "m-9"


# --- Filters ---------------------------------------------------------------------------------


def test_it_filters_by_connector(client, traffic, operator_token):
    assert ids(get(client, operator_token, connector="erp-to-mes-orders")) == ["m-2", "m-1"]


def test_an_unknown_connector_selects_nothing(client, traffic, operator_token):
    assert ids(get(client, operator_token, connector="no-such-connector")) == []


def test_it_filters_by_one_or_several_statuses(client, traffic, operator_token):
    assert ids(get(client, operator_token, status="failed")) == ["m-3", "m-2"]
    assert ids(get(client, operator_token, status="received,delivered")) == ["m-4", "m-1"]


def test_it_finds_messages_by_correlation_id_or_any_business_key(client, traffic, operator_token):
    assert ids(get(client, operator_token, key="ORD-1")) == ["m-1"]
    assert ids(get(client, operator_token, key="L-7")) == ["m-1"]
    assert ids(get(client, operator_token, key="WO-2")) == ["m-3"]
    assert ids(get(client, operator_token, key="WO-404")) == []


def test_since_is_inclusive_and_until_exclusive(client, traffic, operator_token):
    response = get(
        client, operator_token, since="2026-05-21T08:01:00Z", until="2026-05-21T08:04:00+00:00"
    )

    assert ids(response) == ["m-3", "m-2"]


def test_it_filters_by_plant_and_by_error_substring(client, traffic, operator_token):
    assert ids(get(client, operator_token, plant="p2")) == ["m-3"]
    assert ids(get(client, operator_token, error="answered 50")) == ["m-2"]
    assert ids(get(client, operator_token, error="TIMEOUT")) == ["m-3"]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"status": "lost"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01T00:00:00Z"}, "until"),
        ({"since": "2026-05-21T09:00:00Z", "until": "2026-05-21T08:00:00Z"}, "until"),
        ({"plant": "p9"}, "plant"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
    ],
)
def test_it_rejects_a_bad_filter_value_naming_the_parameter(
    client, traffic, operator_token, params, parameter
):
    response = get(client, operator_token, **params)

    assert response.status_code == 400
    assert response.json()["parameter"] == parameter
    assert response.json()["error"].startswith(f"{parameter}: ")


# --- Pagination --------------------------------------------------------------------------------


def test_next_and_previous_walk_every_message_once(client, landscape, ingest_token, operator_token):
    # Three share one timestamp: the id breaks the tie, and a page boundary falls among them.
    times = ["08:00:00", "08:00:00", "08:00:00", "08:01:00", "08:02:00", "08:02:00", "08:03:00"]
    capture(client, ingest_token, *[report(f"m-{i}", t) for i, t in enumerate(times)])
    expected = list(
        Message.objects.order_by("-occurred_at", "-pk").values_list("external_id", flat=True)
    )

    seen, pages, url = [], [], f"{URL}?limit=2"
    while url:
        response = client.get(url, **bearer(operator_token))
        pages.append(ids(response))
        seen.extend(pages[-1])
        url = response.json()["next"]

    assert seen == expected
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    second = client.get(f"{URL}?limit=2", **bearer(operator_token)).json()["next"]
    back = client.get(
        client.get(second, **bearer(operator_token)).json()["previous"], **bearer(operator_token)
    )
    assert ids(back) == pages[0]


def test_the_next_link_keeps_the_filters(client, traffic, operator_token):
    response = get(client, operator_token, status="failed", limit=1)

    query = parse_qs(urlsplit(response.json()["next"]).query)
    assert query["status"] == ["failed"] and query["limit"] == ["1"] and query["cursor"]
    assert ids(client.get(response.json()["next"], **bearer(operator_token))) == ["m-2"]


def test_the_list_runs_a_bounded_number_of_queries(
    client, landscape, ingest_token, operator_token, django_assert_max_num_queries
):
    reports = []
    for i in range(40):
        for minute in range(3):
            reports.append(report(f"m-{i}", f"08:{minute:02d}:{i:02d}", status="failed"))
    capture(client, ingest_token, *reports)
    get(client, operator_token)  # the token's last use is recorded once a minute

    with django_assert_max_num_queries(6):
        response = get(client, operator_token, status="failed", connector="erp-to-mes-orders")

    assert len(ids(response)) == 40
    assert all(len(m["attempts"]) == 3 for m in response.json()["results"])


# --- Who may read ----------------------------------------------------------------------------


def test_an_ingest_token_may_not_read(client, traffic, ingest_token):
    assert get(client, ingest_token).status_code == 403
    assert get(client, ingest_token, f"{URL}/{pk('m-1')}").status_code == 403


def test_a_call_without_a_token_is_refused(client, traffic):
    assert client.get(URL).status_code == 401
    assert client.get(f"{URL}/{pk('m-1')}").status_code == 401


def test_a_viewer_reads_through_the_web_session(client, traffic):
    make_user("vera", "viewer")
    client.login(username="vera", password="pw-vera")

    assert ids(client.get(URL, {"status": "failed"})) == ["m-3", "m-2"]
    assert client.get(f"{URL}/{pk('m-1')}").status_code == 200


def test_a_plant_scoped_token_sees_its_plant_only(client, traffic, operator_token_p1):
    assert ids(get(client, operator_token_p1)) == ["m-2", "m-1"]
    assert get(client, operator_token_p1, f"{URL}/{pk('m-1')}").status_code == 200
    # Another plant's message and an unattributed one do not exist for it.
    assert get(client, operator_token_p1, f"{URL}/{pk('m-3')}").status_code == 404
    assert get(client, operator_token_p1, f"{URL}/{pk('m-4')}").status_code == 404


def test_a_plant_scoped_token_may_not_ask_for_another_plant(client, traffic, operator_token_p1):
    response = get(client, operator_token_p1, plant="p2")

    assert response.status_code == 403
    assert "p1" in response.json()["error"]


def test_an_unknown_message_id_answers_404(client, traffic, operator_token):
    response = get(client, operator_token, f"{URL}/999999")

    assert response.status_code == 404
    assert response.json()["error"] == "no message 999999"


# --- One message -----------------------------------------------------------------------------


@pytest.fixture
def sensitive(landscape):
    Connector.objects.filter(key="erp-to-mes-orders").update(
        sensitive_fields=["customer.email", "headers.authorization"]
    )


def test_a_message_has_headers_and_its_json_payload(client, traffic, admin_token, sensitive):
    body = get(client, admin_token, f"{URL}/{pk('m-1')}").json()

    assert body["external_id"] == "m-1"
    assert body["headers"]["authorization"] == "Basic c2VjcmV0"
    assert body["payload"] == {"order": "WO-1", "customer": {"email": "a@example.com"}}
    assert body["payload_b64"] is None
    assert body["masked"] is False


def test_sensitive_fields_are_masked_for_operators(client, traffic, operator_token, sensitive):
    body = get(client, operator_token, f"{URL}/{pk('m-1')}").json()

    assert body["masked"] is True
    assert body["headers"]["authorization"] == "••••"
    assert body["headers"]["content-type"] == "application/json"
    assert body["payload"] == {"order": "WO-1", "customer": {"email": "••••"}}


def test_a_binary_payload_is_base64(client, landscape, ingest_token, operator_token):
    raw = b"\x00\x01EDIFACT"
    capture(
        client,
        ingest_token,
        report("m-b", "08:00:00", payload_b64=base64.b64encode(raw).decode()),
    )

    body = get(client, operator_token, f"{URL}/{pk('m-b')}").json()

    assert body["content_type"] == "application/octet-stream"
    assert body["payload"] is None
    assert base64.b64decode(body["payload_b64"]) == raw


def test_a_binary_payload_with_sensitive_fields_is_hidden_from_operators(
    client, landscape, ingest_token, operator_token, admin_token, sensitive
):
    encoded = base64.b64encode(b"NAME=Ann;CARD=4111").decode()
    capture(client, ingest_token, report("m-b", "08:00:00", payload_b64=encoded))

    hidden = get(client, operator_token, f"{URL}/{pk('m-b')}").json()
    clear = get(client, admin_token, f"{URL}/{pk('m-b')}").json()

    assert (hidden["payload_b64"], hidden["payload_hidden"]) == (None, True)
    assert (clear["payload_b64"], clear["payload_hidden"]) == (encoded, False)
