"""Systems and connectors pages: recent health per connector, the flow map, plant scoping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test import Client

from integrations.models import Connector, Event, Message, MessageAttempt, Plant, Span, System
from integrations.queries import ConnectorHealth, Health, classify, connector_health
from tests.conftest import make_user

NOW = datetime(2026, 5, 21, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


def store(connector: Connector, external_id: str, at: datetime, **fields: object) -> Message:
    """Store one message with one attempt, as ingest leaves it."""
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
        message=message, at=at, status=message.status, latency_ms=message.latency_ms, received_at=at
    )
    return message


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


@pytest.fixture
def traffic(landscape) -> None:
    """Plant 1's orders: 20 messages in the last hour (one failed, one dead-lettered,
    latencies 100..2000 ms), one without latency, one failed two hours ago.
    Plant 2's orders: 10 delivered messages, 50 ms each."""
    c1, c2 = landscape["c1"], landscape["c2"]
    for i in range(20):
        status = {3: "failed", 7: "dead_lettered"}.get(i, "delivered")
        store(c1, f"c1-{i}", ago(50 - i), status=status, latency_ms=(i + 1) * 100)
    store(c1, "c1-no-latency", ago(40))
    store(c1, "c1-old", ago(120), status="failed", latency_ms=99_000)
    for i in range(10):
        store(c2, f"c2-{i}", ago(30 - i), latency_ms=50)


def skip_native_off_postgresql(portable: bool) -> None:
    if not portable and connection.vendor != "postgresql":
        pytest.skip("percentile_cont is PostgreSQL's; elsewhere the portable query runs")


def login(client: Client, name: str, role: str = "operator", plants=()) -> Client:
    make_user(name, role, plants)
    client.login(username=name, password=f"pw-{name}")
    return client


# --- The rollup --------------------------------------------------------------------------------


@pytest.mark.parametrize("portable", [False, True], ids=["native", "portable"])
def test_the_rollup_gives_failure_ratio_p95_and_last_seen(landscape, traffic, portable):
    skip_native_off_postgresql(portable)
    health = connector_health(NOW - HOUR, NOW, portable=portable)[landscape["c1"].pk]

    assert health.total == 21
    assert (health.failed, health.dead_lettered) == (1, 1)
    assert health.failure_ratio == pytest.approx(2 / 21)
    # percentile_cont over 100..2000: rank 0.95 * 19 = 18.05 lies between 1900 and 2000.
    assert health.p95_latency_ms == pytest.approx(1905.0)
    assert health.last_seen == ago(31)
    assert health.per_minute(HOUR) == pytest.approx(21 / 60)


@pytest.mark.parametrize("portable", [False, True], ids=["native", "portable"])
def test_the_rollup_of_a_single_latency_is_that_latency(landscape, portable):
    skip_native_off_postgresql(portable)
    store(landscape["c1"], "one", ago(5), latency_ms=700)

    health = connector_health(NOW - HOUR, NOW, portable=portable)[landscape["c1"].pk]

    assert health.p95_latency_ms == pytest.approx(700.0)


def test_the_rollup_leaves_out_other_plants_and_older_messages(landscape, traffic):
    health = connector_health(NOW - HOUR, NOW, [landscape["p2"].pk])

    assert set(health) == {landscape["c2"].pk}
    assert health[landscape["c2"].pk].total == 10
    assert connector_health(NOW - 3 * HOUR, NOW - 90 * timedelta(minutes=1)) == {
        landscape["c1"].pk: ConnectorHealth(landscape["c1"].pk, 1, 1, 0, 99_000.0, ago(120))
    }


def health(total: int = 100, failed: int = 0, p95: float | None = 100.0) -> ConnectorHealth:
    return ConnectorHealth(1, total, failed, 0, p95, NOW)


@pytest.mark.parametrize(
    ("figures", "last_seen", "changes", "state"),
    [
        (health(), NOW, {}, Health.OK),
        (health(failed=1), NOW, {}, Health.DEGRADED),
        (health(p95=2500.0), NOW, {}, Health.DEGRADED),
        (health(p95=2000.0), NOW, {}, Health.OK),
        (health(failed=6), NOW, {}, Health.FAILING),
        (health(total=0, p95=None), ago(180), {}, Health.SILENT),
        (health(total=0, p95=None), None, {}, Health.IDLE),
        (health(total=0, p95=None), ago(180), {"pattern": "batch"}, Health.IDLE),
        (health(failed=50), NOW, {"status": "discovered"}, Health.DISCOVERED),
    ],
)
def test_a_connector_is_classified_by_its_figures(landscape, figures, last_seen, changes, state):
    connector = landscape["c1"]  # latency SLO 2000 ms
    for name, value in changes.items():
        setattr(connector, name, value)

    assert classify(connector, figures, last_seen) is state


# --- The connectors page -----------------------------------------------------------------------


def row(body: str, key: str) -> str:
    """Return the table row of a connector, from its opening ``<tr`` tag."""
    start = body.rindex("<tr", 0, body.index(f'data-connector="{key}"'))
    return body[start : body.index("</tr>", start)]


def test_the_connectors_page_shows_each_connectors_recent_health(client, traffic):
    body = login(client, "olga").get("/connectors/").content.decode()

    c1 = row(body, "erp-to-mes-orders")
    assert "erp → mes-p1" in c1 and "order-to-production" in c1 and "critical" in c1
    assert c1.startswith('<tr class="health-failing"')
    assert '<td class="num">21<div' in c1  # messages in the window
    assert "9.5 %" in c1  # 2 of 21
    assert "1905 ms / 2000 ms" in c1
    assert 'href="/messages/?connector=erp-to-mes-orders"' in c1
    c2 = row(body, "erp-to-mes-p2-orders")
    assert c2.startswith('<tr class="health-ok"')
    assert '<td class="num">10<div' in c2 and "0.0 %" in c2


def test_the_window_is_selectable(client, traffic):
    body = login(client, "olga").get("/connectors/", {"window": "24h"}).content.decode()

    # The failed one of two hours ago counts too.
    assert '<td class="num">22<div' in row(body, "erp-to-mes-orders")


def test_a_bad_window_answers_400_naming_it(client, traffic):
    response = login(client, "olga").get("/connectors/", {"window": "2 weeks"})

    assert response.status_code == 400
    assert "window: choose one of 15m, 1h, 6h, 24h, 7d" in response.content.decode()


def test_a_connector_silent_beyond_the_window_is_red(client, landscape):
    store(landscape["c2"], "old", ago(180))

    body = login(client, "olga").get("/connectors/").content.decode()

    assert "health-silent" in row(body, "erp-to-mes-p2-orders").split(">")[0]


def test_a_discovered_connector_without_systems_is_listed_but_not_drawn(client, landscape):
    discovered = Connector.objects.create(key="legacy-ftp", status="discovered")
    store(discovered, "x-1", ago(5), status="failed")

    response = login(client, "olga").get("/connectors/")
    body = response.content.decode()

    assert "health-discovered" in row(body, "legacy-ftp").split(">")[0]
    assert "not drawn" in body
    assert "legacy-ftp" not in str(edge_colours(response.context["figure"]))


# --- The flow map ------------------------------------------------------------------------------


def nodes(figure: dict) -> list[str]:
    (trace,) = [t for t in figure["data"] if t.get("meta") == "systems"]
    return [text.removeprefix("<b>").removesuffix("</b>") for text in trace["text"]]


def edge_colours(figure: dict) -> dict[str, str]:
    """Return each drawn connector's colour (its midpoint marker carries key and colour)."""
    colours = {}
    for trace in figure["data"]:
        if trace.get("meta") in {state.value for state in Health}:
            for key, _url in trace["customdata"]:
                colours[key] = trace["marker"]["color"]
    return colours


def test_the_flow_map_draws_systems_and_connectors_coloured_by_health(client, landscape, traffic):
    store(landscape["c1"], "c1-more-failures", ago(1), status="failed")
    Connector.objects.create(
        key="mes-to-wms-receipts",
        source=landscape["mes1"],
        target=landscape["wms1"],
        latency_slo_ms=100,
    )
    store(Connector.objects.get(key="mes-to-wms-receipts"), "r-1", ago(5), latency_ms=400)
    Connector.objects.create(key="wms-to-erp-stock", source=landscape["wms1"], target=None)

    figure = login(client, "olga").get("/connectors/").context["figure"]

    assert sorted(nodes(figure)) == ["erp", "mes-p1", "mes-p2", "unknown", "wms-p1"]
    assert edge_colours(figure) == {
        "erp-to-mes-orders": Health.FAILING.colour,  # red
        "erp-to-mes-p2-orders": Health.OK.colour,  # green
        "mes-to-wms-receipts": Health.DEGRADED.colour,  # amber: 400 ms over a 100 ms SLO
        "wms-to-erp-stock": Health.IDLE.colour,  # grey: no traffic, target unknown
    }
    hover = str([t.get("hovertext") for t in figure["data"]])
    assert "p95 latency 400 ms — over SLO" in hover


def test_the_flow_map_lays_erp_left_of_mes_and_shared_systems_on_top(client, landscape):
    figure = login(client, "olga").get("/connectors/").context["figure"]

    (trace,) = [t for t in figure["data"] if t.get("meta") == "systems"]
    position = {
        name: (x, y) for name, x, y in zip(nodes(figure), trace["x"], trace["y"], strict=True)
    }
    assert position["erp"][0] < position["mes-p1"][0] == position["wms-p1"][0]
    assert position["erp"][1] > position["mes-p1"][1] > position["mes-p2"][1]


# --- Plant scoping -----------------------------------------------------------------------------


def test_an_operator_of_plant_1_sees_plant_1_and_the_erp_as_a_node_only(client, landscape, traffic):
    store(landscape["c2"], "c2-fail", ago(2), status="failed")
    operator = login(client, "piet", plants=[landscape["p1"]])

    response = operator.get("/connectors/")
    body = response.content.decode()

    assert "erp-to-mes-p2-orders" not in body
    assert sorted(nodes(response.context["figure"])) == ["erp", "mes-p1", "wms-p1"]
    assert set(edge_colours(response.context["figure"])) == {"erp-to-mes-orders"}
    systems = operator.get("/systems/").content.decode()
    assert "mes-p2" not in systems
    erp = systems[systems.index('data-system="erp"') :].split("</tr>")[0]
    # Messages out of the ERP: plant 1's 21 only, not plant 2's 11.
    assert '<td class="num">21</td>' in erp


# --- The systems page --------------------------------------------------------------------------


def test_the_systems_page_counts_each_systems_recent_items(client, landscape, traffic):
    mes1: System = landscape["mes1"]
    for i in range(3):
        Event.objects.create(
            source="/mes/p1",
            event_id=f"e-{i}",
            type="mes.workorder.acknowledged",
            occurred_at=ago(10 + i),
            received_at=ago(10 + i),
            system=mes1,
            plant=landscape["p1"],
        )
    Event.objects.create(
        source="/mes/p1",
        event_id="e-old",
        type="mes.workorder.acknowledged",
        occurred_at=ago(600),
        received_at=ago(600),
        system=mes1,
        plant=landscape["p1"],
    )
    Span.objects.create(
        trace_id="ab" * 16,
        span_id="cd" * 8,
        name="confirm",
        start=ago(3),
        end=ago(3),
        received_at=ago(3),
        system=mes1,
        plant=landscape["p1"],
    )

    body = login(client, "olga").get("/systems/").content.decode()

    mes = body[body.index('data-system="mes-p1"') :].split("</tr>")[0]
    cells = [c.split("</td>")[0] for c in mes.split('<td class="num">')[1:]]
    assert cells == ["3", "1", "0", "21", "0 / 1"]  # events, spans, out, in, connectors
    assert "3\xa0minutes ago" in mes
    assert "MES Plant 1" in mes and "/mes/p1, mes-p1" in mes
    wms = body[body.index('data-system="wms-p1"') :].split("</tr>")[0]
    assert "not in the last 1h" in wms
    assert 'id="flowmap-figure"' in body


def test_a_plant_without_systems_gets_empty_pages(client, landscape, traffic):
    empty = Plant.objects.create(key="p3", name="Plant 3")
    operator = login(client, "nina", plants=[empty])

    for url in ("/connectors/", "/systems/"):
        response = operator.get(url)
        assert response.status_code == 200
        assert nodes(response.context["figure"]) == []
        assert "erp-to-mes-orders" not in response.content.decode()
