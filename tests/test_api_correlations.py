"""GET /api/v1/correlations/{key}: a key's story as CONTRACT describes it, for scripts."""

from __future__ import annotations

import base64
import json
from datetime import datetime

import pytest
from django.db import connection

from console.models import ApiToken
from integrations import correlation
from tests import test_correlation as story
from tests.conftest import bearer, make_user
from tests.test_correlation import event, message, send_events, send_messages

# The story's fixtures, shared with the engine's tests.
chain_landscape = story.chain_landscape
wo1 = story.wo1

URL = "/api/v1/correlations/"


def get(client, key: str, token: str | None = None):  # type: ignore[no-untyped-def]
    return client.get(URL + key, **(bearer(token) if token else {}))


def test_it_answers_the_contract_shape_in_time_order(client, wo1, operator_token):
    response = get(client, "WO-1", operator_token)

    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    for name in ("events", "spans", "messages", "alerts", "hops"):
        assert isinstance(body[name], list), name
    for name in ("systems", "flow", "keys", "skipped_keys", "truncated", "items"):
        assert name in body
    assert body["key"] == "WO-1"
    for name, time in (("events", "time"), ("spans", "start"), ("messages", "occurred_at")):
        times = [datetime.fromisoformat(item[time]) for item in body[name]]
        assert times == sorted(times), name
    assert [e["event_id"] for e in body["events"]] == ["e1", "e2", "e3", "e4"]
    assert body["events"][0]["time"] == "2026-05-21T08:00:00Z"
    assert body["truncated"] is False


def test_hops_carry_from_to_latency_and_the_slo_verdict(client, wo1, operator_token):
    hops = get(client, "WO-1", operator_token).json()["hops"]

    first = hops[0]
    assert set(first) >= {"from", "to", "latency_ms", "slo_ms", "slo_met", "connector", "failed"}
    message_hop = next(h for h in hops if h["via"] == "message")
    assert (message_hop["from"], message_hop["to"], message_hop["latency_ms"]) == (
        "erp",
        "mes-p1",
        840,
    )
    assert (message_hop["slo_ms"], message_hop["slo_met"]) == (2000, True)
    failed = next(h for h in hops if h["failed"])
    assert (failed["from"], failed["to"], failed["slo_met"]) == ("wms-p1", "tms", None)
    starts = [datetime.fromisoformat(h["at"]) for h in hops]
    assert starts == sorted(starts)


def test_it_says_which_systems_were_reached_and_where_the_flow_stopped(client, wo1, operator_token):
    body = get(client, "L-7", operator_token).json()

    assert [s["key"] for s in body["systems"]] == ["erp", "mes-p1", "wms-p1"]
    assert body["flow"]["stopped"] is True
    assert body["flow"]["stopped_at"] == "wms-p1"
    assert body["flow"]["blocked"] == "tms"
    assert {"key": "WO-1", "via": "subject"}.items() <= next(
        k for k in body["keys"] if k["key"] == "WO-1"
    ).items()


def test_a_message_carries_its_connector_systems_and_attempts(client, wo1, operator_token):
    messages = get(client, "WO-1", operator_token).json()["messages"]

    shipment = messages[-1]
    assert shipment["connector"] == "wms-p1-to-tms-shipments"
    assert (shipment["source_system"], shipment["target_system"]) == ("wms-p1", "tms")
    assert [a["status"] for a in shipment["attempts"]] == ["failed"]
    assert shipment["attempts"][0]["error"] == "TMS answered 503"
    assert messages[0]["payload"] == {"order": "WO-1", "qty": 40}


# --- Who may read what ------------------------------------------------------------------------


def test_it_refuses_a_missing_or_bad_token_with_401(client, wo1):
    assert get(client, "WO-1").status_code == 401
    response = get(client, "WO-1", "andon_not-a-token")
    assert response.status_code == 401
    assert "error" in response.json()


def test_an_ingest_token_may_not_read(client, wo1, ingest_token):
    response = get(client, "WO-1", ingest_token)

    assert response.status_code == 403
    assert response.json()["error"]


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_operator_and_admin_tokens_may_read(client, wo1, role):
    _, token = ApiToken.issue(f"{role}-reader", role)

    assert get(client, "WO-1", token).status_code == 200


def test_a_logged_in_viewer_may_read_with_the_session(client, wo1):
    make_user("vera", "viewer")
    client.login(username="vera", password="pw-vera")

    assert get(client, "WO-1").status_code == 200


def test_a_key_with_nothing_visible_is_a_404_naming_the_key(client, wo1, operator_token):
    response = get(client, "WO-404", operator_token)

    assert response.status_code == 404
    assert response.json() == {"error": "nothing found for key 'WO-404'", "key": "WO-404"}


def test_a_plant_scoped_token_sees_its_plant_only(client, wo1, operator_token_p1):
    _, token_p2 = ApiToken.issue("operator-p2", "operator", wo1["p2"])

    assert get(client, "WO-1", operator_token_p1).status_code == 200
    response = get(client, "WO-1", token_p2)
    assert response.status_code == 404
    assert "WO-1" in response.json()["error"]


def test_a_key_may_contain_slashes(client, chain_landscape, ingest_token, operator_token):
    send_events(client, ingest_token, event("s1", "erp.order.created", "/erp", "ORD/2026/7", 0))

    response = get(client, "ORD/2026/7", operator_token)

    assert response.status_code == 200
    assert response.json()["events"][0]["subject"] == "ORD/2026/7"


# --- Payloads ------------------------------------------------------------------------------------


def shipment_payload(client, token: str) -> dict:  # type: ignore[no-untyped-def]
    messages = get(client, "SH-9", token).json()["messages"]
    return next(m for m in messages if m["external_id"] == "m-3")


def test_sensitive_fields_are_masked_for_an_operator(client, wo1, operator_token):
    shipment = shipment_payload(client, operator_token)

    assert shipment["payload"]["customer"]["email"] != "buyer@example.com"
    assert shipment["payload"]["shipment"] == "SH-9"
    assert shipment["masked"] is True
    assert "buyer@example.com" not in json.dumps(shipment)


def test_an_admin_sees_sensitive_fields_in_clear(client, wo1, admin_token):
    shipment = shipment_payload(client, admin_token)

    assert shipment["payload"]["customer"]["email"] == "buyer@example.com"
    assert shipment["masked"] is False


def test_a_non_json_payload_is_base64_and_hidden_when_it_may_hold_sensitive_fields(
    client, chain_landscape, ingest_token, operator_token, admin_token
):
    body = b"<order><qty>40</qty></order>"
    send_messages(
        client,
        ingest_token,
        message(
            "x-1",
            "erp-to-mes-orders",
            "delivered",
            0,
            correlation_id="WO-X",
            payload_b64=base64.b64encode(body).decode(),
            headers={"content-type": "application/xml"},
        ),
        message(
            "x-2",
            "wms-p1-to-tms-shipments",
            "delivered",
            1,
            correlation_id="WO-X",
            payload_b64=base64.b64encode(body).decode(),
            headers={"content-type": "application/xml"},
        ),
    )

    plain, sensitive = get(client, "WO-X", operator_token).json()["messages"]
    _, sensitive_for_admin = get(client, "WO-X", admin_token).json()["messages"]

    assert base64.b64decode(plain["payload_b64"]) == body and plain["payload"] is None
    assert sensitive["payload_b64"] is None and sensitive["payload_hidden"] is True
    assert base64.b64decode(sensitive_for_admin["payload_b64"]) == body


# --- Cost and documentation ----------------------------------------------------------------------


def test_a_typical_chain_costs_a_bounded_number_of_queries(
    client, wo1, operator_token, django_assert_max_num_queries, monkeypatch
):
    get(client, "WO-1", operator_token)  # the token's last use is recorded once a minute
    # Alert sources (the monitors app's) count their own queries; this bounds correlation's.
    monkeypatch.setattr(correlation, "_alert_sources", [])

    # The token, then per level of keys one probe and one batch of row reads (events, spans,
    # messages and their attempts; one statement each on SQLite); the landscape is cached.
    # L-7 takes three levels, rows being found at the first two.
    limit = 6 if connection.vendor == "postgresql" else 11
    with django_assert_max_num_queries(limit):
        response = get(client, "L-7", operator_token)

    assert response.status_code == 200


def test_the_openapi_document_describes_the_endpoint(client, db):
    document = client.get("/api/schema/").json()

    operation = document["paths"]["/api/v1/correlations/{key}"]["get"]
    assert {"200", "401", "403", "404"} <= set(operation["responses"])
    schema_ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert {"events", "spans", "messages", "alerts", "hops"} <= set(schema["properties"])
