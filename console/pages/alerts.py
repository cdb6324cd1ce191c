"""The alerts page: what fires now, why it is muted, and the plant's alarm load.

Operators acknowledge, resolve and silence from here; every action is a POST
(with CSRF) to a small view that calls the same library functions as the API
(``monitors.lifecycle``, ``monitors.silences``). Viewers see no buttons and
get 403 on a POST; admins also manage maintenance windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from console.auth import Principal
from console.pages.common import page
from integrations.models import Plant
from monitors.alarmload import FLOOD_THRESHOLD, AlarmLoad, alarm_load
from monitors.api import AlertFilter, FilterError, visible_alerts
from monitors.lifecycle import AlertActionError, acknowledge, resolve_manually
from monitors.models import (
    OPEN_STATES,
    Alert,
    AlertState,
    MaintenanceWindow,
    Rule,
    Severity,
    Silence,
)
from monitors.rules import format_duration, parse_duration
from monitors.serializers import timeline_url
from monitors.silences import (
    MuteError,
    active_mutes,
    create_silence,
    create_window,
    describe_window,
    expire_silence,
    may_change_silence,
    mute_kind,
    plant_zone,
    set_window_enabled,
    silence_state,
    visible_silences,
    window_occurrence,
)

SILENCE_DURATIONS = ("1h", "4h", "8h", "1d", "7d")
STATE_CHOICES = (
    ("open", "open (pending, firing, acknowledged)"),
    ("pending", "pending"),
    ("firing", "firing"),
    ("acknowledged", "acknowledged"),
    ("resolved", "resolved"),
    ("", "any state"),
)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _principal(request: HttpRequest) -> Principal:
    return request.principal  # type: ignore[attr-defined,no-any-return]


def _admin(request: HttpRequest) -> Principal:
    # page("is_admin") would call the ``is_admin`` property; check it here instead.
    principal = _principal(request)
    if not principal.is_admin:
        raise PermissionDenied("only admins manage maintenance windows")
    return principal


def _back(request: HttpRequest, fallback: str) -> HttpResponse:
    """Redirect to the form's ``next`` when it is a local URL, else to ``fallback``."""
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect(fallback)


@dataclass(frozen=True)
class AlertRow:
    """An alert with what the page shows beside it: what mutes it, runbook, timeline."""

    alert: Alert
    mute: Silence | MaintenanceWindow | None

    @property
    def mute_kind(self) -> str | None:
        return mute_kind(self.mute)

    @property
    def runbook(self) -> str:
        return str((self.alert.rule.definition or {}).get("runbook") or "")

    @property
    def timeline(self) -> str:
        return timeline_url(self.alert.key)

    @property
    def is_open(self) -> bool:
        return self.alert.state in OPEN_STATES

    @property
    def may_ack(self) -> bool:
        return self.alert.state in (AlertState.PENDING, AlertState.FIRING)


@dataclass(frozen=True)
class SilenceRow:
    """A silence with its state now and whether the viewer may expire it."""

    silence: Silence
    state: str
    may_expire: bool


@dataclass(frozen=True)
class WindowRow:
    """A maintenance window with its schedule in words and its current occurrence."""

    window: MaintenanceWindow
    schedule: str
    current: tuple[datetime, datetime] | None


def _load_strip(
    principal: Principal, plants: list[Plant], chosen: tuple[int, ...], now: datetime
) -> tuple[AlarmLoad | None, list[tuple[Plant, AlarmLoad]]]:
    """Return the alarm-load figures to show: overall (when several plants) and per plant."""
    shown = [p for p in plants if p.pk in chosen] if chosen else plants
    report = alarm_load(now, [p.pk for p in shown] if chosen else principal.plant_ids)
    strip = [(plant, report.for_plant(plant.key)) for plant in shown]
    overall = report.overall if len(shown) != 1 else None
    return overall, strip


def _windows(principal: Principal, now: datetime) -> list[WindowRow]:
    windows = principal.scope(MaintenanceWindow.objects.select_related("plant"), "plant")
    return [
        WindowRow(window, describe_window(window), window_occurrence(window, now))
        for window in windows.order_by("plant__key", "name", "id")
    ]


def _silences(principal: Principal, now: datetime) -> list[SilenceRow]:
    """Return the active and pending silences the principal may see."""
    silences = visible_silences(principal).filter(expired_at__isnull=True, ends_at__gt=now)
    return [
        SilenceRow(silence, silence_state(silence, now), may_change_silence(principal, silence))
        for silence in silences.order_by("starts_at", "id")
    ]


@page()
def alert_list(request: HttpRequest) -> HttpResponse:
    """List alerts with filters, alarm-load figures, silences and maintenance windows."""
    principal = _principal(request)
    now = timezone.now()
    params = request.GET
    error = ""
    try:
        filters = AlertFilter.parse(params, principal, default_state="open")
    except FilterError as exc:
        error = str(exc)
        filters = AlertFilter.parse({}, principal, default_state="open")
    mutes = active_mutes(now, principal.plant_ids)
    queryset = filters.apply(visible_alerts(principal), mutes).order_by("-started_at", "-id")
    paginator = Paginator(queryset, 50)
    page_obj = paginator.get_page(params.get("page"))
    rows = [AlertRow(alert, mutes.silenced(alert)) for alert in page_obj.object_list]

    plants = list(principal.scope(Plant.objects.all(), "id"))
    overall, strip = _load_strip(principal, plants, filters.plant_ids, now)
    context: dict[str, Any] = {
        "nav": "alerts",
        "now": now,
        "rows": rows,
        "page_obj": page_obj,
        "error": error,
        "params": params,
        "state_value": params.get("state", "open"),
        "state_choices": STATE_CHOICES,
        "severities": Severity.values,
        "rules": list(Rule.objects.values_list("name", flat=True)),
        "plants": plants,
        "overall": overall,
        "strip": strip,
        "flood_threshold": FLOOD_THRESHOLD,
        "silences": _silences(principal, now),
        "windows": _windows(principal, now),
        "durations": SILENCE_DURATIONS,
        "weekdays": list(enumerate(WEEKDAYS)),
        "may_operate": principal.may_operate(),
        "is_admin": principal.is_admin,
        "here": request.get_full_path(),
    }
    return render(request, "console/alerts.html", context, status=400 if error else 200)


def _alert_or_404(principal: Principal, pk: int) -> Alert:
    alert = visible_alerts(principal).filter(pk=pk).first()
    if alert is None:
        raise Http404("no such alert")
    return alert


@page()
def alert_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Show one alert: summary, runbook, labels, why it is muted, and its alarm log."""
    principal = _principal(request)
    now = timezone.now()
    alert = _alert_or_404(principal, pk)
    row = AlertRow(alert, active_mutes(now, principal.plant_ids).silenced(alert))
    context = {
        "nav": "alerts",
        "now": now,
        "row": row,
        "alert": alert,
        "transitions": list(alert.transitions.order_by("at", "id")),
        "suppresses": list(
            principal.scope(alert.suppresses.select_related("rule"), "plant").order_by("-id")[:50]
        ),
        "durations": SILENCE_DURATIONS,
        "may_operate": principal.may_operate(),
        "here": request.get_full_path(),
    }
    return render(request, "console/alerts_detail.html", context)


@require_POST
@page("may_operate")
def alert_ack(request: HttpRequest, pk: int) -> HttpResponse:
    """Acknowledge an alert with an optional comment."""
    principal = _principal(request)
    alert = _alert_or_404(principal, pk)
    try:
        acknowledge(alert.pk, principal.name, request.POST.get("comment", "").strip())
        messages.success(request, f"Acknowledged {alert.rule.name}: {alert.key}.")
    except AlertActionError as exc:
        messages.error(request, str(exc))
    return _back(request, reverse("alerts"))


@require_POST
@page("may_operate")
def alert_resolve(request: HttpRequest, pk: int) -> HttpResponse:
    """Resolve an alert by hand (resolution ``manual``)."""
    principal = _principal(request)
    alert = _alert_or_404(principal, pk)
    try:
        resolve_manually(alert.pk, principal.name, request.POST.get("comment", "").strip())
        messages.success(request, f"Resolved {alert.rule.name}: {alert.key} by hand.")
    except AlertActionError as exc:
        messages.error(request, str(exc))
    return _back(request, reverse("alerts"))


@require_POST
@page("may_operate")
def alert_silence(request: HttpRequest, pk: int) -> HttpResponse:
    """Silence an alert's rule (``scope=rule``) or just its key (``scope=key``) for a while."""
    principal = _principal(request)
    alert = _alert_or_404(principal, pk)
    scope = request.POST.get("scope", "rule")
    duration = request.POST.get("duration", "1h")
    if scope not in ("rule", "key"):
        messages.error(request, f"scope: must be rule or key, not {scope!r}")
        return _back(request, reverse("alerts"))
    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        messages.error(request, f"duration: {exc}")
        return _back(request, reverse("alerts"))
    matchers = [{"name": "rule", "value": alert.rule.name, "is_regex": False}]
    if scope == "key":
        matchers.append({"name": "key", "value": alert.key, "is_regex": False})
    elif alert.plant_id and principal.plant_ids is not None:
        # A scoped operator silences the rule for the alert's plant, not merely "one of mine".
        matchers.append({"name": "plant", "value": alert.plant.key, "is_regex": False})
    now = timezone.now()
    try:
        silence = create_silence(
            principal,
            matchers,
            ends_at=now + timedelta(seconds=seconds),
            comment=request.POST.get("comment", ""),
            now=now,
        )
    except MuteError as exc:
        messages.error(request, str(exc))
        return _back(request, reverse("alerts"))
    what = f"rule {alert.rule.name}" if scope == "rule" else f"{alert.rule.name}: {alert.key}"
    messages.success(
        request, f"Silenced {what} for {format_duration(seconds)} (silence #{silence.pk})."
    )
    return _back(request, reverse("alerts"))


@require_POST
@page("may_operate")
def silence_expire(request: HttpRequest, pk: int) -> HttpResponse:
    """Expire a silence now."""
    principal = _principal(request)
    silence = visible_silences(principal).filter(pk=pk).first()
    if silence is None:
        raise Http404("no such silence")
    if not may_change_silence(principal, silence):
        raise PermissionDenied("this silence is not limited to your plant")
    expire_silence(silence, timezone.now())
    messages.success(request, f"Expired silence #{silence.pk}.")
    return _back(request, reverse("alerts") + "#silences")


def _local_datetime(raw: str, zone_name: str, field_name: str) -> datetime | None:
    """Read a ``datetime-local`` input as the plant's local time."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        naive = datetime.fromisoformat(raw)
    except ValueError:
        raise MuteError(field_name, f"not a date and time: {raw!r}") from None
    if naive.tzinfo is not None:
        return naive
    return naive.replace(tzinfo=plant_zone(zone_name))


@require_POST
@page("may_operate")
def window_create(request: HttpRequest) -> HttpResponse:
    """Create a one-off or weekly maintenance window for a plant (admins)."""
    principal = _admin(request)
    form = request.POST
    fallback = reverse("alerts") + "#maintenance"
    plant = principal.scope(Plant.objects.all(), "id").filter(key=form.get("plant", "")).first()
    try:
        if plant is None:
            raise MuteError("plant", "choose one of your plants")
        weekly = form.get("kind") == "weekly"
        start_time: time | None = None
        duration: int | None = None
        weekdays: list[int] = []
        if weekly:
            weekdays = [int(d) for d in form.getlist("weekdays") if d.isdigit()]
            if not weekdays:
                raise MuteError("weekdays", "choose at least one day")
            try:
                start_time = time.fromisoformat(form.get("start_time", "").strip())
            except ValueError:
                raise MuteError("start_time", "must be a time like 22:00") from None
            raw_duration = form.get("duration_minutes", "").strip()
            if not raw_duration.isdigit():
                raise MuteError("duration_minutes", "must be a whole number of minutes")
            duration = int(raw_duration)
        starts_at = ends_at = None
        if not weekly:
            starts_at = _local_datetime(form.get("starts_at", ""), plant.timezone, "starts_at")
            ends_at = _local_datetime(form.get("ends_at", ""), plant.timezone, "ends_at")
        window = create_window(
            plant,
            form.get("name", ""),
            actor=principal.name,
            weekdays=weekdays,
            start_time=start_time,
            duration_minutes=duration,
            starts_at=starts_at,
            ends_at=ends_at,
        )
    except MuteError as exc:
        messages.error(request, f"Maintenance window not saved: {exc}")
        return _back(request, fallback)
    messages.success(request, f"Maintenance window {window.name!r} saved for {plant.key}.")
    return _back(request, fallback)


@require_POST
@page("may_operate")
def window_toggle(request: HttpRequest, pk: int) -> HttpResponse:
    """Enable or disable a maintenance window (admins); windows are kept, never deleted here."""
    principal = _admin(request)
    window = principal.scope(MaintenanceWindow.objects.all(), "plant").filter(pk=pk).first()
    if window is None:
        raise Http404("no such maintenance window")
    enabled = request.POST.get("enabled") == "1"
    set_window_enabled(window, enabled)
    messages.success(
        request, f"Maintenance window {window.name!r} {'enabled' if enabled else 'disabled'}."
    )
    return _back(request, reverse("alerts") + "#maintenance")
