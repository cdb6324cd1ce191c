"""The alerting API: list, read, acknowledge and resolve alerts; create, list and expire silences.

Views stay thin: filters are parsed by :class:`AlertFilter` (shared with the
alerts page), actions call ``monitors.lifecycle`` and ``monitors.silences``.
A plant-scoped principal sees and acts on its plants' alerts only; any other
alert is a 404, as if it did not exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from console.auth import CanOperate, CanRead, Principal, request_principal
from integrations.models import Plant
from monitors.lifecycle import AlertActionError, acknowledge, resolve_manually
from monitors.models import OPEN_STATES, Alert, AlertState, Rule, Severity, Silence
from monitors.serializers import (
    ALERT_RELATED,
    AckRequestSerializer,
    AlertApiErrorSerializer,
    AlertDetailSerializer,
    AlertSerializer,
    SilenceRequestSerializer,
    SilenceSerializer,
    serialize_alerts,
)
from monitors.silences import (
    LABEL_COLUMNS,
    MuteError,
    Mutes,
    active_mutes,
    create_silence,
    expire_silence,
    may_change_silence,
    visible_silences,
)

# How long an ended or expired silence stays in GET /api/v1/silences.
RECENT_SILENCES = timedelta(days=7)
OPEN = "open"


class FilterError(ValueError):
    """A bad query parameter: 400 naming it, or 403 for a plant the caller may not see."""

    def __init__(self, param: str, message: str, status_code: int = 400) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message
        self.status = status_code


def _values(params: Mapping[str, str], name: str) -> list[str]:
    raw = params.get(name) or ""
    return [part.strip() for part in raw.split(",") if part.strip()]


def _choices(params: Mapping[str, str], name: str, allowed: list[str]) -> list[str]:
    values = _values(params, name)
    for value in values:
        if value not in allowed:
            raise FilterError(
                name, f"unknown value {value!r} (expected one of {', '.join(allowed)})"
            )
    return values


@dataclass(frozen=True)
class AlertFilter:
    """The alert filters of the API and the alerts page; every list is comma-separated."""

    states: tuple[str, ...] = ()
    severities: tuple[str, ...] = ()
    rule_ids: tuple[int, ...] = ()
    plant_ids: tuple[int, ...] = ()
    keys: tuple[str, ...] = ()
    silenced: bool | None = None

    @classmethod
    def parse(
        cls, params: Mapping[str, str], principal: Principal, default_state: str = ""
    ) -> AlertFilter:
        """Read ``state``, ``severity``, ``rule``, ``plant``, ``key`` and ``silenced``.

        ``state`` also takes ``open`` (pending, firing and acknowledged). Raise
        FilterError naming the parameter for an unknown value.
        """
        state_names = [*AlertState.values, OPEN]
        raw_states = params.get("state")
        if raw_states is None:
            raw_states = default_state
        states: list[str] = []
        for value in _choices({"state": raw_states}, "state", state_names):
            states.extend(OPEN_STATES if value == OPEN else [value])
        severities = _choices(params, "severity", list(Severity.values))

        rule_names = _values(params, "rule")
        rule_ids: list[int] = []
        if rule_names:
            found = dict(Rule.objects.filter(name__in=rule_names).values_list("name", "id"))
            for name in rule_names:
                if name not in found:
                    raise FilterError("rule", f"unknown rule {name!r}")
            rule_ids = list(found.values())

        plant_keys = _values(params, "plant")
        plant_ids: list[int] = []
        if plant_keys:
            found = dict(Plant.objects.filter(key__in=plant_keys).values_list("key", "id"))
            for key in plant_keys:
                if key not in found:
                    raise FilterError("plant", f"unknown plant {key!r}")
                if not principal.sees_plant(found[key]):
                    raise FilterError("plant", f"you may not see plant {key!r}", 403)
            plant_ids = list(found.values())

        silenced: bool | None = None
        raw_silenced = (params.get("silenced") or "").strip().lower()
        if raw_silenced in ("true", "1", "yes"):
            silenced = True
        elif raw_silenced in ("false", "0", "no"):
            silenced = False
        elif raw_silenced:
            raise FilterError("silenced", f"must be true or false, not {raw_silenced!r}")

        return cls(
            states=tuple(dict.fromkeys(states)),
            severities=tuple(severities),
            rule_ids=tuple(rule_ids),
            plant_ids=tuple(plant_ids),
            keys=tuple(_values(params, "key")),
            silenced=silenced,
        )

    def apply(self, queryset: QuerySet[Alert], mutes: Mutes) -> QuerySet[Alert]:
        """Filter a (scoped) alert queryset; ``silenced`` costs one narrow query when muted."""
        if self.states:
            queryset = queryset.filter(state__in=self.states)
        if self.severities:
            queryset = queryset.filter(severity__in=self.severities)
        if self.rule_ids:
            queryset = queryset.filter(rule_id__in=self.rule_ids)
        if self.plant_ids:
            queryset = queryset.filter(plant_id__in=self.plant_ids)
        if self.keys:
            queryset = queryset.filter(key__in=self.keys)
        if self.silenced is not None:
            muted: set[int] = set()
            if mutes:
                # Muting is Python (regex labels); only open alerts can be muted, and the
                # partial unique index bounds those to one per (rule, key).
                rows = queryset.exclude(state=AlertState.RESOLVED).values(*LABEL_COLUMNS)
                muted = mutes.silenced_ids(rows.order_by())
            queryset = (
                queryset.filter(pk__in=muted) if self.silenced else queryset.exclude(pk__in=muted)
            )
        return queryset


def visible_alerts(principal: Principal) -> QuerySet[Alert]:
    """Return the alerts a principal may see, with what their JSON needs."""
    return principal.scope(Alert.objects.select_related(*ALERT_RELATED), "plant")


def alerts_for_keys(keys: list[str], principal: Principal | None) -> list[dict[str, Any]]:
    """Return the alerts on any of ``keys`` that the principal may see, serialised like the API.

    The correlation timeline's alert source. No principal sees nothing.
    """
    if principal is None or not keys:
        return []
    alerts = list(visible_alerts(principal).filter(key__in=list(keys)).order_by("started_at", "id"))
    if not alerts:
        return []  # most timelines have no alert: spare the two mute queries
    return serialize_alerts(alerts, active_mutes(timezone.now(), principal.plant_ids))


def _error(message: str, status_code: int, field: str | None = None) -> Response:
    body = {"error": message}
    if field:
        body["field"] = field
    return Response(body, status=status_code)


def _principal(request: Request) -> Principal:
    principal = request_principal(request)
    assert principal is not None  # the permission classes let no anonymous caller through
    return principal


def _comment(request: Request) -> str | Response:
    data = request.data
    if not isinstance(data, Mapping):
        return _error('body: must be a JSON object like {"comment": "..."}', 400, "body")
    comment = data.get("comment", "")
    if comment is None:
        return ""
    if not isinstance(comment, str):
        return _error("comment: must be a string", 400, "comment")
    if len(comment) > 2000:
        return _error("comment: at most 2000 characters", 400, "comment")
    return comment


class AlertPagination(PageNumberPagination):
    """50 per page; ``page_size`` up to 500."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


_ERRORS = {
    401: OpenApiResponse(AlertApiErrorSerializer, description="Missing or invalid bearer token."),
    403: OpenApiResponse(
        AlertApiErrorSerializer, description="The role or plant scope forbids it."
    ),
}
_NOT_FOUND = {
    404: OpenApiResponse(AlertApiErrorSerializer, description="No such alert (or not yours).")
}


def _list_param(name: str, text: str) -> OpenApiParameter:
    return OpenApiParameter(name, str, OpenApiParameter.QUERY, required=False, description=text)


class AlertList(generics.ListAPIView):
    """``GET /api/v1/alerts``: newest first, filtered, paginated."""

    permission_classes = [CanRead]
    serializer_class = AlertSerializer
    pagination_class = AlertPagination
    queryset = Alert.objects.none()  # for schema generation; list() builds the real one

    @extend_schema(
        operation_id="alerts_list",
        summary="List alerts",
        description=(
            "Newest first, paginated. Filters take comma-separated values; `silenced` is "
            "computed at read time from active silences and maintenance windows. A plant-scoped "
            "token sees its plant's alerts only."
        ),
        tags=["alerts"],
        parameters=[
            _list_param(
                "state",
                "Comma-separated: pending, firing, acknowledged, resolved, or open "
                "(pending + firing + acknowledged).",
            ),
            _list_param("rule", "Comma-separated rule names."),
            _list_param("plant", "Comma-separated plant keys."),
            _list_param("severity", "Comma-separated: critical, major, minor, info."),
            _list_param("key", "Comma-separated alert keys (exact)."),
            OpenApiParameter(
                "silenced",
                bool,
                OpenApiParameter.QUERY,
                required=False,
                description="true or false",
            ),
        ],
        responses={
            200: AlertSerializer(many=True),
            400: OpenApiResponse(AlertApiErrorSerializer, description="A filter value is invalid."),
            **_ERRORS,
        },
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        principal = _principal(request)
        try:
            filters = AlertFilter.parse(request.query_params, principal)
        except FilterError as exc:
            return _error(str(exc), exc.status, exc.param)
        mutes = active_mutes(timezone.now(), principal.plant_ids)
        queryset = filters.apply(visible_alerts(principal), mutes)
        page = self.paginate_queryset(queryset)
        data = AlertSerializer(page, many=True, context={"mutes": mutes, "request": request}).data
        return self.get_paginated_response(data)


def _visible_alert(request: Request, alert_id: int) -> Alert | None:
    return visible_alerts(_principal(request)).filter(pk=alert_id).first()


class AlertDetail(APIView):
    """``GET /api/v1/alerts/{id}``."""

    permission_classes = [CanRead]

    @extend_schema(
        operation_id="alerts_retrieve",
        summary="One alert with its alarm log",
        description="The alert and its state transitions, oldest first.",
        tags=["alerts"],
        responses={200: AlertDetailSerializer, **_ERRORS, **_NOT_FOUND},
    )
    def get(self, request: Request, id: int) -> Response:
        alert = _visible_alert(request, id)
        if alert is None:
            return _error(f"alert {id} not found", 404)
        mutes = active_mutes(timezone.now(), _principal(request).plant_ids)
        return Response(AlertDetailSerializer(alert, context={"mutes": mutes}).data)


class _AlertAction(APIView):
    """Shared by ack and resolve: find the visible alert, call the lifecycle verb."""

    permission_classes = [CanOperate]
    verb = staticmethod(acknowledge)

    def post(self, request: Request, id: int) -> Response:
        alert = _visible_alert(request, id)
        if alert is None:
            return _error(f"alert {id} not found", 404)
        comment = _comment(request)
        if isinstance(comment, Response):
            return comment
        principal = _principal(request)
        now = timezone.now()
        try:
            type(self).verb(alert.pk, principal.name, comment, now)
        except AlertActionError as exc:
            return _error(str(exc), 409)
        alert = visible_alerts(principal).get(pk=alert.pk)
        mutes = active_mutes(now, principal.plant_ids)
        return Response(AlertSerializer(alert, context={"mutes": mutes}).data)


_ACTION_RESPONSES = {
    200: AlertSerializer,
    400: OpenApiResponse(AlertApiErrorSerializer, description="The body is not a JSON object."),
    **_ERRORS,
    **_NOT_FOUND,
    409: OpenApiResponse(AlertApiErrorSerializer, description="The alert is already resolved."),
}


class AlertAck(_AlertAction):
    """``POST /api/v1/alerts/{id}/ack`` (operator or admin)."""

    verb = staticmethod(acknowledge)

    @extend_schema(
        operation_id="alerts_ack",
        summary="Acknowledge an alert",
        description="Acknowledging an acknowledged alert keeps the first acknowledgement.",
        tags=["alerts"],
        request=AckRequestSerializer,
        responses=_ACTION_RESPONSES,
    )
    def post(self, request: Request, id: int) -> Response:
        return super().post(request, id)


class AlertResolve(_AlertAction):
    """``POST /api/v1/alerts/{id}/resolve`` (operator or admin)."""

    verb = staticmethod(resolve_manually)

    @extend_schema(
        operation_id="alerts_resolve",
        summary="Resolve an alert by hand",
        description="Sets resolution `manual`.",
        tags=["alerts"],
        request=AckRequestSerializer,
        responses=_ACTION_RESPONSES,
    )
    def post(self, request: Request, id: int) -> Response:
        return super().post(request, id)


def _parse_time(data: Mapping[str, Any], name: str) -> datetime | None:
    raw = data.get(name)
    if raw in (None, ""):
        return None
    if not isinstance(raw, str):
        raise MuteError(name, "must be an ISO 8601 date-time string")
    try:
        parsed = parse_datetime(raw.strip())
    except ValueError:
        parsed = None
    if parsed is None:
        raise MuteError(name, f"not an ISO 8601 date-time: {raw!r}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class SilenceList(generics.ListAPIView):
    """``GET /api/v1/silences`` (active, pending and recently ended) and ``POST`` to create."""

    serializer_class = SilenceSerializer
    pagination_class = AlertPagination
    queryset = Silence.objects.none()

    def get_permissions(self):  # type: ignore[no-untyped-def]
        return [CanOperate()] if self.request.method == "POST" else [CanRead()]

    @extend_schema(
        operation_id="silences_list",
        summary="List active, pending and recent silences",
        description="Silences that are active, start later, or ended in the last 7 days.",
        tags=["silences"],
        parameters=[
            _list_param("state", "Comma-separated: active, pending, expired."),
        ],
        responses={200: SilenceSerializer(many=True), 400: AlertApiErrorSerializer, **_ERRORS},
    )
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        now = timezone.now()
        try:
            states = _choices(request.query_params, "state", ["active", "pending", "expired"])
        except FilterError as exc:
            return _error(str(exc), exc.status, exc.param)
        queryset = visible_silences(_principal(request)).filter(
            Q(ends_at__gt=now - RECENT_SILENCES)
            & (Q(expired_at__isnull=True) | Q(expired_at__gt=now - RECENT_SILENCES))
        )
        wanted = Q()
        live = Q(expired_at__isnull=True, ends_at__gt=now)
        if "active" in states:
            wanted |= live & Q(starts_at__lte=now)
        if "pending" in states:
            wanted |= live & Q(starts_at__gt=now)
        if "expired" in states:
            wanted |= ~live
        if states:
            queryset = queryset.filter(wanted)
        page = self.paginate_queryset(queryset.order_by("-starts_at", "-id"))
        data = SilenceSerializer(page, many=True, context={"now": now}).data
        return self.get_paginated_response(data)

    @extend_schema(
        operation_id="silences_create",
        summary="Create a silence",
        description=(
            "Mutes every alert matching all matchers between `starts_at` (default now) and "
            "`ends_at`. A plant-scoped token's silence gets a `plant` matcher for its plant."
        ),
        tags=["silences"],
        request=SilenceRequestSerializer,
        responses={
            201: SilenceSerializer,
            400: OpenApiResponse(AlertApiErrorSerializer, description="Names the invalid field."),
            **_ERRORS,
        },
    )
    def post(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        data = request.data
        if not isinstance(data, Mapping):
            return _error("body: must be a JSON object", 400, "body")
        now = timezone.now()
        try:
            silence = create_silence(
                _principal(request),
                data.get("matchers"),
                starts_at=_parse_time(data, "starts_at"),
                ends_at=_parse_time(data, "ends_at"),
                comment=data.get("comment") or "",
                now=now,
            )
        except MuteError as exc:
            return _error(str(exc), exc.status, exc.field)
        silence = Silence.objects.select_related("plant").get(pk=silence.pk)
        body = SilenceSerializer(silence, context={"now": now}).data
        return Response(body, status=status.HTTP_201_CREATED)


class SilenceDetail(APIView):
    """``GET`` one silence; ``DELETE /api/v1/silences/{id}`` expires it now."""

    def get_permissions(self):  # type: ignore[no-untyped-def]
        return [CanOperate()] if self.request.method == "DELETE" else [CanRead()]

    @extend_schema(
        operation_id="silences_retrieve",
        summary="One silence",
        description="A silence with its state now (`active`, `pending` or `expired`).",
        tags=["silences"],
        responses={200: SilenceSerializer, **_ERRORS, 404: AlertApiErrorSerializer},
    )
    def get(self, request: Request, id: int) -> Response:
        silence = visible_silences(_principal(request)).filter(pk=id).first()
        if silence is None:
            return _error(f"silence {id} not found", 404)
        return Response(SilenceSerializer(silence, context={"now": timezone.now()}).data)

    @extend_schema(
        operation_id="silences_expire",
        summary="Expire a silence now",
        description="A plant-scoped token may expire its plant's silences only.",
        tags=["silences"],
        responses={
            204: OpenApiResponse(description="Expired (expiring twice is harmless)."),
            **_ERRORS,
            404: AlertApiErrorSerializer,
        },
    )
    def delete(self, request: Request, id: int) -> Response:
        principal = _principal(request)
        silence = visible_silences(principal).filter(pk=id).first()
        if silence is None:
            return _error(f"silence {id} not found", 404)
        if not may_change_silence(principal, silence):
            return _error(f"silence {id} is not limited to your plant", 403)
        expire_silence(silence, timezone.now())
        return Response(status=status.HTTP_204_NO_CONTENT)
