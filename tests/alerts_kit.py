"""Rules and alerts made directly with the ORM, for the alerting API, page and mute tests.

Independent of the evaluation engine on purpose: these tests fix what a stored
alert looks like to readers, whatever produced it.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from monitors.models import Alert, AlertState, AlertTransition, Rule

T0 = datetime(2026, 5, 21, 8, 0, tzinfo=UTC)


def make_rule(
    name: str = "wo-not-acknowledged",
    kind: str = "followup",
    severity: str = "critical",
    labels: dict[str, str] | None = None,
    runbook: str = "",
    summary: str = "",
) -> Rule:
    """Create a rule whose definition carries what readers use (labels, summary, runbook)."""
    definition: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "severity": severity,
        "labels": labels or {},
        "summary": summary,
        "runbook": runbook,
    }
    return Rule.objects.create(name=name, kind=kind, definition=definition, severity=severity)


def make_alert(
    rule: Rule,
    key: str,
    *,
    plant=None,  # type: ignore[no-untyped-def]
    state: str = AlertState.FIRING,
    started_at: datetime = T0,
    severity: str | None = None,
    labels: dict[str, str] | None = None,
    summary: str | None = None,
    **fields: Any,
) -> Alert:
    """Create an alert with the labels evaluation would give it and its firing transition."""
    severity = severity or rule.severity
    all_labels = {
        **(rule.definition.get("labels") or {}),
        **(labels or {}),
        "rule": rule.name,
        "key": key,
        "severity": severity,
        "kind": rule.kind,
    }
    if plant is not None:
        all_labels["plant"] = plant.key
    fired_at = fields.pop("fired_at", started_at if state != AlertState.PENDING else None)
    if state == AlertState.RESOLVED:
        fields.setdefault("resolved_at", started_at + timedelta(minutes=5))
        fields.setdefault("resolution", "recovered")
    if state == AlertState.ACKNOWLEDGED:
        fields.setdefault("acknowledged_at", started_at + timedelta(minutes=1))
        fields.setdefault("acknowledged_by", "someone")
    alert = Alert.objects.create(
        rule=rule,
        key=key,
        state=state,
        severity=severity,
        labels=all_labels,
        summary=summary if summary is not None else f"{rule.name}: {key}",
        plant=plant,
        started_at=started_at,
        fired_at=fired_at,
        **fields,
    )
    if fired_at is not None:
        fire(alert, fired_at)
    return alert


def fire(alert: Alert, at: datetime) -> AlertTransition:
    """Record that ``alert`` went into firing at ``at`` (the alarm log entry)."""
    return AlertTransition.objects.create(
        alert=alert, rule_id=alert.rule_id, plant_id=alert.plant_id, at=at, state="firing"
    )
