"""The message explorer and the flow map in a real browser."""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest
from django.test import Client
from django.utils import timezone

from integrations.models import Connector, Message, System
from tests.conftest import bearer, browser_login, make_user, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def capture(token: str, reports: list[dict[str, object]]) -> None:
    """Record message reports through the ingest endpoint."""
    response = Client().post(
        "/api/v1/messages",
        data=orjson.dumps(reports),
        content_type="application/json",
        **bearer(token),
    )
    assert response.status_code == 202, response.content
    assert response.json()["rejected"] == []


def report(connector: str, external_id: str, minutes_ago: float, status: str, **extra: object):  # type: ignore[no-untyped-def]
    at = timezone.now() - timedelta(minutes=minutes_ago)
    return {
        "id": external_id,
        "connector": connector,
        "status": status,
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
        "correlation_id": f"WO-{external_id}",
        "latency_ms": 300 if status == "delivered" else 2600,
        **({"error": "MES answered 503"} if status == "failed" else {}),
        "payload": {"order": f"WO-{external_id}", "qty": 40},
        **extra,
    }


@pytest.fixture
def traffic(landscape, ingest_token) -> None:
    """Plant 1's orders: 12 delivered, 3 failed; plant 2's orders: 6 delivered."""
    reports = []
    for i in range(15):
        status = "failed" if i % 5 == 0 else "delivered"
        reports.append(report("erp-to-mes-orders", f"p1-{i:02d}", 50 - i * 3, status))
    for i in range(6):
        reports.append(report("erp-to-mes-p2-orders", f"p2-{i:02d}", 40 - i * 4, "delivered"))
    capture(ingest_token, reports)


def table_rows(page) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """Return (connector, status) of every row of the explorer's table."""
    rows = page.locator("table.messages tbody tr[data-id]")
    return [
        (
            rows.nth(i).locator("td.connector").inner_text(),
            rows.nth(i).locator("td.status").inner_text(),
        )
        for i in range(rows.count())
    ]


def test_an_operator_filters_failed_messages_of_a_connector_and_opens_one(
    page, live_server, traffic
):
    make_user("olga", "operator")
    browser_login(page, live_server.url, "olga")

    page.click("nav.mainnav >> text=Messages")
    page.wait_for_url("**/messages/")
    assert len(table_rows(page)) == 21
    page.select_option("select[name=status]", "failed")
    page.select_option("select[name=connector]", "erp-to-mes-orders")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/messages/?*status=failed*")

    assert table_rows(page) == [("erp-to-mes-orders", "failed")] * 3
    assert (
        page.locator("td.status-failed").first.evaluate("cell => getComputedStyle(cell).color")
        == "rgb(198, 40, 40)"
    )

    page.locator("table.messages a.open").first.click()
    page.wait_for_url("**/messages/*/")
    assert page.locator("h1").inner_text().startswith("Message p1-")
    assert page.locator("table.attempts tbody tr").count() == 1
    assert "MES answered 503" in page.locator("table.attempts").inner_text()
    assert '"qty": 40' in page.locator("pre.payload").inner_text()
    page.locator(".keys a").first.click()
    page.wait_for_url("**/correlations/?key=WO-p1-*")


def test_an_operator_of_plant_1_cannot_see_plant_2_messages(page, live_server, traffic, landscape):
    make_user("piet", "operator", [landscape["p1"]])
    browser_login(page, live_server.url, "piet")
    other = Message.objects.filter(connector__key="erp-to-mes-p2-orders").first()

    page.goto(f"{live_server.url}/messages/")
    connectors = {connector for connector, _ in table_rows(page)}
    assert connectors == {"erp-to-mes-orders"}
    assert (
        page.locator("select[name=connector] option", has_text="erp-to-mes-p2-orders").count() == 0
    )
    assert "p2-" not in page.locator("table.messages").inner_text()

    response = page.goto(f"{live_server.url}/messages/{other.pk}/")
    assert response.status == 404


def test_the_connectors_page_draws_the_flow_map(
    page, live_server, traffic, landscape, ingest_token
):
    qms = System.objects.create(key="qms", name="Cloud QMS", kind="QMS")
    wms1 = landscape["wms1"]
    Connector.objects.create(
        key="mes-to-wms-receipts",
        source=landscape["mes1"],
        target=wms1,
        flow="production-confirmation",
        latency_slo_ms=200,
    )
    Connector.objects.create(
        key="qms-to-wms-holds", source=qms, target=wms1, flow="quality-hold", criticality="high"
    )
    Connector.objects.create(
        key="wms-to-erp-receipts", source=wms1, target=landscape["erp"], flow="inventory-posting"
    )
    # Delivered in 300 ms against a 200 ms SLO: amber.
    capture(
        ingest_token,
        [report("mes-to-wms-receipts", f"r-{i}", 20 - i, "delivered") for i in range(8)],
    )
    make_user("olga", "operator")
    browser_login(page, live_server.url, "olga")

    page.click("nav.mainnav >> text=Connectors")
    page.wait_for_selector("#flowmap[data-ready='1']")
    page.wait_for_selector("#flowmap .scatterlayer")
    screenshot(page, "flowmap")

    assert page.locator("#flowmap g.textpoint").count() >= 5  # one label per system
    assert page.locator("#flowmap .legendtext").count() >= 3
    page.locator("#flowmap .legendtext", has_text="failing").wait_for()
