"""Signed acknowledgement links: acknowledge an alert from a notification, without logging in.

A link is ``<ANDON_PUBLIC_URL>/ack/<token>/`` where the token is a nonce
signed with ``django.core.signing`` (timestamped, so it expires after
``ANDON_ACK_LINK_TTL_S``). The nonce's :class:`~monitors.models.AckLink` row
says which alert it acknowledges and for whom; using it marks it used, so a
link works once. The recipient it was made for (an email address,
``slack:<contact point>``...) becomes the acknowledgement's actor.

Opening a link (GET) only shows what it would do; acknowledging takes a POST,
so that mail scanners and link previews that fetch URLs do not use it up.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from monitors.lifecycle import AlertActionError, acknowledge
from monitors.models import AckLink, Alert, AlertState, NotificationDelivery

SALT = "andon.monitors.acklink"


class AckLinkError(Exception):
    """A link cannot be used: tampered (400), expired (410) or already used (409)."""

    def __init__(self, status: int, title: str, message: str, link: AckLink | None = None):
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.link = link


def ttl_s() -> int:
    return int(settings.ANDON_ACK_LINK_TTL_S)


def token_for(link: AckLink) -> str:
    """Return the signed token of a link (signed now: its signature expires ``ttl_s`` later)."""
    return signing.dumps({"n": link.nonce}, salt=SALT)


def url_for(link: AckLink) -> str:
    """Return the absolute URL of a link, under ``ANDON_PUBLIC_URL``."""
    path = reverse("ack-link", args=[token_for(link)])
    return settings.ANDON_PUBLIC_URL.rstrip("/") + path


def issue(
    alert_ids: Iterable[int],
    recipient: str,
    delivery: NotificationDelivery | None = None,
    now: datetime | None = None,
) -> dict[int, str]:
    """Return ``{alert id: URL}``, making links for ``recipient`` that do not exist yet.

    Links are kept per (delivery, alert, recipient), so a retried delivery sends
    the same nonces again instead of piling up new ones.
    """
    now = now or timezone.now()
    wanted = sorted(set(alert_ids))
    if not wanted:
        return {}
    links = {
        link.alert_id: link
        for link in AckLink.objects.filter(
            delivery=delivery, recipient=recipient[:254], alert_id__in=wanted
        )
    }
    missing = [
        AckLink(
            nonce=secrets.token_urlsafe(24),
            alert_id=alert_id,
            delivery=delivery,
            recipient=recipient[:254],
            created_at=now,
            expires_at=now + timedelta(seconds=ttl_s()),
        )
        for alert_id in wanted
        if alert_id not in links
    ]
    if missing:
        AckLink.objects.bulk_create(missing)
        links.update({link.alert_id: link for link in missing})
    return {alert_id: url_for(link) for alert_id, link in links.items()}


def verify(token: str, now: datetime | None = None) -> AckLink:
    """Return the unused, unexpired link of a token, or raise AckLinkError saying why not."""
    now = now or timezone.now()
    try:
        data = signing.loads(token, salt=SALT, max_age=ttl_s())
    except signing.SignatureExpired:
        raise AckLinkError(
            410, "Link expired", "This acknowledgement link has expired. Open the alert in Andon."
        ) from None
    except signing.BadSignature:
        raise AckLinkError(
            400, "Invalid link", "This acknowledgement link is not valid (altered or incomplete)."
        ) from None
    nonce = data.get("n") if isinstance(data, dict) else None
    link = (
        AckLink.objects.select_related("alert__rule", "alert__plant").filter(nonce=nonce).first()
        if isinstance(nonce, str)
        else None
    )
    if link is None:
        raise AckLinkError(
            400, "Invalid link", "This acknowledgement link is not valid (unknown link)."
        )
    if link.used_at is not None:
        raise AckLinkError(
            409,
            "Link already used",
            f"This link was already used on {link.used_at:%Y-%m-%d %H:%M} UTC.",
            link,
        )
    if link.expires_at <= now:
        raise AckLinkError(
            410, "Link expired", "This acknowledgement link has expired. Open the alert in Andon."
        )
    return link


@dataclass(frozen=True)
class AckOutcome:
    """What using a link did: ``acknowledged``, ``already_acknowledged`` or ``resolved``."""

    result: str
    alert: Alert
    actor: str


def use(token: str, now: datetime | None = None) -> AckOutcome:
    """Use a link once: acknowledge its alert in the name of its recipient.

    The link is claimed with a conditional UPDATE, so two clicks at once
    acknowledge once and the second is told the link was already used.
    """
    now = now or timezone.now()
    link = verify(token, now)
    with transaction.atomic():
        claimed = AckLink.objects.filter(pk=link.pk, used_at__isnull=True).update(used_at=now)
        if not claimed:
            link.refresh_from_db()
            raise AckLinkError(
                409,
                "Link already used",
                f"This link was already used on {link.used_at:%Y-%m-%d %H:%M} UTC.",
                link,
            )
        alert = link.alert
        if alert.state == AlertState.ACKNOWLEDGED:
            return AckOutcome("already_acknowledged", alert, alert.acknowledged_by)
        try:
            alert = acknowledge(
                alert.pk, link.recipient, "acknowledged from a notification link", now=now
            )
        except AlertActionError:
            alert.refresh_from_db()
            return AckOutcome("resolved", alert, link.recipient)
        if alert.acknowledged_by != link.recipient[:150]:
            return AckOutcome("already_acknowledged", alert, alert.acknowledged_by)
        return AckOutcome("acknowledged", alert, link.recipient)
