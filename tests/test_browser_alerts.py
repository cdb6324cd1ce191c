"""The alerts page in a real browser: an operator acknowledges an alert and silences its rule."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from monitors.models import Alert, Silence
from tests.alerts_kit import make_alert, make_rule
from tests.conftest import browser_login, make_user, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_acknowledges_and_silences_from_the_alerts_page(page, live_server, landscape):
    now = timezone.now()
    wo = make_rule(
        "wo-not-acknowledged",
        labels={"flow": "order-to-production"},
        runbook="https://runbooks.example/wo-ack",
        summary="Work order {{ key }} not acknowledged by MES",
    )
    beat = make_rule("mes-p1-silent", kind="heartbeat", severity="major")
    cause = make_alert(beat, "mes-p1", plant=landscape["p1"], started_at=now - timedelta(hours=1))
    alert = make_alert(
        wo,
        "WO-1001",
        plant=landscape["p1"],
        started_at=now - timedelta(minutes=25),
        summary="Work order WO-1001 not acknowledged by MES",
    )
    make_alert(
        wo,
        "WO-1002",
        plant=landscape["p1"],
        started_at=now - timedelta(minutes=15),
        summary="Work order WO-1002 not acknowledged by MES",
        suppressed_by=cause,
    )
    make_user("olga", "operator")

    browser_login(page, live_server.url, "olga")
    page.click("nav.mainnav >> text=Alerts")
    page.wait_for_url("**/alerts/")
    row = page.locator(f"#alert-{alert.pk}")
    assert row.locator(".state").inner_text() == "firing"

    row.locator("input[name=comment]").first.fill("calling MES support")
    row.locator("button:has-text('Acknowledge')").click()
    page.wait_for_load_state()
    row = page.locator(f"#alert-{alert.pk}")
    assert row.locator(".state").inner_text() == "acknowledged"
    assert "calling MES support" in row.inner_text()
    assert "Acknowledged wo-not-acknowledged: WO-1001" in page.locator(".flash").inner_text()

    row.locator("summary:has-text('Silence')").click()
    row.locator(".silence-form select[name=duration]").select_option("4h")
    row.locator(".silence-form input[name=comment]").fill("MES upgrade tonight")
    row.locator("button:has-text('Silence rule')").click()
    page.wait_for_load_state()
    row = page.locator(f"#alert-{alert.pk}")
    assert row.locator(".badge.silenced").inner_text() == "silenced"
    assert "MES upgrade tonight" in row.locator(".why").inner_text()
    assert "wo-not-acknowledged" in page.locator("table.silences").inner_text()
    screenshot(page, "alerts")

    assert Alert.objects.get(pk=alert.pk).acknowledged_by == "olga"
    assert Silence.objects.get().created_by == "olga"
