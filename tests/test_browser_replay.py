"""Replaying a failed message from the explorer in a real browser, watched to the end."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from console import outbox
from integrations.models import Message, ReplayJob
from tests.conftest import browser_login, make_user, screenshot
from tests.replay_kit import Target, failed_message, point_at

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def target():
    """MES plant 1 on loopback: refuses the first request, holds the second until released."""
    with Target(fail_first=1, hold_at=2) as running:
        yield running


class Worker(threading.Thread):
    """Runs due outbox tasks in this process, like the embedded worker, until stopped."""

    def __init__(self) -> None:
        super().__init__(name="test-outbox", daemon=True)
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.is_set():
                for task_id in outbox.due():
                    outbox.run(task_id)
                self.stopped.wait(0.1)
        finally:
            # Close this thread's connection, or the test database cannot be dropped.
            connection.close()


@pytest.fixture
def worker(settings):
    """A worker thread running the outbox (no Redis: wake-ups stay in this process)."""
    settings.REDIS_URL = ""
    thread = Worker()
    thread.start()
    yield thread
    thread.stopped.set()
    thread.join(timeout=30)


def test_an_admin_replays_a_failed_message_and_watches_it_delivered(
    page, live_server, landscape, target, worker
):
    connector = point_at(landscape["c1"], target)
    failed_message(connector, external_id="WO-1001", correlation_id="WO-1001")
    failed_message(
        connector,
        external_id="WO-1002",
        correlation_id="WO-1002",
        payload=b'{"order": "WO-1002", "qty": 12}',
    )
    make_user("ada", "admin")
    browser_login(page, live_server.url, "ada")

    page.goto(f"{live_server.url}/messages/?status=failed")
    page.locator("table.messages a.open", has_text="WO-1001").click()
    page.wait_for_url("**/messages/*/")
    page.click("#replay-message")
    page.wait_for_url("**/replays/new/?id=*")
    assert "Dry run: 1 message would be replayed" in page.locator(".dry-run h2").inner_text()
    headers = page.locator(".request table.headers").inner_text()
    assert "erp-to-mes-orders:WO-1001" in headers
    page.fill("textarea[name=reason]", "MES was down 08:10-08:30; re-driving the release")
    page.click("#start-replay")
    page.wait_for_url("**/replays/*/")

    # While MES holds the retried request, the page polls and shows the job running.
    assert target.held.wait(30)
    page.locator("#job-state", has_text="running").wait_for()
    assert page.locator("[data-count=remaining]").inner_text() == "1"
    assert page.locator("#cancel-form").is_visible()
    target.release.set()
    page.locator("#job-state", has_text="done").wait_for()
    # Finished, the page reloads itself to show each message's outcome.
    page.locator("#progress[data-active='0']").wait_for()
    page.locator("[data-count=done_percent]", has_text="100").wait_for()
    assert page.locator("[data-count=delivered]").inner_text() == "1"
    bar = page.locator(".progress [data-seg=delivered]")
    assert bar.evaluate("seg => seg.getBoundingClientRect().width") == pytest.approx(
        page.locator(".progress").evaluate("bar => bar.clientWidth"), abs=1
    )
    row = page.locator("table.items tbody tr").first
    assert row.locator("td.status").inner_text() == "delivered"
    assert row.locator("td.num").first.inner_text() == "2", "the first try met the outage"
    assert page.locator("#cancel-form").count() == 0
    screenshot(page, "replay")

    job = ReplayJob.objects.get()
    assert (job.state, job.delivered, job.created_by) == ("done", 1, "ada")
    assert target.keys() == {"erp-to-mes-orders:WO-1001": 2}
    assert Message.objects.get(external_id="WO-1001").status == "delivered"
    assert Message.objects.get(external_id="WO-1002").status == "failed"
