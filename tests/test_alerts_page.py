"""The alerts page: filters, why an alert is muted, alarm load, and actions from the list."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.test import Client

from monitors.models import Alert, MaintenanceWindow, Silence
from tests.alerts_kit import T0, make_alert, make_rule
from tests.conftest import make_user

NOW = T0 + timedelta(hours=1)


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def world(landscape):
    p1, p2 = landscape["p1"], landscape["p2"]
    wo = make_rule(
        "wo-not-acknowledged",
        runbook="https://runbooks.example/wo-ack",
        labels={"flow": "order-to-production"},
    )
    beat = make_rule("mes-p1-silent", kind="heartbeat", severity="major")
    lab = make_rule("lab-result-failed", kind="match", severity="minor")
    cause = make_alert(beat, "mes-p1", plant=p1, started_at=T0 - timedelta(minutes=10))
    return {
        **landscape,
        "cause": cause,
        "wo1": make_alert(
            wo,
            "WO-1001",
            plant=p1,
            summary="Work order WO-1001 not acknowledged by MES",
            suppressed_by=cause,
        ),
        "wo2": make_alert(wo, "WO-1002", plant=p2, started_at=T0 + timedelta(minutes=1)),
        "lab": make_alert(lab, "L-7731", plant=p2, started_at=T0 + timedelta(minutes=2)),
        "old": make_alert(
            wo, "WO-0999", plant=p1, started_at=T0 - timedelta(hours=3), state="resolved"
        ),
    }


class Browser:
    """A logged-in web user posting forms with their CSRF token, like a browser does."""

    def __init__(self, username: str) -> None:
        self.client = Client(enforce_csrf_checks=True)
        assert self.client.login(username=username, password=f"pw-{username}")

    def get(self, url: str):  # type: ignore[no-untyped-def]
        return self.client.get(url)

    def post(self, url: str, data: dict | None = None, csrf: bool = True):  # type: ignore[no-untyped-def]
        if "csrftoken" not in self.client.cookies:
            self.client.get("/alerts/")
        form = dict(data or {})
        if csrf:
            form["csrfmiddlewaretoken"] = self.client.cookies["csrftoken"].value
        return self.client.post(url, form)


@pytest.fixture
def operator(world) -> Browser:
    make_user("olga", "operator")
    return Browser("olga")


@pytest.fixture
def viewer(world) -> Browser:
    make_user("vera", "viewer")
    return Browser("vera")


def text(response) -> str:  # type: ignore[no-untyped-def]
    return response.content.decode()


def rows(response) -> list[str]:  # type: ignore[no-untyped-def]
    """Return the alert keys listed, in order (each row's id is alert-<pk>)."""
    html = text(response)
    ids = [int(part.split('"', 1)[0]) for part in html.split('<tr id="alert-')[1:]]
    by_id = dict(Alert.objects.filter(pk__in=ids).values_list("pk", "key"))
    return [by_id[i] for i in ids]


# --- Reading ----------------------------------------------------------------------------


def test_it_lists_open_alerts_by_default(operator):
    response = operator.get("/alerts/")

    assert response.status_code == 200
    assert rows(response) == ["L-7731", "WO-1002", "WO-1001", "mes-p1"]


def test_a_row_links_the_key_to_its_timeline_and_shows_summary_and_runbook(operator):
    html = text(operator.get("/alerts/"))

    assert 'href="/correlations/?key=WO-1001"' in html
    assert "Work order WO-1001 not acknowledged by MES" in html
    assert 'href="https://runbooks.example/wo-ack"' in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("plant=p2", ["L-7731", "WO-1002"]),
        ("state=resolved", ["WO-0999"]),
        ("state=", ["L-7731", "WO-1002", "WO-1001", "mes-p1", "WO-0999"]),
        ("severity=major", ["mes-p1"]),
        ("rule=lab-result-failed", ["L-7731"]),
        ("silenced=true", []),
    ],
)
def test_it_filters(operator, query, expected):
    assert rows(operator.get(f"/alerts/?{query}")) == expected


def test_a_bad_filter_is_shown_not_a_500(operator):
    response = operator.get("/alerts/?severity=urgent")

    assert response.status_code == 400
    assert "severity: unknown value" in text(response)


def test_it_shows_which_dependency_suppresses_an_alert(operator, world):
    html = text(operator.get("/alerts/"))

    assert "suppressed</span> by" in html
    assert f'href="/alerts/{world["cause"].pk}/">mes-p1-silent: mes-p1</a>' in html


def test_it_shows_which_silence_or_window_mutes_an_alert(operator, world):
    Silence.objects.create(
        matchers=[{"name": "key", "value": "WO-1001", "is_regex": False}],
        starts_at=NOW - timedelta(minutes=5),
        ends_at=NOW + timedelta(hours=1),
        comment="MES upgrade",
        created_by="ada",
    )
    MaintenanceWindow.objects.create(
        plant=world["p2"],
        name="Press line shutdown",
        starts_at=NOW - timedelta(hours=1),
        ends_at=NOW + timedelta(hours=1),
    )

    response = operator.get("/alerts/?silenced=true")
    html = text(response)

    assert rows(response) == ["L-7731", "WO-1002", "WO-1001"]
    assert "“MES upgrade”" in html
    assert "p2: Press line shutdown" in html


def test_the_header_shows_a_flood(operator, world):
    rule = make_rule("lab-flood", kind="match")
    for n in range(11):
        make_alert(rule, f"L-{n}", plant=world["p1"], started_at=NOW - timedelta(minutes=n * 0.5))

    html = text(operator.get("/alerts/?plant=p1"))

    assert 'data-plant="p1"' in html
    assert "FLOOD" in html
    assert '<dd class="rate10">11</dd>' in html


def test_a_detail_page_shows_the_alarm_log_labels_runbook_and_timeline(operator, world):
    response = operator.get(f"/alerts/{world['wo1'].pk}/")
    html = text(response)

    assert response.status_code == 200
    assert "Work order WO-1001 not acknowledged by MES" in html
    assert "flow=order-to-production" in html
    assert 'href="/correlations/?key=WO-1001"' in html
    assert "https://runbooks.example/wo-ack" in html
    assert '<span class="badge state-firing">firing</span>' in html


# --- Acting from the list ---------------------------------------------------------------


def test_an_operator_acknowledges_from_the_list(operator, world):
    response = operator.post(
        f"/alerts/{world['wo1'].pk}/ack", {"comment": "calling MES", "next": "/alerts/?plant=p1"}
    )

    assert response.status_code == 302
    assert response["Location"] == "/alerts/?plant=p1"
    alert = Alert.objects.get(pk=world["wo1"].pk)
    assert (alert.state, alert.acknowledged_by, alert.ack_comment) == (
        "acknowledged",
        "olga",
        "calling MES",
    )
    assert "Acknowledged wo-not-acknowledged: WO-1001" in text(operator.get("/alerts/"))


def test_acknowledging_a_resolved_alert_says_why(operator, world):
    operator.post(f"/alerts/{world['old'].pk}/ack")

    assert "already resolved" in text(operator.get("/alerts/"))


def test_it_never_redirects_off_site(operator, world):
    response = operator.post(f"/alerts/{world['wo1'].pk}/ack", {"next": "https://evil.example/"})

    assert response["Location"] == "/alerts/"


def test_an_action_without_a_csrf_token_is_refused(operator, world):
    response = operator.post(f"/alerts/{world['wo1'].pk}/ack", csrf=False)

    assert response.status_code == 403
    assert Alert.objects.get(pk=world["wo1"].pk).state == "firing"


def test_an_operator_silences_a_rule_from_the_list(operator, world):
    response = operator.post(
        f"/alerts/{world['wo1'].pk}/silence",
        {"scope": "rule", "duration": "4h", "comment": "MES upgrade"},
    )

    assert response.status_code == 302
    silence = Silence.objects.get()
    assert silence.matchers == [{"name": "rule", "value": "wo-not-acknowledged", "is_regex": False}]
    assert silence.ends_at == NOW + timedelta(hours=4)
    assert silence.created_by == "olga"
    assert rows(operator.get("/alerts/?silenced=true")) == ["WO-1002", "WO-1001"]


def test_an_operator_silences_just_one_key(operator, world):
    operator.post(
        f"/alerts/{world['wo1'].pk}/silence",
        {"scope": "key", "duration": "1h", "comment": "known"},
    )

    assert Silence.objects.get().matchers == [
        {"name": "rule", "value": "wo-not-acknowledged", "is_regex": False},
        {"name": "key", "value": "WO-1001", "is_regex": False},
    ]
    assert rows(operator.get("/alerts/?silenced=true")) == ["WO-1001"]


def test_a_silence_needs_a_comment(operator, world):
    operator.post(f"/alerts/{world['wo1'].pk}/silence", {"scope": "rule", "duration": "1h"})

    assert not Silence.objects.exists()
    assert "comment: a comment is required" in text(operator.get("/alerts/"))


def test_a_silence_needs_a_valid_duration(operator, world):
    operator.post(
        f"/alerts/{world['wo1'].pk}/silence",
        {"scope": "rule", "duration": "forever", "comment": "x"},
    )

    assert not Silence.objects.exists()


def test_an_operator_expires_a_silence(operator, world):
    silence = Silence.objects.create(
        matchers=[{"name": "rule", "value": "x", "is_regex": False}],
        starts_at=NOW - timedelta(minutes=5),
        ends_at=NOW + timedelta(hours=1),
        comment="to expire",
        created_by="ada",
    )
    assert f'id="silence-{silence.pk}"' in text(operator.get("/alerts/"))

    operator.post(f"/alerts/silences/{silence.pk}/expire")

    silence.refresh_from_db()
    assert silence.expired_at == NOW
    assert f'id="silence-{silence.pk}"' not in text(operator.get("/alerts/"))


# --- Roles and plants -------------------------------------------------------------------


def test_a_viewer_sees_no_action_buttons(viewer):
    html = text(viewer.get("/alerts/"))

    assert "WO-1001" in html
    assert "Acknowledge" not in html
    assert "Silence rule" not in html


@pytest.mark.parametrize("action", ["ack", "resolve", "silence"])
def test_a_viewer_may_not_act(viewer, world, action):
    response = viewer.post(
        f"/alerts/{world['wo1'].pk}/{action}", {"scope": "rule", "duration": "1h", "comment": "x"}
    )

    assert response.status_code == 403
    assert Alert.objects.get(pk=world["wo1"].pk).state == "firing"
    assert not Silence.objects.exists()


def test_anonymous_visitors_are_sent_to_log_in(world):
    response = Client().get("/alerts/")

    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_a_plant_operator_sees_and_acts_on_its_plant_only(world):
    make_user("pia", "operator", plants=[world["p1"]])
    pia = Browser("pia")

    assert rows(pia.get("/alerts/")) == ["WO-1001", "mes-p1"]
    assert pia.get(f"/alerts/{world['wo2'].pk}/").status_code == 404
    assert pia.post(f"/alerts/{world['wo2'].pk}/ack").status_code == 404
    assert pia.get("/alerts/?plant=p2").status_code == 400

    pia.post(
        f"/alerts/{world['wo1'].pk}/silence", {"scope": "rule", "duration": "1h", "comment": "x"}
    )
    assert Silence.objects.get().matchers == [
        {"name": "rule", "value": "wo-not-acknowledged", "is_regex": False},
        {"name": "plant", "value": "p1", "is_regex": False},
    ]


# --- Maintenance windows ----------------------------------------------------------------


def test_an_admin_creates_a_weekly_window_and_disables_it(world):
    make_user("ada", "admin")
    ada = Browser("ada")

    ada.post(
        "/alerts/maintenance/",
        {
            "plant": "p1",
            "name": "Sunday night",
            "kind": "weekly",
            "weekdays": ["6"],
            "start_time": "22:00",
            "duration_minutes": "360",
        },
    )
    window = MaintenanceWindow.objects.get()
    assert (window.weekdays, str(window.start_time), window.duration_minutes) == (
        [6],
        "22:00:00",
        360,
    )
    assert "weekly Sun 22:00 for 6h (UTC)" in text(ada.get("/alerts/"))

    ada.post(f"/alerts/maintenance/{window.pk}/toggle", {"enabled": "0"})
    window.refresh_from_db()
    assert not window.enabled


def test_a_one_off_window_is_read_in_the_plants_time_zone(world):
    plant = world["p1"]
    plant.timezone = "Europe/Berlin"
    plant.save()
    make_user("ada", "admin")

    Browser("ada").post(
        "/alerts/maintenance/",
        {
            "plant": "p1",
            "name": "overhaul",
            "kind": "once",
            "starts_at": "2026-05-21T10:00",
            "ends_at": "2026-05-21T12:00",
        },
    )

    window = MaintenanceWindow.objects.get()
    assert window.starts_at == T0  # 10:00 CEST is 08:00 UTC
    assert rows(Browser("ada").get("/alerts/?silenced=true")) == ["WO-1001", "mes-p1"]


def test_an_incomplete_window_is_refused_with_the_field(world):
    make_user("ada", "admin")
    ada = Browser("ada")

    ada.post("/alerts/maintenance/", {"plant": "p1", "name": "x", "kind": "weekly"})

    assert not MaintenanceWindow.objects.exists()
    assert "weekdays: choose at least one day" in text(ada.get("/alerts/"))


def test_an_operator_may_not_manage_windows(operator, world):
    response = operator.post(
        "/alerts/maintenance/",
        {
            "plant": "p1",
            "name": "x",
            "starts_at": "2026-05-21T10:00",
            "ends_at": "2026-05-21T12:00",
        },
    )

    assert response.status_code == 403
    assert not MaintenanceWindow.objects.exists()


# --- Cost -------------------------------------------------------------------------------


def test_the_page_costs_the_same_queries_for_few_or_many_alerts(operator, world):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    Silence.objects.create(
        matchers=[{"name": "key", "value": "WO-.*", "is_regex": True}],
        starts_at=NOW - timedelta(minutes=5),
        ends_at=NOW + timedelta(hours=1),
        comment="x",
        created_by="ada",
    )

    def cost() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert operator.get("/alerts/").status_code == 200
        return len(captured.captured_queries)

    few = cost()
    rule = make_rule("many")
    for n in range(40):
        make_alert(rule, f"K-{n}", plant=world["p1"], suppressed_by=world["cause"])

    assert cost() == few
