"""``GET /api/v1/messages`` and ``GET /api/v1/messages/{id}``: the captured messages, read back.

The list is keyset-paginated on ``(occurred_at, id)`` descending: ``next`` and
``previous`` carry an opaque ``cursor`` parameter, so any page costs what the
first one does. ``count`` is exact up to ``integrations.queries.COUNT_CAP``
(10,000) and the planner's estimate above it (``count_exact`` says which), so
listing a million messages never counts them all.

``POST /api/v1/messages`` (ingest) shares the route: :class:`MessageListView`
hands a POST to the plain ingest view unchanged (see ``integrations.ingest.messages``).
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import orjson
from django.db.models import Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from console.auth import CanRead, Principal, request_principal
from integrations.masking import mask_headers, mask_value
from integrations.models import Message, MessageAttempt
from integrations.queries import (
    COUNT_CAP,
    MAX_PAGE_SIZE,
    STATUSES,
    Cursor,
    FilterError,
    MessageFilter,
    PlantForbidden,
    count_page,
    cursor_param,
    message_page,
    page_size,
)

# --- What a message looks like ----------------------------------------------------------


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _body_paths(paths: list[str]) -> list[str]:
    """Return the sensitive paths that point into the payload (not ``headers.<name>``)."""
    return [p for p in paths if not p.strip().removeprefix("$.").lower().startswith("headers.")]


def attempt_json(attempt: MessageAttempt) -> dict[str, Any]:
    """Return one attempt as the API shows it."""
    return {
        "at": attempt.at,
        "status": attempt.status,
        "latency_ms": attempt.latency_ms,
        "error": attempt.error,
        "replay": attempt.replay_id,
    }


def message_json(message: Message) -> dict[str, Any]:
    """Return a message as the list shows it (attempts prefetched, connector and plant joined)."""
    return {
        "id": message.pk,
        "connector": message.connector.key,
        "external_id": message.external_id,
        "status": message.status,
        "correlation_id": message.correlation_id,
        "business_keys": message.business_keys,
        "occurred_at": message.occurred_at,
        "last_attempt_at": message.last_attempt_at,
        "received_at": message.received_at,
        "plant": message.plant.key if message.plant_id else None,
        "latency_ms": message.latency_ms,
        "error": message.error,
        "attempt_count": message.attempt_count,
        "content_type": message.content_type,
        "attempts": [attempt_json(a) for a in message.attempts.all()],
    }


def message_detail_json(message: Message, principal: Principal) -> dict[str, Any]:
    """Return one message with headers and payload, masked for non-admins.

    A JSON payload is ``payload``; anything else is ``payload_b64``. A non-JSON
    body of a connector with sensitive fields cannot be masked field by field,
    so non-admins get neither (``payload_hidden``).
    """
    paths = list(message.connector.sensitive_fields or [])
    masked = bool(paths) and not principal.is_admin
    body = dict(message_json(message))
    body["headers"] = mask_headers(message.headers, paths) if masked else message.headers
    body.update(payload=None, payload_b64=None, payload_hidden=False, masked=masked)
    raw = bytes(message.payload) if message.payload is not None else b""
    if not raw:
        return body
    body_paths = _body_paths(paths)
    if _is_json(message.content_type):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            body["payload"] = mask_value(value, body_paths) if masked else value
            return body
    if masked and body_paths:
        body["payload_hidden"] = True
    else:
        body["payload_b64"] = base64.b64encode(raw).decode()
    return body


def with_attempts(messages: QuerySet[Message]) -> QuerySet[Message]:
    """Join what a message's JSON needs: connector, plant, attempts (one more query)."""
    attempts = MessageAttempt.objects.order_by("at", "id")
    return messages.select_related("connector", "plant").prefetch_related(
        Prefetch("attempts", queryset=attempts)
    )


# --- OpenAPI description (the views build plain dicts; tests keep the two in step) -------


class MessageAttemptSerializer(serializers.Serializer):
    at = serializers.DateTimeField()
    status = serializers.ChoiceField(choices=STATUSES)
    latency_ms = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    replay = serializers.IntegerField(
        allow_null=True, help_text="The replay that made this attempt; null when reported."
    )


class MessageSerializer(serializers.Serializer):
    id = serializers.IntegerField(help_text="Andon's own id (used by replay).")
    connector = serializers.CharField(help_text="Connector key.")
    external_id = serializers.CharField(help_text="The id the connector reported.")
    status = serializers.ChoiceField(choices=STATUSES, help_text="Status of the latest attempt.")
    correlation_id = serializers.CharField(allow_blank=True)
    business_keys = serializers.DictField(child=serializers.CharField())
    occurred_at = serializers.DateTimeField(help_text="Time of the first attempt.")
    last_attempt_at = serializers.DateTimeField()
    received_at = serializers.DateTimeField()
    plant = serializers.CharField(allow_null=True, help_text="Plant key.")
    latency_ms = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    attempt_count = serializers.IntegerField()
    content_type = serializers.CharField(allow_blank=True)
    attempts = MessageAttemptSerializer(many=True)


class MessageDetailSerializer(MessageSerializer):
    headers = serializers.DictField(child=serializers.CharField())
    payload = serializers.JSONField(allow_null=True, help_text="A JSON payload.")
    payload_b64 = serializers.CharField(allow_null=True, help_text="Any other payload, base64.")
    payload_hidden = serializers.BooleanField(
        help_text="A non-JSON payload of a connector with sensitive fields, hidden from you."
    )
    masked = serializers.BooleanField(
        help_text="Sensitive fields (the connector's sensitive_fields) are masked for you."
    )


class MessagePageSerializer(serializers.Serializer):
    count = serializers.IntegerField(
        help_text=f"Messages selected: exact up to {COUNT_CAP}, else the planner's estimate."
    )
    count_exact = serializers.BooleanField()
    next = serializers.URLField(allow_null=True, help_text="Older messages.")
    previous = serializers.URLField(allow_null=True, help_text="Newer messages.")
    results = MessageSerializer(many=True)


class MessageApiErrorSerializer(serializers.Serializer):
    error = serializers.CharField()
    parameter = serializers.CharField(required=False, help_text="The bad query parameter.")


def _param(name: str, text: str, **extra: Any) -> OpenApiParameter:
    return OpenApiParameter(
        name, OpenApiTypes.STR, OpenApiParameter.QUERY, description=text, **extra
    )


LIST_PARAMETERS = [
    _param("connector", "Connector key; repeat or comma-separate for several."),
    _param("status", "One of received, delivered, failed, dead_lettered; several allowed."),
    _param("key", "A correlation id or any business key the message carries."),
    _param("since", "ISO 8601 time; messages with occurred_at at or after it."),
    _param("until", "ISO 8601 time; messages with occurred_at before it."),
    _param("plant", "Plant key; several allowed (a plant-scoped caller: its own only)."),
    _param("error", "Substring of the error text (case-insensitive)."),
    _param("cursor", "Opaque position from `next`/`previous`."),
    OpenApiParameter(
        "limit", OpenApiTypes.INT, OpenApiParameter.QUERY, description=f"1 to {MAX_PAGE_SIZE}."
    ),
]
ERRORS = {
    401: OpenApiResponse(MessageApiErrorSerializer, "Missing or bad token."),
    403: OpenApiResponse(MessageApiErrorSerializer, "Wrong role (ingest) or plant."),
}


# --- Views ---------------------------------------------------------------------------------


def _error(status: int, message: str, parameter: str | None = None) -> Response:
    body = {"error": message}
    if parameter is not None:
        body["parameter"] = parameter
    return Response(body, status=status)


def _link(request: Request, cursor: Cursor | None) -> str | None:
    if cursor is None:
        return None
    query = request.query_params.copy()
    query["cursor"] = cursor.encode()
    return request.build_absolute_uri(request.path + "?" + query.urlencode())


class MessageListView(APIView):
    """Lists messages (GET); a POST goes to ``ingest``, the plain ingest view, untouched."""

    permission_classes = [CanRead]
    ingest: Callable[..., HttpResponse] | None = None

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST" and self.ingest is not None:
            return self.ingest(request, *args, **kwargs)
        return super().dispatch(request, *args, **kwargs)

    @extend_schema(
        operation_id="messages_list",
        summary="List captured messages",
        description=(
            "Newest first, keyset-paginated: follow `next` (older) and `previous` (newer). "
            f"`count` is exact up to {COUNT_CAP} and estimated above (`count_exact`)."
        ),
        tags=["messages"],
        parameters=LIST_PARAMETERS,
        responses={
            200: MessagePageSerializer,
            400: OpenApiResponse(MessageApiErrorSerializer, "A bad filter value, named."),
            **ERRORS,
        },
    )
    def get(self, request: Request) -> Response:
        """Answer one page of the messages the filters select, in the caller's plants."""
        principal = request_principal(request)
        assert principal is not None  # CanRead let the request through
        params = request.query_params
        try:
            selected = MessageFilter.from_params(params, principal.plant_ids)
            cursor = cursor_param(params)
            size = page_size(params)
        except FilterError as exc:
            return _error(400, exc.message, exc.parameter)
        except PlantForbidden:
            mine = ", ".join(sorted(principal.plant_keys))
            return _error(403, f"you are scoped to plant {mine}", "plant")
        messages = selected.apply(principal.scope(Message.objects.all(), "plant"))
        page = message_page(with_attempts(messages), cursor, size)
        count = count_page(messages, page, cursor)
        return Response(
            {
                "count": count.value,
                "count_exact": count.exact,
                "next": _link(request, page.older),
                "previous": _link(request, page.newer),
                "results": [message_json(m) for m in page.items],
            }
        )


class MessageDetailView(APIView):
    """One message with its attempts, headers and payload."""

    permission_classes = [CanRead]

    @extend_schema(
        operation_id="messages_retrieve",
        summary="One captured message",
        description=(
            "With headers and payload; the connector's sensitive fields are masked for "
            "non-admins. A message of another plant answers 404 to a plant-scoped caller."
        ),
        tags=["messages"],
        responses={
            200: MessageDetailSerializer,
            404: OpenApiResponse(MessageApiErrorSerializer, "No such message (in your plants)."),
            **ERRORS,
        },
    )
    def get(self, request: Request, pk: int) -> Response:
        """Answer the message ``pk`` when the caller's plants include it, else 404."""
        principal = request_principal(request)
        assert principal is not None
        message = with_attempts(principal.scope(Message.objects.filter(pk=pk), "plant")).first()
        if message is None:
            return _error(404, f"no message {pk}")
        return Response(message_detail_json(message, principal))
