"""Replay pages: the bulk form with its dry run, edit-and-replay, jobs, audit, failure groups.

Only admins replay: every POST here checks ``principal.is_admin`` on the server
(the buttons are merely hidden from others), runs under CSRF, and calls the
workflow in :mod:`integrations.replay`; what it refuses (a
:class:`~integrations.replay.ReplayError`) is shown as a form error with its
status. Operators and viewers may read job pages, the audit page and the
failure groups. Every query is scoped to the principal's plants.

``/replays/new/`` reads the replay filter from the query string: the explorer's
parameters (``plant``, ``connector``, ``status``, ``since``, ``until``,
``error``, ``key``), ``alert`` (the failed messages behind an alert),
``error_group`` (a failure group) and ``id`` (selected messages, repeated).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages as flash
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Case, IntegerField, QuerySet, Value, When
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, QueryDict
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from console.auth import Principal
from console.pages.common import page
from integrations import failures, replay
from integrations.models import Message, ReplayItem, ReplayItemState, ReplayJob, ReplayState
from integrations.queries import FilterError, parse_instant

# The replay filter's fields a query string carries (``id`` carries ``message_ids``).
FILTER_PARAMS = (
    "plant",
    "connector",
    "status",
    "since",
    "until",
    "error",
    "key",
    "alert",
    "error_group",
)
# These may repeat or hold comma-separated values; the others are taken whole.
LIST_PARAMS = ("plant", "connector", "status")
MAX_SELECTED = 500
ITEMS_SHOWN = 200
SAMPLE_SIZE = 5
# Items in these states are listed first on a job page: they need a look.
PROBLEM_STATES = (
    ReplayItemState.UNCERTAIN,
    ReplayItemState.DEAD_LETTERED,
    ReplayItemState.FAILED,
    ReplayItemState.RETRYING,
)
ACTIVE_STATES = tuple(replay.ACTIVE_JOB_STATES)
FAILURE_WINDOWS = (("1h", 1), ("24h", 24), ("7d", 24 * 7), ("30d", 24 * 30), ("all", None))
DEFAULT_WINDOW = "24h"
# A stored list (selected message ids) shows this many values.
CHIP_VALUES = 8


class FormError(ValueError):
    """A field of a replay form is wrong; shown beside the form (answer 400)."""


def _principal(request: HttpRequest) -> Principal:
    return request.principal  # type: ignore[attr-defined,no-any-return]


def _admin(request: HttpRequest) -> Principal:
    """Return the principal when it may replay; raise PermissionDenied (403) otherwise."""
    principal = _principal(request)
    if not principal.is_admin:
        raise PermissionDenied("only admins replay messages")
    return principal


# --- What to replay ---------------------------------------------------------------------------


def filter_from_params(params: QueryDict) -> dict[str, str]:
    """Return the replay filter a query string names (repeated list values comma-joined).

    ``error_group`` is kept even when empty: the group of messages without error text.
    """
    chosen: dict[str, str] = {}
    for name in FILTER_PARAMS:
        if name in LIST_PARAMS:
            values = [part.strip() for raw in params.getlist(name) for part in raw.split(",")]
            values = [v for v in dict.fromkeys(values) if v]
            if values:
                chosen[name] = ",".join(values)
        elif name == "error_group":
            if name in params:
                chosen[name] = params.get(name, "")
        elif (params.get(name) or "").strip():
            chosen[name] = params.get(name, "").strip()
    return chosen


def ids_from_params(params: QueryDict) -> list[int]:
    """Return the selected message ids (``id``, repeated or comma-separated); FormError if bad."""
    ids: list[int] = []
    for raw in params.getlist("id"):
        for part in raw.split(","):
            part = part.strip()
            if not part:
                continue
            if not part.isdigit():
                raise FormError(f"id: not a message id: {part[:40]!r}")
            ids.append(int(part))
    ids = list(dict.fromkeys(ids))
    if len(ids) > MAX_SELECTED:
        raise FormError(f"id: at most {MAX_SELECTED} selected messages; use a filter instead")
    return ids


def replay_query(chosen: dict[str, Any], ids: list[int] | None = None) -> str:
    """Return the ``/replays/new/`` query string of a filter (and selected ids)."""
    pairs: list[tuple[str, str]] = []
    for name, value in chosen.items():
        if name == "message_ids":
            ids = [*(ids or []), *value]
        elif isinstance(value, list | tuple):
            pairs.extend((name, str(v)) for v in value)
        elif value is not None:
            pairs.append((name, str(value)))
    pairs.extend(("id", str(i)) for i in ids or ())
    return urlencode(pairs)


def _replay_filter(chosen: dict[str, str], ids: list[int]) -> dict[str, Any]:
    """Return the filter :mod:`integrations.replay` reads: the chosen fields and selected ids."""
    return {**chosen, "message_ids": ids} if ids else dict(chosen)


@dataclass(frozen=True)
class Shown:
    """One request a replay would send, as the dry run shows it."""

    message_id: int
    connector: str
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: str
    binary: bool
    problem: str


def shown_request(request: replay.ReplayRequest) -> Shown:
    """Return a planned request with its body as text (a binary body is summarised)."""
    try:
        body, binary = request.body.decode("utf-8"), False
    except UnicodeDecodeError:
        body, binary = f"({len(request.body)} bytes of binary data)", True
    return Shown(
        message_id=request.message_id,
        connector=request.connector,
        method=request.method,
        url=request.url,
        headers=list(request.headers.items()),
        body=body,
        binary=binary,
        problem=request.problem,
    )


def _selected(principal: Principal, ids: list[int]) -> list[Message]:
    """Return the selected messages the principal sees, in the order chosen."""
    found = principal.scope(Message.objects.select_related("connector"), "plant").filter(pk__in=ids)
    order = {pk: i for i, pk in enumerate(ids)}
    return sorted(found, key=lambda m: order[m.pk])


def _status(exc: replay.ReplayError) -> int:
    return int(getattr(exc, "status", 400) or 400)


# --- Bulk form --------------------------------------------------------------------------------


@page()
def replay_new(request: HttpRequest) -> HttpResponse:
    """Show what a replay would send (the dry run) and start it on POST (admins).

    The form posts the filter back as hidden fields, so what is started is what
    was previewed; the reason is required.
    """
    principal = _admin(request)
    source = request.POST if request.method == "POST" else request.GET
    context: dict[str, Any] = {
        "nav": "replays",
        "reason": source.get("reason", ""),
        "filter": {},
        "ids": [],
    }
    try:
        chosen = filter_from_params(source)
        ids = ids_from_params(source)
        context.update(
            filter=chosen, filter_chips=chips(chosen), ids=ids, query=replay_query(chosen, ids)
        )
        if not chosen and not ids:
            raise FormError(
                "filter: choose what to replay (a connector, status, time range, error, key, "
                "alert, failure group or selected messages); an empty filter would replay "
                "everything"
            )
        context["selected"] = _selected(principal, ids)
        preview = replay.preview(_replay_filter(chosen, ids), principal, sample=SAMPLE_SIZE)
    except FormError as exc:
        context["errors"] = [str(exc)]
        return render(request, "console/replay_new.html", context, status=400)
    except replay.ReplayError as exc:
        context["errors"] = [exc.message]
        return render(request, "console/replay_new.html", context, status=_status(exc))
    context.update(
        previewed=True,
        preview=preview,
        count=preview.count,
        sample=preview.sample,
        requests=[shown_request(r) for r in preview.requests],
        unsendable=preview.count - preview.replayable,
    )
    if request.method != "POST":
        return render(request, "console/replay_new.html", context)

    reason = source.get("reason", "").strip()
    if not reason:
        context["errors"] = ["reason: say why these messages are replayed (it is audited)"]
        return render(request, "console/replay_new.html", context, status=400)
    try:
        job = replay.start_replay(
            principal,
            filter=chosen or None,
            message_ids=ids or None,
            reason=reason,
            dry_run=source.get("dry_run") == "1",
        )
    except replay.ReplayError as exc:
        context["errors"] = [exc.message]
        return render(request, "console/replay_new.html", context, status=_status(exc))
    return redirect("replay", pk=job.pk)


# --- Edit and replay --------------------------------------------------------------------------


@page()
def replay_edit(request: HttpRequest, message_id: int) -> HttpResponse:
    """Replay one message with an edited payload and content type (admins; audited).

    The captured message stays untouched; the edited copy is kept on the job's
    item and sent once.
    """
    principal = _admin(request)
    messages = principal.scope(Message.objects.select_related("connector"), "plant")
    message = get_object_or_404(messages, pk=message_id)
    original = bytes(message.payload) if message.payload is not None else b""
    binary = _is_binary(original)
    context: dict[str, Any] = {
        "nav": "replays",
        "message": message,
        "payload": original.decode("utf-8", errors="replace"),
        "content_type": message.content_type,
        "reason": "",
        "binary": binary,
        "problem": replay.replay_problem(message.connector),
    }
    if request.method != "POST":
        return render(request, "console/replay_edit.html", context)

    # A browser sends CRLF line ends from a textarea; the payload had the LF ends it shows.
    payload = request.POST.get("payload", "").replace("\r\n", "\n")
    content_type = request.POST.get("content_type", "").strip()
    reason = request.POST.get("reason", "").strip()
    context.update(payload=payload, content_type=content_type, reason=reason)
    errors = []
    if not reason:
        errors.append("reason: say why this message is replayed with an edit (it is audited)")
    if not content_type:
        errors.append("content_type: give the content type the target should receive")
    elif any(ch in content_type for ch in "\r\n\x00"):
        errors.append("content_type: must not contain line breaks")
    status = 400
    if not errors:
        try:
            job = replay.start_replay(
                principal,
                message_ids=[message.pk],
                reason=reason,
                edited_payload=payload.encode("utf-8"),
                edited_content_type=content_type,
            )
        except replay.ReplayError as exc:
            errors.append(exc.message)
            status = _status(exc)
        else:
            return redirect("replay", pk=job.pk)
    context["errors"] = errors
    return render(request, "console/replay_edit.html", context, status=status)


def _is_binary(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# --- Jobs -------------------------------------------------------------------------------------


def _job_or_404(principal: Principal, pk: int) -> ReplayJob:
    job = replay.visible_jobs(principal).select_related("plant").filter(pk=pk).first()
    if job is None:
        raise Http404("no such replay")
    return job


# The bar's segments: (name, item states counted in it).
SEGMENTS = (
    ("delivered", (ReplayItemState.DELIVERED,)),
    ("failed", (ReplayItemState.FAILED,)),
    ("dead_lettered", (ReplayItemState.DEAD_LETTERED,)),
    ("uncertain", (ReplayItemState.UNCERTAIN,)),
    ("skipped", (ReplayItemState.SKIPPED, ReplayItemState.CANCELLED)),
)


def progress_of(job_id: int, principal: Principal) -> dict[str, Any]:
    """Return a job's progress for the bar: counts and percentages per segment, state, done.

    ``active`` says whether the job may still change (the page polls while it does).
    """
    raw = replay.job_progress(job_id, principal)
    counts = raw["counts"]
    total = int(raw["total"])
    figures = {name: sum(int(counts.get(s, 0)) for s in states) for name, states in SEGMENTS}
    remaining = int(raw["remaining"])
    dry_run = bool(raw["dry_run"])
    percent = {
        name: round(100.0 * n / total, 2) if total and not dry_run else 0.0
        for name, n in figures.items()
    }
    return {
        "id": raw["id"],
        "state": raw["state"],
        "dry_run": dry_run,
        "total": total,
        **figures,
        "remaining": remaining,
        "done": int(raw["done"]),
        "done_percent": int(raw["percent"]) if not dry_run else 0,
        "percent": percent,
        "active": raw["state"] in ACTIVE_STATES,
        "finished_at": raw["finished_at"],
    }


def _items(job: ReplayJob, principal: Principal, state: str) -> QuerySet[ReplayItem]:
    """Return the job's items to list: problems first (uncertain above all), then by id."""
    items = job.items.select_related("message__connector")
    if not principal.is_admin:
        items = items.defer("edited_payload")
    if state:
        items = items.filter(state=state)
    problems_first = Case(
        *[When(state=s, then=Value(i)) for i, s in enumerate(PROBLEM_STATES)],
        default=Value(len(PROBLEM_STATES)),
        output_field=IntegerField(),
    )
    return items.order_by(problems_first, "id")


@dataclass(frozen=True)
class Edit:
    """An edited replay's original and sent payloads, for the audit on the job page."""

    message: Message
    original: str
    original_type: str
    sent: str
    sent_type: str


def _edit_of(job: ReplayJob) -> Edit | None:
    item = job.items.select_related("message").exclude(edited_payload=None).first()
    if item is None:
        return None
    message = item.message
    original = bytes(message.payload) if message.payload is not None else b""
    return Edit(
        message=message,
        original=original.decode("utf-8", errors="replace"),
        original_type=message.content_type,
        sent=bytes(item.edited_payload or b"").decode("utf-8", errors="replace"),
        sent_type=item.edited_content_type,
    )


def _chosen_messages(principal: Principal, chosen: Any) -> list[Message]:
    """Return the first messages a job's ``message_ids`` named (those the principal sees)."""
    ids = chosen.get("message_ids") if isinstance(chosen, dict) else None
    if not isinstance(ids, list) or not ids:
        return []
    return _selected(principal, [int(i) for i in ids[:CHIP_VALUES] if str(i).isdigit()])


@page()
def job_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Show a replay job: who, why, approval, its progress bar and each message's outcome."""
    principal = _principal(request)
    job = _job_or_404(principal, pk)
    state = request.GET.get("state", "")
    if state and state not in ReplayItemState.values:
        state = ""
    progress = progress_of(job.pk, principal)
    by_state = [(name, n) for name, n in replay.item_counts(job.pk).items() if n or name == state]
    context = {
        "nav": "replays",
        "job": job,
        "progress": progress,
        "items": list(_items(job, principal, state)[:ITEMS_SHOWN]),
        "items_shown": ITEMS_SHOWN,
        "by_state": by_state,
        "state_filter": state,
        "filter_chips": chips({k: v for k, v in job.filter.items() if k != "message_ids"}),
        "chosen_messages": _chosen_messages(principal, job.filter),
        "edit": _edit_of(job) if job.edited and principal.is_admin else None,
        "is_admin": principal.is_admin,
        "may_approve": (
            principal.is_admin
            and job.state == ReplayState.PENDING_APPROVAL
            and job.created_by != principal.name
        ),
        "may_cancel": principal.is_admin and job.state in ACTIVE_STATES,
        "progress_url": reverse("replay-progress", args=[job.pk]),
    }
    return render(request, "console/replay_job.html", context)


@page()
def job_progress(request: HttpRequest, pk: int) -> JsonResponse:
    """Answer a job's progress as JSON (polled by the job page every second while it runs)."""
    principal = _principal(request)
    job = _job_or_404(principal, pk)
    return JsonResponse(progress_of(job.pk, principal))


@require_POST
@page()
def job_approve(request: HttpRequest, pk: int) -> HttpResponse:
    """Approve a job waiting for a second admin (its creator may not approve it)."""
    principal = _admin(request)
    job = _job_or_404(principal, pk)
    try:
        replay.approve(job.pk, principal)
    except replay.ReplayError as exc:
        flash.error(request, f"Not approved: {exc.message}")
    else:
        flash.success(request, f"Approved replay {job.pk}; it runs now.")
    return redirect("replay", pk=job.pk)


@require_POST
@page()
def job_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    """Cancel a job: messages not yet sent are not sent (a batch in flight finishes)."""
    principal = _admin(request)
    job = _job_or_404(principal, pk)
    try:
        replay.cancel(job.pk, principal)
    except replay.ReplayError as exc:
        flash.error(request, f"Not cancelled: {exc.message}")
    else:
        flash.success(request, f"Cancelled replay {job.pk}.")
    return redirect("replay", pk=job.pk)


def chips(chosen: Any) -> list[tuple[str, str]]:
    """Return a stored filter as (name, value) pairs to show, times in UTC to the second."""
    if not isinstance(chosen, dict):
        return []
    shown = []
    for name, value in chosen.items():
        if name == "error_group" and not value:
            value = "(no error text)"
        elif name == "message_ids" and isinstance(value, list | tuple):
            name, value = "messages", [f"#{v}" for v in value]
        if isinstance(value, list | tuple):
            head = ", ".join(str(v) for v in value[:CHIP_VALUES])
            value = head if len(value) <= CHIP_VALUES else f"{head}, … ({len(value)} in all)"
        elif name in LIST_PARAMS:
            value = str(value).replace(",", ", ")
        elif name in ("since", "until"):
            value = _shown_time(str(value))
        shown.append((str(name), str(value)))
    return shown


def _shown_time(value: str) -> str:
    """Return an ISO 8601 filter time as ``2026-05-21 08:00:00 UTC`` (unparseable: as is)."""
    try:
        at = parse_instant(value, "time")
    except FilterError:
        return value
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# --- Audit ------------------------------------------------------------------------------------


@page()
def job_list(request: HttpRequest) -> HttpResponse:
    """List every replay job newest first, filterable by user and state."""
    principal = _principal(request)
    visible = replay.visible_jobs(principal)
    jobs = visible.select_related("plant")
    user = request.GET.get("user", "").strip()
    state = request.GET.get("state", "").strip()
    error = ""
    if state and state not in ReplayState.values:
        error = f"state: unknown state {state[:40]!r}; use one of {', '.join(ReplayState.values)}"
        state = ""
    if user:
        jobs = jobs.filter(created_by=user)
    if state:
        jobs = jobs.filter(state=state)
    page_obj = Paginator(jobs.order_by("-created_at", "-id"), 50).get_page(request.GET.get("page"))
    users = visible.order_by("created_by").values_list("created_by", flat=True).distinct()
    context = {
        "nav": "replays",
        "page_obj": page_obj,
        "jobs": [(job, chips(job.filter)) for job in page_obj.object_list],
        "users": list(users),
        "states": ReplayState.values,
        "user_filter": user,
        "state_filter": state,
        "error": error,
        "is_admin": principal.is_admin,
    }
    return render(request, "console/replay_list.html", context, status=400 if error else 200)


# --- Failure groups ---------------------------------------------------------------------------


@page()
def failure_groups(request: HttpRequest) -> HttpResponse:
    """Group failed messages by connector and normalised error; admins replay a whole group."""
    principal = _principal(request)
    window = request.GET.get("window", DEFAULT_WINDOW)
    windows = dict(FAILURE_WINDOWS)
    error = ""
    if window not in windows:
        error = f"window: use one of {', '.join(windows)}, not {window[:20]!r}"
        window = DEFAULT_WINDOW
    hours = windows[window]
    # Whole seconds: the group's filter (and the form showing it) reads better.
    now = timezone.now().replace(microsecond=0)
    since = now - timedelta(hours=hours) if hours is not None else None
    groups = [
        (group, replay_query(group.filter))
        for group in failures.failure_groups(principal, since=since)
    ]
    context = {
        "nav": "replays",
        "groups": groups,
        "window": window,
        "windows": list(windows),
        "error": error,
        "is_admin": principal.is_admin,
    }
    return render(request, "console/failure_groups.html", context, status=400 if error else 200)
