"""The integration landscape (plants, systems, connectors) and the three stores.

Events, spans and messages are written by the bulk ingest path in
``integrations.ingest`` (COPY / multi-row INSERT), never one ORM save per item,
so these models describe tables and read-side behaviour.
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from integrations.adapters import ConfigError, validate_adapter_config, validate_replay_policy


class Plant(models.Model):
    """A manufacturing site; the unit of operator scoping."""

    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    timezone = models.CharField(max_length=64, default="UTC")

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class SystemKind(models.TextChoices):
    ERP = "ERP"
    MES = "MES"
    WMS = "WMS"
    QMS = "QMS"
    EAM = "EAM"
    IOT = "IOT"
    TMS = "TMS"
    SCADA = "SCADA"
    LIMS = "LIMS"
    SAAS = "SAAS"
    OTHER = "OTHER"


class System(models.Model):
    """An application in the landscape (ERP, MES of a plant, WMS...).

    ``sources`` lists the CloudEvents ``source`` values and OTel ``service.name``
    values that belong to this system; an empty list means just its key.
    """

    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    kind = models.CharField(max_length=8, choices=SystemKind.choices, default=SystemKind.OTHER)
    plant = models.ForeignKey(
        Plant, null=True, blank=True, on_delete=models.PROTECT, related_name="systems"
    )
    sources = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key

    def source_names(self) -> list[str]:
        """Return the source strings attributed to this system (its key when none listed)."""
        return list(self.sources) if self.sources else [self.key]


class ConnectorPattern(models.TextChoices):
    API = "api"
    EVENT = "event"
    BATCH = "batch"


class Criticality(models.TextChoices):
    CRITICAL = "critical"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class ConnectorStatus(models.TextChoices):
    ACTIVE = "active"
    DISCOVERED = "discovered"


class Connector(models.Model):
    """An integration path from a source system to a target system."""

    key = models.CharField(max_length=128, unique=True)
    name = models.CharField(max_length=200, blank=True)
    status = models.CharField(
        max_length=16, choices=ConnectorStatus.choices, default=ConnectorStatus.ACTIVE
    )
    source = models.ForeignKey(
        System, null=True, blank=True, on_delete=models.PROTECT, related_name="outbound"
    )
    target = models.ForeignKey(
        System, null=True, blank=True, on_delete=models.PROTECT, related_name="inbound"
    )
    # Derived from target (else source) so plant scoping of messages is one column.
    plant = models.ForeignKey(
        Plant, null=True, blank=True, on_delete=models.PROTECT, related_name="connectors"
    )
    flow = models.CharField(max_length=64, blank=True)
    pattern = models.CharField(
        max_length=8, choices=ConnectorPattern.choices, default=ConnectorPattern.API
    )
    criticality = models.CharField(
        max_length=8, choices=Criticality.choices, default=Criticality.NORMAL
    )
    latency_slo_ms = models.PositiveIntegerField(null=True, blank=True)
    adapter = models.JSONField(default=dict, blank=True)
    replay_policy = models.JSONField(default=dict, blank=True)
    sensitive_fields = models.JSONField(default=list, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key

    def save(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self.plant_id = self.derived_plant_id()
        super().save(*args, **kwargs)

    def clean(self) -> None:
        """Validate the adapter, replay policy and sensitive fields, storing them normalised."""
        # Imported here because the landscape module imports these models.
        from integrations.landscape import validate_sensitive_fields

        errors: dict[str, str] = {}
        checks = (
            ("adapter", validate_adapter_config, {}),
            ("replay_policy", validate_replay_policy, {}),
            ("sensitive_fields", validate_sensitive_fields, []),
        )
        for name, validate, empty in checks:
            value = getattr(self, name)
            if value == empty or value is None:
                continue  # monitoring-only connectors have no adapter; replay uses defaults
            try:
                setattr(self, name, validate(value))
            except ConfigError as exc:
                errors[name] = str(exc)
        if errors:
            raise ValidationError(errors)

    def derived_plant_id(self) -> int | None:
        """Return the plant this connector belongs to: its target's, else its source's."""
        for system in (self.target, self.source):
            if system is not None and system.plant_id is not None:
                return system.plant_id
        return None


class Event(models.Model):
    """A CloudEvents 1.0 business event; ``(source, event_id)`` identifies it."""

    source = models.CharField(max_length=512)
    event_id = models.CharField(max_length=512)
    type = models.CharField(max_length=255)
    specversion = models.CharField(max_length=8, default="1.0")
    subject = models.CharField(max_length=512, blank=True, default="")
    time = models.DateTimeField(null=True, blank=True)
    # The rule clock: ``time`` when given, else receipt time.
    occurred_at = models.DateTimeField()
    received_at = models.DateTimeField()
    datacontenttype = models.CharField(max_length=255, blank=True, default="")
    dataschema = models.CharField(max_length=1024, blank=True, default="")
    data = models.JSONField(null=True, blank=True)
    data_base64 = models.TextField(blank=True, default="")
    extensions = models.JSONField(default=dict, blank=True)
    correlation_id = models.CharField(max_length=255, blank=True, default="")
    causation_id = models.CharField(max_length=512, blank=True, default="")
    trace_id = models.CharField(max_length=32, blank=True, default="")
    parent_span_id = models.CharField(max_length=16, blank=True, default="")
    business_keys = models.JSONField(default=dict, blank=True)
    system = models.ForeignKey(System, null=True, blank=True, on_delete=models.SET_NULL)
    plant = models.ForeignKey(Plant, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["source", "event_id"], name="event_source_id_uniq"),
        ]
        indexes = [
            models.Index(fields=["type", "occurred_at"], name="event_type_time_idx"),
            models.Index(fields=["occurred_at"], name="event_time_idx"),
            models.Index(fields=["subject"], name="event_subject_idx", condition=~Q(subject="")),
            models.Index(
                fields=["correlation_id"], name="event_corr_idx", condition=~Q(correlation_id="")
            ),
            models.Index(fields=["trace_id"], name="event_trace_idx", condition=~Q(trace_id="")),
            # Heartbeats and "last seen" per system.
            models.Index(fields=["system", "occurred_at"], name="event_system_time_idx"),
            # Correlation follows causation both ways: to the cause by its id, to the effects.
            models.Index(fields=["event_id"], name="event_event_id_idx"),
            models.Index(
                fields=["causation_id"], name="event_causation_idx", condition=~Q(causation_id="")
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.source}#{self.event_id}"


class SpanKind(models.IntegerChoices):
    UNSPECIFIED = 0
    INTERNAL = 1
    SERVER = 2
    CLIENT = 3
    PRODUCER = 4
    CONSUMER = 5


class SpanStatus(models.IntegerChoices):
    UNSET = 0
    OK = 1
    ERROR = 2


class Span(models.Model):
    """An OTLP span; ``(trace_id, span_id)`` identifies it."""

    trace_id = models.CharField(max_length=32)
    span_id = models.CharField(max_length=16)
    parent_span_id = models.CharField(max_length=16, blank=True, default="")
    name = models.CharField(max_length=512)
    kind = models.SmallIntegerField(choices=SpanKind.choices, default=SpanKind.UNSPECIFIED)
    service_name = models.CharField(max_length=255, blank=True, default="")
    start = models.DateTimeField()
    end = models.DateTimeField()
    duration_ms = models.FloatField(default=0.0)
    status_code = models.SmallIntegerField(choices=SpanStatus.choices, default=SpanStatus.UNSET)
    status_message = models.TextField(blank=True, default="")
    attributes = models.JSONField(default=dict, blank=True)
    events = models.JSONField(default=list, blank=True)
    resource = models.JSONField(default=dict, blank=True)
    scope = models.CharField(max_length=255, blank=True, default="")
    correlation_id = models.CharField(max_length=255, blank=True, default="")
    business_keys = models.JSONField(default=dict, blank=True)
    received_at = models.DateTimeField()
    system = models.ForeignKey(System, null=True, blank=True, on_delete=models.SET_NULL)
    plant = models.ForeignKey(Plant, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["trace_id", "span_id"], name="span_trace_span_uniq"),
        ]
        indexes = [
            models.Index(fields=["start"], name="span_start_idx"),
            models.Index(
                fields=["correlation_id"], name="span_corr_idx", condition=~Q(correlation_id="")
            ),
            models.Index(fields=["service_name", "start"], name="span_service_start_idx"),
            models.Index(fields=["system", "start"], name="span_system_start_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} {self.trace_id}/{self.span_id}"


class MessageStatus(models.TextChoices):
    RECEIVED = "received"
    DELIVERED = "delivered"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"


class Message(models.Model):
    """A captured integration message; ``(connector, external_id)`` identifies it.

    ``status`` is the status of the latest reported attempt (by attempt time).
    """

    connector = models.ForeignKey(Connector, on_delete=models.PROTECT, related_name="messages")
    external_id = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=MessageStatus.choices)
    occurred_at = models.DateTimeField()
    last_attempt_at = models.DateTimeField()
    received_at = models.DateTimeField()
    correlation_id = models.CharField(max_length=255, blank=True, default="")
    business_keys = models.JSONField(default=dict, blank=True)
    latency_ms = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    headers = models.JSONField(default=dict, blank=True)
    content_type = models.CharField(max_length=255, blank=True, default="")
    payload = models.BinaryField(null=True, blank=True)
    attempt_count = models.PositiveIntegerField(default=1)
    plant = models.ForeignKey(Plant, null=True, blank=True, on_delete=models.SET_NULL)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connector", "external_id"], name="message_connector_ext_uniq"
            ),
        ]
        indexes = [
            models.Index(fields=["connector", "occurred_at"], name="message_conn_time_idx"),
            models.Index(fields=["status", "occurred_at"], name="message_status_time_idx"),
            models.Index(fields=["occurred_at"], name="message_time_idx"),
            models.Index(fields=["plant", "occurred_at"], name="message_plant_time_idx"),
            models.Index(
                fields=["correlation_id"], name="message_corr_idx", condition=~Q(correlation_id="")
            ),
            # A search by a message's own id shows its story.
            models.Index(fields=["external_id"], name="message_ext_id_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.connector_id}:{self.external_id}"


class MessageAttempt(models.Model):
    """One reported (or replayed) attempt of a message; the same report twice is one row."""

    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="attempts")
    at = models.DateTimeField()
    status = models.CharField(max_length=16, choices=MessageStatus.choices)
    latency_ms = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    received_at = models.DateTimeField()
    replay_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["message", "at", "status"], name="attempt_msg_at_status_uniq"
            ),
        ]
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.message_id}@{self.at:%Y-%m-%dT%H:%M:%S} {self.status}"


class ItemKind(models.TextChoices):
    EVENT = "e", "event"
    SPAN = "s", "span"
    MESSAGE = "m", "message"


class KeyRef(models.Model):
    """Makes an item findable by one of its business keys (``workorder`` = ``WO-1``).

    Events are found by their indexed ``subject`` and ``correlation_id`` columns;
    this table holds the further keys of events, spans and messages, so a lookup
    by any key is one index scan here plus primary-key fetches.
    """

    value = models.CharField(max_length=255)
    name = models.CharField(max_length=64)
    item_kind = models.CharField(max_length=1, choices=ItemKind.choices)
    item_id = models.BigIntegerField()
    at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["item_kind", "item_id", "name", "value"], name="keyref_item_key_uniq"
            ),
        ]
        indexes = [
            models.Index(fields=["value", "at"], name="keyref_value_time_idx"),
            models.Index(fields=["at"], name="keyref_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name}={self.value} -> {self.item_kind}{self.item_id}"


class ReplayState(models.TextChoices):
    PENDING_APPROVAL = "pending_approval"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"
    DRY_RUN = "dry_run"


class ReplayJob(models.Model):
    """One replay request: a single message or every message a filter selected.

    The job and its items are committed before any broker sees them (the outbox);
    items record their own progress, so a job resumes after a worker dies.
    """

    created_by = models.CharField(max_length=150)
    reason = models.TextField()
    filter = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=20, choices=ReplayState.choices)
    dry_run = models.BooleanField(default=False)
    edited = models.BooleanField(default=False)
    needs_approval = models.BooleanField(default=False)
    approved_by = models.CharField(max_length=150, blank=True, default="")
    approved_at = models.DateTimeField(null=True, blank=True)
    cancelled_by = models.CharField(max_length=150, blank=True, default="")
    plant = models.ForeignKey(Plant, null=True, blank=True, on_delete=models.SET_NULL)
    alert_id = models.BigIntegerField(null=True, blank=True)
    total = models.PositiveIntegerField(default=0)
    delivered = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    dead_lettered = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["state", "created_at"], name="replayjob_state_idx")]

    def __str__(self) -> str:
        return f"replay {self.pk} ({self.state}, {self.total} messages)"


class ReplayItemState(models.TextChoices):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    RETRYING = "retrying"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    UNCERTAIN = "uncertain"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class ReplayItem(models.Model):
    """One message of a replay job and its outcome (lineage: which replay of which message)."""

    job = models.ForeignKey(ReplayJob, on_delete=models.CASCADE, related_name="items")
    message = models.ForeignKey(Message, on_delete=models.CASCADE, related_name="replays")
    state = models.CharField(
        max_length=16, choices=ReplayItemState.choices, default=ReplayItemState.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    latency_ms = models.IntegerField(null=True, blank=True)
    response_status = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    # The edited body an admin sent instead of the captured one (the original stays untouched).
    edited_payload = models.BinaryField(null=True, blank=True)
    edited_content_type = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "message"], name="replayitem_job_msg_uniq"),
        ]
        indexes = [
            models.Index(fields=["job", "state"], name="replayitem_job_state_idx"),
            models.Index(fields=["message"], name="replayitem_message_idx"),
        ]
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.job_id}/{self.message_id} {self.state}"


class ConnectorRollup(models.Model):
    """Per-minute figures of one connector (and its plant), kept up to date for fast dashboards."""

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="rollups")
    plant = models.ForeignKey(Plant, null=True, blank=True, on_delete=models.SET_NULL)
    minute = models.DateTimeField()
    total = models.PositiveIntegerField(default=0)
    delivered = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    dead_lettered = models.PositiveIntegerField(default=0)
    replayed = models.PositiveIntegerField(default=0)
    latency_sum_ms = models.BigIntegerField(default=0)
    latency_count = models.PositiveIntegerField(default=0)
    latency_max_ms = models.IntegerField(default=0)
    # Counts per latency bucket (upper bounds in ms: see integrations.rollups), for percentiles.
    latency_buckets = models.JSONField(default=list, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connector", "minute"], name="rollup_conn_minute_uniq"),
        ]
        indexes = [
            models.Index(fields=["minute"], name="rollup_minute_idx"),
            models.Index(fields=["plant", "minute"], name="rollup_plant_minute_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.connector_id}@{self.minute:%Y-%m-%dT%H:%M}"
