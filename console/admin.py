"""Admin for API tokens (issued here, shown once, revoked by action) and plant access."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone

from console.models import ApiToken, PlantAccess


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Issues tokens through ``ApiToken.issue``; the clear token is shown once, the digest never."""

    list_display = ("name", "role", "plant", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("role", "plant", ("revoked_at", admin.EmptyFieldListFilter))
    list_select_related = ("plant",)
    search_fields = ("name", "=prefix")
    actions = ("revoke",)

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("name", "role", "plant")
        return ("name", "role", "plant", "prefix", "created_at", "last_used_at", "revoked_at")

    def get_readonly_fields(
        self, request: HttpRequest, obj: ApiToken | None = None
    ) -> tuple[str, ...]:
        if obj is None:
            return ()
        # A token's grant is fixed at issue: to change it, issue another and revoke this one.
        return ("role", "plant", "prefix", "created_at", "last_used_at", "revoked_at")

    def save_model(self, request: HttpRequest, obj: ApiToken, form, change: bool) -> None:  # type: ignore[no-untyped-def]
        if change:
            super().save_model(request, obj, form, change)
            return
        issued, raw = ApiToken.issue(obj.name, obj.role, obj.plant)
        # The admin goes on with ``obj`` (log entry, redirect), so it becomes the issued row.
        for model_field in ApiToken._meta.concrete_fields:
            setattr(obj, model_field.attname, getattr(issued, model_field.attname))
        obj._state.adding = False
        obj._state.db = issued._state.db
        messages.warning(
            request,
            f"The token for “{obj.name}” is {raw} — copy it now: it is stored hashed "
            "and cannot be shown again.",
        )

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        count = queryset.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        self.message_user(request, f"{count} token(s) revoked.", messages.SUCCESS)


@admin.register(PlantAccess)
class PlantAccessAdmin(admin.ModelAdmin):
    """Limits a web user to some plants; a user without rows sees every plant."""

    list_display = ("user", "plant")
    list_filter = ("plant",)
    list_select_related = ("user", "plant")
    search_fields = ("user__username",)
