"""The console shell in a real browser: log in, navigate, search, log out."""

from __future__ import annotations

import pytest

from tests.conftest import browser_login, make_user

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_an_operator_logs_in_and_searches_a_key(page, live_server, landscape):
    make_user("olga", "operator")
    browser_login(page, live_server.url, "olga")
    assert page.locator(".who").inner_text().startswith("olga · operator")
    assert page.locator("text=erp-to-mes-orders").count() == 1
    page.fill("form.search input[name=q]", "WO-1001")
    page.click("form.search button")
    page.wait_for_url("**/correlations/?key=WO-1001")


def test_a_wrong_password_is_refused(page, live_server, landscape):
    make_user("olga", "operator")
    page.goto(f"{live_server.url}/login/")
    page.fill("input[name=username]", "olga")
    page.fill("input[name=password]", "wrong")
    page.click("button[type=submit]")
    assert "didn't match" in page.locator(".error").inner_text()
