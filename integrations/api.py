"""``GET /api/v1/correlations/{key}``: everything tied to a key, for operators' scripts.

The view is thin: :func:`integrations.correlation.correlate` does the work and
:func:`correlation_json` turns its result into the CONTRACT shape, serialised
with orjson (the result is built from plain dicts, so this costs little).
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.views import APIView

from console.auth import CanRead, Principal, request_principal
from integrations.correlation import Correlation, correlate
from integrations.masking import mask_headers, mask_value

# Row keys the engine keeps for its own use, not part of the answer.
_MESSAGE_PRIVATE = ("payload", "sensitive_fields", "slo_ms")


def is_json_media(content_type: str) -> bool:
    """Return whether a content type is JSON (``application/json``, ``...+json``) or unset."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media in ("", "application/json", "text/json") or media.endswith("+json")


def _body_paths(paths: list[str]) -> list[str]:
    return [p for p in paths if not p.strip().removeprefix("$.").lower().startswith("headers.")]


def message_json(row: dict[str, Any], principal: Principal) -> dict[str, Any]:
    """Return a correlated message with its payload, masked for non-admins.

    A JSON payload is ``payload`` (its connector's ``sensitive_fields`` masked
    unless the caller is an admin); anything else is base64 ``payload_b64``,
    withheld from non-admins (``payload_hidden``) when the connector has
    sensitive fields, since they cannot be located in an opaque body.
    """
    paths = row["sensitive_fields"]
    masked = bool(paths) and not principal.is_admin
    body = {k: v for k, v in row.items() if k not in _MESSAGE_PRIVATE}
    body["masked"] = masked
    body["payload"] = body["payload_b64"] = None
    body["payload_hidden"] = False
    if masked:
        body["headers"] = mask_headers(row["headers"], paths)
    raw = row["payload"]
    if not raw:
        return body
    if is_json_media(row["content_type"]):
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
        else:
            body["payload"] = mask_value(value, _body_paths(paths)) if masked else value
            return body
    if masked and _body_paths(paths):
        body["payload_hidden"] = True
    else:
        body["payload_b64"] = base64.b64encode(raw).decode("ascii")
    return body


def correlation_json(result: Correlation, principal: Principal) -> dict[str, Any]:
    """Return a correlation in the CONTRACT shape (lists in time order)."""
    return {
        "key": result.key,
        "events": result.events,
        "spans": result.spans,
        "messages": [message_json(m, principal) for m in result.messages],
        "alerts": result.alerts,
        "hops": [hop.as_dict() for hop in result.hops],
        "items": [item.as_dict() for item in result.items],
        "systems": [system.as_dict() for system in result.systems],
        "flow": result.flow.as_dict(),
        "keys": [key.as_dict() for key in result.keys],
        "skipped_keys": [key.as_dict() for key in result.skipped_keys],
        "truncated": result.truncated,
        "truncated_reasons": result.truncated_reasons,
    }


def json_answer(body: object, status: int = 200) -> HttpResponse:
    """Serialise with orjson (datetimes as RFC 3339 with ``Z``)."""
    return HttpResponse(
        orjson.dumps(body, option=orjson.OPT_UTC_Z | orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


# --- OpenAPI description (the view builds plain dicts) -------------------------------------


class _ItemRefSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["event", "span", "message"])
    id = serializers.IntegerField()


class HopSerializer(serializers.Serializer):
    # "from" is a keyword: declared below.
    to = serializers.CharField(help_text="Target system key.")
    latency_ms = serializers.FloatField(allow_null=True)
    connector = serializers.CharField(allow_null=True, help_text="Connector key, when known.")
    slo_ms = serializers.IntegerField(allow_null=True, help_text="The connector's latency SLO.")
    slo_met = serializers.BooleanField(allow_null=True, help_text="Null without an SLO.")
    failed = serializers.BooleanField()
    at = serializers.DateTimeField(help_text="When the hop started.")
    via = serializers.ChoiceField(choices=["message", "span", "event"])
    item = _ItemRefSerializer(help_text="The item the hop arrived as (or the message).")
    from_item = _ItemRefSerializer(allow_null=True)


HopSerializer._declared_fields["from"] = serializers.CharField(help_text="Source system key.")


class _TimelineItemSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=["event", "span", "message"])
    id = serializers.IntegerField()
    time = serializers.DateTimeField()
    system = serializers.CharField(allow_null=True)
    plant = serializers.CharField(allow_null=True)
    status = serializers.CharField(allow_blank=True)
    failed = serializers.BooleanField()
    title = serializers.CharField()


class _SystemSerializer(serializers.Serializer):
    key = serializers.CharField()
    name = serializers.CharField()
    kind = serializers.CharField()
    plant = serializers.CharField(allow_null=True)
    first = serializers.DateTimeField()
    last = serializers.DateTimeField()
    events = serializers.IntegerField()
    spans = serializers.IntegerField()
    messages = serializers.IntegerField()
    failed = serializers.IntegerField()


class _FlowSerializer(serializers.Serializer):
    reached = serializers.ListField(child=serializers.CharField())
    last = serializers.CharField(allow_null=True)
    stopped = serializers.BooleanField()
    stopped_at = serializers.CharField(allow_null=True)
    blocked = serializers.CharField(allow_null=True, help_text="The system nothing reached.")
    connector = serializers.CharField(allow_null=True)
    reason = serializers.CharField(help_text="A sentence saying where the flow got and why.")


class _KeySerializer(serializers.Serializer):
    key = serializers.CharField()
    via = serializers.CharField(help_text="How it was reached: subject, lot, trace_id...")
    depth = serializers.IntegerField()
    items = serializers.IntegerField()


class _SkippedKeySerializer(serializers.Serializer):
    key = serializers.CharField()
    via = serializers.CharField()
    count = serializers.IntegerField(help_text="Items seen before giving up (a lower bound).")
    limit = serializers.IntegerField(help_text="ANDON_CORRELATION_HUB_LIMIT.")
    reason = serializers.CharField()


class CorrelationSerializer(serializers.Serializer):
    key = serializers.CharField()
    events = serializers.ListField(child=serializers.DictField(), help_text="In time order.")
    spans = serializers.ListField(child=serializers.DictField(), help_text="In time order.")
    messages = serializers.ListField(
        child=serializers.DictField(),
        help_text="In time order, with connector, source/target systems, attempts and payload "
        "(sensitive fields masked for non-admins).",
    )
    alerts = serializers.ListField(child=serializers.DictField(), help_text="In time order.")
    hops = HopSerializer(many=True)
    items = _TimelineItemSerializer(many=True, help_text="Every item, in time order.")
    systems = _SystemSerializer(many=True, help_text="In order of first appearance.")
    flow = _FlowSerializer()
    keys = _KeySerializer(many=True)
    skipped_keys = _SkippedKeySerializer(many=True, help_text="Hub keys not followed.")
    truncated = serializers.BooleanField()
    truncated_reasons = serializers.ListField(child=serializers.CharField())


class _ErrorSerializer(serializers.Serializer):
    error = serializers.CharField()
    key = serializers.CharField(required=False)


# --- The view --------------------------------------------------------------------------------


class CorrelationView(APIView):
    """Everything tied to a correlation id, business key, trace id or message id."""

    permission_classes = [CanRead]

    @extend_schema(
        operation_id="correlations_retrieve",
        summary="Everything tied to a key",
        description=(
            "Events, spans, messages and alerts tied to a correlation id, business key, "
            "trace id or message id, in time order, with the hops between systems, the "
            "systems reached and where the flow stopped. Keys are followed across items "
            "(work order -> lot -> shipment); keys tying too many items are not followed."
        ),
        tags=["correlations"],
        parameters=[
            OpenApiParameter(
                "key",
                OpenApiTypes.STR,
                OpenApiParameter.PATH,
                description="Any key; it may contain '/'.",
            )
        ],
        responses={
            200: CorrelationSerializer,
            401: OpenApiResponse(_ErrorSerializer, "Missing or bad token."),
            403: OpenApiResponse(_ErrorSerializer, "Wrong role (ingest)."),
            404: OpenApiResponse(_ErrorSerializer, "Nothing you may see is tied to the key."),
        },
    )
    def get(self, request: Request, key: str) -> HttpResponse:
        """Answer the correlation of ``key`` as the caller's plants allow, 404 when empty."""
        principal = request_principal(request)
        assert principal is not None  # CanRead let the request through
        result = correlate(key, principal)
        if not result.found:
            return json_answer({"error": f"nothing found for key {key!r}", "key": key}, 404)
        return json_answer(correlation_json(result, principal))
