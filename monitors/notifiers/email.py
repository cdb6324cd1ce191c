"""Email through Django's mail framework: SMTP from ``ANDON_EMAIL_*``, else the console.

Options: ``to`` (an address or a list of them). Each address gets its own
message, so that its acknowledgement links name that address as the actor.
"""

from __future__ import annotations

import smtplib
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.mail import EmailMultiAlternatives, get_connection
from django.core.validators import validate_email
from django.template.loader import render_to_string

from monitors.notifiers.base import (
    Notification,
    Notifier,
    NotifierConfigError,
    NotifyError,
    SendResult,
    reader,
)

MAX_RECIPIENTS = 50
# SMTP answers that retrying the same message cannot change.
PERMANENT_SMTP_ERRORS = (
    smtplib.SMTPRecipientsRefused,
    smtplib.SMTPSenderRefused,
    smtplib.SMTPAuthenticationError,
    smtplib.SMTPNotSupportedError,
)


class EmailNotifier(Notifier):
    """Sends a text and HTML email per recipient."""

    kind = "email"
    allowed = ("to",)

    @classmethod
    def clean(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        reader(options, cls.allowed)
        raw = options.get("to")
        addresses = [raw] if isinstance(raw, str) else raw
        if not isinstance(addresses, list) or not addresses:
            raise NotifierConfigError("to", "is required: an email address or a list of them")
        if len(addresses) > MAX_RECIPIENTS:
            raise NotifierConfigError("to", f"at most {MAX_RECIPIENTS} addresses")
        cleaned = []
        for index, address in enumerate(addresses):
            try:
                validate_email(address)
            except ValidationError:
                raise NotifierConfigError(
                    f"to[{index}]", f"not an email address: {address!r}"
                ) from None
            cleaned.append(address.strip())
        return {"to": cleaned}

    def target(self) -> str:
        return ", ".join(self.options.get("to", []))

    def recipients(self) -> list[str]:
        return list(self.options.get("to", []))

    def message(self, notification: Notification, recipient: str) -> EmailMultiAlternatives:
        """Return the email ``recipient`` gets (their own ack links)."""
        links = notification.ack_links(recipient)
        text = notification.text(recipient)
        html = render_to_string(
            "console/notifications_email.html",
            {
                "n": notification,
                "rows": [(item, links.get(item.id)) for item in notification.alerts],
            },
        )
        message = EmailMultiAlternatives(
            subject=notification.title,
            body=text,
            from_email=settings.DEFAULT_FROM_EMAIL,
            to=[recipient],
            headers={"X-Andon-Group": notification.group_key[:200]},
        )
        message.attach_alternative(html, "text/html")
        return message

    def send(self, notification: Notification) -> SendResult:
        messages = [self.message(notification, r) for r in self.recipients()]
        try:
            connection = get_connection(fail_silently=False)
            sent = connection.send_messages(messages)
        except PERMANENT_SMTP_ERRORS as exc:
            raise NotifyError(f"SMTP refused: {exc}", permanent=True) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise NotifyError(f"SMTP failed: {type(exc).__name__}: {exc}") from None
        return SendResult(None, f"sent to {sent or 0} of {len(messages)} recipients")
