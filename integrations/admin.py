"""Admin for the landscape (editable, validated by ``Connector.clean``) and the stores (read-only).

Events, spans and messages are ingested data: the admin shows them but never
adds, edits or deletes them. Their search boxes match ids and keys exactly, so
that a search is an index lookup on tables with millions of rows.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from integrations.models import (
    Connector,
    ConnectorStatus,
    Event,
    Message,
    MessageAttempt,
    Plant,
    Span,
    System,
)

PAYLOAD_PREVIEW_BYTES = 4096


@admin.register(Plant)
class PlantAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "timezone")
    search_fields = ("key", "name")


@admin.register(System)
class SystemAdmin(admin.ModelAdmin):
    list_display = ("key", "name", "kind", "plant", "sources")
    list_filter = ("kind", "plant")
    list_select_related = ("plant",)
    search_fields = ("key", "name")


@admin.register(Connector)
class ConnectorAdmin(admin.ModelAdmin):
    list_display = (
        "key",
        "name",
        "status",
        "source",
        "target",
        "plant",
        "flow",
        "criticality",
        "pattern",
        "latency_slo_ms",
    )
    list_filter = ("status", "plant", "criticality", "pattern", "flow")
    list_select_related = ("source", "target", "plant")
    search_fields = ("key", "name", "flow")
    # The plant follows the target (else source) system; see Connector.save.
    readonly_fields = ("plant", "created_at")
    actions = ("activate",)

    @admin.action(description="Mark selected connectors active (confirm discovered ones)")
    def activate(self, request: HttpRequest, queryset: QuerySet[Connector]) -> None:
        count = queryset.filter(status=ConnectorStatus.DISCOVERED).update(
            status=ConnectorStatus.ACTIVE
        )
        self.message_user(request, f"{count} connector(s) marked active.", messages.SUCCESS)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Shows ingested data; nothing may be added, changed or deleted here."""

    show_full_result_count = False  # a COUNT(*) over the whole store on every page is too slow

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("occurred_at", "type", "source", "event_id", "subject", "system", "plant")
    list_filter = ("plant",)
    list_select_related = ("system", "plant")
    search_fields = ("=event_id", "=subject", "=correlation_id", "=trace_id", "=type")
    ordering = ("-occurred_at",)


@admin.register(Span)
class SpanAdmin(ReadOnlyAdmin):
    list_display = ("start", "name", "service_name", "trace_id", "span_id", "status_code", "plant")
    list_filter = ("plant", "status_code", "kind")
    list_select_related = ("plant",)
    search_fields = ("=trace_id", "=span_id", "=correlation_id", "=service_name")
    ordering = ("-start",)


class MessageAttemptInline(admin.TabularInline):
    model = MessageAttempt
    fields = ("at", "status", "latency_ms", "error", "replay_id", "received_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = (
        "occurred_at",
        "connector",
        "external_id",
        "status",
        "correlation_id",
        "attempt_count",
        "latency_ms",
        "plant",
    )
    list_filter = ("status", "plant")
    list_select_related = ("connector", "plant")
    search_fields = ("=external_id", "=correlation_id", "=connector__key")
    ordering = ("-occurred_at",)
    exclude = ("payload",)
    readonly_fields = ("payload_preview",)
    inlines = (MessageAttemptInline,)

    @admin.display(description="payload")
    def payload_preview(self, obj: Message) -> str:
        """Show the start of the payload as text (bytes that are not UTF-8 are escaped)."""
        if obj.payload is None:
            return "-"
        body = bytes(obj.payload)
        text = body[:PAYLOAD_PREVIEW_BYTES].decode("utf-8", errors="backslashreplace")
        if len(body) > PAYLOAD_PREVIEW_BYTES:
            text += f"\n… ({len(body)} bytes in all)"
        return text
