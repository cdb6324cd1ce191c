"""Microsoft Teams incoming webhook: an Adaptive Card (Workflows) or a legacy MessageCard.

Options: ``url`` or ``url_env`` (the webhook URL is a secret: prefer the
environment variable), ``format`` (``adaptive``, the default, for Teams
Workflows webhooks; ``messagecard`` for the older Office 365 connectors),
``timeout_s``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from monitors.notifiers.base import (
    MAX_LISTED_ALERTS,
    Notification,
    Notifier,
    SendResult,
    clean_timeout,
    clean_url_or_env,
    describe_url,
    post_json,
    reader,
    resolve_url,
)

FORMATS = ("adaptive", "messagecard")
THEME = {"firing": "D70000", "resolved": "2EB886"}


class TeamsNotifier(Notifier):
    """Posts a card to a Microsoft Teams incoming webhook."""

    kind = "teams"
    allowed = ("url", "url_env", "format", "timeout_s")

    @classmethod
    def clean(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        config = reader(options, cls.allowed)
        return {
            **clean_url_or_env(config),
            "format": config.choice("format", FORMATS, default="adaptive"),
            "timeout_s": clean_timeout(config),
        }

    def target(self) -> str:
        return f"{describe_url(self.options)} ({self.options.get('format', 'adaptive')})"

    def message(self, notification: Notification) -> dict[str, Any]:
        """Return the Teams message for ``notification`` in the configured format."""
        if self.options.get("format") == "messagecard":
            return self.message_card(notification)
        return self.adaptive_card(notification)

    def adaptive_card(self, notification: Notification) -> dict[str, Any]:
        links = notification.ack_links(self.recipients()[0])
        body: list[dict[str, Any]] = [
            {
                "type": "TextBlock",
                "text": notification.title,
                "size": "Large",
                "weight": "Bolder",
                "wrap": True,
                "color": "Attention" if notification.status == "firing" else "Good",
            },
            {"type": "TextBlock", "text": notification.intro, "wrap": True},
        ]
        for item in notification.alerts[:MAX_LISTED_ALERTS]:
            body.append(
                {
                    "type": "TextBlock",
                    "text": f"[{item.status.upper()}] {item.summary}",
                    "weight": "Bolder",
                    "wrap": True,
                    "separator": True,
                }
            )
            facts = [
                {"title": "Severity", "value": item.severity},
                {"title": "Rule", "value": item.rule},
                {"title": "Key", "value": item.key},
                {"title": "Since", "value": item.starts_at},
            ]
            if item.plant:
                facts.insert(1, {"title": "Plant", "value": item.plant})
            body.append({"type": "FactSet", "facts": facts})
            actions = []
            if item.id is not None and item.id in links:
                actions.append(
                    {"type": "Action.OpenUrl", "title": "Acknowledge", "url": links[item.id]}
                )
            if item.runbook_url:
                actions.append(
                    {"type": "Action.OpenUrl", "title": "Runbook", "url": item.runbook_url}
                )
            if item.generator_url:
                actions.append(
                    {"type": "Action.OpenUrl", "title": "Open in Andon", "url": item.generator_url}
                )
            if actions:
                body.append({"type": "ActionSet", "actions": actions})
        hidden = len(notification.alerts) - MAX_LISTED_ALERTS
        if hidden > 0:
            body.append({"type": "TextBlock", "text": f"…and {hidden} more in Andon", "wrap": True})
        card = {
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "type": "AdaptiveCard",
            "version": "1.4",
            "body": body,
            "actions": [
                {"type": "Action.OpenUrl", "title": "Open Andon", "url": notification.external_url}
            ],
        }
        return {
            "type": "message",
            "attachments": [
                {
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": None,
                    "content": card,
                }
            ],
        }

    def message_card(self, notification: Notification) -> dict[str, Any]:
        links = notification.ack_links(self.recipients()[0])
        sections = []
        actions = []
        for item in notification.alerts[:MAX_LISTED_ALERTS]:
            facts = [
                {"name": "Severity", "value": item.severity},
                {"name": "Rule", "value": item.rule},
                {"name": "Key", "value": item.key},
                {"name": "Since", "value": item.starts_at},
            ]
            if item.plant:
                facts.insert(1, {"name": "Plant", "value": item.plant})
            sections.append(
                {
                    "activityTitle": f"[{item.status.upper()}] {item.summary}",
                    "facts": facts,
                    "markdown": True,
                }
            )
            if item.id is not None and item.id in links:
                actions.append(
                    {
                        "@type": "OpenUri",
                        "name": f"Acknowledge {item.key}"[:100],
                        "targets": [{"os": "default", "uri": links[item.id]}],
                    }
                )
        actions.append(
            {
                "@type": "OpenUri",
                "name": "Open Andon",
                "targets": [{"os": "default", "uri": notification.external_url}],
            }
        )
        return {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "themeColor": THEME.get(notification.status, "D70000"),
            "summary": notification.title,
            "title": notification.title,
            "text": notification.intro,
            "sections": sections,
            "potentialAction": actions,
        }

    def send(self, notification: Notification) -> SendResult:
        body = orjson.dumps(self.message(notification))
        return post_json(
            resolve_url(self.options),
            body,
            {},
            float(self.options.get("timeout_s") or 10),
            shown_url=describe_url(self.options),
        )
