"""The notifications page: contact points and their health, routing, delivery log, send test."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.test import Client

from monitors.models import DeliveryStatus, NotificationDelivery
from monitors.notify import deliver
from tests.alerts_kit import T0, make_alert, make_rule
from tests.conftest import make_user
from tests.notify_kit import contact, deliver_due, notify, policy, running_receiver

NOW = T0 + timedelta(minutes=1)


@pytest.fixture
def receiver():
    with running_receiver() as server:
        yield server


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


def logged_in(username: str, role: str, plants=()) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(make_user(username, role, plants))
    return client


def post(client: Client, path: str):
    """POST like the page's form does: CSRF cookie from a page view, token in the form."""
    client.get("/notifications/")
    return client.post(path, {"csrfmiddlewaretoken": client.cookies["csrftoken"].value})


@pytest.fixture
def routed(landscape, receiver):
    """A webhook for plant 1, an email default route, and a firing alert of each plant."""
    hook = contact("p1-webhook", "webhook", url=receiver.url("/p1"))
    oncall = contact("oncall", "email", to=["oncall@plant.example"])
    policy("plant1", [hook], matchers={"plant": "p1"})
    policy("default", [oncall], default=True, group_by=["rule"])
    rule = make_rule("wo-not-acknowledged")
    make_alert(rule, "WO-1", plant=landscape["p1"], summary="WO-1 not acknowledged")
    make_alert(rule, "WO-2", plant=landscape["p2"], summary="WO-2 not acknowledged")
    return {"hook": hook, "oncall": oncall}


def test_the_page_lists_contact_points_policies_and_deliveries(clock, routed):
    notify(NOW)
    deliver_due()

    page = logged_in("vera", "viewer").get("/notifications/")

    assert page.status_code == 200
    html = page.content.decode()
    assert "p1-webhook" in html and "oncall@plant.example" in html
    assert "plant=&quot;p1&quot;" in html
    assert "(everything else)" in html
    assert "[FIRING:1] wo-not-acknowledged (p1)" in html
    assert html.count('data-status="delivered"') == 2
    assert "Send test" not in html  # viewers cannot


def test_a_webhook_url_shows_its_host_but_not_its_path(clock, landscape):
    contact("chat", "slack", url="https://hooks.slack.example/services/T0/B0/secret-part")

    html = logged_in("vera", "viewer").get("/notifications/").content.decode()

    assert "https://hooks.slack.example/" in html
    assert "secret-part" not in html


def test_a_failing_contact_point_is_shown_with_its_last_error(clock, routed, receiver):
    receiver.answer(503)
    notify(NOW)
    deliver_due()
    clock.shift(timedelta(seconds=10))
    deliver_due()

    html = logged_in("vera", "viewer").get("/notifications/").content.decode()

    assert "1 contact point failing" in html
    assert "p1-webhook (2 failed attempts in a row)" in html
    assert "attempt 2 of delivery" in html
    assert "503" in html
    assert 'data-status="retrying"' in html


def test_an_admin_sends_a_test_notification(clock, routed, receiver):
    admin = logged_in("ada", "admin")

    response = post(admin, f"/notifications/contact-points/{routed['hook'].pk}/test")

    assert response.status_code == 302
    payload = receiver.last.json()
    assert payload["receiver"] == "p1-webhook"
    assert payload["alerts"][0]["labels"]["alertname"] == "andon-test"
    delivery = NotificationDelivery.objects.get(reason="test")
    assert (delivery.status, delivery.requested_by) == (DeliveryStatus.DELIVERED, "ada")
    page = admin.get(response["Location"])
    assert "Test notification delivered to p1-webhook (HTTP 200)" in page.content.decode()


def test_a_failed_test_says_why_and_is_retried(clock, routed, receiver):
    receiver.answer(500)
    admin = logged_in("ada", "admin")

    response = post(admin, f"/notifications/contact-points/{routed['hook'].pk}/test")

    html = admin.get(response["Location"]).content.decode()
    assert "Test notification to p1-webhook failed" in html
    assert "It will be retried at 08:01:10 UTC" in html
    routed["hook"].refresh_from_db()
    assert routed["hook"].consecutive_failures == 1


def test_only_admins_may_send_a_test(clock, routed, receiver):
    operator = logged_in("otto", "operator")

    response = post(operator, f"/notifications/contact-points/{routed['hook'].pk}/test")

    assert response.status_code == 403
    assert receiver.requests == []


def test_a_plant_scoped_reader_sees_only_its_plants_deliveries(clock, routed, landscape):
    notify(NOW)
    for delivery in NotificationDelivery.objects.all():
        deliver(delivery.pk)

    html = logged_in("pia", "operator", [landscape["p1"]]).get("/notifications/").content.decode()

    assert html.count('id="delivery-') == 1
    assert "[FIRING:1] wo-not-acknowledged (p1)" in html


def test_the_page_needs_a_login(db):
    response = Client().get("/notifications/")

    assert response.status_code == 302
    assert response["Location"].startswith("/login/")
