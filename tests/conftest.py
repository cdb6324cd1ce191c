"""Shared fixtures: personas (tokens of each role and plant), a landscape, API clients."""

from __future__ import annotations

import os
import socket

import pytest
from django.test import Client

from console.models import ApiToken
from integrations.models import Connector, Plant, System

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_available(host: str, port: int) -> bool:
    """Return whether something listens on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip with a reason when a service is down; fail instead under CI=true."""
    if service_available(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if CI:
        pytest.fail(f"{message} (CI=true: every service is required)")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _reset_metrics():
    from console import metrics

    metrics.reset()
    yield


@pytest.fixture
def landscape(db):
    """Two plants; ERP (cloud), MES per plant, WMS of plant 1; two connectors."""
    p1 = Plant.objects.create(key="p1", name="Plant 1")
    p2 = Plant.objects.create(key="p2", name="Plant 2")
    erp = System.objects.create(key="erp", name="Cloud ERP", kind="ERP", sources=["/erp", "erp"])
    mes1 = System.objects.create(
        key="mes-p1", name="MES Plant 1", kind="MES", plant=p1, sources=["/mes/p1", "mes-p1"]
    )
    mes2 = System.objects.create(
        key="mes-p2", name="MES Plant 2", kind="MES", plant=p2, sources=["/mes/p2", "mes-p2"]
    )
    wms1 = System.objects.create(key="wms-p1", name="WMS Plant 1", kind="WMS", plant=p1)
    c1 = Connector.objects.create(
        key="erp-to-mes-orders",
        source=erp,
        target=mes1,
        flow="order-to-production",
        criticality="critical",
        latency_slo_ms=2000,
    )
    c2 = Connector.objects.create(
        key="erp-to-mes-p2-orders",
        source=erp,
        target=mes2,
        flow="order-to-production",
    )
    return {
        "p1": p1,
        "p2": p2,
        "erp": erp,
        "mes1": mes1,
        "mes2": mes2,
        "wms1": wms1,
        "c1": c1,
        "c2": c2,
    }


def _token(role: str, plant=None, name: str | None = None) -> str:
    _, raw = ApiToken.issue(name or f"{role}-token", role, plant)
    return raw


@pytest.fixture
def ingest_token(db) -> str:
    """An unscoped ingest token."""
    return _token("ingest")


@pytest.fixture
def ingest_token_p1(landscape) -> str:
    """An ingest token scoped to plant p1."""
    return _token("ingest", landscape["p1"], "ingest-p1")


@pytest.fixture
def operator_token(db) -> str:
    return _token("operator")


@pytest.fixture
def operator_token_p1(landscape) -> str:
    return _token("operator", landscape["p1"], "operator-p1")


@pytest.fixture
def admin_token(db) -> str:
    return _token("admin")


def bearer(token: str) -> dict[str, str]:
    """Return Django test client headers for a bearer token."""
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


@pytest.fixture
def client() -> Client:
    return Client(enforce_csrf_checks=True)


# --- Browser tests ---------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "test-artifacts")


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium driven by Playwright (headless); skipped without it unless CI=true."""
    if not os.path.exists(CHROMIUM):
        if CI:
            pytest.fail(f"{CHROMIUM} is missing (CI=true: browser tests are required)")
        pytest.skip(f"{CHROMIUM} is missing; `make test` installs Debian's chromium")
    # Playwright's sync API runs an event loop in this thread; the ORM calls that tests
    # make beside it are still synchronous.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh browser context and page per test."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    yield tab
    context.close()


def make_user(username: str, role: str, plants=(), password: str | None = None):
    """Create a web user in one of the role groups, optionally limited to some plants."""
    from django.contrib.auth.models import Group, User

    from console.models import PlantAccess

    user = User.objects.create_user(username, password=password or f"pw-{username}")
    # get_or_create: transactional tests flush the groups the migration made.
    user.groups.add(Group.objects.get_or_create(name=role)[0])
    for plant in plants:
        PlantAccess.objects.create(user=user, plant=plant)
    return user


def browser_login(page, base_url: str, username: str, password: str | None = None) -> None:
    """Log in through the real login form."""
    page.goto(f"{base_url}/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password or f"pw-{username}")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/")


def screenshot(page, name: str) -> str:
    """Save a full-page screenshot under test-artifacts/ and return its path."""
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    return path
