"""Admin for the monitors app: rules (enable/disable, audited), silences, maintenance windows.

Rules are written in the console's editor (/rules/) or with ``loadrules``, both of
which validate and audit; the admin only shows them and enables or disables them
through the same audited path. Alerts, their transitions and the rule audit trail
are records: read-only here.
"""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from monitors.models import (
    Alert,
    AlertTransition,
    MaintenanceWindow,
    Rule,
    RuleChange,
    Silence,
    actor_name,
)
from monitors.ruleset import set_enabled


class ReadOnlyAdmin(admin.ModelAdmin):
    """Shows records; nothing may be added, changed or deleted here."""

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Rule)
class RuleAdmin(ReadOnlyAdmin):
    """Lists rules; enabling and disabling go through ``set_enabled`` (versioned, audited)."""

    list_display = ("name", "kind", "severity", "enabled", "version", "updated_at", "editor")
    list_filter = ("kind", "severity", "enabled")
    search_fields = ("name",)
    actions = ("enable", "disable")

    @admin.display(description="Edit")
    def editor(self, rule: Rule) -> str:
        return format_html(
            '<a href="{}">edit in the console</a>', reverse("rule", args=[rule.name])
        )

    def _set(self, request: HttpRequest, queryset: QuerySet[Rule], enabled: bool) -> None:
        actor = actor_name(request.user)
        changed = sum(set_enabled(rule, enabled, actor) for rule in queryset)
        verb = "enabled" if enabled else "disabled"
        self.message_user(request, f"{changed} rule(s) {verb}.", messages.SUCCESS)

    @admin.action(description="Enable selected rules (audited)")
    def enable(self, request: HttpRequest, queryset: QuerySet[Rule]) -> None:
        self._set(request, queryset, True)

    @admin.action(description="Disable selected rules (audited)")
    def disable(self, request: HttpRequest, queryset: QuerySet[Rule]) -> None:
        self._set(request, queryset, False)


@admin.register(RuleChange)
class RuleChangeAdmin(ReadOnlyAdmin):
    list_display = ("rule_name", "action", "actor", "at")
    list_filter = ("action",)
    search_fields = ("=rule_name", "actor")
    date_hierarchy = "at"


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ("rule", "key", "state", "severity", "plant", "started_at", "resolution")
    list_filter = ("state", "severity", "resolution", "plant")
    list_select_related = ("rule", "plant")
    search_fields = ("=key", "rule__name")
    show_full_result_count = False


@admin.register(AlertTransition)
class AlertTransitionAdmin(ReadOnlyAdmin):
    list_display = ("alert", "rule", "state", "at", "actor", "plant")
    list_filter = ("state", "plant")
    list_select_related = ("rule", "plant")
    show_full_result_count = False


@admin.register(Silence)
class SilenceAdmin(admin.ModelAdmin):
    list_display = ("id", "comment", "starts_at", "ends_at", "expired_at", "created_by", "plant")
    list_filter = ("plant",)
    search_fields = ("comment", "created_by")


@admin.register(MaintenanceWindow)
class MaintenanceWindowAdmin(admin.ModelAdmin):
    list_display = ("name", "plant", "enabled", "starts_at", "ends_at", "weekdays", "start_time")
    list_filter = ("plant", "enabled")
    search_fields = ("name",)
