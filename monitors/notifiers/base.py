"""The notifier contract: one class per contact point kind, one error type, one HTTP seam.

A :class:`Notifier` turns a :class:`Notification` (what to say: a group of
alerts, firing or resolved, with their acknowledgement links) into one delivery
to one contact point, in the format its receiver understands.

Adding a contact point kind (a short checklist):

1. Write ``monitors/notifiers/<kind>.py`` with a ``Notifier`` subclass: set
   ``kind``; implement ``clean`` (validate the contact point's options with the
   ``ConfigReader``, return them normalised; name the field in every error),
   ``target`` (what the page shows, no secrets) and ``send``.
2. Register the class in ``NOTIFIERS`` in ``monitors/notifiers/__init__.py``.
3. Add the kind to ``ContactPointKind`` in ``monitors/models.py`` (a migration
   that only changes choices).
4. Send outbound HTTP through :func:`post_json` only (never ``requests``
   directly), so every kind shares the outbound seam, timeouts and error mapping.
5. Test it in ``tests/test_notifiers.py`` against the loopback receiver, and
   give the demo (``monitors/fixtures/demo_notifications.yaml``) one.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

from integrations.adapters.base import ConfigError, ConfigReader

# Alertmanager's "no end yet" for a firing alert's endsAt.
ZERO_TIME = "0001-01-01T00:00:00Z"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_TIMEOUT_S = 10.0
# Chat cards stay readable (and under Slack's 50-block limit): the rest is counted, not listed.
MAX_LISTED_ALERTS = 20


class NotifierConfigError(ConfigError):
    """A contact point's options are invalid; ``field`` names the option."""


class NotifyError(Exception):
    """A delivery failed; ``permanent`` says that retrying the same notification cannot help."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool = False,
        status_code: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.status_code = status_code
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class SendResult:
    """What the receiver answered to a delivery it accepted."""

    status_code: int | None = None
    detail: str = ""


@dataclass(frozen=True)
class AlertItem:
    """One alert as a notification shows it (a snapshot taken when the notification was made)."""

    id: int | None
    status: str  # firing | resolved
    rule: str
    key: str
    severity: str
    plant: str
    labels: dict[str, str]
    summary: str
    runbook_url: str
    starts_at: str
    ends_at: str
    generator_url: str
    fingerprint: str
    acknowledged_by: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AlertItem:
        return cls(**{name: data.get(name, "") for name in cls.__dataclass_fields__})

    def as_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _no_links(recipient: str) -> dict[int, str]:
    return {}


@dataclass
class Notification:
    """What a delivery says: a group of alerts, and a way to get each recipient's ack links.

    ``ack_links(recipient)`` returns ``{alert id: URL}`` for the firing alerts;
    the recipient (an email address, ``slack:<contact point>``...) is whom the
    acknowledgement will name, so each recipient gets links of its own.
    """

    reason: str  # firing | resolved | repeat | escalation | test
    status: str  # firing | resolved
    receiver: str
    group_key: str
    group_labels: dict[str, str]
    alerts: list[AlertItem]
    external_url: str
    policy: str = ""
    escalate_after: str = ""
    ack_links: Callable[[str], dict[int, str]] = field(default=_no_links, repr=False)

    @classmethod
    def from_body(
        cls,
        body: Mapping[str, Any],
        receiver: str,
        ack_links: Callable[[str], dict[int, str]] = _no_links,
    ) -> Notification:
        """Rebuild a notification from a delivery's stored ``body``."""
        return cls(
            reason=str(body.get("reason", "")),
            status=str(body.get("status", "firing")),
            receiver=receiver,
            group_key=str(body.get("group_key", "")),
            group_labels=dict(body.get("group_labels") or {}),
            alerts=[AlertItem.from_json(item) for item in body.get("alerts") or []],
            external_url=str(body.get("external_url", "")),
            policy=str(body.get("policy", "")),
            escalate_after=str(body.get("escalate_after", "")),
            ack_links=ack_links,
        )

    @property
    def firing(self) -> list[AlertItem]:
        return [a for a in self.alerts if a.status == "firing"]

    @property
    def resolved(self) -> list[AlertItem]:
        return [a for a in self.alerts if a.status == "resolved"]

    @property
    def common_labels(self) -> dict[str, str]:
        """Return the labels (with ``alertname``) that every alert shares, value included."""
        if not self.alerts:
            return {}
        sets = [set(wire_labels(a).items()) for a in self.alerts]
        return dict(sorted(set.intersection(*sets)))

    @property
    def common_annotations(self) -> dict[str, str]:
        if not self.alerts:
            return {}
        sets = [set(annotations(a).items()) for a in self.alerts]
        return dict(sorted(set.intersection(*sets)))

    @property
    def title(self) -> str:
        """Return the one-line subject, e.g. ``[FIRING:2] wo-not-acknowledged (p1)``."""
        if self.reason == "test":
            return f"[TEST] Andon test notification to {self.receiver}"
        if self.reason == "escalation":
            head = f"[ESCALATED:{len(self.firing)}]"
        elif self.status == "firing":
            head = f"[FIRING:{len(self.firing)}]"
        else:
            head = "[RESOLVED]"
        labels = self.group_labels or self.common_labels
        what = " ".join(labels[name] for name in ("rule", "flow", "severity") if labels.get(name))
        rules = sorted({a.rule for a in self.alerts})
        what = what or (rules[0] if len(rules) == 1 else f"{len(rules)} rules")
        plant = labels.get("plant")
        return f"{head} {what}" + (f" ({plant})" if plant else "")

    @property
    def intro(self) -> str:
        """Return one sentence on why this notification was sent."""
        if self.reason == "test":
            return "This is a test notification from Andon: the contact point works."
        if self.reason == "escalation":
            return (
                f"Escalated: not acknowledged within {self.escalate_after} "
                f"of the first notification (policy {self.policy})."
            )
        if self.reason == "repeat":
            return "Still firing (a reminder)."
        if self.status == "resolved":
            return "Resolved."
        return f"{len(self.firing)} firing, {len(self.resolved)} resolved."

    def alertmanager_payload(self, recipient: str, truncate: int = 0) -> dict[str, Any]:
        """Return the Alertmanager webhook payload (version 4) with ``recipient``'s ack links."""
        links = self.ack_links(recipient)
        alerts = self.alerts[:truncate] if truncate else self.alerts
        return {
            "version": "4",
            "groupKey": self.group_key,
            "truncatedAlerts": len(self.alerts) - len(alerts),
            "status": self.status,
            "receiver": self.receiver,
            "groupLabels": dict(self.group_labels),
            "commonLabels": self.common_labels,
            "commonAnnotations": self.common_annotations,
            "externalURL": self.external_url,
            "alerts": [
                {
                    "status": a.status,
                    "labels": wire_labels(a),
                    "annotations": annotations(a, links.get(a.id) if a.id is not None else None),
                    "startsAt": a.starts_at,
                    "endsAt": a.ends_at or ZERO_TIME,
                    "generatorURL": a.generator_url,
                    "fingerprint": a.fingerprint,
                }
                for a in alerts
            ],
        }

    def text(self, recipient: str) -> str:
        """Return the plain-text rendering (email bodies, chat fallbacks)."""
        links = self.ack_links(recipient)
        lines = [self.title, "", self.intro, ""]
        for item in self.alerts:
            lines.append(f"- [{item.status.upper()}] {item.severity} {item.summary}")
            where = f"  rule {item.rule}, key {item.key}" + (
                f", plant {item.plant}" if item.plant else ""
            )
            lines.append(where + f", since {item.starts_at}")
            if item.id is not None and item.id in links:
                lines.append(f"  Acknowledge: {links[item.id]}")
            if item.runbook_url:
                lines.append(f"  Runbook: {item.runbook_url}")
            if item.generator_url:
                lines.append(f"  Open: {item.generator_url}")
        lines += ["", f"Andon: {self.external_url}"]
        return "\n".join(lines)


def wire_labels(item: AlertItem) -> dict[str, str]:
    """Return an alert's labels as receivers expect them: with Alertmanager's ``alertname``."""
    labels = {str(k): str(v) for k, v in item.labels.items()}
    labels.setdefault("alertname", item.rule)
    return dict(sorted(labels.items()))


def annotations(item: AlertItem, ack_url: str | None = None) -> dict[str, str]:
    """Return an alert's annotations: summary, runbook_url and (when firing) ack_url."""
    out = {"summary": item.summary}
    if item.runbook_url:
        out["runbook_url"] = item.runbook_url
    if ack_url:
        out["ack_url"] = ack_url
    return out


class Notifier:
    """Delivers notifications to one contact point of one kind.

    The contract every kind keeps:

    - ``clean(options)`` validates options before anything is stored, raising
      :class:`NotifierConfigError` naming the option; it never reads secrets
      (options name environment variables, which are read when sending).
    - ``send(notification)`` makes one delivery attempt and returns a
      :class:`SendResult`, or raises :class:`NotifyError`: ``permanent`` when the
      same notification can never succeed (a 4xx answer, a missing secret),
      else it is retried with backoff by the caller. It does not retry itself,
      does not touch the database, and takes at most about ``timeout_s``.
    - ``recipients()`` names who receives it (ack links name them as actors).
    """

    kind: ClassVar[str] = ""
    allowed: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, options: Mapping[str, Any]) -> None:
        self.name = name
        self.options = dict(options)

    @classmethod
    def clean(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate and normalise a contact point's options (raise NotifierConfigError)."""
        raise NotImplementedError

    def target(self) -> str:
        """Describe where it sends, without secrets (a URL shows scheme and host only)."""
        raise NotImplementedError

    def recipients(self) -> list[str]:
        """Return whom a delivery reaches; one ack link per alert is made for each."""
        return [f"{self.kind}:{self.name}"]

    def send(self, notification: Notification) -> SendResult:
        """Make one delivery attempt (see the class docstring)."""
        raise NotImplementedError


# --- Helpers the kinds share ------------------------------------------------------------


def reader(options: Mapping[str, Any], allowed: tuple[str, ...]) -> ConfigReader:
    """Return a reader that rejects unknown options and raises NotifierConfigError."""
    if not isinstance(options, Mapping):
        raise NotifierConfigError("", "contact point options must be a mapping")
    config = ConfigReader(options, error_class=NotifierConfigError)
    config.reject_unknown(allowed)
    return config


def clean_url(config: ConfigReader, name: str = "url", required: bool = True) -> str | None:
    """Read an http(s) URL option."""
    value = config.string(name, required=required, max_length=2000)
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise NotifierConfigError(name, f"must be an http or https URL, not {value!r}")
    return value


def clean_env_name(config: ConfigReader, name: str) -> str | None:
    """Read an option that names an environment variable (a secret is never stored)."""
    value = config.string(name, max_length=200)
    if value is not None and not ENV_NAME.match(value):
        raise NotifierConfigError(
            name, f"must name an environment variable (letters, digits, _), not {value!r}"
        )
    return value


def clean_url_or_env(config: ConfigReader) -> dict[str, Any]:
    """Read ``url`` or ``url_env`` (exactly one): chat webhook URLs are secrets themselves."""
    url = clean_url(config, "url", required=False)
    url_env = clean_env_name(config, "url_env")
    if (url is None) == (url_env is None):
        raise NotifierConfigError("url", "give either url or url_env (the variable holding it)")
    return {"url": url} if url else {"url_env": url_env}


def clean_timeout(config: ConfigReader) -> float:
    value = config.number("timeout_s", default=DEFAULT_TIMEOUT_S, minimum=0.1, maximum=120)
    return float(value if value is not None else DEFAULT_TIMEOUT_S)


def from_env(name: str) -> str:
    """Return a secret from the environment, or fail permanently naming the variable."""
    value = os.environ.get(name, "")
    if not value:
        raise NotifyError(f"environment variable {name} is not set", permanent=True)
    return value


def resolve_url(options: Mapping[str, Any]) -> str:
    """Return the URL to post to, from ``url`` or from the variable ``url_env`` names."""
    if options.get("url"):
        return str(options["url"])
    return from_env(str(options.get("url_env", "")))


def describe_url(options: Mapping[str, Any]) -> str:
    """Show a URL without its path and query (chat webhook paths are secrets)."""
    if options.get("url_env") and not options.get("url"):
        return f"URL from ${options['url_env']}"
    parts = urlsplit(str(options.get("url", "")))
    return (
        f"{parts.scheme}://{parts.netloc}/…"
        if parts.path not in ("", "/")
        else str(options.get("url", ""))
    )


def sign(secret: str, body: bytes) -> str:
    """Return the ``X-Andon-Signature`` value: ``sha256=`` and the HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def post_json(
    url: str, body: bytes, headers: Mapping[str, str], timeout_s: float, shown_url: str = ""
) -> SendResult:
    """POST a JSON body through ``integrations.outbound`` (every notifier's one HTTP seam).

    A 2xx answer is success. No answer, 408, 425, 429 and 5xx are worth
    retrying; any other answer is permanent (a wrong URL, a refused payload).
    ``shown_url`` replaces the URL in error messages (chat webhook URLs are secrets).
    """
    from integrations import outbound

    all_headers = {"Content-Type": "application/json", **headers}
    shown = shown_url or outbound.redact(url)
    try:
        response = outbound.send("POST", url, body=body, headers=all_headers, timeout_s=timeout_s)
    except outbound.OutboundError as exc:
        raise _notify_error(exc, url, shown) from None
    failure = response.failure()
    if failure is not None:
        raise _notify_error(failure, url, shown)
    return SendResult(response.status_code, f"{response.summary()} in {response.latency_ms} ms")


def _notify_error(exc: Any, url: str, shown: str) -> NotifyError:
    from integrations import outbound

    message = str(exc.message).replace(outbound.redact(url), shown)
    return NotifyError(
        message,
        permanent=exc.permanent,
        status_code=exc.status_code,
        retry_after_s=exc.retry_after_s,
    )
