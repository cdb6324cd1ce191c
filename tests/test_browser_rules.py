"""The rule editor in a real browser: an admin fixes a rule, backtests it, saves it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.models import Event
from monitors.models import Rule
from monitors.ruleset import apply_specs, parse_rules_text
from tests.conftest import browser_login, make_user, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

RULES = """
rules:
  - name: wo-not-acknowledged
    kind: followup
    when: {type: erp.workorder.released}
    expect: {type: mes.workorder.acknowledged}
    key: subject
    within: 10m
    severity: critical
"""


def test_an_admin_fixes_a_rule_backtests_it_and_saves_it(page, live_server, landscape):
    apply_specs(parse_rules_text(RULES), "loadrules")
    now = timezone.now()
    for n in range(3):
        at = now - timedelta(hours=5 + n)
        Event.objects.create(
            source="/erp",
            event_id=f"e-{n}",
            type="erp.workorder.released",
            subject=f"WO-{n}",
            occurred_at=at,
            received_at=at,
        )
    make_user("ada", "admin")
    browser_login(page, live_server.url, "ada")

    page.click("nav.mainnav >> text=Rules")
    screenshot(page, "rules-list")
    page.click("text=wo-not-acknowledged")
    editor = page.locator("textarea[name=definition]")
    editor.fill(editor.input_value().replace("within: 10m", "within: ten minutes"))
    page.click("button[value=save]")
    assert "within: must be a duration" in page.locator("ul.errors").inner_text()
    assert "ten minutes" in editor.input_value()

    editor.fill(editor.input_value().replace("within: ten minutes", "within: 15m"))
    page.select_option("select[name=days]", "3")
    page.click("button[value=backtest]")
    assert page.locator("#backtest b.alerts").inner_text() == "3"
    screenshot(page, "rules-backtest")
    assert Rule.objects.get(name="wo-not-acknowledged").version == 1

    page.click("button[value=save]")
    assert "saved (update, version 2)" in page.locator(".flash").inner_text()
    page.click("text=History")
    assert page.locator("td.actor").first.inner_text() == "ada"
    assert page.locator("pre.diff .add").first.inner_text() == "+within: 15m"
    screenshot(page, "rules-history")
