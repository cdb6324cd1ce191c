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


# --- Notifications ----------------------------------------------------------------------


class ContactPointKind(models.TextChoices):
    EMAIL = "email"
    WEBHOOK = "webhook"
    SLACK = "slack"
    TEAMS = "teams"


class ContactPoint(models.Model):
    """Where notifications go: an email list, a webhook, a Slack or a Teams channel.

    ``options`` holds the kind's settings, validated by its notifier
    (``monitors.notifiers``). Secrets are never stored: an option ending in
    ``_env`` names the environment variable that holds one. The health fields
    make a failing contact point visible on the notifications page.
    """

    name = models.SlugField(max_length=128, unique=True)
    kind = models.CharField(max_length=16, choices=ContactPointKind.choices)
    options = models.JSONField(default=dict, blank=True)
    send_resolved = models.BooleanField(default=True)
    enabled = models.BooleanField(default=True)
    consecutive_failures = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_success_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.kind})"

    @property
    def failing(self) -> bool:
        """Return whether its latest delivery attempt failed."""
        return self.consecutive_failures > 0


class RoutingPolicy(models.Model):
    """Which alerts go to which contact points, grouped how, and escalated when.

    Policies are tried by ``position``; an alert goes to the first whose
    matchers (silence-style label matchers) all match, and on to later ones
    while the matched policy has ``continue_matching``. An alert no policy
    matches goes to the default policy (``is_default``, at most one).
    ``group_by``, ``group_wait_s``, ``group_interval_s`` and ``repeat_interval_s``
    have Alertmanager's meaning; an alert firing unacknowledged
    ``escalate_after_s`` after it was first notified goes to ``escalate_to`` too.
    """

    name = models.SlugField(max_length=128, unique=True)
    position = models.PositiveIntegerField(default=0)
    is_default = models.BooleanField(default=False)
    matchers = models.JSONField(default=list, blank=True)
    contact_points = models.ManyToManyField(ContactPoint, related_name="policies", blank=True)
    group_by = models.JSONField(default=list, blank=True)
    group_wait_s = models.FloatField(default=30.0)
    group_interval_s = models.FloatField(default=300.0)
    repeat_interval_s = models.FloatField(default=4 * 3600.0)
    continue_matching = models.BooleanField(default=False)
    escalate_after_s = models.FloatField(null=True, blank=True)
    escalate_to = models.ManyToManyField(
        ContactPoint, related_name="escalating_policies", blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["is_default", "position", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"],
                condition=Q(is_default=True),
                name="routing_one_default_policy",
            ),
        ]
        verbose_name_plural = "routing policies"

    def __str__(self) -> str:
        return self.name


class NotificationGroup(models.Model):
    """The notification state of one group of alerts under one policy, shared by all workers.

    Alertmanager keeps this in memory per instance; here it is a row, so that
    several processes running the notification pass agree (a pass claims a due
    group with ``SELECT ... FOR UPDATE SKIP LOCKED``). ``active_since`` starts
    the group's wait (None: the group is idle); ``flushed_at`` is its latest
    notification in the current episode; ``notified`` maps the firing alerts
    told about to when they were first told (ISO time, the escalation clock).
    """

    policy = models.ForeignKey(RoutingPolicy, on_delete=models.CASCADE, related_name="groups")
    group_hash = models.CharField(max_length=64)
    group_key = models.CharField(max_length=1000)
    labels = models.JSONField(default=dict, blank=True)
    active_since = models.DateTimeField(null=True, blank=True)
    flushed_at = models.DateTimeField(null=True, blank=True)
    notified = models.JSONField(default=dict, blank=True)
    escalated = models.JSONField(default=list, blank=True)
    last_notified_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["policy", "group_hash"], name="notification_group_unique_key"
            ),
        ]
        indexes = [
            models.Index(
                fields=["active_since"],
                condition=Q(active_since__isnull=False),
                name="notification_group_active_idx",
            ),
        ]

    def __str__(self) -> str:
        return self.group_key


class DeliveryStatus(models.TextChoices):
    QUEUED = "queued"
    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"


class DeliveryReason(models.TextChoices):
    FIRING = "firing"
    RESOLVED = "resolved"
    REPEAT = "repeat"
    ESCALATION = "escalation"
    TEST = "test"


class NotificationDelivery(models.Model):
    """One notification to one contact point: what it says, and every attempt's outcome.

    ``body`` is the notification as data (rendered for the contact point's kind
    when sent), so a retry sends the same content. ``summary`` is the line the
    delivery log shows.
    """

    contact_point = models.ForeignKey(
        ContactPoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    policy = models.ForeignKey(
        RoutingPolicy, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    plant = models.ForeignKey(
        "integrations.Plant", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    group_key = models.CharField(max_length=1000, blank=True, default="")
    reason = models.CharField(max_length=16, choices=DeliveryReason.choices)
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.QUEUED
    )
    alert_ids = models.JSONField(default=list, blank=True)
    summary = models.CharField(max_length=500, blank=True, default="")
    body = models.JSONField(default=dict)
    attempts = models.PositiveIntegerField(default=0)
    response_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    requested_by = models.CharField(max_length=150, blank=True, default="")
    at = models.DateTimeField()
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [
            models.Index(fields=["contact_point", "at"], name="delivery_cp_at_idx"),
            models.Index(fields=["status", "at"], name="delivery_status_at_idx"),
        ]
        verbose_name_plural = "notification deliveries"

    def __str__(self) -> str:
        return f"{self.reason} to {self.contact_point_id}: {self.status}"


class AckLink(models.Model):
    """A single-use, expiring acknowledgement link sent in a notification.

    The link carries only ``nonce``, signed with ``django.core.signing``; the
    row says which alert it acknowledges, for whom (``recipient`` becomes the
    actor), until when, and whether it was used.
    """

    nonce = models.CharField(max_length=64, unique=True)
    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="ack_links")
    delivery = models.ForeignKey(
        NotificationDelivery,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="ack_links",
    )
    recipient = models.CharField(max_length=254)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["delivery", "alert", "recipient"], name="acklink_one_per_recipient"
            ),
        ]

    def __str__(self) -> str:
        return f"ack {self.alert_id} for {self.recipient}"
