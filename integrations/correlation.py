"""Correlation: everything tied to a key, across events, spans and messages, in time order.

A search starts from one key (a work order, a lot, a trace id, a message id...)
and expands breadth-first over the keys of the items it finds: an event's
``subject``, correlation id, business keys, trace id, its own id and its
``causation_id`` (causation is followed both ways), a span's correlation id,
business keys and trace id, a message's correlation id and business keys. Keys
change along a chain (order -> work order -> lot -> handling unit ->
shipment); an item carrying two of them links them, so a search for the lot
finds the work order's whole story. The expansion happens at query time, so
the order in which items arrived never matters.

Each level of keys costs two round trips: a ``UNION ALL`` of small indexed
subqueries, each bounded by ``LIMIT hub + 1``, then one batch reading the rows
of the new items of each kind (PostgreSQL; one statement per kind on SQLite).
Plants, systems and connectors come from a per-process cache. A key tying more
than ``ANDON_CORRELATION_HUB_LIMIT`` items (a plant code, a date) is not
followed (:attr:`Correlation.skipped_keys`); the searched key is shown even
when it is that large, capped, with ``truncated`` set.
A plant-scoped principal's subqueries only see items of its plants, so keys
reachable only through items it cannot see are never followed.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import orjson
from django.conf import settings
from django.db import connection
from django.db.models.signals import post_delete, post_save

from console.auth import Principal
from integrations.models import (
    Connector,
    Event,
    ItemKind,
    KeyRef,
    Message,
    MessageAttempt,
    MessageStatus,
    Plant,
    Span,
    SpanKind,
    SpanStatus,
    System,
)

EVENT = ItemKind.EVENT.value
SPAN = ItemKind.SPAN.value
MESSAGE = ItemKind.MESSAGE.value
KIND_NAMES = {EVENT: "event", SPAN: "span", MESSAGE: "message"}

# How far a search expands: levels of keys, and items in all.
DEFAULT_DEPTH = 8
DEFAULT_LIMIT = 1000
# Keys probed in one statement; a wider level takes several round trips.
KEYS_PER_STATEMENT = 200

FAILED_STATUSES = frozenset({MessageStatus.FAILED.value, MessageStatus.DEAD_LETTERED.value})
# An event whose type has one of these segments (``lims.result.failed``) reports a failure.
FAILURE_WORDS = frozenset({"failed", "failure", "error", "errored", "rejected"})
SPAN_KIND_NAMES = {kind.value: kind.name.lower() for kind in SpanKind}
SPAN_STATUS_NAMES = {status.value: status.name.lower() for status in SpanStatus}

ItemRef = tuple[str, int]


# --- What a key is looked up by --------------------------------------------------------------


@dataclass(frozen=True)
class Lookup:
    """One indexed column a key value is searched in."""

    kind: str  # the item kind it finds; "k" for the KeyRef index (kind per row)
    model: type
    column: str
    partial: bool  # the index skips empty values, so the query must say ``<> ''``


E_SUBJECT = Lookup(EVENT, Event, "subject", True)
E_CORRELATION = Lookup(EVENT, Event, "correlation_id", True)
E_TRACE = Lookup(EVENT, Event, "trace_id", True)
E_ID = Lookup(EVENT, Event, "event_id", False)
E_CAUSATION = Lookup(EVENT, Event, "causation_id", True)
S_CORRELATION = Lookup(SPAN, Span, "correlation_id", True)
S_TRACE = Lookup(SPAN, Span, "trace_id", False)
M_CORRELATION = Lookup(MESSAGE, Message, "correlation_id", True)
M_EXTERNAL_ID = Lookup(MESSAGE, Message, "external_id", False)
KEYREF = Lookup("k", KeyRef, "value", False)

# A key's type says which columns it is looked up in.
VALUE, TRACE, CAUSE, SEARCHED = "value", "trace", "cause", "searched"
LOOKUPS: dict[str, tuple[Lookup, ...]] = {
    VALUE: (E_SUBJECT, E_CORRELATION, S_CORRELATION, M_CORRELATION, KEYREF),
    TRACE: (E_TRACE, S_TRACE),
    # An event id finds the event itself (the cause) and the events it caused.
    CAUSE: (E_ID, E_CAUSATION),
    SEARCHED: (
        E_SUBJECT,
        E_CORRELATION,
        S_CORRELATION,
        M_CORRELATION,
        KEYREF,
        E_TRACE,
        S_TRACE,
        E_ID,
        E_CAUSATION,
        M_EXTERNAL_ID,
    ),
}
ITEM_MODELS: dict[str, type] = {EVENT: Event, SPAN: Span, MESSAGE: Message}


def _qn(name: str) -> str:
    return connection.ops.quote_name(name)


def _plant_filter(column: str, plant_ids: frozenset[int] | None) -> str:
    if plant_ids is None:
        return ""
    # Integers from the database, never user text: safe to inline.
    listed = ", ".join(str(int(p)) for p in sorted(plant_ids)) or "NULL"
    return f" AND {column} IN ({listed})"


@lru_cache(maxsize=4096)
def _subquery(lookup: Lookup, number: int, limit: int, plant_ids: frozenset[int] | None) -> str:
    """Return one bounded, indexed subquery (one ``%s`` parameter: the key value)."""
    table = _qn(lookup.model._meta.db_table)
    column = _qn(lookup.column)
    if lookup.kind == "k":
        where = f"r.{column} = %s"
        if plant_ids is not None:
            visible = " OR ".join(
                f"(r.{_qn('item_kind')} = '{kind}' AND EXISTS (SELECT 1 FROM "
                f"{_qn(model._meta.db_table)} x WHERE x.{_qn('id')} = r.{_qn('item_id')}"
                f"{_plant_filter('x.' + _qn('plant_id'), plant_ids)}))"
                for kind, model in ITEM_MODELS.items()
            )
            where += f" AND ({visible})"
        inner = (
            f"SELECT r.{_qn('item_kind')} AS kind, r.{_qn('item_id')} AS item_id "
            f"FROM {table} r WHERE {where}"
        )
    else:
        where = f"{column} = %s"
        if lookup.partial:
            where += f" AND {column} <> ''"
        where += _plant_filter(_qn("plant_id"), plant_ids)
        inner = f"SELECT '{lookup.kind}' AS kind, {_qn('id')} AS item_id FROM {table} WHERE {where}"
    return f"SELECT {number} AS q, kind, item_id FROM ({inner} LIMIT {limit}) AS q{number}"


# --- The result ------------------------------------------------------------------------------


@dataclass
class FollowedKey:
    """A key the search followed: its value, how it was reached, how many items it tied."""

    key: str
    # "searched", "subject", "correlation_id", "trace_id", "event_id", "causation_id",
    # or the name of a business key ("lot")
    via: str
    depth: int
    source: ItemRef | None = None  # the item that carried it
    items: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "via": self.via,
            "depth": self.depth,
            "from": None
            if self.source is None
            else {"kind": KIND_NAMES[self.source[0]], "id": self.source[1]},
            "items": self.items,
        }


@dataclass
class SkippedKey:
    """A hub key: it ties more items than the hub limit, so the search did not follow it."""

    key: str
    via: str
    count: int  # items seen before giving up: a lower bound
    limit: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "via": self.via,
            "count": self.count,
            "limit": self.limit,
            "reason": f"ties more than {self.limit} items",
        }


@dataclass
class Item:
    """One event, span or message on the timeline."""

    kind: str  # "event" | "span" | "message"
    id: int
    time: datetime
    system: str | None
    plant: str | None
    status: str
    failed: bool
    title: str
    row: dict[str, Any] = field(repr=False, default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "time": self.time,
            "system": self.system,
            "plant": self.plant,
            "status": self.status,
            "failed": self.failed,
            "title": self.title,
        }


@dataclass
class Hop:
    """A step of the flow from one system to another, with its latency against the SLO."""

    source: str
    target: str
    latency_ms: float | None
    at: datetime
    via: str  # "message" | "span" | "event"
    item: ItemRef
    from_item: ItemRef | None = None
    connector: str | None = None
    slo_ms: int | None = None
    failed: bool = False

    @property
    def arrived(self) -> datetime:
        """Return when the hop reached its target (its start plus its latency)."""
        return self.at + timedelta(milliseconds=self.latency_ms or 0)

    @property
    def slo_met(self) -> bool | None:
        if self.slo_ms is None or self.latency_ms is None:
            return None
        return self.latency_ms <= self.slo_ms

    def as_dict(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "to": self.target,
            "latency_ms": self.latency_ms,
            "connector": self.connector,
            "slo_ms": self.slo_ms,
            "slo_met": self.slo_met,
            "failed": self.failed,
            "at": self.at,
            "via": self.via,
            "item": {"kind": KIND_NAMES[self.item[0]], "id": self.item[1]},
            "from_item": None
            if self.from_item is None
            else {"kind": KIND_NAMES[self.from_item[0]], "id": self.from_item[1]},
        }


@dataclass
class SystemReach:
    """A system the flow reached: when first and last, with what."""

    key: str
    name: str
    kind: str
    plant: str | None
    first: datetime
    last: datetime
    events: int = 0
    spans: int = 0
    messages: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "name": self.name,
            "kind": self.kind,
            "plant": self.plant,
            "first": self.first,
            "last": self.last,
            "events": self.events,
            "spans": self.spans,
            "messages": self.messages,
            "failed": self.failed,
        }


@dataclass
class Flow:
    """Which systems a flow reached, the last one, and whether (and why) it stopped."""

    reached: list[str] = field(default_factory=list)
    last: str | None = None
    stopped: bool = False
    stopped_at: str | None = None
    blocked: str | None = None  # the system nothing arrived in
    connector: str | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "reached": self.reached,
            "last": self.last,
            "stopped": self.stopped,
            "stopped_at": self.stopped_at,
            "blocked": self.blocked,
            "connector": self.connector,
            "reason": self.reason,
        }


@dataclass
class Correlation:
    """Everything tied to a key: the items of each kind, the hops and the flow, in time order.

    ``events``, ``spans`` and ``messages`` hold row dicts ready to serialise,
    except that a message keeps its raw ``payload`` bytes and its connector's
    ``sensitive_fields``: whoever shows it decides on masking.
    """

    key: str
    keys: list[FollowedKey] = field(default_factory=list)
    skipped_keys: list[SkippedKey] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    spans: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    items: list[Item] = field(default_factory=list)
    hops: list[Hop] = field(default_factory=list)
    systems: list[SystemReach] = field(default_factory=list)
    flow: Flow = field(default_factory=Flow)
    truncated: bool = False
    truncated_reasons: list[str] = field(default_factory=list)

    @property
    def found(self) -> bool:
        """Return whether anything visible is tied to the key."""
        return bool(self.items)

    def truncate(self, reason: str) -> None:
        self.truncated = True
        if reason not in self.truncated_reasons:
            self.truncated_reasons.append(reason)


# --- Alerts come from elsewhere -------------------------------------------------------------

AlertSource = Callable[[list[str], Principal], list[dict[str, Any]]]
_alert_sources: list[AlertSource] = []


def register_alert_source(source: AlertSource) -> AlertSource:
    """Register ``source(keys, principal) -> alerts`` (the monitors app does, in ready()).

    Integrations must not import monitors, so alerts reach a correlation this way.
    Registering the same function twice keeps one.
    """
    if source not in _alert_sources:
        _alert_sources.append(source)
    return source


def unregister_alert_source(source: AlertSource) -> None:
    """Remove a registered alert source (tests use it to clean up)."""
    if source in _alert_sources:
        _alert_sources.remove(source)


def alerts_for(keys: list[str], principal: Principal) -> list[dict[str, Any]]:
    """Return the alerts every registered source has for these keys, ordered by time."""
    alerts: list[dict[str, Any]] = []
    for source in _alert_sources:
        alerts.extend(source(keys, principal))
    alerts.sort(key=_alert_time)
    return alerts


def _alert_time(alert: dict[str, Any]) -> datetime:
    value = alert.get("started_at") or alert.get("at")
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            value = None
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    return datetime.max.replace(tzinfo=UTC)


# --- The search ------------------------------------------------------------------------------


@dataclass
class _Key:
    type: str
    value: str
    followed: FollowedKey


class _Search:
    """A breadth-first expansion from one key, level by level."""

    def __init__(self, key: str, principal: Principal, *, limit: int, depth: int) -> None:
        self.principal = principal
        self.limit = limit
        self.depth = depth
        self.hub = int(settings.ANDON_CORRELATION_HUB_LIMIT)
        self.result = Correlation(key=key)
        self.seen_keys: set[tuple[str, str]] = {(t, key) for t in LOOKUPS}
        self.frontier = [_Key(SEARCHED, key, FollowedKey(key, "searched", 0))]
        self.found: dict[ItemRef, FollowedKey] = {}
        self.rows: dict[str, dict[int, dict[str, Any]]] = {EVENT: {}, SPAN: {}, MESSAGE: {}}

    def run(self) -> Correlation:
        level = 0
        while self.frontier:
            if level > self.depth:
                self.result.truncate(f"stopped after {self.depth} levels of keys")
                break
            matches = self.probe(self.frontier)
            new = self.accept(self.frontier, matches)
            self.frontier = []
            if not new:
                break
            self.fetch(new)
            if self.result.truncated:
                break  # over budget or the searched key is a hub: show, do not expand
            self.frontier = self.next_keys(new, level + 1)
            level += 1
        return self.result

    def probe(self, keys: Sequence[_Key]) -> list[tuple[dict[ItemRef, set[str]], bool]]:
        """Return, per key, the items it ties (with the columns matched) and whether it is a hub.

        A key is a hub when one of its subqueries hit its ``LIMIT hub + 1`` or
        its distinct items outnumber the hub limit.
        """
        found: list[dict[ItemRef, set[str]]] = [defaultdict(set) for _ in keys]
        hubs = [False] * len(keys)
        plants = self.principal.plant_ids
        for start in range(0, len(keys), KEYS_PER_STATEMENT):
            parts: list[str] = []
            params: list[str] = []
            slots: list[tuple[int, Lookup]] = []
            for index in range(start, min(start + KEYS_PER_STATEMENT, len(keys))):
                key = keys[index]
                limit = self.hub + 1 if key.type != SEARCHED else max(self.hub, self.limit) + 1
                for lookup in LOOKUPS[key.type]:
                    parts.append(_subquery(lookup, len(slots), limit, plants))
                    params.append(key.value)
                    slots.append((index, lookup))
            with connection.cursor() as cursor:
                cursor.execute(" UNION ALL ".join(parts), params)
                rows = cursor.fetchall()
            counts = [0] * len(slots)
            for number, kind, item_id in rows:
                index, lookup = slots[number]
                found[index][(kind, int(item_id))].add(lookup.column)
                counts[number] += 1
            for number, count in enumerate(counts):
                if count > self.hub:
                    hubs[slots[number][0]] = True
        return [
            (items, hub or len(items) > self.hub) for items, hub in zip(found, hubs, strict=True)
        ]

    def accept(
        self, keys: Sequence[_Key], matches: list[tuple[dict[ItemRef, set[str]], bool]]
    ) -> list[ItemRef]:
        """Record followed and hub keys; return the new items within the budget."""
        new: list[ItemRef] = []
        for key, (items, hub) in zip(keys, matches, strict=True):
            count = len(items)
            if hub:
                if key.type != SEARCHED:
                    self.result.skipped_keys.append(
                        SkippedKey(key.value, key.followed.via, count, self.hub)
                    )
                    continue
                self.result.truncate(f"{key.value} ties more than {self.hub} items")
            key.followed.items = count
            if count or key.type == SEARCHED:
                self.result.keys.append(key.followed)
            for ref in sorted(items):
                if ref not in self.found:
                    if len(self.found) >= self.limit:
                        self.result.truncate(f"stopped at {self.limit} items")
                        return new
                    self.found[ref] = key.followed
                    new.append(ref)
        return new

    def fetch(self, refs: list[ItemRef]) -> None:
        """Load the rows of newly found items (and messages' attempts) in one round trip."""
        ids: dict[str, list[int]] = defaultdict(list)
        for kind, item_id in refs:
            ids[kind].append(item_id)
        queries = []
        if ids[EVENT]:
            queries.append((Event, EVENT_COLUMNS, ids[EVENT], "id"))
        if ids[SPAN]:
            queries.append((Span, SPAN_COLUMNS, ids[SPAN], "id"))
        if ids[MESSAGE]:
            queries.append((Message, MESSAGE_COLUMNS, ids[MESSAGE], "id"))
            queries.append((MessageAttempt, ATTEMPT_COLUMNS, ids[MESSAGE], "message_id"))
        results = iter(_fetch_all(queries))
        if ids[EVENT]:
            self.rows[EVENT].update(_event_rows(next(results)))
        if ids[SPAN]:
            self.rows[SPAN].update(_span_rows(next(results)))
        if ids[MESSAGE]:
            messages = _message_rows(next(results))
            _attach_attempts(messages, next(results))
            self.rows[MESSAGE].update(messages)

    def next_keys(self, refs: list[ItemRef], depth: int) -> list[_Key]:
        """Return the keys of newly found items that were not looked up yet."""
        keys: list[_Key] = []
        for ref in refs:
            row = self.rows[ref[0]].get(ref[1])
            if row is None:
                continue
            for key_type, value, via in _item_keys(ref[0], row):
                if not value or (key_type, value) in self.seen_keys:
                    continue
                self.seen_keys.add((key_type, value))
                keys.append(_Key(key_type, value, FollowedKey(value, via, depth, ref)))
        return keys


def _item_keys(kind: str, row: dict[str, Any]) -> Iterable[tuple[str, str, str]]:
    """Yield ``(key type, value, via)`` for every key an item carries."""
    if kind == EVENT:
        yield VALUE, row["subject"], "subject"
        yield VALUE, row["correlation_id"], "correlation_id"
    else:
        yield VALUE, row["correlation_id"], "correlation_id"
    for name, value in (row.get("business_keys") or {}).items():
        if isinstance(value, str):
            yield VALUE, value, name
    if kind != MESSAGE:
        yield TRACE, row["trace_id"], "trace_id"
    if kind == EVENT:
        yield CAUSE, row["event_id"], "event_id"
        yield CAUSE, row["causation_id"], "causation_id"


# --- The landscape, cached -----------------------------------------------------------------------
#
# Plants, systems and connectors are a few hundred rows that rarely change, read by every
# correlation. A process keeps them for LANDSCAPE_TTL_S; a save or delete in this process
# forgets them at once, and an id it does not know (a connector discovered by another
# process) makes it read them again.

LANDSCAPE_TTL_S = 5.0


@dataclass(frozen=True)
class ConnectorInfo:
    key: str
    source: str | None
    target: str | None
    slo_ms: int | None
    sensitive_fields: list[str]


@dataclass(frozen=True)
class SystemInfo:
    key: str
    name: str
    kind: str
    plant: str | None


@dataclass
class Landscape:
    """Plant keys, systems and connectors by id, and connectors by (source, target) system."""

    plants: dict[int, str]
    systems: dict[int, SystemInfo]
    connectors: dict[int, ConnectorInfo]
    by_pair: dict[tuple[str, str], ConnectorInfo]
    loaded_at: float
    by_key: dict[str, SystemInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_key = {system.key: system for system in self.systems.values()}

    @classmethod
    def read(cls) -> Landscape:
        plants = dict(Plant.objects.values_list("id", "key"))
        systems = {
            pk: SystemInfo(key, name, kind, plants.get(plant_id))  # type: ignore[arg-type]
            for pk, key, name, kind, plant_id in System.objects.values_list(
                "id", "key", "name", "kind", "plant_id"
            )
        }
        connectors: dict[int, ConnectorInfo] = {}
        by_pair: dict[tuple[str, str], ConnectorInfo] = {}
        # "active" sorts before "discovered": a declared connector names a pair first.
        rows = Connector.objects.order_by("status", "key").values_list(
            "id", "key", "source_id", "target_id", "latency_slo_ms", "sensitive_fields"
        )
        for pk, key, source_id, target_id, slo, sensitive in rows:
            source, target = systems.get(source_id), systems.get(target_id)
            info = ConnectorInfo(
                key,
                source.key if source else None,
                target.key if target else None,
                slo,
                list(sensitive or []),
            )
            connectors[pk] = info
            if info.source and info.target:
                by_pair.setdefault((info.source, info.target), info)
        return cls(plants, systems, connectors, by_pair, time.monotonic())

    def knows(self, plants: set[int], systems: set[int], connectors: set[int]) -> bool:
        return (
            plants <= self.plants.keys()
            and systems <= self.systems.keys()
            and connectors <= self.connectors.keys()
        )


_landscape: Landscape | None = None


def landscape(
    plants: set[int] = frozenset(),  # type: ignore[assignment]
    systems: set[int] = frozenset(),  # type: ignore[assignment]
    connectors: set[int] = frozenset(),  # type: ignore[assignment]
) -> Landscape:
    """Return the cached landscape, read again when stale or missing one of these ids."""
    global _landscape
    cached = _landscape
    if (
        cached is None
        or time.monotonic() - cached.loaded_at > LANDSCAPE_TTL_S
        or not cached.knows(plants, systems, connectors)
    ):
        cached = _landscape = Landscape.read()
    return cached


def forget_landscape(**_: Any) -> None:
    """Drop the cached landscape (a signal receiver: a plant, system or connector changed)."""
    global _landscape
    _landscape = None


for _model in (Plant, System, Connector):
    post_save.connect(forget_landscape, sender=_model, dispatch_uid=f"correlation-{_model}")
    post_delete.connect(forget_landscape, sender=_model, dispatch_uid=f"correlation-{_model}-d")


# --- Rows ------------------------------------------------------------------------------------
#
# Rows are read with plain SQL, one statement per kind and level and no joins (the landscape
# is cached): the ORM's query compilation would cost more than the indexed reads themselves.

EVENT_COLUMNS = (
    "id", "event_id", "source", "type", "subject", "time", "occurred_at", "received_at",
    "correlation_id", "causation_id", "trace_id", "parent_span_id", "business_keys",
    "extensions", "datacontenttype", "data", "data_base64", "system_id", "plant_id",
)  # fmt: skip
SPAN_COLUMNS = (
    "id", "trace_id", "span_id", "parent_span_id", "name", "kind", "service_name", "start",
    "end", "duration_ms", "status_code", "status_message", "attributes", "events",
    "correlation_id", "business_keys", "system_id", "plant_id",
)  # fmt: skip
MESSAGE_COLUMNS = (
    "id", "connector_id", "external_id", "status", "occurred_at", "last_attempt_at",
    "received_at", "correlation_id", "business_keys", "latency_ms", "error", "headers",
    "content_type", "payload", "attempt_count", "plant_id",
)  # fmt: skip
ATTEMPT_COLUMNS = ("message_id", "at", "status", "latency_ms", "error", "replay_id")


@lru_cache(maxsize=8)
def _select(table: str, columns: tuple[str, ...], key: str = "id") -> str:
    names = ", ".join(_qn(c) for c in columns)
    return f"SELECT {names} FROM {_qn(table)} WHERE {_qn(key)} IN "


def _fetch_all(queries: list[tuple[type, tuple[str, ...], list[int], str]]) -> list[list[dict]]:
    """Run ``(model, columns, ids, key column)`` selects; return each one's rows as dicts.

    On PostgreSQL they go as one batch (one round trip, results read with ``nextset``).
    """
    statements = [
        _select(model._meta.db_table, columns, key) + "(" + ", ".join(["%s"] * len(ids)) + ")"
        for model, columns, ids, key in queries
    ]
    results: list[list[dict]] = []
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql" and len(queries) > 1:
            cursor.execute("; ".join(statements), [i for q in queries for i in q[2]])
            for index, (_, columns, _, _) in enumerate(queries):
                if index:
                    cursor.cursor.nextset()
                results.append([dict(zip(columns, v, strict=True)) for v in cursor.fetchall()])
            return results
        for statement, (_, columns, ids, _) in zip(statements, queries, strict=True):
            cursor.execute(statement, ids)
            results.append([dict(zip(columns, v, strict=True)) for v in cursor.fetchall()])
    return results


def _json(value: str | bytes | None, empty: Any = None) -> Any:
    """Decode a JSON column (text from both backends); ``empty`` when NULL or empty."""
    if value is None:
        return empty
    decoded = orjson.loads(value)
    return decoded if decoded or empty is None else empty


def _aware(moment: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes (stored in UTC); PostgreSQL aware ones.
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def event_failed(event_type: str) -> bool:
    """Return whether an event type reports a failure (``lims.result.failed``)."""
    return any(part in FAILURE_WORDS for part in event_type.lower().split("."))


def _system_key(land: Landscape, system_id: int | None) -> str | None:
    system = land.systems.get(system_id) if system_id is not None else None
    return system.key if system else None


def _event_rows(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    land = landscape(
        {r["plant_id"] for r in rows} - {None}, {r["system_id"] for r in rows} - {None}
    )
    for row in rows:
        occurred_at = _aware(row["occurred_at"])
        row.update(
            time=occurred_at,
            occurred_at=occurred_at,
            event_time=_aware(row.pop("time")),
            received_at=_aware(row["received_at"]),
            business_keys=_json(row["business_keys"], {}),
            extensions=_json(row["extensions"], {}),
            data=_json(row["data"]),
            data_base64=row["data_base64"] or None,
            system=_system_key(land, row.pop("system_id")),
            plant=land.plants.get(row.pop("plant_id")),
            failed=event_failed(row["type"]),
        )
    return {row["id"]: row for row in rows}


def _span_rows(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    land = landscape(
        {r["plant_id"] for r in rows} - {None}, {r["system_id"] for r in rows} - {None}
    )
    for row in rows:
        code = row.pop("status_code")
        start = _aware(row["start"])
        row.update(
            time=start,
            start=start,
            end=_aware(row["end"]),
            kind=SPAN_KIND_NAMES.get(row["kind"], "unspecified"),
            status=SPAN_STATUS_NAMES.get(code, "unset"),
            attributes=_json(row["attributes"], {}),
            events=_json(row["events"], []),
            business_keys=_json(row["business_keys"], {}),
            system=_system_key(land, row.pop("system_id")),
            plant=land.plants.get(row.pop("plant_id")),
            failed=code == SpanStatus.ERROR,
        )
    return {row["id"]: row for row in rows}


def _message_rows(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    land = landscape(
        {r["plant_id"] for r in rows} - {None}, connectors={r["connector_id"] for r in rows}
    )
    for row in rows:
        connector = land.connectors[row.pop("connector_id")]
        payload = row["payload"]
        occurred_at = _aware(row["occurred_at"])
        row.update(
            connector=connector.key,
            source_system=connector.source,
            target_system=connector.target,
            slo_ms=connector.slo_ms,
            sensitive_fields=connector.sensitive_fields,
            time=occurred_at,
            occurred_at=occurred_at,
            last_attempt_at=_aware(row["last_attempt_at"]),
            received_at=_aware(row["received_at"]),
            business_keys=_json(row["business_keys"], {}),
            headers=_json(row["headers"], {}),
            payload=None if payload is None else bytes(payload),
            attempts=[],
            plant=land.plants.get(row.pop("plant_id")),
            failed=row["status"] in FAILED_STATUSES,
        )
    return {row["id"]: row for row in rows}


def _attach_attempts(messages: dict[int, dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    for row in rows:
        row["at"] = _aware(row["at"])
    rows.sort(key=lambda r: (r["message_id"], r["at"]))
    for row in rows:
        messages[row["message_id"]]["attempts"].append(
            {"at": row["at"], "status": row["status"], "latency_ms": row["latency_ms"],
             "error": row["error"], "replay": row["replay_id"]}
        )  # fmt: skip


# --- Hops, systems and the flow -------------------------------------------------------------


def _items(result: Correlation) -> list[Item]:
    items = [
        Item(
            "event",
            e["id"],
            e["time"],
            e["system"],
            e["plant"],
            "failed" if e["failed"] else "",
            e["failed"],
            f"{e['type']} {e['subject']}".strip(),
            e,
        )
        for e in result.events
    ]
    items.extend(
        Item(
            "span",
            s["id"],
            s["time"],
            s["system"],
            s["plant"],
            s["status"],
            s["failed"],
            s["name"],
            s,
        )
        for s in result.spans
    )
    items.extend(
        Item(
            "message",
            m["id"],
            m["time"],
            m["source_system"],
            m["plant"],
            m["status"],
            m["failed"],
            f"{m['connector']} {m['external_id']} {m['status']}",
            m,
        )
        for m in result.messages
    )
    items.sort(key=lambda item: (item.time, item.kind, item.id))
    return items


def _hops(result: Correlation) -> list[Hop]:
    hops: list[Hop] = []
    for message in result.messages:
        if message["source_system"] and message["target_system"]:
            hops.append(
                Hop(
                    source=message["source_system"],
                    target=message["target_system"],
                    latency_ms=message["latency_ms"],
                    at=message["time"],
                    via="message",
                    item=(MESSAGE, message["id"]),
                    connector=message["connector"],
                    slo_ms=message["slo_ms"],
                    failed=message["failed"],
                )
            )
    by_span = {(s["trace_id"], s["span_id"]): s for s in result.spans}
    for span in result.spans:
        parent = by_span.get((span["trace_id"], span["parent_span_id"]))
        if parent is None or not parent["system"] or not span["system"]:
            continue
        if parent["system"] != span["system"]:
            hops.append(
                Hop(
                    source=parent["system"],
                    target=span["system"],
                    latency_ms=_ms(span["time"] - parent["time"]),
                    at=parent["time"],
                    via="span",
                    item=(SPAN, span["id"]),
                    from_item=(SPAN, parent["id"]),
                    failed=span["failed"],
                )
            )
    hops.extend(_event_hops(result))
    _match_connectors(hops)
    hops.sort(key=lambda hop: (hop.at, hop.arrived))
    return hops


def _ms(delta: timedelta) -> float:
    return round(delta.total_seconds() * 1000, 3)


def _event_hops(result: Correlation) -> list[Hop]:
    """Return hops between consecutive events of one key that happened in different systems."""
    followed = {k.key for k in result.keys if k.via not in ("event_id", "causation_id")}
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in result.events:
        values = {event["subject"], event["correlation_id"], *event["business_keys"].values()}
        for value in values & followed:
            groups[value].append(event)
    hops: list[Hop] = []
    done: set[tuple[int, int]] = set()
    for events in groups.values():
        events.sort(key=lambda e: (e["time"], e["id"]))
        for before, after in zip(events, events[1:], strict=False):
            if not before["system"] or not after["system"] or before["system"] == after["system"]:
                continue
            if (before["id"], after["id"]) in done:
                continue
            done.add((before["id"], after["id"]))
            hops.append(
                Hop(
                    source=before["system"],
                    target=after["system"],
                    latency_ms=_ms(after["time"] - before["time"]),
                    at=before["time"],
                    via="event",
                    item=(EVENT, after["id"]),
                    from_item=(EVENT, before["id"]),
                    failed=after["failed"],
                )
            )
    return hops


def _match_connectors(hops: list[Hop]) -> None:
    """Name the connector (and its latency SLO) of hops that did not come with one."""
    pairs = landscape().by_pair
    for hop in hops:
        if hop.connector is None:
            connector = pairs.get((hop.source, hop.target))
            if connector is not None:
                hop.connector, hop.slo_ms = connector.key, connector.slo_ms


def _systems(items: list[Item]) -> list[SystemReach]:
    info = landscape().by_key
    reach: dict[str, SystemReach] = {}
    for item in items:
        targets = [(item.system, item.time)]
        if item.kind == "message" and item.row["status"] == MessageStatus.DELIVERED:
            arrived = item.time + timedelta(milliseconds=item.row["latency_ms"] or 0)
            targets.append((item.row["target_system"], arrived))
        for index, (key, moment) in enumerate(targets):
            if not key:
                continue
            system = reach.get(key)
            if system is None:
                known = info.get(key) or SystemInfo(key, key, "", None)
                system = reach[key] = SystemReach(
                    key, known.name, known.kind, known.plant, moment, moment
                )
            system.first, system.last = min(system.first, moment), max(system.last, moment)
            if index == 0:
                setattr(system, item.kind + "s", getattr(system, item.kind + "s") + 1)
                system.failed += item.failed
    return sorted(reach.values(), key=lambda s: s.first)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") + "Z"


def _flow(result: Correlation) -> Flow:
    flow = Flow(reached=[s.key for s in result.systems])
    flow.last = flow.reached[-1] if flow.reached else None
    latest: dict[str, dict[str, Any]] = {}
    for message in result.messages:
        current = latest.get(message["connector"])
        if current is None or (message["time"], message["id"]) >= (current["time"], current["id"]):
            latest[message["connector"]] = message
    stops = []
    for message in latest.values():
        target = message["target_system"]
        if not message["failed"] or not target:
            continue
        arrived = any(
            item.time > message["time"]
            and (
                item.system == target
                or (
                    item.kind == "message"
                    and item.row["target_system"] == target
                    and item.row["status"] == MessageStatus.DELIVERED
                )
            )
            for item in result.items
        )
        if not arrived:
            stops.append(message)
    if stops:
        message = max(stops, key=lambda m: (m["time"], m["id"]))
        error = f" ({message['error']})" if message["error"] else ""
        flow.stopped = True
        flow.stopped_at = message["source_system"]
        flow.blocked = message["target_system"]
        flow.connector = message["connector"]
        status = "was dead-lettered" if message["status"] == "dead_lettered" else "failed"
        flow.reason = (
            f"Stopped at {message['source_system']}: the last message of {message['connector']} "
            f"({message['external_id']}) {status} at {_when(message['time'])}{error}, "
            f"and nothing arrived in {message['target_system']} afterwards."
        )
        return flow
    if result.items and result.items[-1].failed:
        item = result.items[-1]
        flow.stopped = True
        flow.stopped_at = item.system
        flow.reason = (
            f"Stopped at {item.system or 'an unknown system'}: the latest {item.kind}, "
            f"{item.title}, failed at {_when(item.time)}."
        )
        return flow
    if flow.last is not None:
        last = result.systems[-1]
        failures = sum(item.failed for item in result.items)
        flow.reason = (
            f"Reached {len(flow.reached)} system{'s' if len(flow.reached) != 1 else ''}"
            f" ({' → '.join(flow.reached)}); last reached {last.key} at {_when(last.first)}"
            + (
                f"; {failures} failed item{'s' if failures != 1 else ''} along the way."
                if failures
                else "."
            )
        )
    return flow


# --- The entry point ---------------------------------------------------------------------


def correlate(
    key: str, principal: Principal, *, limit: int = DEFAULT_LIMIT, depth: int = DEFAULT_DEPTH
) -> Correlation:
    """Return everything tied to ``key`` that ``principal`` may see, in time order.

    ``limit`` caps the items (``truncated`` says when it bit); ``depth`` the
    levels of keys followed from the searched one.
    """
    search = _Search(key, principal, limit=limit, depth=depth)
    result = search.run()
    by_time = lambda row: (row["time"], row["id"])  # noqa: E731
    result.events = sorted(search.rows[EVENT].values(), key=by_time)
    result.spans = sorted(search.rows[SPAN].values(), key=by_time)
    result.messages = sorted(search.rows[MESSAGE].values(), key=by_time)
    result.items = _items(result)
    if not result.items:
        return result
    result.hops = _hops(result)
    result.systems = _systems(result.items)
    result.flow = _flow(result)
    result.alerts = alerts_for([k.key for k in result.keys], principal)
    return result
