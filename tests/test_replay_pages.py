"""The replay pages: buttons, the dry run, jobs, approval, cancel, audit and failure groups."""

from __future__ import annotations

import re
from html import unescape

import pytest
from django.test import Client

from integrations.models import Message, MessageAttempt, ReplayItem, ReplayJob
from monitors.models import Alert
from tests.alerts_kit import make_alert, make_rule
from tests.conftest import make_user
from tests.replay_kit import Target, drain, failed_message, point_at


@pytest.fixture(autouse=True)
def _no_broker(settings):
    # Wake-ups go to the embedded worker (not started here); tests run the outbox themselves.
    settings.REDIS_URL = ""


class Browser:
    """A logged-in web user posting forms with their CSRF token, like a browser does."""

    def __init__(self, username: str) -> None:
        self.client = Client(enforce_csrf_checks=True)
        assert self.client.login(username=username, password=f"pw-{username}")

    def get(self, url: str):  # type: ignore[no-untyped-def]
        return self.client.get(url)

    def post(self, url: str, data: dict | None = None, csrf: bool = True):  # type: ignore[no-untyped-def]
        if "csrftoken" not in self.client.cookies:
            self.client.get("/messages/")
        form = dict(data or {})
        if csrf:
            form["csrfmiddlewaretoken"] = self.client.cookies["csrftoken"].value
        return self.client.post(url, form)


def text(response) -> str:  # type: ignore[no-untyped-def]
    return unescape(response.content.decode())


def plain(response) -> str:  # type: ignore[no-untyped-def]
    """Return the page's text without tags, blanks collapsed."""
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", text(response)))


def job_id(response) -> int:  # type: ignore[no-untyped-def]
    """Return the job a POST redirected to."""
    assert response.status_code == 302, text(response)[:2000]
    found = re.fullmatch(r"/replays/(\d+)/", response["Location"])
    assert found, response["Location"]
    return int(found.group(1))


@pytest.fixture
def target():
    with Target() as running:
        yield running


@pytest.fixture
def world(landscape, target):
    """Three failed orders to MES plant 1 (one of another error), one failed of plant 2."""
    c1 = point_at(landscape["c1"], target)
    c2 = point_at(landscape["c2"], target)
    return {
        **landscape,
        "m1": failed_message(c1, external_id="WO-1001", correlation_id="WO-1001"),
        "m2": failed_message(
            c1,
            external_id="WO-1002",
            correlation_id="WO-1002",
            payload=b'{"order": "WO-1002", "qty": 12}',
        ),
        "m3": failed_message(
            c1, external_id="WO-1003", error="connection refused by 10.0.0.7 port 8443"
        ),
        "m4": failed_message(c2, external_id="WO-2001", error="MES answered 503"),
    }


@pytest.fixture
def ada(world) -> Browser:
    make_user("ada", "admin")
    return Browser("ada")


@pytest.fixture
def bob(world) -> Browser:
    make_user("bob", "admin")
    return Browser("bob")


@pytest.fixture
def olga(world) -> Browser:
    make_user("olga", "operator")
    return Browser("olga")


def start(browser: Browser, query: str, reason: str = "MES was down 08:10-08:30") -> int:
    """Start a replay through the bulk form, posting back the hidden filter fields it carries."""
    form = text(browser.get(f"/replays/new/?{query}"))
    data: dict[str, list[str]] = {"reason": [reason]}
    for name, value in re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form):
        if name != "csrfmiddlewaretoken":
            data.setdefault(name, []).append(value)
    return job_id(browser.post("/replays/new/", data))


# --- Pages and buttons ------------------------------------------------------------------------


def test_every_replay_page_renders_for_an_admin(ada, world):
    job = start(ada, "status=failed&connector=erp-to-mes-orders")

    for url in (
        "/replays/",
        "/replays/failures/",
        "/replays/new/?connector=erp-to-mes-orders",
        f"/replays/edit/{world['m1'].pk}/",
        f"/replays/{job}/",
        f"/replays/{job}/progress.json",
    ):
        assert ada.get(url).status_code == 200, url
    assert 'href="/replays/"' in text(ada.get("/messages/")), "the nav links to replays"


def test_an_admin_finds_replay_buttons_on_messages_a_message_and_an_alert(ada, world):
    alert = make_alert(make_rule(), "WO-1001", plant=world["p1"])

    explorer = text(ada.get("/messages/?status=failed"))
    assert 'form="replay-selected"' in explorer
    assert f'value="{world["m1"].pk}"' in explorer
    assert 'href="/replays/new/?status=failed" id="replay-all"' in explorer
    detail = text(ada.get(f"/messages/{world['m1'].pk}/"))
    assert f'href="/replays/new/?id={world["m1"].pk}"' in detail
    assert f'href="/replays/edit/{world["m1"].pk}/"' in detail
    assert f'href="/replays/new/?alert={alert.pk}"' in text(ada.get(f"/alerts/{alert.pk}/"))
    assert f'href="/replays/new/?alert={alert.pk}"' in text(ada.get("/alerts/"))


def test_an_operator_sees_no_replay_buttons(olga, world):
    alert = make_alert(make_rule(), "WO-1001", plant=world["p1"])

    for url in ("/messages/?status=failed", f"/messages/{world['m1'].pk}/", f"/alerts/{alert.pk}/"):
        html = text(olga.get(url))
        assert "/replays/new/" not in html, url
        assert "/replays/edit/" not in html, url
    assert 'href="/replays/"' not in text(olga.get("/messages/"))


@pytest.mark.parametrize(
    "url",
    ["/replays/new/", "/replays/edit/{m1}/", "/replays/{job}/approve", "/replays/{job}/cancel"],
)
def test_an_operator_may_not_replay_approve_or_cancel(olga, world, url):
    job = ReplayJob.objects.create(
        created_by="ada", reason="x", state="pending_approval", needs_approval=True, total=1
    )
    response = olga.post(
        url.format(m1=world["m1"].pk, job=job.pk),
        {"id": world["m1"].pk, "reason": "because", "payload": "{}", "content_type": "x/y"},
    )

    assert response.status_code == 403
    assert ReplayJob.objects.count() == 1
    assert ReplayJob.objects.get().state == "pending_approval"


def test_an_operator_may_read_job_and_audit_pages_without_actions(ada, olga, world):
    job = start(ada, "status=failed&connector=erp-to-mes-orders")

    page = text(olga.get(f"/replays/{job}/"))
    assert "MES was down" in page
    assert "Cancel replay" not in page
    assert "MES was down" in text(olga.get("/replays/"))
    assert olga.get(f"/replays/{job}/progress.json").json()["total"] == 3
    assert olga.get("/replays/new/?status=failed").status_code == 403


def test_a_replay_without_a_csrf_token_is_refused(ada, world):
    response = ada.post("/replays/new/", {"id": world["m1"].pk, "reason": "x"}, csrf=False)

    assert response.status_code == 403
    assert not ReplayJob.objects.exists()


# --- The bulk form and its dry run ------------------------------------------------------------


def test_the_dry_run_shows_the_exact_request_and_changes_nothing(ada, world, target):
    m1 = world["m1"]
    response = ada.get(f"/replays/new/?id={m1.pk}")
    html = text(response)

    assert "Dry run: 1 message would be replayed" in plain(response)
    request = html[html.index(f'data-message="{m1.pk}"') :]
    assert f'<strong class="method">POST</strong> <span class="url">{target.url}</span>' in request
    assert "<th>Idempotency-Key</th><td>erp-to-mes-orders:WO-1001</td>" in request
    assert "<th>X-Andon-Replay</th><td><replay id></td>" in request
    assert re.search(r"<th>traceparent</th><td>00-[0-9a-f]{32}-<parent id>-01</td>", request)
    assert "<th>Content-Type</th><td>application/json</td>" in request
    assert '{"order": "WO-1001", "qty": 40}' in request
    assert "Replay 1 message" in html
    assert not ReplayJob.objects.exists()
    assert target.count == 0


def test_the_form_shows_the_filter_count_and_a_sample(ada, world):
    response = ada.get("/replays/new/?connector=erp-to-mes-orders&status=failed")
    html = text(response)

    assert "Dry run: 3 messages would be replayed" in plain(response)
    assert "connector = erp-to-mes-orders" in html
    assert "status = failed" in html
    assert "WO-1001" in html and "WO-1003" in html and "WO-2001" not in html
    assert "Replay 3 messages" in html


def test_a_bad_filter_is_a_form_error_not_a_500(ada, world):
    response = ada.get("/replays/new/?status=lost")

    assert response.status_code == 400
    assert "status: unknown status 'lost'" in text(response)


def test_an_empty_filter_is_refused(ada, world):
    response = ada.get("/replays/new/")

    assert response.status_code == 400
    assert "filter: choose what to replay" in text(response)


def test_a_replay_needs_a_reason(ada, world):
    response = ada.post("/replays/new/", {"id": world["m1"].pk, "reason": "  "})

    assert response.status_code == 400
    assert "reason: say why" in text(response)
    assert not ReplayJob.objects.exists()


def test_a_recorded_dry_run_is_audited_and_sends_nothing(ada, world, target):
    response = ada.post(
        "/replays/new/", {"status": "failed", "reason": "checking the scope", "dry_run": "1"}
    )

    job = ReplayJob.objects.get(pk=job_id(response))
    assert (job.state, job.dry_run, job.total, job.created_by) == ("dry_run", True, 4, "ada")
    assert "Nothing was sent" in text(ada.get(f"/replays/{job.pk}/"))
    drain()
    assert target.count == 0


# --- Jobs -------------------------------------------------------------------------------------


def test_a_bulk_replay_creates_a_job_whose_page_shows_the_deliveries(ada, world, target):
    job = start(ada, "connector=erp-to-mes-orders&status=failed", reason="MES back at 08:30")
    stored = ReplayJob.objects.get(pk=job)
    assert (stored.state, stored.total, stored.created_by) == ("queued", 3, "ada")
    assert stored.reason == "MES back at 08:30"

    drain()

    assert sorted(target.keys()) == [
        "erp-to-mes-orders:WO-1001",
        "erp-to-mes-orders:WO-1002",
        "erp-to-mes-orders:WO-1003",
    ]
    progress = ada.get(f"/replays/{job}/progress.json").json()
    assert progress["state"] == "done"
    assert (progress["delivered"], progress["remaining"], progress["done_percent"]) == (3, 0, 100)
    assert progress["active"] is False
    html = text(ada.get(f"/replays/{job}/"))
    assert 'data-count="delivered">3<' in html
    assert html.count('<tr class="item-delivered"') == 3
    assert 'style="width: 100.0%"' in html
    assert f">replay {job}</a>" in text(ada.get(f"/messages/{world['m1'].pk}/"))


def test_the_job_page_lists_problems_first_and_highlights_uncertain_ones(ada, world):
    job = start(ada, "connector=erp-to-mes-orders&status=failed")
    items = list(ReplayItem.objects.filter(job_id=job).order_by("id"))
    ReplayItem.objects.filter(pk=items[0].pk).update(state="delivered", attempts=1, latency_ms=12)
    ReplayItem.objects.filter(pk=items[2].pk).update(
        state="uncertain", attempts=1, error="its worker stopped while this message was being sent"
    )

    html = text(ada.get(f"/replays/{job}/"))

    rows = re.findall(r'<tr class="item-(\w+)" data-item="(\d+)"', html)
    assert rows[0] == ("uncertain", str(items[2].pk))
    assert ("delivered", str(items[0].pk)) in rows
    assert "its worker stopped" in html
    assert "12 ms" in html


def test_an_admin_cancels_a_queued_job(ada, world, target):
    job = start(ada, "connector=erp-to-mes-orders&status=failed")
    assert "Cancel replay" in text(ada.get(f"/replays/{job}/"))

    response = ada.post(f"/replays/{job}/cancel")

    assert response.status_code == 302
    stored = ReplayJob.objects.get(pk=job)
    assert (stored.state, stored.cancelled_by) == ("cancelled", "ada")
    drain()
    assert target.count == 0
    html = text(ada.get(f"/replays/{job}/"))
    assert "Cancelled replay" in html
    assert "Cancel replay" not in html
    assert ada.post(f"/replays/{job}/cancel").status_code == 302
    assert "cannot be cancelled" in text(ada.get(f"/replays/{job}/"))


def test_a_large_job_waits_for_a_second_admin(ada, bob, world, target):
    point_at(world["c1"], target, approval_above=2)
    form = text(ada.get("/replays/new/?connector=erp-to-mes-orders&status=failed"))
    assert "a second admin must approve" in form

    job = start(ada, "connector=erp-to-mes-orders&status=failed")
    page = text(ada.get(f"/replays/{job}/"))
    assert "Waiting for a second admin" in page
    assert ">Approve</button>" not in page, "its creator sees no Approve button"
    ada.post(f"/replays/{job}/approve")
    assert ReplayJob.objects.get(pk=job).state == "pending_approval"
    assert "you started it" in text(ada.get(f"/replays/{job}/"))
    drain()
    assert target.count == 0

    assert ">Approve</button>" in text(bob.get(f"/replays/{job}/"))
    bob.post(f"/replays/{job}/approve")
    drain()

    stored = ReplayJob.objects.get(pk=job)
    assert (stored.state, stored.approved_by, stored.delivered) == ("done", "bob", 3)
    assert "approved by <strong>bob</strong>" in text(bob.get(f"/replays/{job}/"))


def test_edit_and_replay_sends_the_edited_copy_once_and_keeps_the_original(ada, world, target):
    m1 = world["m1"]
    form = text(ada.get(f"/replays/edit/{m1.pk}/"))
    assert '{"order": "WO-1001", "qty": 40}' in form

    response = ada.post(
        f"/replays/edit/{m1.pk}/",
        {
            "payload": '{"order": "WO-1001",\r\n "qty": 4}',
            "content_type": "application/vnd.mes+json",
            "reason": "quantity corrected with planning",
        },
    )
    job = job_id(response)
    drain()

    assert [r.body for r in target.received] == [b'{"order": "WO-1001",\n "qty": 4}']
    assert target.received[0].header("Content-Type") == "application/vnd.mes+json"
    assert bytes(Message.objects.get(pk=m1.pk).payload) == b'{"order": "WO-1001", "qty": 40}'
    stored = ReplayJob.objects.get(pk=job)
    assert stored.edited and stored.reason == "quantity corrected with planning"
    page = text(ada.get(f"/replays/{job}/"))
    assert '"qty": 4}' in page and '"qty": 40}' in page, "the edit is audited beside the original"


def test_edit_and_replay_needs_a_reason_and_a_content_type(ada, world):
    response = ada.post(
        f"/replays/edit/{world['m1'].pk}/", {"payload": "{}", "content_type": "", "reason": ""}
    )

    assert response.status_code == 400
    assert "reason: say why" in text(response)
    assert "content_type: give the content type" in text(response)
    assert not ReplayJob.objects.exists()


def test_the_messages_behind_an_alert_prefill_the_form(ada, world):
    alert = make_alert(make_rule(), "WO-1001", plant=world["p1"])

    response = ada.get(f"/replays/new/?alert={alert.pk}")
    assert f"alert = {alert.pk}" in text(response)
    assert "Dry run: 1 message would be replayed" in plain(response)

    job = start(ada, f"alert={alert.pk}")
    assert ReplayJob.objects.get(pk=job).alert_id == alert.pk
    assert f'href="/alerts/{alert.pk}/"' in text(ada.get(f"/replays/{job}/"))
    assert Alert.objects.get(pk=alert.pk).state == "firing"


# --- Audit and failure groups -----------------------------------------------------------------


def test_the_audit_page_lists_every_job_newest_first_filterable_by_user_and_state(ada, bob, world):
    first = start(ada, f"id={world['m1'].pk}", reason="first by ada")
    second = start(bob, f"id={world['m2'].pk}", reason="second by bob")
    ada.post(f"/replays/{first}/cancel")

    def listed(query: str = "") -> list[int]:
        return [
            int(i) for i in re.findall(r'<tr id="job-(\d+)"', text(ada.get(f"/replays/{query}")))
        ]

    assert listed() == [second, first]
    assert listed("?user=bob") == [second]
    assert listed("?state=cancelled") == [first]
    html = text(ada.get("/replays/"))
    assert "first by ada" in html and "second by bob" in html
    response = ada.get("/replays/?state=lost")
    assert response.status_code == 400
    assert "state: unknown state 'lost'" in text(response)


def test_failure_groups_are_listed_and_lead_to_a_prefilled_form(ada, world):
    html = text(ada.get("/replays/failures/"))

    groups = re.findall(
        r'<td class="connector nowrap">([^<]+)</td>\s*<td class="pattern">(.*?)</td>\s*'
        r'<td class="num count">(\d+)</td>',
        html,
    )
    assert [(c, re.sub("<[^>]+>", "", p), int(n)) for c, p, n in groups] == [
        ("erp-to-mes-orders", "MES answered #", 2),
        ("erp-to-mes-orders", "connection refused by # port #", 1),
        ("erp-to-mes-p2-orders", "MES answered #", 1),
    ]
    link = re.search(r'href="(/replays/new/\?[^"]+)">Replay this group</a>', html)
    assert link
    form = plain(ada.get(unescape(link.group(1))))
    assert "error_group = MES answered #" in form
    assert "Dry run: 2 messages would be replayed" in form
    assert "WO-1003" not in form


def test_an_operator_sees_failure_groups_without_replay_buttons(olga, world):
    html = text(olga.get("/replays/failures/"))

    assert "MES answered #" in html
    assert "Replay this group" not in html


# --- Plants -----------------------------------------------------------------------------------


def test_a_plant_admin_replays_and_sees_its_plant_only(ada, world):
    make_user("pia", "admin", plants=[world["p2"]])
    pia = Browser("pia")
    theirs = start(ada, "connector=erp-to-mes-orders&status=failed")

    assert pia.get(f"/replays/{theirs}/").status_code == 404
    assert pia.get(f"/replays/{theirs}/progress.json").status_code == 404
    assert pia.post(f"/replays/{theirs}/cancel").status_code == 404
    assert f'id="job-{theirs}"' not in text(pia.get("/replays/"))
    assert pia.get(f"/replays/edit/{world['m1'].pk}/").status_code == 404
    assert "Dry run: 1 message would be replayed" in plain(pia.get("/replays/new/?status=failed"))
    assert pia.get("/replays/new/?plant=p1").status_code == 403
    response = pia.post("/replays/new/", {"id": world["m1"].pk, "reason": "not mine"})
    assert response.status_code == 400
    assert ReplayJob.objects.count() == 1
    groups = text(pia.get("/replays/failures/"))
    assert "erp-to-mes-p2-orders" in groups and ">erp-to-mes-orders<" not in groups
    assert not MessageAttempt.objects.filter(replay_id__isnull=False).exists()
