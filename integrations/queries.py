"""Read-side queries over the message store, shared by the explorer pages, the API and the bench.

Three things live here:

- :class:`MessageFilter`: the explorer's filters (plant, connector, status, time
  range, error text, business key) parsed from query parameters, with a 4xx-ready
  :class:`FilterError` naming the bad parameter;
- keyset pagination (:class:`Cursor`, :func:`message_page`) on
  ``(occurred_at, id)`` descending, never OFFSET, so page 500 costs what page 1 does;
  and a cheap count (:func:`count_page`, :func:`count_messages`: exact up to
  :data:`COUNT_CAP`, else the planner's estimate);
- :func:`connector_health`, the recent-health rollup of every connector in one
  grouped query over the window, :func:`with_last_seen` and :func:`classify`
  turning the figures into a health state (the flow map's edge colour), and
  :func:`system_activity`, each system's events and spans in the window.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
from django.db import connection
from django.db.models import Count, Max, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from integrations.models import (
    Connector,
    ConnectorPattern,
    ConnectorStatus,
    Event,
    ItemKind,
    KeyRef,
    Message,
    MessageStatus,
    Plant,
    Span,
)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# Counting stops here: above it the answer is the planner's estimate (``exact`` false).
COUNT_CAP = 10_000
# A key carried by more messages than this (a hub key) matches its newest ones only.
KEY_MATCH_LIMIT = 10_000
# A failure ratio above this is red on the flow map; any failure is amber.
FAILING_RATIO = 0.05
PERCENTILE = 0.95

STATUSES = tuple(MessageStatus.values)
FAILED_STATUSES = (MessageStatus.FAILED.value, MessageStatus.DEAD_LETTERED.value)


class FilterError(ValueError):
    """A query parameter has a bad value; ``parameter`` names it (answer 400)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = f"{parameter}: {message}"


class PlantForbidden(PermissionError):
    """The caller asked for a plant outside its scope (answer 403)."""


class Params(Protocol):
    """What filters read: a QueryDict (``get`` and ``getlist``)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def getlist(self, key: str) -> list[str]: ...


# --- Parsing ----------------------------------------------------------------------------------


def parse_instant(value: str, parameter: str) -> datetime:
    """Parse an ISO 8601 time (``2026-05-21T08:00:00Z``; without an offset: UTC).

    The HTML ``datetime-local`` form (``2026-05-21T08:00``) is accepted too.
    """
    text = value.strip()
    try:
        parsed = parse_datetime(text)
    except ValueError:
        parsed = None
    if parsed is None:
        raise FilterError(
            parameter, f"not an ISO 8601 time: {text[:64]!r} (e.g. 2026-05-21T08:00:00Z)"
        )
    if timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _values(params: Params, name: str) -> list[str]:
    """Return the non-empty values of a repeatable, comma-separable parameter."""
    found: list[str] = []
    for raw in params.getlist(name):
        found.extend(part.strip() for part in raw.split(","))
    return [v for v in dict.fromkeys(found) if v]


def page_size(params: Params, default: int = DEFAULT_PAGE_SIZE) -> int:
    """Return the ``limit`` parameter (1 to :data:`MAX_PAGE_SIZE`), else ``default``."""
    raw = (params.get("limit") or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise FilterError("limit", f"must be an integer from 1 to {MAX_PAGE_SIZE}, not {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class MessageFilter:
    """What the explorer and ``GET /api/v1/messages`` select; empty fields select everything.

    ``plant_ids`` and ``connector_ids`` are resolved from keys; ``connector_ids``
    is an empty tuple when the keys named no connector (nothing matches).
    ``since`` is inclusive and ``until`` exclusive, on ``occurred_at``. ``key``
    matches the correlation id or any business key (KeyRef rows of messages).
    """

    plant_keys: tuple[str, ...] = ()
    plant_ids: tuple[int, ...] = ()
    connector_keys: tuple[str, ...] = ()
    connector_ids: tuple[int, ...] | None = None
    statuses: tuple[str, ...] = ()
    since: datetime | None = None
    until: datetime | None = None
    error: str = ""
    key: str = ""

    @classmethod
    def from_params(cls, params: Params, visible_plants: frozenset[int] | None) -> MessageFilter:
        """Parse query parameters; raise FilterError (400) or PlantForbidden (403).

        ``plant``, ``connector`` and ``status`` may repeat or hold comma-separated
        values. ``visible_plants`` is the caller's scope (None: every plant).
        """
        statuses = tuple(_values(params, "status"))
        for status in statuses:
            if status not in STATUSES:
                raise FilterError(
                    "status", f"unknown status {status[:40]!r}; use one of {', '.join(STATUSES)}"
                )
        since = parse_instant(params.get("since"), "since") if params.get("since") else None
        until = parse_instant(params.get("until"), "until") if params.get("until") else None
        if since is not None and until is not None and until <= since:
            raise FilterError("until", "must be after since")
        error = (params.get("error") or "").strip()
        key = (params.get("key") or "").strip()
        if len(key) > 255:
            raise FilterError("key", "exceeds 255 characters")

        plant_keys = tuple(_values(params, "plant"))
        plant_ids: tuple[int, ...] = ()
        if plant_keys:
            found = dict(Plant.objects.filter(key__in=plant_keys).values_list("key", "id"))
            unknown = [k for k in plant_keys if k not in found]
            if unknown:
                raise FilterError("plant", f"unknown plant {unknown[0][:64]!r}")
            plant_ids = tuple(found[k] for k in plant_keys)
            if visible_plants is not None and not set(plant_ids) <= visible_plants:
                raise PlantForbidden("you are scoped to other plants")

        connector_keys = tuple(_values(params, "connector"))
        connector_ids: tuple[int, ...] | None = None
        if connector_keys:
            connector_ids = tuple(
                Connector.objects.filter(key__in=connector_keys).values_list("id", flat=True)
            )
        return cls(
            plant_keys=plant_keys,
            plant_ids=plant_ids,
            connector_keys=connector_keys,
            connector_ids=connector_ids,
            statuses=statuses,
            since=since,
            until=until,
            error=error,
            key=key,
        )

    def apply(self, messages: QuerySet[Message]) -> QuerySet[Message]:
        """Return ``messages`` narrowed by this filter (one more query when ``key`` is set)."""
        if self.plant_ids:
            messages = messages.filter(plant_id__in=self.plant_ids)
        if self.connector_ids is not None:
            messages = messages.filter(connector_id__in=self.connector_ids)
        if self.statuses:
            messages = messages.filter(status__in=self.statuses)
        if self.since is not None:
            messages = messages.filter(occurred_at__gte=self.since)
        if self.until is not None:
            messages = messages.filter(occurred_at__lt=self.until)
        if self.error:
            # The empty-error clause is implied; it lets a partial index on errors serve.
            messages = messages.filter(error__icontains=self.error).exclude(error="")
        if self.key:
            messages = messages.filter(
                Q(correlation_id=self.key) | Q(pk__in=message_ids_by_key(self.key))
            )
        return messages

    def is_empty(self) -> bool:
        """Return whether nothing is filtered."""
        return not (
            self.plant_keys
            or self.connector_keys
            or self.statuses
            or self.since
            or self.until
            or self.error
            or self.key
        )


def message_ids_by_key(key: str) -> list[int]:
    """Return the ids of the (newest :data:`KEY_MATCH_LIMIT`) messages carrying a business key.

    Materialised first rather than a subquery: ``correlation_id = k OR id IN
    (list)`` lets PostgreSQL OR two index scans, where a subquery under OR
    would be checked row by row over the whole table.
    """
    refs = KeyRef.objects.filter(value=key, item_kind=ItemKind.MESSAGE.value).order_by("-at")
    return list(refs.values_list("item_id", flat=True)[:KEY_MATCH_LIMIT])


# --- Keyset pagination ------------------------------------------------------------------------


class Direction(enum.StrEnum):
    OLDER = "older"
    NEWER = "newer"


@dataclass(frozen=True)
class Cursor:
    """A position in the ``(occurred_at, id)`` descending order, and which way to read from it.

    Encoded as an opaque URL-safe token (the ``cursor`` parameter); the rows
    read exclude the position itself.
    """

    direction: Direction
    occurred_at: datetime
    pk: int

    @classmethod
    def after(cls, direction: Direction, message: Message) -> Cursor:
        """Return the cursor reading ``direction`` from ``message``."""
        return cls(direction, message.occurred_at, message.pk)

    def encode(self) -> str:
        """Return the opaque token of this cursor."""
        at = self.occurred_at.astimezone(UTC).isoformat()
        raw = orjson.dumps([self.direction.value[0], at, self.pk])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """Parse a token made by :meth:`encode`; raise FilterError naming ``cursor``."""
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            way, at, pk = orjson.loads(raw)
            direction = {"o": Direction.OLDER, "n": Direction.NEWER}[way]
            occurred_at = datetime.fromisoformat(at)
            if type(pk) is not int or occurred_at.tzinfo is None:
                raise ValueError(pk)
        except (binascii.Error, ValueError, TypeError, KeyError, orjson.JSONDecodeError):
            raise FilterError(
                "cursor", "not a cursor of this explorer (use the Older/Newer links)"
            ) from None
        return cls(direction, occurred_at, pk)


def cursor_param(params: Params) -> Cursor | None:
    """Return the ``cursor`` parameter decoded, None when absent."""
    token = (params.get("cursor") or "").strip()
    return Cursor.decode(token) if token else None


@dataclass
class MessagePage:
    """One page of messages, newest first, with the cursors of its neighbours (None: none)."""

    items: list[Message]
    older: Cursor | None
    newer: Cursor | None


def message_page(messages: QuerySet[Message], cursor: Cursor | None, size: int) -> MessagePage:
    """Return the page of ``messages`` at ``cursor`` (the newest page when None).

    One query of ``size + 1`` rows on the ``(occurred_at, id)`` order; the time
    bound is written ``occurred_at <= t AND (occurred_at < t OR id < i)`` so an
    index on ``occurred_at`` (alone or after ``connector``/``status``/``plant``)
    bounds the scan. Reading newer past the newest row gives the newest page.
    """
    if cursor is not None and cursor.direction is Direction.NEWER:
        at, pk = cursor.occurred_at, cursor.pk
        newer = messages.filter(Q(occurred_at__gt=at) | Q(pk__gt=pk), occurred_at__gte=at)
        rows = list(newer.order_by("occurred_at", "pk")[: size + 1])
        if len(rows) <= size:
            return message_page(messages, None, size)
        rows = rows[:size]
        rows.reverse()
        return MessagePage(
            rows, Cursor.after(Direction.OLDER, rows[-1]), Cursor.after(Direction.NEWER, rows[0])
        )
    if cursor is not None:
        at, pk = cursor.occurred_at, cursor.pk
        messages = messages.filter(Q(occurred_at__lt=at) | Q(pk__lt=pk), occurred_at__lte=at)
    rows = list(messages.order_by("-occurred_at", "-pk")[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    older = Cursor.after(Direction.OLDER, rows[-1]) if more else None
    newer = Cursor.after(Direction.NEWER, rows[0]) if cursor is not None and rows else None
    return MessagePage(rows, older, newer)


@dataclass(frozen=True)
class MessageCount:
    """How many messages a filter selects: exact up to :data:`COUNT_CAP`, else estimated."""

    value: int
    exact: bool


def count_messages(messages: QuerySet[Message], cap: int = COUNT_CAP) -> MessageCount:
    """Count ``messages`` cheaply: exactly up to ``cap``, else the planner's estimate.

    Counting a million rows exactly costs a scan of them all; counting stops at
    ``cap + 1`` rows (``SELECT COUNT(*) FROM (... LIMIT cap + 1)``). Above that,
    PostgreSQL's row estimate for the filtered query (``EXPLAIN``, no execution)
    is answered, never less than ``cap + 1``; other databases answer ``cap + 1``.
    """
    counted = messages.order_by()[: cap + 1].count()
    if counted <= cap:
        return MessageCount(counted, True)
    return MessageCount(max(cap + 1, _planner_estimate(messages)), False)


def count_page(
    messages: QuerySet[Message], page: MessagePage, cursor: Cursor | None
) -> MessageCount:
    """Count ``messages`` for a page just read: free when the first page holds them all.

    A filter matching a few rows scans for them once (the page), not twice.
    """
    if cursor is None and page.older is None:
        return MessageCount(len(page.items), True)
    return count_messages(messages)


def _planner_estimate(messages: QuerySet[Message]) -> int:
    if connection.vendor != "postgresql":
        return 0
    sql, params = messages.order_by().values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
        plan = cursor.fetchone()[0]
    if isinstance(plan, str | bytes):
        plan = orjson.loads(plan)
    return int(plan[0]["Plan"]["Plan Rows"])


# --- Connector health -------------------------------------------------------------------------


class Health(enum.StrEnum):
    """A connector's recent health, worst first; the flow map colours edges by it."""

    FAILING = "failing"  # failure ratio above FAILING_RATIO
    SILENT = "silent"  # traffic before the window, none in it
    DEGRADED = "degraded"  # some failures, or p95 latency over the SLO
    OK = "ok"
    IDLE = "idle"  # no traffic ever (or a batch connector between runs)
    DISCOVERED = "discovered"  # reported by messages, not configured

    @property
    def colour(self) -> str:
        return HEALTH_COLOURS[self]

    @property
    def label(self) -> str:
        return HEALTH_LABELS[self]


HEALTH_COLOURS = {
    Health.FAILING: "#c62828",
    Health.SILENT: "#c62828",
    Health.DEGRADED: "#f0a202",
    Health.OK: "#2e7d32",
    Health.IDLE: "#9aa5b1",
    Health.DISCOVERED: "#9aa5b1",
}
HEALTH_LABELS = {
    Health.FAILING: f"failing (over {FAILING_RATIO:.0%} failed)",
    Health.SILENT: "silent",
    Health.DEGRADED: "degraded (failures or latency over SLO)",
    Health.OK: "ok",
    Health.IDLE: "no traffic",
    Health.DISCOVERED: "discovered (not configured)",
}


@dataclass
class ConnectorHealth:
    """One connector's messages in a window (by ``occurred_at``, current status).

    ``failure_ratio`` counts failed and dead-lettered messages; ``p95_latency_ms``
    is the continuous 95th percentile of the messages' latency (None: none
    reported); ``last_seen`` is the newest message in the window.
    """

    connector_id: int
    total: int = 0
    failed: int = 0
    dead_lettered: int = 0
    p95_latency_ms: float | None = None
    last_seen: datetime | None = None

    @property
    def failure_ratio(self) -> float:
        return (self.failed + self.dead_lettered) / self.total if self.total else 0.0

    def per_minute(self, window: timedelta) -> float:
        """Return the throughput in messages per minute over ``window``."""
        return self.total / max(window.total_seconds() / 60, 1e-9)


def _table(model: type[Any]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def connector_health(
    since: datetime,
    until: datetime,
    plant_ids: Iterable[int] | None = None,
    *,
    portable: bool | None = None,
) -> dict[int, ConnectorHealth]:
    """Return every connector's health over ``[since, until)``, keyed by connector id.

    One grouped query over the window's messages (the ``occurred_at`` index
    bounds it), restricted to messages of ``plant_ids`` when given, so a plant
    operator's figures hold no other plant's traffic. PostgreSQL computes the
    percentile with ``percentile_cont``; elsewhere (or with ``portable=True``)
    a window-function query ranks latencies per connector and the percentile
    is interpolated between the two ranks around it, as ``percentile_cont`` does.
    Connectors without messages in the window are absent.
    """
    if portable is None:
        portable = connection.vendor != "postgresql"
    where = "occurred_at >= %s AND occurred_at < %s"
    params: list[Any] = [since, until]
    if plant_ids is not None:
        plants = sorted(plant_ids)
        if not plants:
            return {}
        where += f" AND plant_id IN ({', '.join(['%s'] * len(plants))})"
        params.extend(plants)
    failed, dead = FAILED_STATUSES
    table = _table(Message)
    result: dict[int, ConnectorHealth] = {}
    with connection.cursor() as cursor:
        if not portable:
            cursor.execute(
                f"SELECT connector_id, COUNT(*), "
                f"COUNT(*) FILTER (WHERE status = %s), COUNT(*) FILTER (WHERE status = %s), "
                f"percentile_cont({PERCENTILE}) WITHIN GROUP (ORDER BY latency_ms), "
                f"MAX(occurred_at) FROM {table} WHERE {where} GROUP BY connector_id",
                [failed, dead, *params],
            )
            for cid, total, n_failed, n_dead, p95, last in cursor.fetchall():
                result[cid] = ConnectorHealth(
                    cid, total, n_failed, n_dead, None if p95 is None else float(p95), last
                )
            return result
        # Integer division truncates on both SQLite and PostgreSQL: the lower rank.
        rank = f"((n - 1) * {round(PERCENTILE * 100)}) / 100"
        cursor.execute(
            f"WITH w AS (SELECT connector_id, status, latency_ms, occurred_at, "
            f"ROW_NUMBER() OVER (PARTITION BY connector_id, latency_ms IS NULL "
            f"ORDER BY latency_ms) - 1 AS r, "
            f"COUNT(latency_ms) OVER (PARTITION BY connector_id) AS n "
            f"FROM {table} WHERE {where}) "
            f"SELECT connector_id, COUNT(*), "
            f"SUM(CASE WHEN status = %s THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN status = %s THEN 1 ELSE 0 END), "
            f"MAX(CASE WHEN latency_ms IS NOT NULL AND r = {rank} THEN latency_ms END), "
            f"MAX(CASE WHEN latency_ms IS NOT NULL AND r = {rank} + 1 THEN latency_ms END), "
            f"MAX(n), MAX(occurred_at) FROM w GROUP BY connector_id",
            [*params, failed, dead],
        )
        for cid, total, n_failed, n_dead, low, high, n, last in cursor.fetchall():
            p95 = None
            if low is not None:
                fraction = ((n - 1) * round(PERCENTILE * 100) % 100) / 100
                p95 = float(low) + (float(high if high is not None else low) - low) * fraction
            result[cid] = ConnectorHealth(
                cid, int(total), int(n_failed or 0), int(n_dead or 0), p95, _as_datetime(last)
            )
    return result


def _as_datetime(value: object) -> datetime | None:
    """Return a raw-cursor timestamp as an aware datetime (SQLite answers text)."""
    if value is None or isinstance(value, datetime):
        parsed = value
    else:
        parsed = parse_datetime(str(value))
    if parsed is not None and timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def with_last_seen(
    connectors: QuerySet[Connector], plant_ids: Iterable[int] | None = None
) -> QuerySet[Connector]:
    """Annotate ``last_seen``: each connector's newest message ever (in ``plant_ids``).

    A correlated ``ORDER BY occurred_at DESC LIMIT 1`` per connector, which the
    ``(connector, occurred_at)`` index answers with one probe.
    """
    newest = Message.objects.filter(connector=OuterRef("pk"))
    if plant_ids is not None:
        newest = newest.filter(plant_id__in=list(plant_ids))
    return connectors.annotate(
        last_seen=Subquery(newest.order_by("-occurred_at").values("occurred_at")[:1])
    )


def classify(
    connector: Connector, health: ConnectorHealth | None, last_seen: datetime | None
) -> Health:
    """Return a connector's health state from its window figures and its last message ever.

    No traffic in the window is ``silent`` when the connector carried traffic
    before (the window is the silence threshold), except a batch connector,
    whose runs are hours apart: that is ``idle``, like one never seen.
    """
    if connector.status == ConnectorStatus.DISCOVERED:
        return Health.DISCOVERED
    if health is None or health.total == 0:
        if last_seen is None or connector.pattern == ConnectorPattern.BATCH:
            return Health.IDLE
        return Health.SILENT
    if health.failure_ratio > FAILING_RATIO:
        return Health.FAILING
    slo = connector.latency_slo_ms
    over_slo = slo is not None and health.p95_latency_ms is not None and health.p95_latency_ms > slo
    if health.failure_ratio > 0 or over_slo:
        return Health.DEGRADED
    return Health.OK


# --- Systems -----------------------------------------------------------------------------------


@dataclass
class SystemActivity:
    """What one system did in a window: its events and spans, and the latest of them."""

    events: int = 0
    spans: int = 0
    last_seen: datetime | None = None

    def saw(self, at: datetime | None) -> None:
        """Move ``last_seen`` forward to ``at``."""
        if at is not None and (self.last_seen is None or at > self.last_seen):
            self.last_seen = at


def system_activity(
    since: datetime, until: datetime, plant_ids: Iterable[int] | None = None
) -> dict[int, SystemActivity]:
    """Return events and spans per system over ``[since, until)`` (two grouped queries).

    Restricted to items of ``plant_ids`` when given. Systems without items are absent.
    """
    plants = None if plant_ids is None else list(plant_ids)
    activity: dict[int, SystemActivity] = {}
    stores: tuple[tuple[Any, str, str], ...] = (
        (Event, "occurred_at", "events"),
        (Span, "start", "spans"),
    )
    for model, clock, counter in stores:
        rows = model.objects.filter(
            **{f"{clock}__gte": since, f"{clock}__lt": until}, system__isnull=False
        )
        if plants is not None:
            rows = rows.filter(plant_id__in=plants)
        grouped = (
            rows.order_by()
            .values_list("system_id")
            .annotate(n=Count("*"), last=Max(clock))
            .values_list("system_id", "n", "last")
        )
        for system_id, n, last in grouped:
            entry = activity.setdefault(system_id, SystemActivity())
            setattr(entry, counter, n)
            entry.saw(last)
    return activity
