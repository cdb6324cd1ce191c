"""The replay API (CONTRACT "Query and control endpoints"), thin views over ``integrations.replay``.

- ``POST /api/v1/messages/{id}/replay`` (admin): one message; 202 ``{"replay", "status"}``.
  Optional ``reason``, and for edit-and-replay ``payload`` (JSON) or ``payload_b64``
  with ``content_type``.
- ``POST /api/v1/replays`` (admin): ``{"filter", "dry_run", "reason"}``; a dry run
  answers the count, a sample and the exact requests, and sends nothing.
- ``GET /api/v1/replays`` (the audit list), ``GET /api/v1/replays/{id}`` (progress
  and each message's outcome), ``POST /api/v1/replays/{id}/cancel`` and
  ``/approve`` (admin; approval by a second admin).
- ``GET /api/v1/failure-groups``: failed messages grouped by connector and error.

Errors are ``{"error": "...", "field": "..."}``: 400 naming the bad field (a filter
field as ``filter.<name>``), 403 for a non-admin or another plant, 404 for a job
or message outside the caller's plants, 409 for a job in the wrong state.
"""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta
from typing import Any

import orjson
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from console.auth import CanRead, IsAdmin, Principal, request_principal
from integrations.api_messages import message_json, with_attempts
from integrations.failures import failure_groups
from integrations.models import Message, ReplayJob, ReplayState
from integrations.queries import FilterError, parse_instant
from integrations.replay import (
    ReplayError,
    ReplayFilterError,
    approve,
    cancel,
    job_items,
    job_json,
    job_progress,
    planned_request,
    preview,
    start_replay,
    visible_jobs,
)

MAX_ITEMS_PAGE = 1000
DEFAULT_ITEMS_PAGE = 100
MAX_SAMPLE = 50
# Failure groups cover this much history unless ``since`` says otherwise.
DEFAULT_GROUP_WINDOW = timedelta(days=7)


def _principal(request: Request) -> Principal:
    principal = request_principal(request)
    assert principal is not None  # the permission class let the request through
    return principal


def _error(status: int, message: str, field: str = "") -> Response:
    body = {"error": message}
    if field:
        body["field"] = field
    return Response(body, status=status)


def _replay_error(exc: ReplayError) -> Response:
    """Render a workflow error; a filter field is named ``filter.<field>``."""
    if isinstance(exc, ReplayFilterError):
        field = f"filter.{exc.field}" if exc.field else "filter"
        return _error(exc.status, f"{field}: {exc.detail}", field)
    return _error(exc.status, exc.message, exc.field)


def _body(request: Request) -> dict[str, Any] | Response:
    data = request.data
    if data is None or data == {}:
        return {}
    if not isinstance(data, dict):
        return _error(400, "the request body must be a JSON object", "body")
    return dict(data)


def _reason(body: dict[str, Any], required: bool) -> str | Response:
    reason = body.get("reason")
    if reason is None or reason == "":
        if required:
            return _error(400, "reason: say why these messages are replayed (audited)", "reason")
        return ""
    if not isinstance(reason, str) or len(reason) > 2000:
        return _error(400, "reason: must be text of at most 2000 characters", "reason")
    return reason


def _edited(body: dict[str, Any]) -> tuple[bytes | None, str | None] | Response:
    """Read an edited copy: ``payload`` (JSON) or ``payload_b64``, and ``content_type``."""
    payload, payload_b64 = body.get("payload"), body.get("payload_b64")
    content_type = body.get("content_type")
    if content_type is not None and (not isinstance(content_type, str) or not content_type):
        return _error(400, "content_type: must be a non-empty string", "content_type")
    if payload is not None and payload_b64 is not None:
        return _error(400, "payload and payload_b64 are mutually exclusive", "payload")
    if payload_b64 is not None:
        if not isinstance(payload_b64, str):
            return _error(400, "payload_b64: must be a base64 string", "payload_b64")
        try:
            return base64.b64decode(payload_b64, validate=True), content_type
        except (binascii.Error, ValueError):
            return _error(400, "payload_b64: is not valid base64", "payload_b64")
    if payload is not None:
        return orjson.dumps(payload), content_type or "application/json"
    if content_type is not None:
        return _error(400, "content_type: is only used with payload or payload_b64", "content_type")
    return None, None


# --- OpenAPI description -------------------------------------------------------------------


class ReplayErrorSerializer(serializers.Serializer):
    error = serializers.CharField()
    field = serializers.CharField(required=False, help_text="The bad field (filter.<name>).")


class MessageReplayRequestSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, help_text="Why (kept for the audit).")
    payload = serializers.JSONField(
        required=False, help_text="Edit-and-replay: send this JSON instead (admins)."
    )
    payload_b64 = serializers.CharField(
        required=False, help_text="Edit-and-replay: send these bytes (base64) instead."
    )
    content_type = serializers.CharField(required=False, help_text="Content type of the edit.")


class ReplayStartedSerializer(serializers.Serializer):
    replay = serializers.IntegerField(help_text="The replay job's id.")
    status = serializers.ChoiceField(choices=ReplayState.values)
    total = serializers.IntegerField()
    skipped = serializers.IntegerField(help_text="Messages without adapter or payload.")
    needs_approval = serializers.BooleanField(help_text="Waits for a second admin.")


class ReplayFilterSerializer(serializers.Serializer):
    connector = serializers.JSONField(required=False, help_text="Connector key(s).")
    status = serializers.JSONField(required=False, help_text="Message status(es).")
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    error = serializers.CharField(required=False, help_text="Substring of the error text.")
    plant = serializers.JSONField(required=False, help_text="Plant key(s).")
    key = serializers.CharField(required=False, help_text="Correlation id or business key.")
    message_ids = serializers.ListField(child=serializers.IntegerField(), required=False)
    alert = serializers.IntegerField(required=False, help_text="The messages behind an alert.")
    error_group = serializers.CharField(required=False, help_text="A failure group's pattern.")


class ReplayRequestSerializer(serializers.Serializer):
    filter = ReplayFilterSerializer()
    dry_run = serializers.BooleanField(required=False, default=False)
    reason = serializers.CharField(required=False, help_text="Required unless dry_run.")
    sample = serializers.IntegerField(required=False, help_text=f"Sample size (<= {MAX_SAMPLE}).")


class PlannedRequestSerializer(serializers.Serializer):
    message = serializers.IntegerField()
    connector = serializers.CharField()
    adapter = serializers.CharField()
    method = serializers.CharField()
    url = serializers.CharField()
    headers = serializers.DictField(child=serializers.CharField())
    body = serializers.CharField(allow_null=True, help_text="The body when it is UTF-8 text.")
    body_b64 = serializers.CharField(allow_null=True, help_text="Otherwise base64.")
    problem = serializers.CharField(help_text="Why it would not be sent; empty when it would.")


class DryRunSerializer(serializers.Serializer):
    replay = serializers.IntegerField(help_text="The recorded dry run (audit).")
    status = serializers.CharField()
    count = serializers.IntegerField()
    replayable = serializers.IntegerField()
    needs_approval = serializers.BooleanField()
    approval_above = serializers.IntegerField()
    sample = serializers.ListField(child=serializers.DictField())
    requests = PlannedRequestSerializer(many=True)


class ReplayJobSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    state = serializers.ChoiceField(choices=ReplayState.values)
    created_by = serializers.CharField()
    reason = serializers.CharField(allow_blank=True)
    filter = serializers.DictField()
    dry_run = serializers.BooleanField()
    edited = serializers.BooleanField()
    needs_approval = serializers.BooleanField()
    approved_by = serializers.CharField(allow_null=True)
    approved_at = serializers.DateTimeField(allow_null=True)
    cancelled_by = serializers.CharField(allow_null=True)
    plant = serializers.CharField(allow_null=True)
    alert = serializers.IntegerField(allow_null=True)
    total = serializers.IntegerField()
    delivered = serializers.IntegerField()
    failed = serializers.IntegerField()
    dead_lettered = serializers.IntegerField()
    skipped = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class ReplayItemSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    message = serializers.IntegerField()
    connector = serializers.CharField()
    external_id = serializers.CharField()
    state = serializers.CharField()
    attempts = serializers.IntegerField()
    sent_at = serializers.DateTimeField(allow_null=True)
    next_attempt_at = serializers.DateTimeField(allow_null=True)
    latency_ms = serializers.IntegerField(allow_null=True)
    response_status = serializers.IntegerField(allow_null=True)
    error = serializers.CharField(allow_blank=True)
    edited = serializers.BooleanField()
    edit = serializers.DictField(required=False, help_text="Admins: original vs edited body.")


class ReplayProgressSerializer(ReplayJobSerializer):
    counts = serializers.DictField(child=serializers.IntegerField())
    done = serializers.IntegerField()
    remaining = serializers.IntegerField()
    uncertain = serializers.IntegerField(help_text="In flight when a worker died; not re-sent.")
    percent = serializers.FloatField()
    items = ReplayItemSerializer(many=True)
    next = serializers.URLField(allow_null=True, help_text="The next page of items.")


class ReplayPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ReplayJobSerializer(many=True)


class FailureGroupSerializer(serializers.Serializer):
    connector = serializers.CharField()
    pattern = serializers.CharField(help_text="The error with numbers, ids and times stripped.")
    count = serializers.IntegerField()
    first_seen = serializers.DateTimeField()
    last_seen = serializers.DateTimeField()
    sample_message_ids = serializers.ListField(child=serializers.IntegerField())
    filter = serializers.DictField(help_text="POST it to /api/v1/replays to replay the group.")


class FailureGroupListSerializer(serializers.Serializer):
    results = FailureGroupSerializer(many=True)


ERRORS = {
    400: OpenApiResponse(ReplayErrorSerializer, "A bad field, named."),
    401: OpenApiResponse(ReplayErrorSerializer, "Missing or bad token."),
    403: OpenApiResponse(ReplayErrorSerializer, "Not an admin, or another plant."),
}


def _int_param(name: str, text: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.INT, OpenApiParameter.QUERY, description=text)


def _str_param(name: str, text: str) -> OpenApiParameter:
    return OpenApiParameter(name, OpenApiTypes.STR, OpenApiParameter.QUERY, description=text)


# --- Views ---------------------------------------------------------------------------------------


class ReadOrAdmin(APIView):
    """GET for readers (operators see progress and the audit), anything else for admins."""

    def get_permissions(self) -> list[BasePermission]:
        """Return CanRead for reading methods, IsAdmin for the rest."""
        if self.request.method in ("GET", "HEAD", "OPTIONS"):
            return [CanRead()]
        return [IsAdmin()]


class MessageReplayView(APIView):
    """``POST /api/v1/messages/{id}/replay``: replay one message (admins)."""

    permission_classes = [IsAdmin]

    @extend_schema(
        operation_id="messages_replay",
        summary="Replay one message",
        description=(
            "Queues a replay of the captured message through its connector's adapter: the "
            "target receives the original body and content type with `Idempotency-Key: "
            "<connector>:<message external id>`, `X-Andon-Replay: <replay id>` and a "
            "`traceparent`. With `payload` or `payload_b64` an edited copy is sent once "
            "instead (the original stays untouched; the edit is audited)."
        ),
        tags=["replay"],
        request=MessageReplayRequestSerializer,
        responses={
            202: ReplayStartedSerializer,
            404: OpenApiResponse(ReplayErrorSerializer, "No such message in your plants."),
            409: OpenApiResponse(ReplayErrorSerializer, "The message cannot be replayed."),
            **ERRORS,
        },
    )
    def post(self, request: Request, pk: int) -> Response:
        """Queue a replay of message ``pk`` and answer 202 with the job's id and state."""
        principal = _principal(request)
        message = (
            principal.scope(Message.objects.select_related("connector"), "plant")
            .filter(pk=pk)
            .first()
        )
        if message is None:
            return _error(404, f"no message {pk}", "id")
        body = _body(request)
        if isinstance(body, Response):
            return body
        reason = _reason(body, required=False)
        if isinstance(reason, Response):
            return reason
        edited = _edited(body)
        if isinstance(edited, Response):
            return edited
        payload, content_type = edited
        problem = planned_request(message, None, body=payload).problem
        if problem:
            return _error(409, problem, "message")
        try:
            job = start_replay(
                principal,
                message_ids=[pk],
                reason=reason,
                edited_payload=payload,
                edited_content_type=content_type,
            )
        except ReplayError as exc:
            return _replay_error(exc)
        return Response(_started(job), status=202)


def _started(job: ReplayJob) -> dict[str, Any]:
    return {
        "replay": job.pk,
        "status": job.state,
        "total": job.total,
        "skipped": job.skipped,
        "needs_approval": job.needs_approval,
    }


class ReplayListView(ReadOrAdmin):
    """``GET /api/v1/replays`` (the audit of every replay) and ``POST`` (a bulk replay)."""

    @extend_schema(
        operation_id="replays_list",
        summary="Every replay (the audit)",
        description="Newest first: who replayed what, why, approved by whom, with what outcome.",
        tags=["replay"],
        parameters=[
            _str_param("state", "Job state(s), comma-separated."),
            _int_param("page", "Page number."),
        ],
        responses={200: ReplayPageSerializer, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        """Answer one page of the replay jobs in the caller's plants, newest first."""
        principal = _principal(request)
        jobs = visible_jobs(principal).select_related("plant")
        states = [s.strip() for s in (request.query_params.get("state") or "").split(",") if s]
        for state in states:
            if state not in ReplayState.values:
                known = ", ".join(ReplayState.values)
                return _error(400, f"state: unknown state {state!r}; use {known}", "state")
        if states:
            jobs = jobs.filter(state__in=states)
        paginator = PageNumberPagination()
        page = paginator.paginate_queryset(jobs.order_by("-created_at", "-id"), request, view=self)
        return paginator.get_paginated_response([job_json(job) for job in page or []])

    @extend_schema(
        operation_id="replays_create",
        summary="Replay every message a filter selects (or preview it)",
        description=(
            "One job for every message the filter selects, in the caller's plants. "
            "`dry_run: true` answers the count, a sample and the exact requests that would be "
            "sent (`X-Andon-Replay` and the traceparent's parent id are assigned when a real "
            "replay starts) and changes nothing. A job above the approval size waits in "
            "`pending_approval` for a second admin."
        ),
        tags=["replay"],
        request=ReplayRequestSerializer,
        responses={200: DryRunSerializer, 202: ReplayStartedSerializer, **ERRORS},
    )
    def post(self, request: Request) -> Response:
        """Start a bulk replay (202) or answer its dry run (200)."""
        principal = _principal(request)
        body = _body(request)
        if isinstance(body, Response):
            return body
        unknown = sorted(set(body) - {"filter", "dry_run", "reason", "sample"})
        if unknown:
            return _error(400, f"{unknown[0]}: unknown field", unknown[0])
        dry_run = body.get("dry_run", False)
        if not isinstance(dry_run, bool):
            return _error(400, "dry_run: must be true or false", "dry_run")
        sample = body.get("sample", 5)
        if isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample <= MAX_SAMPLE:
            return _error(400, f"sample: must be an integer from 0 to {MAX_SAMPLE}", "sample")
        if "filter" not in body:
            return _error(400, "filter: is required (an object of filter fields)", "filter")
        reason = _reason(body, required=not dry_run)
        if isinstance(reason, Response):
            return reason
        try:
            if dry_run:
                planned = preview(body["filter"], principal, sample=sample)
                job = start_replay(principal, filter=body["filter"], reason=reason, dry_run=True)
                return Response(_dry_run(job, planned), status=200)
            job = start_replay(principal, filter=body["filter"], reason=reason)
        except ReplayError as exc:
            return _replay_error(exc)
        return Response(_started(job), status=202)


def _dry_run(job: ReplayJob, planned: Any) -> dict[str, Any]:
    ids = [m.pk for m in planned.sample]
    by_id = {m.pk: m for m in with_attempts(Message.objects.filter(pk__in=ids))}
    return {
        "replay": job.pk,
        "status": job.state,
        "count": planned.count,
        "replayable": planned.replayable,
        "needs_approval": planned.needs_approval,
        "approval_above": planned.approval_above,
        "sample": [message_json(by_id[i]) for i in ids if i in by_id],
        "requests": [r.as_json() for r in planned.requests],
    }


class ReplayDetailView(APIView):
    """``GET /api/v1/replays/{id}``: a job's progress and each message's outcome."""

    permission_classes = [CanRead]

    @extend_schema(
        operation_id="replays_retrieve",
        summary="A replay's progress and each message's outcome",
        description=(
            "Items are paged by id: follow `next`. An item `uncertain` was in flight when its "
            "worker died; it was not sent again and awaits a human decision."
        ),
        tags=["replay"],
        parameters=[
            _str_param("state", "Only items in this state."),
            _int_param("after", "Items after this item id."),
            _int_param("limit", f"Items per page, 1 to {MAX_ITEMS_PAGE}."),
        ],
        responses={
            200: ReplayProgressSerializer,
            404: OpenApiResponse(ReplayErrorSerializer, "No such replay in your plants."),
            **ERRORS,
        },
    )
    def get(self, request: Request, pk: int) -> Response:
        """Answer the job's progress and one page of its items."""
        principal = _principal(request)
        params = request.query_params
        try:
            after = int(params.get("after") or 0)
            limit = int(params.get("limit") or DEFAULT_ITEMS_PAGE)
        except ValueError:
            return _error(400, "after and limit must be integers", "limit")
        if not 1 <= limit <= MAX_ITEMS_PAGE:
            return _error(400, f"limit: must be from 1 to {MAX_ITEMS_PAGE}", "limit")
        try:
            progress = job_progress(pk, principal)
            items = job_items(
                pk, principal, state=params.get("state") or None, after=after, limit=limit + 1
            )
        except ReplayError as exc:
            return _replay_error(exc)
        following = None
        if len(items) > limit:
            items = items[:limit]
            query = params.copy()
            query["after"] = str(items[-1]["id"])
            following = request.build_absolute_uri(request.path + "?" + query.urlencode())
        return Response({**progress, "items": items, "next": following})


class _JobAction(APIView):
    permission_classes = [IsAdmin]
    action: Any = None

    def post(self, request: Request, pk: int) -> Response:
        """Apply the action to job ``pk``; answer its progress, or the workflow's error."""
        principal = _principal(request)
        try:
            type(self).action(pk, principal)
            return Response(job_progress(pk, principal))
        except ReplayError as exc:
            return _replay_error(exc)


ACTION_RESPONSES = {
    200: ReplayJobSerializer,
    404: OpenApiResponse(ReplayErrorSerializer, "No such replay in your plants."),
    409: OpenApiResponse(ReplayErrorSerializer, "The replay is not in a state for this."),
    **ERRORS,
}


class ReplayCancelView(_JobAction):
    """``POST /api/v1/replays/{id}/cancel``: stop a replay; the batch in flight finishes."""

    action = staticmethod(cancel)

    @extend_schema(
        operation_id="replays_cancel",
        summary="Cancel a replay",
        description="Remaining messages are cancelled; a batch already in flight finishes.",
        tags=["replay"],
        request=None,
        responses=ACTION_RESPONSES,
    )
    def post(self, request: Request, pk: int) -> Response:
        """Cancel replay ``pk`` and answer its progress."""
        return super().post(request, pk)


class ReplayApproveView(_JobAction):
    """``POST /api/v1/replays/{id}/approve``: a second admin lets a waiting replay run."""

    action = staticmethod(approve)

    @extend_schema(
        operation_id="replays_approve",
        summary="Approve a replay (a second admin)",
        description="The admin who started the replay may not approve it.",
        tags=["replay"],
        request=None,
        responses=ACTION_RESPONSES,
    )
    def post(self, request: Request, pk: int) -> Response:
        """Approve replay ``pk`` and answer its progress."""
        return super().post(request, pk)


class FailureGroupsView(APIView):
    """``GET /api/v1/failure-groups``: failed messages grouped by connector and error."""

    permission_classes = [CanRead]

    @extend_schema(
        operation_id="failure_groups_list",
        summary="Failure groups",
        description=(
            "Failed and dead-lettered messages grouped by connector and normalised error "
            "(numbers, ids, UUIDs, hex, timestamps and quoted values stripped), largest first. "
            "Each group's `filter` replays the whole group via POST /api/v1/replays."
        ),
        tags=["replay"],
        parameters=[
            _str_param(
                "since", "ISO 8601; messages that occurred at or after it (default: 7 days ago)."
            ),
            _str_param("connector", "Only this connector (key)."),
            _int_param("limit", "Most groups (1 to 500, default 100)."),
        ],
        responses={200: FailureGroupListSerializer, **ERRORS},
    )
    def get(self, request: Request) -> Response:
        """Answer the failure groups in the caller's plants."""
        principal = _principal(request)
        params = request.query_params
        since = timezone.now() - DEFAULT_GROUP_WINDOW
        if params.get("since"):
            try:
                since = parse_instant(params["since"], "since")
            except FilterError as exc:
                return _error(400, exc.message, "since")
        raw_limit = params.get("limit") or "100"
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= 500:
            return _error(400, "limit: must be an integer from 1 to 500", "limit")
        groups = failure_groups(
            principal, since, connector=params.get("connector") or None, limit=int(raw_limit)
        )
        return Response({"results": [group.as_json() for group in groups]})
