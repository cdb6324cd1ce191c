"""Rules, alerts and what mutes them: silences, maintenance windows, dependencies.

An alert's identity is its rule and its key: at most one open (not resolved)
alert exists per (rule, key), enforced by a partial unique index so that two
evaluation passes or two workers can never create it twice.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q


class RuleKind(models.TextChoices):
    FOLLOWUP = "followup"
    HEARTBEAT = "heartbeat"
    THRESHOLD = "threshold"
    MATCH = "match"


class Severity(models.TextChoices):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    INFO = "info"


SEVERITY_RANK = {Severity.CRITICAL: 0, Severity.MAJOR: 1, Severity.MINOR: 2, Severity.INFO: 3}


class Rule(models.Model):
    """A business alert rule; ``definition`` is its rules-file entry, validated and normalised."""

    name = models.SlugField(max_length=128, unique=True)
    kind = models.CharField(max_length=16, choices=RuleKind.choices)
    definition = models.JSONField()
    severity = models.CharField(max_length=16, choices=Severity.choices, default=Severity.MAJOR)
    enabled = models.BooleanField(default=True)
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class RuleChange(models.Model):
    """One recorded change of a rule: who, when, what it was before and after."""

    class Action(models.TextChoices):
        CREATE = "create"
        UPDATE = "update"
        ENABLE = "enable"
        DISABLE = "disable"
        DELETE = "delete"

    rule = models.ForeignKey(Rule, null=True, on_delete=models.SET_NULL, related_name="changes")
    rule_name = models.CharField(max_length=128)
    action = models.CharField(max_length=16, choices=Action.choices)
    actor = models.CharField(max_length=150)
    at = models.DateTimeField(auto_now_add=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.rule_name} {self.action} by {self.actor}"


class AlertState(models.TextChoices):
    PENDING = "pending"
    FIRING = "firing"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Resolution(models.TextChoices):
    RECOVERED = "recovered"
    LATE = "late"
    MANUAL = "manual"


OPEN_STATES = (AlertState.PENDING, AlertState.FIRING, AlertState.ACKNOWLEDGED)


class Alert(models.Model):
    """One episode of a rule's condition for one key, from pending or firing to resolved."""

    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="alerts")
    key = models.CharField(max_length=255)
    state = models.CharField(max_length=16, choices=AlertState.choices)
    severity = models.CharField(max_length=16, choices=Severity.choices)
    labels = models.JSONField(default=dict, blank=True)
    summary = models.TextField(blank=True, default="")
    plant = models.ForeignKey(
        "integrations.Plant", null=True, blank=True, on_delete=models.SET_NULL
    )
    # When the condition began (a follow-up: the triggering event's time).
    started_at = models.DateTimeField()
    # When the deadline passed / the `for` duration elapsed and it began to fire.
    fired_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=16, choices=Resolution.choices, blank=True, default="")
    late_by_s = models.FloatField(null=True, blank=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.CharField(max_length=150, blank=True, default="")
    ack_comment = models.TextField(blank=True, default="")
    resolved_by = models.CharField(max_length=150, blank=True, default="")
    # The dependency alert (a heartbeat of the connector or system) that explains this one.
    suppressed_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="suppresses"
    )
    value = models.FloatField(null=True, blank=True)
    context = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["rule", "key"],
                condition=~Q(state="resolved"),
                name="alert_one_open_per_rule_key",
            ),
        ]
        indexes = [
            models.Index(fields=["state", "severity"], name="alert_state_sev_idx"),
            models.Index(fields=["plant", "state"], name="alert_plant_state_idx"),
            models.Index(fields=["key"], name="alert_key_idx"),
            models.Index(fields=["rule", "key", "started_at"], name="alert_rule_key_start_idx"),
            models.Index(fields=["fired_at"], name="alert_fired_idx"),
        ]
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.rule_id}:{self.key} {self.state}"


class AlertTransition(models.Model):
    """A state change of an alert: the alarm log (flood and chattering figures come from it)."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="transitions")
    rule = models.ForeignKey(Rule, on_delete=models.CASCADE, related_name="+")
    plant = models.ForeignKey(
        "integrations.Plant", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=AlertState.choices)
    actor = models.CharField(max_length=150, blank=True, default="")
    note = models.TextField(blank=True, default="")

    class Meta:
        indexes = [
            models.Index(fields=["plant", "state", "at"], name="transition_plant_state_at_idx"),
            models.Index(fields=["rule", "at"], name="transition_rule_at_idx"),
        ]
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.alert_id} -> {self.state} @ {self.at:%Y-%m-%dT%H:%M:%S}"


class Silence(models.Model):
    """Mutes every alert matching all its matchers between ``starts_at`` and ``ends_at``."""

    matchers = models.JSONField()
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    comment = models.TextField()
    created_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    plant = models.ForeignKey("integrations.Plant", null=True, blank=True, on_delete=models.CASCADE)

    class Meta:
        indexes = [models.Index(fields=["ends_at"], name="silence_ends_idx")]
        ordering = ["-starts_at", "-id"]

    def __str__(self) -> str:
        return f"silence {self.pk} ({self.comment[:40]})"


class MaintenanceWindow(models.Model):
    """A plant's planned maintenance: its alerts are muted during the window.

    One-off (``starts_at``/``ends_at``) or weekly recurring (``weekdays`` 0=Monday,
    ``start_time`` local to the plant's time zone, ``duration_minutes``), like mute timings.
    """

    plant = models.ForeignKey(
        "integrations.Plant", on_delete=models.CASCADE, related_name="maintenance_windows"
    )
    name = models.CharField(max_length=128)
    starts_at = models.DateTimeField(null=True, blank=True)
    ends_at = models.DateTimeField(null=True, blank=True)
    weekdays = models.JSONField(default=list, blank=True)
    start_time = models.TimeField(null=True, blank=True)
    duration_minutes = models.PositiveIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    created_by = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["plant", "name"]

    def __str__(self) -> str:
        return f"{self.plant_id}: {self.name}"


def actor_name(user_or_principal) -> str:  # type: ignore[no-untyped-def]
    """Return a display name for audit fields from a user or a principal."""
    name = getattr(user_or_principal, "name", None) or getattr(user_or_principal, "username", "")
    return str(name or "system")[:150]
