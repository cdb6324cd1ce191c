"""Correlation: one story per key, across events, spans and messages, whatever the arrival order.

The items are sent through the real ingest endpoints, so the business-key index
(KeyRef) holds what production would hold. The story used throughout:

ERP releases WO-1 (trace T1) -> message to MES (840 ms, SLO 2000) -> MES acknowledges
-> MES produces lot L-7 (an event with subject WO-1 and lot L-7) -> lot message to
WMS -> WMS receives L-7 -> the shipment message {lot: L-7, shipment: SH-9} to TMS fails.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from django.test import Client

from console.auth import Principal
from integrations.correlation import (
    Correlation,
    correlate,
    register_alert_source,
    unregister_alert_source,
)
from integrations.models import Connector, System
from tests.conftest import bearer, make_user

T0 = datetime(2026, 5, 21, 8, 0, tzinfo=UTC)
TRACE_1 = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_2 = "5cf92f3577b34da6a3ce929d0e0e4737"
OPERATOR = Principal(name="olga", role="operator")

# --- Sending items through the real ingest endpoints ---------------------------------------


def at(seconds: float) -> datetime:
    """Return the moment ``seconds`` after T0."""
    return T0 + timedelta(seconds=seconds)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def event(
    event_id: str, event_type: str, source: str, subject: str, seconds: float, **extensions: Any
) -> dict[str, Any]:
    """Return a CloudEvent at T0 + ``seconds``."""
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": event_type,
        "subject": subject,
        "time": iso(at(seconds)),
        "data": {"subject": subject},
        **extensions,
    }


def message(
    external_id: str, connector: str, status: str, seconds: float, **fields: Any
) -> dict[str, Any]:
    """Return a message report at T0 + ``seconds``."""
    return {
        "id": external_id,
        "connector": connector,
        "status": status,
        "occurred_at": iso(at(seconds)),
        **fields,
    }


def span(
    trace_id: str,
    span_id: str,
    service: str,
    name: str,
    seconds: float,
    *,
    parent: str = "",
    error: bool = False,
    **attributes: str,
) -> tuple[str, dict[str, Any]]:
    """Return ``(service, OTLP JSON span)`` starting at T0 + ``seconds``, lasting 50 ms."""
    start = int(at(seconds).timestamp() * 1e9)
    body: dict[str, Any] = {
        "traceId": trace_id,
        "spanId": span_id,
        "parentSpanId": parent,
        "name": name,
        "kind": 2,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(start + 50_000_000),
        "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attributes.items()],
    }
    if error:
        body["status"] = {"code": 2, "message": "upstream answered 503"}
    return service, body


def send_events(client: Client, token: str, *events: dict[str, Any]) -> None:
    response = client.post(
        "/api/v1/events",
        data=orjson.dumps(list(events)),
        content_type="application/cloudevents-batch+json",
        **bearer(token),
    )
    assert response.status_code == 202, response.content
    assert response.json()["rejected"] == []


def send_messages(client: Client, token: str, *reports: dict[str, Any]) -> None:
    response = client.post(
        "/api/v1/messages",
        data=orjson.dumps(list(reports)),
        content_type="application/json",
        **bearer(token),
    )
    assert response.status_code == 202, response.content
    assert response.json()["rejected"] == []


def send_spans(client: Client, token: str, *spans: tuple[str, dict[str, Any]]) -> None:
    by_service: dict[str, list[dict[str, Any]]] = {}
    for service, body in spans:
        by_service.setdefault(service, []).append(body)
    document = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": service}}]
                },
                "scopeSpans": [{"scope": {"name": "tests"}, "spans": bodies}],
            }
            for service, bodies in by_service.items()
        ]
    }
    response = client.post(
        "/v1/traces",
        data=orjson.dumps(document),
        content_type="application/json",
        **bearer(token),
    )
    assert response.status_code == 200, response.content
    assert "partialSuccess" not in response.json() or not response.json()["partialSuccess"]


@pytest.fixture
def chain_landscape(landscape) -> dict[str, Any]:
    """The shared landscape plus TMS and the MES -> WMS -> TMS connectors of plant 1."""
    tms = System.objects.create(key="tms", name="Carrier TMS", kind="TMS")
    lots = Connector.objects.create(
        key="mes-p1-to-wms-p1-lots",
        source=landscape["mes1"],
        target=landscape["wms1"],
        latency_slo_ms=1000,
    )
    shipments = Connector.objects.create(
        key="wms-p1-to-tms-shipments",
        source=landscape["wms1"],
        target=tms,
        sensitive_fields=["customer.email"],
    )
    return {**landscape, "tms": tms, "lots": lots, "shipments": shipments}


def wo1_story() -> dict[str, list]:
    """Return the items of WO-1's story by kind (see the module docstring)."""
    return {
        "events": [
            event(
                "e1",
                "erp.workorder.released",
                "/erp",
                "WO-1",
                0,
                plant="p1",
                traceparent=f"00-{TRACE_1}-00f067aa0ba902b7-01",
            ),
            event("e2", "mes.workorder.acknowledged", "/mes/p1", "WO-1", 1.2, causationid="e1"),
            event("e3", "mes.lot.produced", "/mes/p1", "WO-1", 600, lot="L-7", causationid="e2"),
            event("e4", "wms.goods.received", "wms-p1", "L-7", 600.7, causationid="e3"),
        ],
        "messages": [
            message(
                "m-1",
                "erp-to-mes-orders",
                "delivered",
                0.1,
                latency_ms=840,
                correlation_id="WO-1",
                business_keys={"workorder": "WO-1"},
                payload={"order": "WO-1", "qty": 40},
            ),
            message(
                "m-2",
                "mes-p1-to-wms-p1-lots",
                "delivered",
                600.2,
                latency_ms=400,
                business_keys={"lot": "L-7"},
            ),
            message(
                "m-3",
                "wms-p1-to-tms-shipments",
                "failed",
                1200,
                error="TMS answered 503",
                correlation_id="SH-9",
                business_keys={"lot": "L-7", "shipment": "SH-9"},
                payload={"shipment": "SH-9", "customer": {"email": "buyer@example.com"}},
            ),
        ],
        "spans": [
            span(
                TRACE_1,
                "00f067aa0ba902b7",
                "erp",
                "POST /workorders/release",
                0,
                **{"andon.correlation_id": "WO-1", "andon.plant": "p1"},
            ),
            span(
                TRACE_1,
                "10f067aa0ba902b7",
                "mes-p1",
                "POST /orders",
                0.3,
                parent="00f067aa0ba902b7",
                **{"andon.correlation_id": "WO-1"},
            ),
        ],
    }


def send_story(client: Client, token: str, story: dict[str, list], reverse: bool = False) -> None:
    """Send a story's items, one request per item, in order or in reverse."""
    sends = [(send_events, e) for e in story["events"]]
    sends += [(send_messages, m) for m in story["messages"]]
    sends += [(send_spans, s) for s in story["spans"]]
    for send, item in reversed(sends) if reverse else sends:
        send(client, token, item)


@pytest.fixture
def wo1(client, chain_landscape, ingest_token) -> dict[str, Any]:
    send_story(client, ingest_token, wo1_story())
    return chain_landscape


def titles(result: Correlation) -> list[str]:
    return [item.title for item in result.items]


def story_ids(result: Correlation) -> set[tuple[str, str]]:
    """Return the items as stable identities (not database ids)."""
    return (
        {("event", e["event_id"]) for e in result.events}
        | {("span", s["span_id"]) for s in result.spans}
        | {("message", m["external_id"]) for m in result.messages}
    )


WO1_IDS = {
    ("event", "e1"),
    ("event", "e2"),
    ("event", "e3"),
    ("event", "e4"),
    ("message", "m-1"),
    ("message", "m-2"),
    ("message", "m-3"),
    ("span", "00f067aa0ba902b7"),
    ("span", "10f067aa0ba902b7"),
}


# --- Finding the story -----------------------------------------------------------------------


def test_it_finds_a_work_orders_events_spans_and_messages_in_time_order(wo1):
    result = correlate("WO-1", OPERATOR)

    assert story_ids(result) == WO1_IDS
    times = [item.time for item in result.items]
    assert times == sorted(times)
    assert [e["event_id"] for e in result.events] == ["e1", "e2", "e3", "e4"]
    assert [m["external_id"] for m in result.messages] == ["m-1", "m-2", "m-3"]
    assert result.items[0].title == "erp.workorder.released WO-1"
    assert not result.truncated


@pytest.mark.parametrize("key", ["L-7", "SH-9"])
def test_a_key_further_down_the_chain_finds_the_whole_work_order_story(wo1, key):
    result = correlate(key, OPERATOR)

    assert story_ids(result) == WO1_IDS
    via = {k.key: k.via for k in result.keys}
    assert via[key] == "searched"
    assert via["WO-1"] == "subject"


def test_the_story_is_the_same_whatever_order_its_items_arrived_in(
    client, chain_landscape, ingest_token
):
    send_story(client, ingest_token, wo1_story(), reverse=True)

    for key in ("WO-1", "L-7", "SH-9"):
        assert story_ids(correlate(key, OPERATOR)) == WO1_IDS


def test_a_message_id_shows_the_story_of_its_message(wo1):
    result = correlate("m-3", OPERATOR)

    assert story_ids(result) == WO1_IDS


def test_an_events_traceparent_finds_the_spans_of_its_trace_and_back(
    client, chain_landscape, ingest_token
):
    # The spans carry no business key: only the trace id ties them to the work order.
    send_events(
        client,
        ingest_token,
        event(
            "e9",
            "erp.workorder.released",
            "/erp",
            "WO-2",
            0,
            traceparent=f"00-{TRACE_2}-00f067aa0ba902b7-01",
        ),
    )
    send_spans(
        client,
        ingest_token,
        span(TRACE_2, "00f067aa0ba902b7", "erp", "POST /workorders/release", 0),
        span(TRACE_2, "20f067aa0ba902b7", "mes-p1", "POST /orders", 0.2, parent="00f067aa0ba902b7"),
    )

    from_key = correlate("WO-2", OPERATOR)
    from_trace = correlate(TRACE_2, OPERATOR)

    assert [s["span_id"] for s in from_key.spans] == ["00f067aa0ba902b7", "20f067aa0ba902b7"]
    assert story_ids(from_trace) == story_ids(from_key)
    assert {k.key: k.via for k in from_key.keys}[TRACE_2] == "trace_id"


def test_causation_is_followed_to_the_cause_and_to_the_effects(
    client, chain_landscape, ingest_token
):
    send_events(
        client,
        ingest_token,
        event("c1", "qms.hold.placed", "/mes/p1", "HOLD-1", 0),
        event("c2", "wms.stock.blocked", "wms-p1", "BIN-4", 5, causationid="c1"),
        event("c3", "erp.shipment.blocked", "/erp", "DEL-8", 9, causationid="c2"),
    )

    result = correlate("BIN-4", OPERATOR)

    assert [e["event_id"] for e in result.events] == ["c1", "c2", "c3"]


# --- Hubs, depth and budget ------------------------------------------------------------------


@pytest.fixture
def shared_plant_code(client, chain_landscape, ingest_token, settings) -> None:
    """Five work orders whose release messages all carry the business key site=P1."""
    settings.ANDON_CORRELATION_HUB_LIMIT = 3
    send_messages(
        client,
        ingest_token,
        *[
            message(
                f"r-{n}",
                "erp-to-mes-orders",
                "delivered",
                n,
                correlation_id=f"WO-{n}",
                business_keys={"site": "P1"},
            )
            for n in range(5)
        ],
    )


def test_a_key_tying_more_than_the_hub_limit_is_not_followed(shared_plant_code):
    result = correlate("WO-2", OPERATOR)

    assert [m["external_id"] for m in result.messages] == ["r-2"]
    assert [(k.key, k.via, k.limit) for k in result.skipped_keys] == [("P1", "site", 3)]
    assert result.skipped_keys[0].count > 3
    assert not result.truncated


def test_the_searched_key_is_shown_even_when_it_is_a_hub_but_capped(shared_plant_code):
    result = correlate("P1", OPERATOR)

    assert len(result.messages) == 5
    assert result.truncated
    assert "P1 ties more than 3 items" in result.truncated_reasons
    assert result.keys[0].key == "P1"


def test_the_item_budget_caps_a_story(wo1):
    result = correlate("WO-1", OPERATOR, limit=3)

    assert len(result.items) == 3
    assert result.truncated
    assert result.truncated_reasons == ["stopped at 3 items"]


def test_the_depth_bounds_how_far_keys_are_followed(wo1):
    # SH-9 -> L-7 (depth 1) -> WO-1 (depth 2): at depth 1 WO-1's release is out of reach.
    shallow = correlate("SH-9", OPERATOR, depth=1)
    deep = correlate("SH-9", OPERATOR, depth=2)

    assert ("event", "e1") not in story_ids(shallow)
    assert shallow.truncated
    assert ("event", "e1") in story_ids(deep)


# --- Plant scoping ----------------------------------------------------------------------------


def test_a_plant_scoped_principal_sees_nothing_of_another_plants_story(wo1):
    p2 = Principal(name="op2", role="operator", plant_ids=frozenset({wo1["p2"].pk}))

    result = correlate("WO-1", p2)

    assert not result.found
    assert result.items == [] and result.keys[0].key == "WO-1"


def test_keys_reachable_only_through_items_of_another_plant_are_not_followed(
    client, chain_landscape, ingest_token
):
    # A (plant 1) carries K1 and K2; B (plant 2) carries K2 and K3; C (plant 1) carries K3.
    send_events(
        client,
        ingest_token,
        event("a", "mes.lot.produced", "/mes/p1", "K1", 0, lot="K2"),
        event("b", "mes.lot.split", "/mes/p2", "K2", 1, lot="K3"),
        event("c", "mes.lot.consumed", "/mes/p1", "K3", 2),
    )
    p1 = Principal(name="op1", role="operator", plant_ids=frozenset({chain_landscape["p1"].pk}))

    everyone = correlate("K1", OPERATOR)
    plant_1 = correlate("K1", p1)

    assert [e["event_id"] for e in everyone.events] == ["a", "b", "c"]
    assert [e["event_id"] for e in plant_1.events] == ["a"]
    assert "K3" not in {k.key for k in plant_1.keys}


def test_unattributed_items_are_hidden_from_a_plant_scoped_principal(
    client, chain_landscape, ingest_token
):
    send_events(client, ingest_token, event("u1", "erp.order.created", "/erp", "SO-1", 0))
    p1 = Principal(name="op1", role="operator", plant_ids=frozenset({chain_landscape["p1"].pk}))

    assert correlate("SO-1", OPERATOR).found
    assert not correlate("SO-1", p1).found


# --- Hops, systems and the flow ----------------------------------------------------------------


def hop_summary(result: Correlation) -> list[tuple[str, str, str, float | None, bool | None]]:
    return [(h.via, h.source, h.target, h.latency_ms, h.slo_met) for h in result.hops]


def test_a_message_is_a_hop_with_its_latency_checked_against_the_connectors_slo(wo1):
    result = correlate("WO-1", OPERATOR)

    hop = next(h for h in result.hops if h.item == ("m", result.messages[0]["id"]))
    assert (hop.source, hop.target, hop.latency_ms) == ("erp", "mes-p1", 840)
    assert (hop.connector, hop.slo_ms, hop.slo_met, hop.failed) == (
        "erp-to-mes-orders",
        2000,
        True,
        False,
    )


def test_a_hop_slower_than_the_slo_is_a_breach(client, chain_landscape, ingest_token):
    send_messages(
        client,
        ingest_token,
        message(
            "slow", "erp-to-mes-orders", "delivered", 0, latency_ms=2600, correlation_id="WO-5"
        ),
    )

    (hop,) = correlate("WO-5", OPERATOR).hops

    assert (hop.latency_ms, hop.slo_ms, hop.slo_met) == (2600, 2000, False)


def test_a_hop_without_an_slo_says_so_with_null(wo1):
    result = correlate("SH-9", OPERATOR)

    hop = next(h for h in result.hops if h.connector == "wms-p1-to-tms-shipments")
    assert (hop.source, hop.target, hop.slo_ms, hop.slo_met, hop.failed) == (
        "wms-p1",
        "tms",
        None,
        None,
        True,
    )


def test_a_span_whose_parent_is_in_another_system_is_a_hop_between_them(wo1):
    result = correlate("WO-1", OPERATOR)

    hop = next(h for h in result.hops if h.via == "span")
    assert (hop.source, hop.target, hop.latency_ms) == ("erp", "mes-p1", 300.0)
    # No connector came with the span: the one between the two systems is named, with its SLO.
    assert (hop.connector, hop.slo_ms, hop.slo_met) == ("erp-to-mes-orders", 2000, True)


def test_consecutive_events_of_a_key_in_different_systems_are_a_hop(wo1):
    result = correlate("WO-1", OPERATOR)

    event_hops = [(h.source, h.target, h.latency_ms) for h in result.hops if h.via == "event"]
    # released (erp) -> acknowledged (mes-p1) by WO-1; lot produced (mes-p1) -> received by L-7.
    assert event_hops == [("erp", "mes-p1", 1200.0), ("mes-p1", "wms-p1", 700.0)]
    assert [h.at for h in result.hops] == sorted(h.at for h in result.hops)


def test_systems_are_listed_in_order_of_first_appearance_with_counts(wo1):
    result = correlate("WO-1", OPERATOR)

    assert [s.key for s in result.systems] == ["erp", "mes-p1", "wms-p1"]
    erp = result.systems[0]
    assert (erp.name, erp.kind) == ("Cloud ERP", "ERP")
    assert (erp.events, erp.spans, erp.messages) == (1, 1, 1)
    wms = result.systems[2]
    assert (wms.events, wms.messages, wms.failed) == (1, 1, 1)


def test_the_flow_stops_where_the_last_message_of_a_connector_failed(wo1):
    flow = correlate("WO-1", OPERATOR).flow

    assert flow.stopped
    assert (flow.stopped_at, flow.blocked, flow.connector) == (
        "wms-p1",
        "tms",
        "wms-p1-to-tms-shipments",
    )
    assert flow.reached == ["erp", "mes-p1", "wms-p1"]
    assert flow.last == "wms-p1"
    assert "(m-3) failed" in flow.reason and "TMS answered 503" in flow.reason
    assert "nothing arrived in tms" in flow.reason


def test_the_flow_goes_on_when_a_later_attempt_of_the_connector_was_delivered(
    wo1, client, ingest_token
):
    send_messages(
        client,
        ingest_token,
        message("m-3", "wms-p1-to-tms-shipments", "delivered", 1500, latency_ms=90),
    )

    result = correlate("WO-1", OPERATOR)

    assert not result.flow.stopped
    assert result.flow.reached == ["erp", "mes-p1", "wms-p1", "tms"]
    assert result.flow.last == "tms"
    assert result.flow.reason.startswith("Reached 4 systems (erp → mes-p1 → wms-p1 → tms)")
    attempts = result.messages[-1]["attempts"]
    assert [a["status"] for a in attempts] == ["failed", "delivered"]


def test_a_changed_slo_applies_to_the_next_correlation(client, chain_landscape, ingest_token):
    send_messages(
        client,
        ingest_token,
        message(
            "slow", "erp-to-mes-orders", "delivered", 0, latency_ms=2600, correlation_id="WO-5"
        ),
    )
    assert correlate("WO-5", OPERATOR).hops[0].slo_met is False

    chain_landscape["c1"].latency_slo_ms = 3000
    chain_landscape["c1"].save()

    assert correlate("WO-5", OPERATOR).hops[0].slo_met is True


def test_a_connector_discovered_by_ingest_is_known_at_once(client, chain_landscape, ingest_token):
    correlate("WO-1", OPERATOR)  # the landscape is read (and kept) before the discovery
    send_messages(
        client, ingest_token, message("n-1", "new-connector", "received", 0, correlation_id="WO-6")
    )

    (found,) = correlate("WO-6", OPERATOR).messages

    assert found["connector"] == "new-connector"
    assert (found["source_system"], found["target_system"]) == (None, None)


# --- Alerts -----------------------------------------------------------------------------------


def test_alerts_come_from_registered_sources_for_the_keys_followed(wo1):
    asked: list[list[str]] = []

    def source(keys: list[str], principal: Principal) -> list[dict[str, Any]]:
        asked.append(keys)
        return [{"id": 1, "rule": "shipment-failed", "key": "SH-9", "started_at": iso(at(1300))}]

    register_alert_source(source)
    register_alert_source(source)
    try:
        result = correlate("WO-1", OPERATOR)
    finally:
        unregister_alert_source(source)

    assert [a["rule"] for a in result.alerts] == ["shipment-failed"]
    assert {"WO-1", "L-7", "SH-9"} <= set(asked[0])
    assert correlate("WO-1", OPERATOR).alerts == []


def test_nothing_found_is_an_empty_result_not_an_error(chain_landscape):
    result = correlate("WO-404", OPERATOR)

    assert not result.found
    assert (result.events, result.spans, result.messages, result.hops) == ([], [], [], [])


# --- The page ---------------------------------------------------------------------------------


def page_of(
    client: Client, key: str, username: str, role: str = "operator", plants: tuple = ()
) -> Any:
    """Log in as a new user of ``role`` (and ``plants``) and open the key's correlation page."""
    make_user(username, role, plants)
    client.login(username=username, password=f"pw-{username}")
    return client.get("/correlations/", {"key": key})


def test_the_page_draws_the_timeline_with_a_lane_per_system(client, wo1):
    response = page_of(client, "L-7", "olga")

    assert response.status_code == 200
    figure = response.context["figure"]
    assert figure["layout"]["yaxis"]["ticktext"] == [
        "erp",
        "mes-p1",
        "wms-p1",
        "tms (not reached)",
    ]
    body = response.content.decode()
    assert 'id="timeline-figure"' in body and "plotly.min.js" in body
    assert "Stopped at wms-p1" in body
    assert f'href="/messages/{response.context["result"].messages[-1]["id"]}/"' in body


def test_the_page_masks_sensitive_fields_for_an_operator(client, wo1):
    body = page_of(client, "SH-9", "olga").content.decode()

    assert "buyer@example.com" not in body
    assert "sensitive fields masked" in body


def test_an_admin_sees_sensitive_fields_on_the_page(client, wo1):
    body = page_of(client, "SH-9", "ada", role="admin").content.decode()

    assert "buyer@example.com" in body


def test_the_page_says_which_hub_keys_it_did_not_follow(client, shared_plant_code):
    body = page_of(client, "WO-2", "vera", role="viewer").content.decode()

    assert "Not followed (hub keys)" in body
    assert "site=P1" in body


def test_the_page_says_nothing_was_found_for_an_unknown_key(client, chain_landscape):
    response = page_of(client, "WO-404", "olga")

    assert response.status_code == 404
    assert "Nothing found for WO-404" in response.content.decode()


def test_the_page_without_a_key_asks_for_one(client, chain_landscape):
    response = page_of(client, "", "olga")

    assert response.status_code == 200
    assert "Type a work order" in response.content.decode()


def test_the_page_hides_another_plants_story(client, wo1):
    response = page_of(client, "WO-1", "piet", plants=(wo1["p2"],))

    assert response.status_code == 404
    assert "Nothing found for WO-1" in response.content.decode()
