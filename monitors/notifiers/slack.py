"""Slack incoming webhook: a message with ``text`` (the fallback) and ``blocks``.

Options: ``url`` or ``url_env`` (the webhook URL is a secret: prefer the
environment variable), ``timeout_s``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from monitors.notifiers.base import (
    MAX_LISTED_ALERTS,
    AlertItem,
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

STATUS_EMOJI = {"firing": ":red_circle:", "resolved": ":large_green_circle:"}


def _escape(text: str) -> str:
    """Escape what Slack's mrkdwn treats as control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackNotifier(Notifier):
    """Posts a Block Kit message to a Slack incoming webhook."""

    kind = "slack"
    allowed = ("url", "url_env", "timeout_s")

    @classmethod
    def clean(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        config = reader(options, cls.allowed)
        return {**clean_url_or_env(config), "timeout_s": clean_timeout(config)}

    def target(self) -> str:
        return describe_url(self.options)

    def message(self, notification: Notification) -> dict[str, Any]:
        """Return the Slack message for ``notification``."""
        links = notification.ack_links(self.recipients()[0])
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": notification.title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _escape(notification.intro)}},
        ]
        for item in notification.alerts[:MAX_LISTED_ALERTS]:
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": self._line(item, links)}}
            )
        hidden = len(notification.alerts) - MAX_LISTED_ALERTS
        if hidden > 0:
            blocks.append(
                {
                    "type": "context",
                    "elements": [{"type": "mrkdwn", "text": f"…and {hidden} more in Andon"}],
                }
            )
        return {"text": notification.title, "blocks": blocks}

    @staticmethod
    def _line(item: AlertItem, links: Mapping[int, str]) -> str:
        emoji = STATUS_EMOJI.get(item.status, "")
        where = f" · plant {_escape(item.plant)}" if item.plant else ""
        text = (
            f"{emoji} *{_escape(item.summary)}*\n"
            f"{item.severity} · {_escape(item.rule)} · {_escape(item.key)}{where}"
            f" · since {item.starts_at}"
        )
        actions = []
        if item.id is not None and item.id in links:
            actions.append(f"<{links[item.id]}|Acknowledge>")
        if item.runbook_url:
            actions.append(f"<{item.runbook_url}|Runbook>")
        if item.generator_url:
            actions.append(f"<{item.generator_url}|Open in Andon>")
        return text + ("\n" + " · ".join(actions) if actions else "")

    def send(self, notification: Notification) -> SendResult:
        body = orjson.dumps(self.message(notification))
        return post_json(
            resolve_url(self.options),
            body,
            {},
            float(self.options.get("timeout_s") or 10),
            shown_url=describe_url(self.options),
        )
