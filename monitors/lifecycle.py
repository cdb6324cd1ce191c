"""Operator actions on one alert, each recorded in the alarm log (AlertTransition).

Evaluation changes alerts in sets (``monitors.evaluate``); these functions are
the single-alert verbs that people use: acknowledge and resolve by hand.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from console import live
from monitors.models import Alert, AlertState, AlertTransition, Resolution


class AlertActionError(Exception):
    """The action does not apply to the alert in its current state (a 409 for the API)."""


def record(alert: Alert, state: str, at: datetime, actor: str = "", note: str = "") -> None:
    """Append one state change of ``alert`` to the alarm log."""
    AlertTransition.objects.create(
        alert=alert,
        rule_id=alert.rule_id,
        plant_id=alert.plant_id,
        at=at,
        state=state,
        actor=actor[:150],
        note=note,
    )


@transaction.atomic
def acknowledge(alert_id: int, actor: str, comment: str = "", now: datetime | None = None) -> Alert:
    """Acknowledge a pending or firing alert; acknowledging twice keeps the first ack."""
    now = now or timezone.now()
    alert = Alert.objects.select_for_update().get(pk=alert_id)
    if alert.state == AlertState.RESOLVED:
        raise AlertActionError(f"alert {alert_id} is already resolved ({alert.resolution})")
    if alert.state == AlertState.ACKNOWLEDGED:
        return alert
    alert.state = AlertState.ACKNOWLEDGED
    alert.acknowledged_at = now
    alert.acknowledged_by = actor[:150]
    alert.ack_comment = comment
    alert.save(
        update_fields=["state", "acknowledged_at", "acknowledged_by", "ack_comment", "updated_at"]
    )
    record(alert, AlertState.ACKNOWLEDGED, now, actor, comment)
    live.publish_alerts([alert])  # sent once this transaction commits
    return alert


@transaction.atomic
def resolve_manually(
    alert_id: int, actor: str, comment: str = "", now: datetime | None = None
) -> Alert:
    """Resolve an open alert by hand (resolution ``manual``)."""
    now = now or timezone.now()
    alert = Alert.objects.select_for_update().get(pk=alert_id)
    if alert.state == AlertState.RESOLVED:
        raise AlertActionError(f"alert {alert_id} is already resolved ({alert.resolution})")
    alert.state = AlertState.RESOLVED
    alert.resolution = Resolution.MANUAL
    alert.resolved_at = now
    alert.resolved_by = actor[:150]
    alert.save(update_fields=["state", "resolution", "resolved_at", "resolved_by", "updated_at"])
    record(alert, AlertState.RESOLVED, now, actor, comment or "resolved by hand")
    live.publish_alerts([alert])  # sent once this transaction commits
    return alert
