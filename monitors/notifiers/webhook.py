"""Generic webhook: the Alertmanager webhook payload (version 4), optionally HMAC-signed.

Options: ``url`` (http or https), ``secret_env`` (the environment variable
holding the signing secret; then every request carries
``X-Andon-Signature: sha256=<hex HMAC-SHA256 of the body>``), ``timeout_s``,
``max_alerts`` (list at most this many alerts; the rest count in
``truncatedAlerts``; 0: all).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from monitors.notifiers.base import (
    Notification,
    Notifier,
    SendResult,
    clean_env_name,
    clean_timeout,
    clean_url,
    describe_url,
    from_env,
    post_json,
    reader,
    sign,
)

SIGNATURE_HEADER = "X-Andon-Signature"


class WebhookNotifier(Notifier):
    """POSTs the Alertmanager-compatible JSON payload to a URL."""

    kind = "webhook"
    allowed = ("url", "secret_env", "timeout_s", "max_alerts")

    @classmethod
    def clean(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        config = reader(options, cls.allowed)
        cleaned: dict[str, Any] = {"url": clean_url(config)}
        secret_env = clean_env_name(config, "secret_env")
        if secret_env:
            cleaned["secret_env"] = secret_env
        cleaned["timeout_s"] = clean_timeout(config)
        cleaned["max_alerts"] = config.integer("max_alerts", default=0, minimum=0) or 0
        return cleaned

    def target(self) -> str:
        signed = (
            f", signed with ${self.options['secret_env']}" if self.options.get("secret_env") else ""
        )
        return describe_url(self.options) + signed

    def body(self, notification: Notification) -> bytes:
        """Return the JSON body sent for ``notification``."""
        payload = notification.alertmanager_payload(
            self.recipients()[0], truncate=int(self.options.get("max_alerts") or 0)
        )
        return orjson.dumps(payload)

    def send(self, notification: Notification) -> SendResult:
        body = self.body(notification)
        headers = {}
        if self.options.get("secret_env"):
            headers[SIGNATURE_HEADER] = sign(from_env(self.options["secret_env"]), body)
        return post_json(
            self.options["url"], body, headers, float(self.options.get("timeout_s") or 10)
        )
