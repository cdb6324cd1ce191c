"""The dashboards in a real browser: Plotly charts render, and a live update redraws them."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone

from integrations import rollups
from integrations.models import Connector, Message, MessageAttempt, System
from integrations.rollups import refresh_rollups
from monitors.evaluate import evaluate
from monitors.models import Alert
from tests.conftest import browser_login, make_user, screenshot
from tests.evaluation_helpers import make_rule, store_event

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RULES = (
    {
        "name": "wo-not-acknowledged-p1",
        "kind": "followup",
        "when": {"type": "erp.workorder.released", "data.plant": "p1"},
        "expect": {"type": "mes.workorder.acknowledged", "source": "mes-p1"},
        "key": "subject",
        "within": "10m",
        "severity": "critical",
        "labels": {"flow": "order-to-production", "plant": "p1"},
    },
    {
        "name": "goods-receipt-not-posted",
        "kind": "followup",
        "when": {"type": "mes.workorder.completed"},
        "expect": {"type": "erp.goodsreceipt.posted"},
        "key": "subject",
        "within": "15m",
        "severity": "major",
        "labels": {"flow": "production-to-inventory"},
    },
    {
        "name": "hold-not-applied-p1",
        "kind": "followup",
        "when": {"type": "qms.hold.placed", "data.plant": "p1"},
        "expect": {"type": "wms.hold.applied"},
        "key": "data.lot",
        "within": "15m",
        "severity": "critical",
        "labels": {"flow": "quality-to-corrective-action", "plant": "p1"},
    },
    {
        "name": "machine-alert-without-case",
        "kind": "followup",
        "when": {"type": "iot.asset.alert"},
        "expect": {"type": "eam.case.opened"},
        "key": "data.asset",
        "within": "30m",
        "severity": "minor",
        "labels": {"flow": "maintenance-trigger"},
    },
)


@pytest.fixture
def plant_day(landscape):
    """A day of plant 1: releases mostly acknowledged in time, some late or never; goods
    receipts; holds; machine alerts; and the order messages of both connectors, rolled up."""
    rollups.forget_cached_blocks()
    cache.delete(rollups._watermark_key())
    now = timezone.now()
    rng = random.Random(7)
    for entry in RULES:
        make_rule(entry, created_at=now - timedelta(days=2))
    mes1, wms1 = landscape["mes1"], landscape["wms1"]
    iot = System.objects.create(
        key="iot-p1", name="IoT", kind="IOT", plant=landscape["p1"], sources=["/iot/p1"]
    )
    for n in range(60):
        at = now - timedelta(minutes=20 + n * 23)
        wo = f"WO-{4100 + n}"
        store_event("erp.workorder.released", at, subject=wo, data={"plant": "p1"})
        if n % 13 != 4:
            delay = timedelta(minutes=14) if n % 9 == 0 else timedelta(seconds=rng.randint(5, 300))
            store_event(
                "mes.workorder.acknowledged", at + delay, subject=wo, source="/mes/p1", system=mes1
            )
        store_event("mes.workorder.completed", at + timedelta(hours=1), subject=wo, system=mes1)
        if n % 7:
            store_event("erp.goodsreceipt.posted", at + timedelta(hours=1, minutes=3), subject=wo)
    for n in range(20):
        at = now - timedelta(minutes=30 + n * 67)
        lot = f"L-{700 + n}"
        store_event("qms.hold.placed", at, source="/qms", data={"lot": lot, "plant": "p1"})
        if n % 6:
            store_event(
                "wms.hold.applied", at + timedelta(minutes=4), data={"lot": lot}, system=wms1
            )
    for n in range(6):
        asset = f"PRESS-{n + 1:02d}"
        store_event(
            "iot.asset.alert", now - timedelta(minutes=50 + n * 140), data={"asset": asset},
            system=iot,
        )  # fmt: skip
    release = now - timedelta(minutes=4)
    store_event("erp.workorder.released", release, subject="WO-4999", data={"plant": "p1"})
    evaluate(now=now)
    Alert.objects.filter(key="WO-4104").update(state="acknowledged", acknowledged_by="olga")

    for connector, volume, latency, slo in (
        (landscape["c1"], 300, 700, 2000),
        (landscape["c2"], 120, 300, 1000),
    ):
        Connector.objects.filter(pk=connector.pk).update(latency_slo_ms=slo)
        for i in range(volume):
            at = now - timedelta(minutes=rng.uniform(0, 24 * 60))
            roll = rng.random()
            status = "dead_lettered" if roll < 0.01 else "failed" if roll < 0.05 else "delivered"
            message = Message.objects.create(
                connector=connector,
                external_id=f"{connector.key}-{i}",
                status=status,
                occurred_at=at,
                last_attempt_at=at,
                received_at=at,
                latency_ms=int(rng.lognormvariate(0, 0.5) * latency),
                plant_id=connector.plant_id,
            )
            MessageAttempt.objects.create(
                message=message, at=at, status=status, received_at=at, latency_ms=message.latency_ms
            )
            if status == "failed" and rng.random() < 0.7:  # replayed, as the replay worker records
                MessageAttempt.objects.create(
                    message=message,
                    at=at + timedelta(minutes=30),
                    status="delivered",
                    received_at=now,
                    replay_id=1,
                )
    refresh_rollups(now - timedelta(days=2), now + timedelta(minutes=1))


def wait_for_charts(page, names: tuple[str, ...]) -> None:  # type: ignore[no-untyped-def]
    for name in names:
        page.wait_for_selector(f"#chart-{name}.js-plotly-plot[data-ready='1']")


def test_an_operator_opens_the_plant_dashboard_and_its_charts_render(page, live_server, plant_day):
    make_user("olga", "operator")
    browser_login(page, live_server.url, "olga")

    page.click("nav.mainnav >> text=Dashboards")
    page.wait_for_url("**/dashboards/plant/p1/")
    wait_for_charts(page, ("severity", "flows", "timeline"))

    assert page.locator(".js-plotly-plot").count() == 3
    assert page.locator("#chart-severity .bars .point").count() > 0
    assert page.locator("#chart-flows .indicatorlayer .trace").count() == 3
    tile = page.locator("[data-tile=workorders]")
    assert "overdue" in tile.inner_text()
    assert "1 within deadline" in tile.inner_text()
    screenshot(page, "dashboard")


def test_the_plant_dashboard_redraws_on_a_live_alert_event(page, live_server, plant_day):
    make_user("olga", "operator")
    browser_login(page, live_server.url, "olga")
    page.goto(f"{live_server.url}/dashboards/plant/p1/")
    wait_for_charts(page, ("severity",))
    before = page.locator("[data-tile=alerts] [data-figure-value]").inner_text()

    Alert.objects.filter(state__in=("firing", "acknowledged")).update(state="resolved")
    page.evaluate(
        "document.dispatchEvent(new CustomEvent('andon:alerts', {detail: {plant: 'p1'}}))"
    )

    page.wait_for_function(
        "document.querySelector('[data-tile=alerts] [data-figure-value]').innerText"
        ".trim().startsWith('0')"
    )
    assert before.strip()[0] != "0"


def test_the_it_dashboard_draws_its_charts_for_each_window(page, live_server, plant_day):
    make_user("ivan", "operator")
    browser_login(page, live_server.url, "ivan")
    page.goto(f"{live_server.url}/dashboards/it/")
    wait_for_charts(page, ("throughput", "failures", "latency", "slo", "dead", "replays"))
    assert page.locator("table.connectors tbody tr[data-connector]").count() == 2
    screenshot(page, "dashboard-it")

    page.click("[data-window='7d']")
    page.wait_for_url("**/dashboards/it/?window=7d")
    wait_for_charts(page, ("throughput",))
    assert page.locator(".js-plotly-plot").count() == 6
