"""JSON shapes of alerts and silences for the API (and the correlation timeline).

Whether an alert is silenced is computed at read time: pass the request's
:class:`monitors.silences.Mutes` as ``context["mutes"]`` so a page of alerts
costs no query per alert. Load alerts with :data:`ALERT_RELATED`.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field, inline_serializer
from rest_framework import serializers

from monitors.models import Alert, AlertTransition, MaintenanceWindow, Silence
from monitors.silences import active_mutes, describe_window, silence_state

# What an alert's JSON reads beyond its own row: select_related(*ALERT_RELATED).
ALERT_RELATED = ("rule", "plant", "suppressed_by", "suppressed_by__rule")


def timeline_url(key: str) -> str:
    """Return the console's correlation timeline for a key."""
    return reverse("correlation") + "?" + urlencode({"key": key})


def mute_json(mute: Silence | MaintenanceWindow | None) -> dict[str, Any] | None:
    """Describe what mutes an alert: a silence (id, comment, until) or a maintenance window."""
    if mute is None:
        return None
    if isinstance(mute, Silence):
        return {
            "kind": "silence",
            "id": mute.pk,
            "comment": mute.comment,
            "created_by": mute.created_by,
            "ends_at": serializers.DateTimeField().to_representation(mute.ends_at),
        }
    return {
        "kind": "maintenance",
        "id": mute.pk,
        "name": mute.name,
        "plant": mute.plant.key,
        "schedule": describe_window(mute),
    }


_MUTE_SCHEMA = inline_serializer(
    "AlertMute",
    fields={
        "kind": serializers.CharField(help_text="`silence` or `maintenance`"),
        "id": serializers.IntegerField(),
        "comment": serializers.CharField(required=False, help_text="silence: why"),
        "created_by": serializers.CharField(required=False),
        "ends_at": serializers.DateTimeField(required=False),
        "name": serializers.CharField(required=False, help_text="maintenance window: its name"),
        "plant": serializers.CharField(required=False),
        "schedule": serializers.CharField(required=False),
    },
    allow_null=True,
)

_SUPPRESSOR_SCHEMA = inline_serializer(
    "AlertSuppressor",
    fields={
        "id": serializers.IntegerField(),
        "rule": serializers.CharField(),
        "key": serializers.CharField(),
        "state": serializers.CharField(),
    },
    allow_null=True,
)


class AlertSerializer(serializers.ModelSerializer):
    """An alert as the API and the correlation timeline show it."""

    rule = serializers.CharField(source="rule.name", read_only=True)
    plant = serializers.CharField(source="plant.key", read_only=True, allow_null=True)
    silenced = serializers.SerializerMethodField(
        help_text="Muted now by an active silence or maintenance window (computed at read time)."
    )
    silenced_by = serializers.SerializerMethodField()
    suppressed_by = serializers.SerializerMethodField(
        help_text="The dependency alert (a heartbeat) that explains this one."
    )
    runbook = serializers.SerializerMethodField()
    timeline = serializers.SerializerMethodField(help_text="The correlation timeline of the key.")
    url = serializers.SerializerMethodField(help_text="The alert's page in the console.")

    class Meta:
        model = Alert
        fields = [
            "id",
            "rule",
            "key",
            "state",
            "severity",
            "labels",
            "summary",
            "plant",
            "started_at",
            "fired_at",
            "due_at",
            "resolved_at",
            "resolution",
            "late_by_s",
            "acknowledged_by",
            "acknowledged_at",
            "ack_comment",
            "resolved_by",
            "value",
            "silenced",
            "silenced_by",
            "suppressed_by",
            "runbook",
            "timeline",
            "url",
        ]
        read_only_fields = fields

    def _mute(self, alert: Alert) -> Silence | MaintenanceWindow | None:
        # The context is shared by every item of a list: the mutes load once per request.
        context = self.context
        if "mutes" not in context:
            context["mutes"] = active_mutes(timezone.now())
        cache = context.setdefault("_mute_of", {})
        if alert.pk not in cache:
            cache[alert.pk] = context["mutes"].silenced(alert)
        return cache[alert.pk]

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_silenced(self, alert: Alert) -> bool:
        return self._mute(alert) is not None

    @extend_schema_field(_MUTE_SCHEMA)
    def get_silenced_by(self, alert: Alert) -> dict[str, Any] | None:
        return mute_json(self._mute(alert))

    @extend_schema_field(_SUPPRESSOR_SCHEMA)
    def get_suppressed_by(self, alert: Alert) -> dict[str, Any] | None:
        other = alert.suppressed_by
        if other is None:
            return None
        return {"id": other.pk, "rule": other.rule.name, "key": other.key, "state": other.state}

    @extend_schema_field(OpenApiTypes.STR)
    def get_runbook(self, alert: Alert) -> str:
        return str((alert.rule.definition or {}).get("runbook") or "")

    @extend_schema_field(OpenApiTypes.STR)
    def get_timeline(self, alert: Alert) -> str:
        return timeline_url(alert.key)

    @extend_schema_field(OpenApiTypes.STR)
    def get_url(self, alert: Alert) -> str:
        return reverse("alert", args=[alert.pk])


class TransitionSerializer(serializers.ModelSerializer):
    """One entry of an alert's alarm log."""

    class Meta:
        model = AlertTransition
        fields = ["at", "state", "actor", "note"]


class AlertDetailSerializer(AlertSerializer):
    """An alert with its alarm log."""

    transitions = TransitionSerializer(many=True, read_only=True)

    class Meta(AlertSerializer.Meta):
        fields = [*AlertSerializer.Meta.fields, "transitions"]
        read_only_fields = fields


class AckRequestSerializer(serializers.Serializer):
    """The optional body of an acknowledgement or manual resolution."""

    comment = serializers.CharField(required=False, allow_blank=True, max_length=2000)


class MatcherSerializer(serializers.Serializer):
    """One label matcher of a silence."""

    name = serializers.CharField(
        help_text="A label name: the rule's labels plus rule, key, plant, severity and kind."
    )
    value = serializers.CharField(allow_blank=True)
    is_regex = serializers.BooleanField(default=False, help_text="Full-match regular expression.")


class SilenceRequestSerializer(serializers.Serializer):
    """What creates a silence (documentation; validated by monitors.silences.create_silence)."""

    matchers = MatcherSerializer(many=True, help_text="At least one; all must match.")
    starts_at = serializers.DateTimeField(required=False, help_text="Default: now.")
    ends_at = serializers.DateTimeField()
    comment = serializers.CharField()


class SilenceSerializer(serializers.ModelSerializer):
    """A silence with its state at read time."""

    plant = serializers.CharField(source="plant.key", read_only=True, allow_null=True)
    state = serializers.SerializerMethodField(help_text="`active`, `pending` or `expired`.")
    matchers = MatcherSerializer(many=True, read_only=True)

    class Meta:
        model = Silence
        fields = [
            "id",
            "matchers",
            "starts_at",
            "ends_at",
            "comment",
            "created_by",
            "created_at",
            "expired_at",
            "plant",
            "state",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.STR)
    def get_state(self, silence: Silence) -> str:
        now = self.context.get("now") or timezone.now()
        return silence_state(silence, now)


class AlertApiErrorSerializer(serializers.Serializer):
    """An error answer: what is wrong, naming the parameter or field."""

    error = serializers.CharField()
    field = serializers.CharField(required=False)


def serialize_alerts(alerts: list[Alert], mutes: Any) -> list[dict[str, Any]]:
    """Return alerts as plain dicts, silenced per ``mutes``."""
    data = AlertSerializer(alerts, many=True, context={"mutes": mutes}).data
    return [dict(item) for item in data]
