"""Signed acknowledgement links: valid once, expiring, tamper-proof, no login needed.

A link is made for one recipient of one notification; opening it shows the
alert, and acknowledging (a POST from that page) records the recipient as the
actor. The client here is anonymous and enforces CSRF, like a browser.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.core import mail
from django.test import Client

from monitors import acklinks
from monitors.lifecycle import acknowledge
from monitors.models import AckLink, AlertState, AlertTransition
from monitors.notify import run_pass
from tests.alerts_kit import T0, make_alert, make_rule
from tests.notify_kit import contact, deliver_due, policy

NOW = T0 + timedelta(minutes=1)


@pytest.fixture
def clock():
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
def alert(landscape):
    rule = make_rule("wo-not-acknowledged")
    return make_alert(
        rule, "WO-1001", plant=landscape["p1"], summary="Work order WO-1001 not acknowledged"
    )


@pytest.fixture
def browser() -> Client:
    return Client(enforce_csrf_checks=True)


def path_of(url: str) -> str:
    return url.removeprefix("http://127.0.0.1:8000")


def link_for(alert, recipient: str = "ada@plant.example") -> str:
    """Return the path of a fresh link to acknowledge ``alert`` as ``recipient``."""
    return path_of(acklinks.issue([alert.pk], recipient)[alert.pk])


def confirm(browser: Client, path: str):
    """Open the link, then press its Acknowledge button (with the page's CSRF cookie)."""
    page = browser.get(path)
    assert page.status_code == 200, page.content
    token = browser.cookies["csrftoken"].value
    return browser.post(path, {"csrfmiddlewaretoken": token})


def test_opening_a_link_shows_the_alert_without_acknowledging_it(clock, alert, browser):
    page = browser.get(link_for(alert))

    assert page.status_code == 200
    assert b"Work order WO-1001 not acknowledged" in page.content
    assert b"ada@plant.example" in page.content
    alert.refresh_from_db()
    assert alert.state == AlertState.FIRING


def test_a_link_acknowledges_the_alert_as_its_recipient_without_login(clock, alert, browser):
    response = confirm(browser, link_for(alert))

    assert response.status_code == 200
    assert b"Acknowledged" in response.content
    alert.refresh_from_db()
    assert alert.state == AlertState.ACKNOWLEDGED
    assert alert.acknowledged_by == "ada@plant.example"
    assert alert.acknowledged_at == NOW
    entry = AlertTransition.objects.get(alert=alert, state=AlertState.ACKNOWLEDGED)
    assert entry.actor == "ada@plant.example"


def test_a_link_works_only_once(clock, alert, browser):
    path = link_for(alert)
    confirm(browser, path)

    again = browser.post(path, {"csrfmiddlewaretoken": browser.cookies["csrftoken"].value})
    reopened = browser.get(path)

    assert again.status_code == 409
    assert b"already used" in again.content
    assert reopened.status_code == 409


def test_an_expired_link_answers_410(clock, alert, browser, settings):
    path = link_for(alert)
    clock.shift(timedelta(seconds=settings.ANDON_ACK_LINK_TTL_S + 1))

    response = browser.get(path)

    assert response.status_code == 410
    assert b"expired" in response.content
    alert.refresh_from_db()
    assert alert.state == AlertState.FIRING


def test_a_link_expires_when_its_stored_expiry_passes(clock, alert, browser):
    path = link_for(alert)
    AckLink.objects.update(expires_at=NOW)

    assert browser.get(path).status_code == 410


@pytest.mark.parametrize(
    "tamper",
    [
        lambda token: token[:-1] + ("A" if token[-1] != "A" else "B"),  # the signature
        lambda token: "x" + token,  # the signed value
        lambda token: "not-a-token",
    ],
)
def test_a_tampered_link_answers_400(clock, alert, browser, tamper):
    token = link_for(alert).rstrip("/").rsplit("/", 1)[1]

    response = browser.get(f"/ack/{tamper(token)}/")
    posted = browser.post(f"/ack/{tamper(token)}/")

    assert response.status_code == 400
    assert b"not valid" in response.content
    assert posted.status_code in (400, 403)  # 403: no CSRF cookie from a valid page
    alert.refresh_from_db()
    assert alert.state == AlertState.FIRING


def test_a_link_to_an_alert_already_acknowledged_says_by_whom(clock, alert, browser):
    path = link_for(alert)
    acknowledge(alert.pk, "bo", now=NOW)

    response = confirm(browser, path)

    assert response.status_code == 200
    assert b"already acknowledged by bo" in response.content


def test_a_link_to_a_resolved_alert_changes_nothing(clock, alert, browser):
    path = link_for(alert)
    alert.state = AlertState.RESOLVED
    alert.resolved_at = NOW
    alert.save()

    response = confirm(browser, path)

    assert b"Already resolved" in response.content
    alert.refresh_from_db()
    assert alert.state == AlertState.RESOLVED


def test_the_link_in_an_email_acknowledges_as_that_recipient(clock, alert, browser):
    oncall = contact("oncall", "email", to=["ada@plant.example", "bo@plant.example"])
    policy("default", [oncall], default=True)
    run_pass(NOW)
    deliver_due()
    bo_mail = next(m for m in mail.outbox if m.to == ["bo@plant.example"])
    url = bo_mail.body.split("Acknowledge: ")[1].split()[0]

    confirm(browser, path_of(url))

    alert.refresh_from_db()
    assert alert.acknowledged_by == "bo@plant.example"


def test_the_webhook_link_names_the_contact_point(clock, alert, browser):
    link = path_of(acklinks.issue([alert.pk], "webhook:mes-team")[alert.pk])

    confirm(browser, link)

    alert.refresh_from_db()
    assert alert.acknowledged_by == "webhook:mes-team"


def test_an_acknowledged_alert_is_not_escalated(clock, alert, browser):
    manager = contact("manager", "email", to=["manager@plant.example"])
    oncall = contact("oncall", "email", to=["ada@plant.example"])
    policy("default", [oncall], default=True, escalate_after=600, escalate_to=[manager])
    run_pass(NOW)
    deliver_due()
    url = mail.outbox[0].body.split("Acknowledge: ")[1].split()[0]
    confirm(browser, path_of(url))
    mail.outbox.clear()

    clock.shift(timedelta(minutes=20))
    run_pass(NOW + timedelta(minutes=20))
    deliver_due()

    assert mail.outbox == []
