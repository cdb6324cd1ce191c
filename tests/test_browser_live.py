"""The alerts page updates itself: an alert raised through ingest appears without a reload.

pytest-django's ``live_server`` speaks WSGI only, so the console is served for
real by Daphne (ASGI: HTTP and websockets) in a subprocess against the test
database, with the production channel layer, channels-redis on Redis db 5: the
evaluation pass runs in this process and its update crosses Redis to the
server, then the websocket, then the page.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from urllib.parse import quote

import pytest
import requests
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from console import live
from monitors.evaluate import PassReport, evaluate
from tests.conftest import browser_login, make_user, require_service, screenshot
from tests.evaluation_helpers import make_rule

pytestmark = [
    pytest.mark.browser,
    pytest.mark.services,
    pytest.mark.django_db(transaction=True),
]

REDIS_DB5 = "redis://127.0.0.1:6379/5"
STARTUP_S = 30

QUALITY_HOLD = {
    "name": "quality-hold-raised",
    "kind": "match",
    "when": {"type": "mes.quality.hold"},
    "key": "subject",
    "resolve_after": "1h",
    "severity": "major",
    "summary": "Quality hold {{ key }} raised",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url() -> str:
    """Return a DATABASE_URL for the test database this test runs against."""
    db = django_settings.DATABASES["default"]
    credentials = quote(db.get("USER") or "postgres")
    if db.get("PASSWORD"):
        credentials += ":" + quote(db["PASSWORD"])
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    return f"postgres://{credentials}@{host}:{port}/{db['NAME']}"


@pytest.fixture
def asgi_server(settings, transactional_db):
    """Serve console.asgi with Daphne on a free port; yield its base URL."""
    require_service("Redis", "127.0.0.1", 6379)
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("a second process can share the test database only on PostgreSQL")
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_DB5]},
        }
    }
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "DATABASE_URL": database_url(),
        "REDIS_URL": REDIS_DB5,
    }
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
        + ["console.asgi:application"],
        cwd=django_settings.BASE_DIR,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if server.poll() is not None:
                log.seek(0)
                pytest.fail(f"daphne exited: {log.read().decode(errors='replace')[-2000:]}")
            try:
                if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"daphne did not answer on {base} within {STARTUP_S} s")
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


def evaluation_pass() -> PassReport:
    """Run one evaluation pass in a thread of its own, as the embedded scheduler does."""
    reports: list[PassReport] = []

    def work() -> None:
        try:
            reports.append(evaluate())
        finally:
            connection.close()

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    (report,) = reports
    return report


def hold(source: str, subject: str, ident: str) -> dict:
    moment = timezone.now() - timedelta(seconds=5)
    return {
        "specversion": "1.0",
        "id": ident,
        "source": source,
        "type": "mes.quality.hold",
        "subject": subject,
        "time": moment.isoformat().replace("+00:00", "Z"),
        "data": {"reason": "micro-cracks"},
    }


def test_a_new_alert_appears_on_the_alerts_page_without_a_reload(
    page, asgi_server, landscape, ingest_token
):
    make_rule(QUALITY_HOLD)
    make_user("olga", "operator", [landscape["p1"]])

    browser_login(page, asgi_server, "olga")
    page.goto(f"{asgi_server}/alerts/")
    page.wait_for_selector("html[data-live-state=open]")
    assert "No alerts match" in page.locator("#alert-rows").inner_text()
    page.evaluate(
        """() => {
            window.pageIdentity = "the same page";
            window.alertEvents = [];
            document.addEventListener("andon:alerts", (e) => window.alertEvents.push(e.detail));
        }"""
    )
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    answer = requests.post(
        f"{asgi_server}/api/v1/events",
        json=[hold("/mes/p1", "HOLD-P1", "h-1"), hold("/mes/p2", "HOLD-P2", "h-2")],
        headers={
            "Authorization": f"Bearer {ingest_token}",
            "Content-Type": "application/cloudevents-batch+json",
        },
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 2
    assert evaluation_pass().fired == 2

    row = page.locator("#alert-rows tr:has-text('HOLD-P1')")
    row.wait_for()
    assert "live-new" in (row.get_attribute("class") or "")
    assert "Quality hold HOLD-P1 raised" in row.inner_text()
    assert "HOLD-P2" not in page.locator("#alert-rows").inner_text()  # plant 2 is not hers
    assert "1 alert." in page.locator("#alert-count").inner_text()
    assert page.locator("[data-live-updated]").inner_text() == "updated just now"
    events = page.evaluate("window.alertEvents")
    assert [(e["key"], e["state"], e["plant"]) for e in events] == [("HOLD-P1", "firing", "p1")]
    assert page.evaluate("window.pageIdentity") == "the same page"
    assert navigations == []
    screenshot(page, "live_alerts")


# Markup as the replay job page and the dashboards (other features' pages) opt in with.
REPLAY_AND_DASHBOARD = """
  <div id="job" data-live-replay="42" data-live="health">
    delivered <span data-live-field="delivered">0</span> of <span data-live-field="total">?</span>
    <progress data-live-field="delivered" max="10" value="0"></progress>
  </div>"""


def test_a_replay_page_and_a_dashboard_hear_their_streams_as_dom_events(
    page, asgi_server, landscape
):
    p1, p2 = landscape["p1"].pk, landscape["p2"].pk
    make_user("olga", "operator", [landscape["p1"]])
    browser_login(page, asgi_server, "olga")  # lands on the overview, which opts in to nothing
    assert page.evaluate("window.AndonLive.streams") == []
    page.evaluate(
        """(markup) => {
            document.querySelector("main").insertAdjacentHTML("beforeend", markup);
            window.jobEvents = [];
            window.healthEvents = [];
            document.getElementById("job").addEventListener(
                "andon:replays", (e) => window.jobEvents.push(e.detail));
            document.addEventListener("andon:health", (e) => window.healthEvents.push(e.detail));
            window.AndonLive.rescan();
        }""",
        REPLAY_AND_DASHBOARD,
    )
    page.wait_for_selector("html[data-live-state=open]")

    live.publish("replays", {"job_id": 41, "delivered": 1, "total": 5}, p1)
    live.publish("replays", {"job_id": 42, "delivered": 7, "total": 10}, p1)
    live.publish(
        "health",
        {
            "kind": "health",
            "connectors": [
                {"key": "erp-to-mes-orders", "plant_id": p1, "state": "ok"},
                {"key": "erp-to-mes-p2-orders", "plant_id": p2, "state": "failing"},
            ],
            "admin": {"requests_per_s_by_status": {}},
        },
    )
    page.wait_for_function("window.healthEvents.length === 1")

    (health,) = page.evaluate("window.healthEvents")
    assert health == {
        "kind": "health",
        "connectors": [{"key": "erp-to-mes-orders", "plant_id": p1, "state": "ok"}],
    }
    assert page.evaluate("window.jobEvents") == [{"job_id": 42, "delivered": 7, "total": 10}]
    assert page.locator("#job span[data-live-field=delivered]").inner_text() == "7"
    assert page.locator("#job span[data-live-field=total]").inner_text() == "10"
    assert page.evaluate("document.querySelector('#job progress').value") == 7


def test_the_plant_dashboard_shows_an_alert_raised_through_ingest_without_a_reload(
    page, asgi_server, landscape, ingest_token
):
    make_rule(QUALITY_HOLD)
    make_user("olga", "operator", [landscape["p1"]])

    browser_login(page, asgi_server, "olga")
    page.goto(f"{asgi_server}/dashboards/plant/p1/")
    page.wait_for_selector("html[data-live-state=open]")
    figure = page.locator("[data-tile=alerts] [data-figure-value]")
    assert figure.inner_text().startswith("0")
    page.evaluate("() => { window.pageIdentity = 'the same page'; }")
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))

    answer = requests.post(
        f"{asgi_server}/api/v1/events",
        json=[hold("/mes/p1", "HOLD-D1", "d-1")],
        headers={
            "Authorization": f"Bearer {ingest_token}",
            "Content-Type": "application/cloudevents-batch+json",
        },
        timeout=10,
    )
    assert answer.status_code == 202, answer.text
    assert evaluation_pass().fired == 1

    page.wait_for_function(
        "() => document.querySelector('[data-tile=alerts] [data-figure-value]')"
        ".innerText.trim().startsWith('1')",
        timeout=15_000,
    )
    assert page.evaluate("window.pageIdentity") == "the same page"
    assert navigations == []
    screenshot(page, "live_dashboard")
