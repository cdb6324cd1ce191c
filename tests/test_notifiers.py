"""Contact points: each kind against a real loopback receiver (email: Django's mail outbox).

A notification pass queues one delivery per contact point on the outbox; a worker
sends it. These tests run both for real (only the clock is frozen) and look at
what arrived: the Alertmanager payload, its HMAC signature, Slack blocks, Teams
cards, one email per recipient, and what happens when a receiver fails.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta

import pytest
import time_machine
from django.core import mail

from console.models import OutboxTask
from monitors import acklinks
from monitors.models import AckLink, ContactPoint, DeliveryStatus, NotificationDelivery
from monitors.notifiers.base import NotifierConfigError
from monitors.notifiers.email import EmailNotifier
from monitors.notifiers.slack import SlackNotifier
from monitors.notifiers.teams import TeamsNotifier
from monitors.notifiers.webhook import WebhookNotifier
from monitors.notify import MAX_ATTEMPTS
from tests.alerts_kit import T0, make_alert, make_rule
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


@pytest.fixture
def wo_alert(landscape):
    rule = make_rule(
        "wo-not-acknowledged",
        labels={"flow": "order-to-production"},
        runbook="https://runbooks.example/wo-ack",
    )
    return make_alert(
        rule,
        "WO-1001",
        plant=landscape["p1"],
        summary="Work order WO-1001 not acknowledged by MES",
    )


def send_through(cp: ContactPoint, now=NOW) -> NotificationDelivery:
    """Route everything to ``cp``, run a pass and the worker; return the delivery."""
    policy("all", [cp], default=True)
    (delivery,) = notify(now)
    deliver_due()
    delivery.refresh_from_db()
    return delivery


# --- Webhook ------------------------------------------------------------------------------


def test_the_webhook_receives_an_alertmanager_payload(receiver, clock, wo_alert):
    cp = contact("mes-team", "webhook", url=receiver.url("/alerts"))

    delivery = send_through(cp)

    assert delivery.status == DeliveryStatus.DELIVERED
    assert delivery.response_code == 200
    request = receiver.last
    assert request.path == "/alerts"
    assert request.headers["Content-Type"] == "application/json"
    payload = request.json()
    assert payload["version"] == "4"
    assert payload["status"] == "firing"
    assert payload["receiver"] == "mes-team"
    assert payload["groupKey"] == 'all:{plant="p1",rule="wo-not-acknowledged"}'
    assert payload["groupLabels"] == {"plant": "p1", "rule": "wo-not-acknowledged"}
    assert payload["commonLabels"]["flow"] == "order-to-production"
    assert payload["commonLabels"]["alertname"] == "wo-not-acknowledged"
    assert payload["commonAnnotations"]["runbook_url"] == "https://runbooks.example/wo-ack"
    assert payload["externalURL"] == "http://127.0.0.1:8000/"
    (alert,) = payload["alerts"]
    assert alert["status"] == "firing"
    assert alert["labels"]["key"] == "WO-1001"
    assert alert["labels"]["severity"] == "critical"
    assert alert["annotations"]["summary"] == "Work order WO-1001 not acknowledged by MES"
    assert alert["annotations"]["ack_url"].startswith("http://127.0.0.1:8000/ack/")
    assert alert["startsAt"] == "2026-05-21T08:00:00Z"
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"
    assert alert["generatorURL"] == f"http://127.0.0.1:8000/alerts/{wo_alert.pk}/"
    assert len(alert["fingerprint"]) == 16


def test_a_signed_webhook_carries_a_verifiable_hmac_of_the_body(
    receiver, clock, wo_alert, monkeypatch
):
    monkeypatch.setenv("ANDON_TEST_HOOK_SECRET", "s3cret")
    cp = contact("signed", "webhook", url=receiver.url(), secret_env="ANDON_TEST_HOOK_SECRET")

    send_through(cp)

    request = receiver.last
    expected = hmac.new(b"s3cret", request.body, hashlib.sha256).hexdigest()
    assert request.headers["X-Andon-Signature"] == f"sha256={expected}"


def test_an_unsigned_webhook_has_no_signature_header(receiver, clock, wo_alert):
    send_through(contact("plain", "webhook", url=receiver.url()))

    assert "X-Andon-Signature" not in receiver.last.headers


def test_a_missing_secret_variable_fails_the_delivery_at_once_naming_it(
    receiver, clock, wo_alert, monkeypatch
):
    monkeypatch.delenv("ANDON_NOT_SET_SECRET", raising=False)
    cp = contact("unsigned", "webhook", url=receiver.url(), secret_env="ANDON_NOT_SET_SECRET")

    delivery = send_through(cp)

    assert delivery.status == DeliveryStatus.FAILED
    assert "ANDON_NOT_SET_SECRET is not set" in delivery.error
    assert receiver.requests == []


def test_only_the_name_of_the_secret_variable_is_stored(receiver, wo_alert, monkeypatch):
    monkeypatch.setenv("ANDON_TEST_HOOK_SECRET", "s3cret")
    cp = contact("signed", "webhook", url=receiver.url(), secret_env="ANDON_TEST_HOOK_SECRET")

    assert "s3cret" not in str(ContactPoint.objects.get(pk=cp.pk).options)


# --- Slack and Teams ----------------------------------------------------------------------


def test_slack_gets_a_fallback_text_and_blocks_with_the_ack_link(receiver, clock, wo_alert):
    send_through(contact("ops-slack", "slack", url=receiver.url("/services/T0/B0/x")))

    message = receiver.last.json()
    assert message["text"] == "[FIRING:1] wo-not-acknowledged (p1)"
    assert message["blocks"][0]["type"] == "header"
    alert_block = message["blocks"][2]["text"]["text"]
    assert "Work order WO-1001 not acknowledged by MES" in alert_block
    assert "|Acknowledge>" in alert_block
    assert "<https://runbooks.example/wo-ack|Runbook>" in alert_block


def test_a_slack_url_from_the_environment_never_appears_in_errors(
    receiver, clock, wo_alert, monkeypatch
):
    monkeypatch.setenv("ANDON_TEST_SLACK_URL", receiver.url("/services/T0/B0/very-secret"))
    receiver.answer(404)

    delivery = send_through(contact("ops-slack", "slack", url_env="ANDON_TEST_SLACK_URL"))

    assert delivery.status == DeliveryStatus.FAILED
    assert "404" in delivery.error
    assert "very-secret" not in delivery.error
    assert "very-secret" not in ContactPoint.objects.get(name="ops-slack").last_error


def test_teams_gets_an_adaptive_card(receiver, clock, wo_alert):
    send_through(contact("quality", "teams", url=receiver.url("/webhookb2/x")))

    message = receiver.last.json()
    assert message["type"] == "message"
    (attachment,) = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    texts = [block.get("text", "") for block in card["body"]]
    assert "[FIRING] Work order WO-1001 not acknowledged by MES" in texts
    actions = [
        a for block in card["body"] if block["type"] == "ActionSet" for a in block["actions"]
    ]
    assert [a["title"] for a in actions] == ["Acknowledge", "Runbook", "Open in Andon"]


def test_teams_can_use_the_legacy_message_card(receiver, clock, wo_alert):
    send_through(contact("quality", "teams", url=receiver.url(), format="messagecard"))

    message = receiver.last.json()
    assert message["@type"] == "MessageCard"
    assert message["title"].startswith("[FIRING:1]")
    assert message["potentialAction"][0]["name"] == "Acknowledge WO-1001"


# --- Email --------------------------------------------------------------------------------


def test_email_goes_to_each_recipient_with_links_of_their_own(clock, wo_alert, settings):
    settings.DEFAULT_FROM_EMAIL = "andon@plant.example"
    cp = contact("oncall", "email", to=["ada@plant.example", "bo@plant.example"])

    delivery = send_through(cp)

    assert delivery.status == DeliveryStatus.DELIVERED
    assert [m.to for m in mail.outbox] == [["ada@plant.example"], ["bo@plant.example"]]
    first, second = mail.outbox
    assert first.from_email == "andon@plant.example"
    assert first.subject == "[FIRING:1] wo-not-acknowledged (p1)"
    assert "Work order WO-1001 not acknowledged by MES" in first.body
    link_of = {m.to[0]: m.body.split("Acknowledge: ")[1].split()[0] for m in mail.outbox}
    assert link_of["ada@plant.example"] != link_of["bo@plant.example"]
    html, mimetype = first.alternatives[0]
    assert mimetype == "text/html"
    assert link_of["ada@plant.example"] in html
    assert "runbooks.example/wo-ack" in second.body


def test_email_addresses_are_validated_naming_the_bad_one():
    with pytest.raises(NotifierConfigError) as caught:
        EmailNotifier.clean({"to": ["ok@plant.example", "not an address"]})

    assert caught.value.field == "to[1]"


# --- Options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "options", "field"),
    [
        (WebhookNotifier, {}, "url"),
        (WebhookNotifier, {"url": "ftp://x"}, "url"),
        (WebhookNotifier, {"url": "http://x", "secret_env": "not a name"}, "secret_env"),
        (WebhookNotifier, {"url": "http://x", "secret": "inline"}, "secret"),
        (SlackNotifier, {"url": "http://x", "url_env": "SLACK_URL"}, "url"),
        (TeamsNotifier, {"url": "http://x", "format": "html"}, "format"),
    ],
)
def test_invalid_options_are_refused_naming_the_option(cls, options, field):
    with pytest.raises(NotifierConfigError) as caught:
        cls.clean(options)

    assert caught.value.field == field


# --- Failures and retries -----------------------------------------------------------------


def test_a_failing_receiver_is_retried_with_backoff_until_it_answers(receiver, clock, wo_alert):
    receiver.answer(503, 503, 200)
    cp = contact("flaky", "webhook", url=receiver.url())

    delivery = send_through(cp)

    assert delivery.status == DeliveryStatus.RETRYING
    assert delivery.attempts == 1
    assert delivery.response_code == 503
    assert "503" in delivery.error
    assert delivery.next_attempt_at == NOW + timedelta(seconds=10)
    cp.refresh_from_db()
    assert cp.consecutive_failures == 1
    assert "503" in cp.last_error
    task = OutboxTask.objects.get(name="notify.deliver")
    assert task.state == "queued"
    assert task.available_at == NOW + timedelta(seconds=10)

    assert deliver_due() == []  # not before its backoff
    clock.shift(timedelta(seconds=10))
    deliver_due()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.RETRYING, 2)
    assert delivery.next_attempt_at == NOW + timedelta(seconds=10 + 30)

    clock.shift(timedelta(seconds=30))
    deliver_due()
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts) == (DeliveryStatus.DELIVERED, 3)
    assert len(receiver.requests) == 3
    cp.refresh_from_db()
    assert cp.consecutive_failures == 0
    assert cp.last_success_at == NOW + timedelta(seconds=40)


def test_a_retried_delivery_sends_the_same_ack_links_again(receiver, clock, wo_alert):
    receiver.answer(500, 200)
    send_through(contact("flaky", "webhook", url=receiver.url()))
    clock.shift(timedelta(seconds=10))
    deliver_due()

    first, second = (r.json()["alerts"][0]["annotations"]["ack_url"] for r in receiver.requests)
    nonces = {acklinks.verify(url.rstrip("/").rsplit("/", 1)[1]).nonce for url in (first, second)}
    assert len(nonces) == 1
    assert AckLink.objects.count() == 1


def test_a_client_error_fails_at_once(receiver, clock, wo_alert):
    receiver.answer(400)

    delivery = send_through(contact("wrong", "webhook", url=receiver.url()))

    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == 1
    assert "400" in delivery.error
    assert OutboxTask.objects.get(name="notify.deliver").state == "done"


def test_a_delivery_gives_up_after_the_last_attempt(receiver, clock, wo_alert):
    receiver.answer(502)
    delivery = send_through(contact("down", "webhook", url=receiver.url()))

    for _ in range(MAX_ATTEMPTS - 1):
        clock.shift(timedelta(hours=1))
        deliver_due()

    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == MAX_ATTEMPTS
    assert ContactPoint.objects.get(name="down").consecutive_failures == MAX_ATTEMPTS
    assert len(receiver.requests) == MAX_ATTEMPTS


def test_an_unreachable_receiver_is_a_transient_failure(clock, wo_alert):
    with running_receiver() as gone:
        url = gone.url()
    delivery = send_through(contact("gone", "webhook", url=url))

    assert delivery.status == DeliveryStatus.RETRYING
    assert "could not connect" in delivery.error
