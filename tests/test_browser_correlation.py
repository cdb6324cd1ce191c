"""The correlation page in a real browser: search a key, see its timeline, its failed hop."""

from __future__ import annotations

import pytest

from tests import test_correlation as story
from tests.conftest import browser_login, make_user, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# WO-1's story, shared with the engine's tests.
chain_landscape = story.chain_landscape
wo1 = story.wo1


def search(page, key: str) -> None:  # type: ignore[no-untyped-def]
    page.fill("form.search input[name=q]", key)
    page.click("form.search button")
    page.wait_for_url(f"**/correlations/?key={key}")


def test_an_operator_follows_a_lot_to_its_work_orders_timeline(
    page, live_server, wo1, client, ingest_token
):
    # A change of the order that took longer than the connector's 2000 ms SLO.
    story.send_messages(
        client,
        ingest_token,
        story.message(
            "m-1b", "erp-to-mes-orders", "delivered", 300, latency_ms=2600, correlation_id="WO-1"
        ),
    )
    make_user("olga", "operator")
    browser_login(page, live_server.url, "olga")

    search(page, "L-7")

    plot = page.locator("#timeline.js-plotly-plot")
    plot.wait_for()
    lanes = plot.locator(".ytick text").all_text_contents()
    assert lanes == ["erp", "mes-p1", "wms-p1", "tms (not reached)"]
    assert plot.locator(".scatterlayer .trace").count() >= 4
    assert "SLO 2,000 ms exceeded (2,600 ms)" in plot.locator(".annotation").all_text_contents()
    failed = page.locator("table.hops tr.failed")
    assert failed.count() == 1
    assert "wms-p1" in failed.inner_text() and "tms" in failed.inner_text()
    reason = page.locator(".flow-reason").inner_text()
    assert reason.startswith("Stopped at wms-p1") and "TMS answered 503" in reason
    assert page.locator(".keys-followed").inner_text().count("WO-1") == 1
    assert page.locator("table.items tr.item").count() == 10
    screenshot(page, "correlation")


def test_an_operator_of_plant_1_finds_nothing_of_plant_2(
    page, live_server, chain_landscape, client, ingest_token
):
    story.send_events(
        client,
        ingest_token,
        story.event("p2-1", "mes.workorder.started", "/mes/p2", "WO-2002", 0),
    )
    make_user("piet", "operator", [chain_landscape["p1"]])
    browser_login(page, live_server.url, "piet")

    search(page, "WO-2002")

    assert "Nothing found for WO-2002" in page.locator(".nothing-found").inner_text()
    assert page.locator(".js-plotly-plot").count() == 0
