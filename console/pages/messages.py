"""The message explorer: filter captured messages, page through them, open one.

``/messages/`` reads these query parameters (all optional, combinable):

- ``plant``, ``connector``, ``status``: keys (repeat or comma-separate for several);
- ``since``, ``until``: ISO 8601 times (the form's ``2026-05-21T08:00``), UTC when
  no offset is given; ``since`` inclusive, ``until`` exclusive, on ``occurred_at``;
- ``error``: a substring of the error text; ``key``: a correlation id or business key;
- ``cursor``: the keyset position, an opaque token carried by the "Older" and
  "Newer" links (:class:`integrations.queries.Cursor`). Page 2 is page 1's
  "Older" link: the same filters plus
  ``cursor=Cursor.after(Direction.OLDER, <last message of page 1>).encode()``.

Pages are read newest first on ``(occurred_at, id)`` with no OFFSET: every
page is one range read of :data:`PAGE_SIZE` + 1 rows, plus a count that stops
at ``COUNT_CAP``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, QueryDict
from django.shortcuts import get_object_or_404, render

from console.pages.common import page
from integrations.masking import mask_headers, render_payload
from integrations.models import Connector, Message, Plant
from integrations.queries import (
    COUNT_CAP,
    STATUSES,
    Cursor,
    FilterError,
    MessageFilter,
    PlantForbidden,
    count_page,
    cursor_param,
    message_page,
)

PAGE_SIZE = 50
ERROR_EXCERPT = 120


def message_keys(message: Message) -> list[str]:
    """Return the keys a message can be found by: its correlation id, then its business keys."""
    keys = [message.correlation_id] if message.correlation_id else []
    keys.extend(str(v) for v in message.business_keys.values())
    return list(dict.fromkeys(k for k in keys if k))


def _query(params: QueryDict, cursor: Cursor | None) -> str:
    """Return the ``?query`` of ``params`` at ``cursor`` (None: the newest page)."""
    query = params.copy()
    query.pop("cursor", None)
    if cursor is not None:
        query["cursor"] = cursor.encode()
    return "?" + query.urlencode()


def _form_time(value: str) -> str:
    """Return a since/until value as the datetime-local input shows it (UTC, no offset)."""
    return value.strip().removesuffix("Z").removesuffix("+00:00")


@dataclass
class Row:
    """One table row: the message and what the table shows of it."""

    message: Message
    keys: list[str]


@page()
def message_list(request: HttpRequest) -> HttpResponse:
    """Show one page of the messages the filters select, in the user's plants."""
    principal = request.principal  # type: ignore[attr-defined]
    params = request.GET
    context: dict[str, object] = {
        "nav": "messages",
        "statuses": STATUSES,
        "plants": principal.scope(Plant.objects.all(), "id"),
        "connectors": principal.scope(Connector.objects.only("key"), "plant"),
        "selected": {
            "plant": params.getlist("plant"),
            "connector": params.getlist("connector"),
            "status": params.getlist("status"),
        },
        "since": _form_time(params.get("since", "")),
        "until": _form_time(params.get("until", "")),
        "error_text": params.get("error", ""),
        "key": params.get("key", ""),
    }
    try:
        selected = MessageFilter.from_params(params, principal.plant_ids)
        cursor = cursor_param(params)
    except FilterError as exc:
        context["error"] = exc.message
        return render(request, "console/messages.html", context, status=400)
    except PlantForbidden:
        raise PermissionDenied("that plant is not one of yours") from None

    for name in ("since", "until"):
        at = getattr(selected, name)
        if at is not None:
            context[name] = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    messages = selected.apply(principal.scope(Message.objects.all(), "plant"))
    result = message_page(messages.select_related("connector"), cursor, PAGE_SIZE)
    count = count_page(messages, result, cursor)
    context.update(
        rows=[Row(m, message_keys(m)) for m in result.items],
        count=count,
        count_cap=COUNT_CAP,
        filtered=not selected.is_empty(),
        older=_query(params, result.older) if result.older else None,
        newer=_query(params, result.newer) if result.newer else None,
        newest=_query(params, None) if cursor is not None else None,
        error_excerpt=ERROR_EXCERPT,
    )
    return render(request, "console/messages.html", context)


@page()
def message_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Show a message's attempts, headers and payload (masked for non-admins), and its keys."""
    principal = request.principal  # type: ignore[attr-defined]
    messages = Message.objects.select_related("connector__source", "connector__target", "plant")
    message = get_object_or_404(principal.scope(messages, "plant"), pk=pk)
    paths = list(message.connector.sensitive_fields or [])
    masked = bool(paths) and not principal.is_admin
    payload = bytes(message.payload) if message.payload is not None else None
    keys = [("correlation id", message.correlation_id)] if message.correlation_id else []
    keys.extend((name, str(value)) for name, value in message.business_keys.items())
    return render(
        request,
        "console/message_detail.html",
        {
            "nav": "messages",
            "message": message,
            "attempts": message.attempts.order_by("at", "id"),
            "keys": keys,
            "headers": mask_headers(message.headers, paths) if masked else message.headers,
            "payload": render_payload(payload, message.content_type, paths, masked=masked),
            "payload_size": len(payload or b""),
            "masked": masked,
        },
    )
