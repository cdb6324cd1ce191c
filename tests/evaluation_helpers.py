"""Helpers for the evaluation tests: a frozen clock, rules from rules-file entries, stored items.

Items are stored through the ORM the way the ingest path leaves them (time,
system and plant attributed), so evaluation sees what it would in production.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from integrations.models import Connector, Event, Message, Span, System
from monitors.models import Alert, AlertTransition, Rule
from monitors.rules import validate_rule

T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
_ids = itertools.count(1)


def at(minutes: float = 0, seconds: float = 0) -> datetime:
    """Return the test clock ``minutes`` (and ``seconds``) after T0."""
    return T0 + timedelta(minutes=minutes, seconds=seconds)


def make_rule(entry: dict[str, Any], created_at: datetime = T0) -> Rule:
    """Validate a rules-file entry and store it as an enabled rule created at ``created_at``."""
    spec = validate_rule(entry)
    rule = Rule.objects.create(
        name=spec.name,
        kind=spec.kind,
        definition=spec.definition(),
        severity=spec.severity,
        enabled=spec.enabled,
    )
    Rule.objects.filter(pk=rule.pk).update(created_at=created_at)
    rule.refresh_from_db()
    return rule


def store_event(
    type: str,
    when: datetime,
    *,
    subject: str = "",
    source: str = "/erp",
    data: dict[str, Any] | None = None,
    correlation_id: str = "",
    system: System | None = None,
    received: datetime | None = None,
) -> Event:
    """Store one CloudEvent that happened at ``when`` (received then, unless ``received``)."""
    return Event.objects.create(
        source=source,
        event_id=f"ev-{next(_ids)}",
        type=type,
        subject=subject,
        time=when,
        occurred_at=when,
        received_at=received or when,
        data=data,
        correlation_id=correlation_id,
        system=system,
        plant_id=system.plant_id if system else None,
    )


def store_message(
    connector: Connector,
    when: datetime,
    status: str = "delivered",
    latency_ms: int | None = None,
) -> Message:
    """Store one captured message of ``connector`` that happened at ``when``."""
    return Message.objects.create(
        connector=connector,
        external_id=f"msg-{next(_ids)}",
        status=status,
        occurred_at=when,
        last_attempt_at=when,
        received_at=when,
        latency_ms=latency_ms,
        plant_id=connector.plant_id,
    )


def store_span(system: System, when: datetime) -> Span:
    """Store one span of ``system`` that started at ``when``."""
    return Span.objects.create(
        trace_id=f"{next(_ids):032x}",
        span_id=f"{next(_ids):016x}",
        name="work",
        service_name=system.key,
        start=when,
        end=when + timedelta(milliseconds=5),
        received_at=when,
        system=system,
        plant_id=system.plant_id,
    )


def alerts_of(rule: Rule) -> list[Alert]:
    """Return the rule's alerts, oldest first."""
    return list(Alert.objects.filter(rule=rule).order_by("started_at", "id"))


def firing(rule: Rule) -> list[str]:
    """Return the keys of the rule's firing (or acknowledged) alerts."""
    return sorted(
        Alert.objects.filter(rule=rule, state__in=("firing", "acknowledged")).values_list(
            "key", flat=True
        )
    )


def log_of(alert: Alert) -> list[tuple[str, datetime]]:
    """Return the alert's alarm log as (state, at) pairs."""
    return list(
        AlertTransition.objects.filter(alert=alert).order_by("at", "id").values_list("state", "at")
    )
