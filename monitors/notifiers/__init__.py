"""Contact point kinds: one notifier class per kind (see ``base.Notifier`` for the contract)."""

from __future__ import annotations

from typing import Any

from monitors.notifiers.base import Notifier, NotifierConfigError
from monitors.notifiers.email import EmailNotifier
from monitors.notifiers.slack import SlackNotifier
from monitors.notifiers.teams import TeamsNotifier
from monitors.notifiers.webhook import WebhookNotifier

NOTIFIERS: dict[str, type[Notifier]] = {
    cls.kind: cls for cls in (EmailNotifier, WebhookNotifier, SlackNotifier, TeamsNotifier)
}


def notifier_class(kind: str) -> type[Notifier]:
    """Return the notifier class of a kind; raise NotifierConfigError for an unknown one."""
    try:
        return NOTIFIERS[kind]
    except KeyError:
        raise NotifierConfigError(
            "kind", f"must be one of {', '.join(sorted(NOTIFIERS))}, not {kind!r}"
        ) from None


def notifier_for(contact_point: Any) -> Notifier:
    """Return the notifier of a ContactPoint (its stored options, validated again)."""
    cls = notifier_class(contact_point.kind)
    return cls(contact_point.name, cls.clean(contact_point.options or {}))
