"""``POST /api/v1/messages``: connectors report what happened to their messages.

``(connector, id)`` identifies a message; each distinct report ``(status,
occurred_at)`` is one attempt of it. A batch is written set-based in one
transaction, whatever its size:

1. one query for the known connectors, one ``bulk_create`` for unknown ones
   (registered as ``discovered``) and one re-read;
2. one ``INSERT ... ON CONFLICT DO UPDATE`` upserting the messages, the reports
   of one message merged beforehand;
3. one ``insert_ignore`` of the attempts: an attempt already stored is a duplicate;
4. one ``UPDATE`` deriving each earlier stored message's current status,
   error, latency, attempt count and times from its attempts, so a report
   arriving out of order never regresses the status;
5. one ``insert_ignore`` of the KeyRefs of the messages' business keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from console.auth import Principal
from integrations.api_messages import MessageListView
from integrations.ingest import keys
from integrations.ingest.bulk import SQLITE_MAX_VARS, insert_ignore
from integrations.ingest.common import (
    Attribution,
    BatchResult,
    IngestError,
    ingest_view,
    media_type,
    parse_json,
    plant_denied,
    read_body,
    with_counts,
)
from integrations.ingest.events import (
    Reject,
    contains_nul,
    decode_base64,
    empty_batch_response,
    item_id,
    json_type,
    may_hold_nul,
    optional_text,
    parse_rfc3339,
    required_text,
    scope_default_plant,
    too_many_items,
)
from integrations.models import (
    Connector,
    ConnectorStatus,
    ItemKind,
    Message,
    MessageAttempt,
    MessageStatus,
)

STATUSES = frozenset(MessageStatus.values)
STATUS_LIST = ", ".join(MessageStatus.values)
# A plain str: psycopg would dump an Enum member by its name.
MESSAGE_KIND = ItemKind.MESSAGE.value
DISCOVERED = ConnectorStatus.DISCOVERED.value

# Limits equal the column sizes, so a checked value never makes the database refuse a batch.
MAX_EXTERNAL_ID = 255
MAX_CONNECTOR = 128
MAX_CORRELATION_ID = 255
MAX_CONTENT_TYPE = 255
MAX_LATENCY_MS = 2**31 - 1

JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"

MESSAGE_COLUMNS = (
    "connector_id",
    "external_id",
    "status",
    "occurred_at",
    "last_attempt_at",
    "received_at",
    "correlation_id",
    "business_keys",
    "latency_ms",
    "error",
    "headers",
    "content_type",
    "payload",
    "attempt_count",
    "plant_id",
)
ATTEMPT_FIELDS = ("message", "at", "status", "latency_ms", "error", "received_at")
ATTEMPT_IDENTITY = ("message", "at", "status")
# Rows per upsert statement: under SQLite's host-parameter limit, and a sane statement size.
UPSERT_CHUNK = min(1000, SQLITE_MAX_VARS // len(MESSAGE_COLUMNS))


@dataclass(slots=True)
class Report:
    """One checked report of a message."""

    connector: str
    external_id: str
    status: str
    at: datetime
    correlation_id: str
    business_keys: dict[str, str]
    latency_ms: int | None
    error: str
    headers: dict[str, str]
    content_type: str
    payload: bytes | None
    plant_id: int | None
    plant_given: bool
    index: int = -1


# --- Checking one report --------------------------------------------------------------------


def _business_keys(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise Reject(f"business_keys must be an object, not {json_type(value)}")
    checked: dict[str, str] = {}
    for name, raw in value.items():
        if not name:
            raise Reject("business_keys has an empty key name")
        if len(name) > keys.MAX_KEY_NAME:
            raise Reject(f"business_keys name {name[:40]!r} exceeds {keys.MAX_KEY_NAME} characters")
        text = keys.key_value(raw)
        if text is None:
            raise Reject(
                f"business_keys.{name[:40]} must be a string or number, not {json_type(raw)}"
            )
        if len(text) > keys.MAX_KEY_VALUE:
            raise Reject(f"business_keys.{name[:40]} exceeds {keys.MAX_KEY_VALUE} characters")
        if text:
            checked[name] = text
    return checked


def _headers(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if type(value) is not dict:
        raise Reject(f"headers must be an object, not {json_type(value)}")
    for name, raw in value.items():
        if type(raw) is not str:
            raise Reject(f"headers.{name[:40]} must be a string, not {json_type(raw)}")
    return value


def _latency(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int or not 0 <= value <= MAX_LATENCY_MS:
        raise Reject(f"latency_ms must be a non-negative integer, not {str(value)[:40]}")
    return value


def _header(headers: dict[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return ""


class MessageChecker:
    """Turns one parsed report into a :class:`Report`, or raises Reject naming the field."""

    def __init__(self, attribution: Attribution, *, check_nul: bool) -> None:
        self.attribution = attribution
        self.check_nul = check_nul

    def report(self, item: object) -> Report:
        """Return the checked report of one parsed item."""
        if type(item) is not dict:
            raise Reject(f"a message report must be a JSON object, not {json_type(item)}")
        get = item.get
        external_id = required_text(get("id"), "id", MAX_EXTERNAL_ID)
        connector = required_text(get("connector"), "connector", MAX_CONNECTOR)
        status = get("status")
        if status is None:
            raise Reject("status is required")
        if type(status) is not str or status not in STATUSES:
            raise Reject(f"status must be one of {STATUS_LIST}, not {str(status)[:40]!r}")
        occurred_at = get("occurred_at")
        if occurred_at is None:
            raise Reject("occurred_at is required")
        at = parse_rfc3339(occurred_at, "occurred_at")
        correlation_id = optional_text(get("correlation_id"), "correlation_id", MAX_CORRELATION_ID)
        business_keys = _business_keys(get("business_keys"))
        latency_ms = _latency(get("latency_ms"))
        error = optional_text(get("error"), "error")
        headers = _headers(get("headers"))
        if self.check_nul and contains_nul([v for k, v in item.items() if k != "payload"]):
            raise Reject("the report contains a NUL character (\\u0000), which cannot be stored")

        payload_value = get("payload")
        payload_b64 = get("payload_b64")
        content_type = _header(headers, "content-type")
        payload: bytes | None = None
        if payload_b64 is not None:
            if payload_value is not None:
                raise Reject("payload and payload_b64 are mutually exclusive")
            payload = decode_base64(payload_b64, "payload_b64") or None
            content_type = content_type or BINARY_CONTENT_TYPE
        elif payload_value is not None:
            try:
                payload = orjson.dumps(payload_value)
            except orjson.JSONEncodeError as exc:
                raise Reject(f"payload cannot be stored: {exc}") from None
            content_type = content_type or JSON_CONTENT_TYPE
        if len(content_type) > MAX_CONTENT_TYPE:
            raise Reject(f"headers content-type exceeds {MAX_CONTENT_TYPE} characters")

        plant_key = get("plant")
        plant_id = None
        if plant_key is not None:
            plant_id = (
                self.attribution.plant_by_key.get(plant_key) if type(plant_key) is str else None
            )
            if plant_id is None:
                raise Reject(f"plant names an unknown plant: {str(plant_key)[:64]!r}")
        return Report(
            connector=connector,
            external_id=external_id,
            status=status,
            at=at,
            correlation_id=correlation_id,
            business_keys=business_keys,
            latency_ms=latency_ms,
            error=error,
            headers=headers,
            content_type=content_type,
            payload=payload,
            plant_id=plant_id,
            plant_given=plant_key is not None,
        )


# --- Reading the request ----------------------------------------------------------------------


def request_reports(request: HttpRequest, body: bytes) -> list[object]:
    """Return the request's reports (parsed JSON objects, unchecked)."""
    if not body.strip():
        # Before the media type: some clients send no Content-Type with an empty body.
        raise IngestError(400, "request body is empty")
    mtype = media_type(request)
    if mtype != JSON_CONTENT_TYPE and not mtype.endswith("+json"):
        shown = mtype or "none"
        raise IngestError(415, f"unsupported Content-Type {shown!r}: use {JSON_CONTENT_TYPE}")
    document = parse_json(body)
    if isinstance(document, dict):
        return [document]
    if isinstance(document, list):
        return document
    raise IngestError(
        400, f"the body must be a message object or an array of them, not {json_type(document)}"
    )


# --- Storing --------------------------------------------------------------------------------------


def known_connectors(connector_keys: set[str]) -> dict[str, tuple[int, int | None]]:
    """Return ``key -> (id, plant_id)`` of the existing connectors among ``connector_keys``."""
    return {
        key: (pk, plant_id)
        for pk, key, plant_id in Connector.objects.filter(key__in=connector_keys).values_list(
            "id", "key", "plant_id"
        )
    }


def discover_connectors(
    missing: set[str], known: dict[str, tuple[int, int | None]]
) -> dict[str, tuple[int, int | None]]:
    """Register unknown connector keys as ``discovered`` and return ``known`` with them.

    Safe under concurrent requests: a key another request registers first is a
    conflict ignored here, and the re-read finds its row.
    """
    if missing:
        Connector.objects.bulk_create(
            [Connector(key=key, status=DISCOVERED) for key in sorted(missing)],
            ignore_conflicts=True,
        )
        known = {**known, **known_connectors(missing)}
    return known


@dataclass(slots=True)
class MergedMessage:
    """What one batch says about one message (several reports merged)."""

    connector_id: int
    external_id: str
    reports: list[Report]
    plant_id: int | None

    def row(self, now: datetime) -> tuple[Any, ...]:
        """Return the upsert row (``MESSAGE_COLUMNS`` order): the latest report gives the status."""
        reports = self.reports
        latest = first = reports[0]
        correlation_id = first.correlation_id
        headers = first.headers
        payload, content_type = first.payload, first.content_type
        business_keys: dict[str, str] = dict(first.business_keys)
        earliest = first.at
        for report in reports[1:]:
            if report.at >= latest.at:
                latest = report
            earliest = min(earliest, report.at)
            correlation_id = correlation_id or report.correlation_id
            headers = headers or report.headers
            if payload is None and report.payload is not None:
                payload, content_type = report.payload, report.content_type
            content_type = content_type or report.content_type
            for name, value in report.business_keys.items():
                business_keys.setdefault(name, value)
        return (
            self.connector_id,
            self.external_id,
            latest.status,
            earliest,
            latest.at,
            now,
            correlation_id,
            business_keys,
            latest.latency_ms,
            latest.error,
            headers,
            content_type,
            payload,
            len(reports),
            self.plant_id,
        )

    def key_pairs(self) -> list[tuple[str, str]]:
        """Return every ``(name, value)`` the reports carry: each makes the message findable."""
        pairs: dict[tuple[str, str], None] = {}
        for report in self.reports:
            pairs.update(dict.fromkeys(report.business_keys.items()))
        return list(pairs)


def _qn(name: str) -> str:
    return connection.ops.quote_name(name)


def _upsert_sql(source: str, scope: list[int] | None) -> tuple[str, list[Any]]:
    """Return the upsert of the rows ``source`` yields (``MESSAGE_COLUMNS``, in order).

    With a plant ``scope``, a stored message of another plant is left alone and
    not returned. Return the SQL and the parameters that follow the source's.
    """
    table = _qn(Message._meta.db_table)
    cols = ", ".join(_qn(c) for c in MESSAGE_COLUMNS)

    def cur(column: str) -> str:
        return f"{table}.{_qn(column)}"

    def new(column: str) -> str:
        return f"EXCLUDED.{_qn(column)}"

    if connection.vendor == "postgresql":
        merged_keys = f"{new('business_keys')} || {cur('business_keys')}"
        # A row this statement inserted (rather than updated) has no deleting transaction.
        created = "(xmax = 0)"
    else:
        merged_keys = f"json_patch({new('business_keys')}, {cur('business_keys')})"
        created = "0"
    guard, params = "", []
    if scope is not None:
        marks = ", ".join(["%s"] * len(scope))
        guard = f"WHERE {cur('plant_id')} IS NULL OR {cur('plant_id')} IN ({marks}) "
        params = list(scope)
    # Keep what is already stored (first correlation id, first payload and headers);
    # status and times are derived from the attempts afterwards.
    return (
        f"INSERT INTO {table} ({cols}) {source} "
        f"ON CONFLICT ({_qn('connector_id')}, {_qn('external_id')}) DO UPDATE SET "
        f"{_qn('correlation_id')} = CASE WHEN {cur('correlation_id')} = '' "
        f"THEN {new('correlation_id')} ELSE {cur('correlation_id')} END, "
        f"{_qn('business_keys')} = {merged_keys}, "
        f"{_qn('headers')} = CASE WHEN {cur('headers')} = '{{}}' "
        f"THEN {new('headers')} ELSE {cur('headers')} END, "
        f"{_qn('content_type')} = CASE WHEN {cur('payload')} IS NULL "
        f"AND {new('payload')} IS NOT NULL THEN {new('content_type')} "
        f"WHEN {cur('content_type')} = '' THEN {new('content_type')} "
        f"ELSE {cur('content_type')} END, "
        f"{_qn('payload')} = COALESCE({cur('payload')}, {new('payload')}), "
        f"{_qn('plant_id')} = COALESCE({cur('plant_id')}, {new('plant_id')}) "
        f"{guard}"
        f"RETURNING {_qn('id')}, {_qn('connector_id')}, {_qn('external_id')}, {created}"
    ), params


def _pg_record(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(MESSAGE_COLUMNS, row, strict=True))
    payload = record["payload"]
    if payload is not None:
        record["payload"] = "\\x" + payload.hex()  # bytea's text input format
    return record


def _sqlite_values(row: tuple[Any, ...]) -> list[Any]:
    adapt = connection.ops.adapt_datetimefield_value
    values: list[Any] = []
    for value in row:
        if isinstance(value, dict):
            value = orjson.dumps(value).decode()
        elif isinstance(value, datetime):
            value = adapt(value)
        values.append(value)
    return values


def upsert_messages(
    rows: Sequence[tuple[Any, ...]], scope: frozenset[int] | None = None
) -> dict[tuple[int, str], tuple[int, bool]]:
    """Insert or merge message rows, leaving stored messages outside ``scope`` alone.

    Return ``(connector_id, external_id) -> (message id, created)`` of the rows
    written; ``created`` is only known on PostgreSQL (elsewhere always False).

    On PostgreSQL the rows travel as one JSON parameter that
    ``json_populate_recordset`` expands (a VALUES list of thousands of
    parameters costs more to build and parse than the rows themselves); on
    SQLite as chunked VALUES lists.
    """
    results: list[tuple[int, int, str, bool]] = []
    plants = None if scope is None else sorted(scope)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cols = ", ".join(_qn(c) for c in MESSAGE_COLUMNS)
            table = _qn(Message._meta.db_table)
            source = f"SELECT {cols} FROM json_populate_recordset(NULL::{table}, %s::json)"
            records = orjson.dumps([_pg_record(row) for row in rows]).decode()
            sql, params = _upsert_sql(source, plants)
            cursor.execute(sql, [records, *params])
            results.extend(cursor.fetchall())
        else:
            placeholder = "(" + ", ".join(["%s"] * len(MESSAGE_COLUMNS)) + ")"
            for start in range(0, len(rows), UPSERT_CHUNK):
                part = rows[start : start + UPSERT_CHUNK]
                source = "VALUES " + ", ".join([placeholder] * len(part))
                values = [value for row in part for value in _sqlite_values(row)]
                sql, params = _upsert_sql(source, plants)
                cursor.execute(sql, [*values, *params])
                results.extend(cursor.fetchall())
    return {
        (connector_id, external_id): (pk, bool(created))
        for pk, connector_id, external_id, created in results
    }


def refresh_from_attempts(message_ids: Sequence[int]) -> None:
    """Derive messages' status, error, latency, times and attempt count from their attempts.

    The latest attempt by time wins (the later stored one on a tie), so an
    out-of-order report is recorded without regressing the current status.
    """
    if not message_ids:
        return
    table = _qn(Message._meta.db_table)
    attempts = _qn(MessageAttempt._meta.db_table)
    message_id, at, pk = _qn("message_id"), _qn("at"), _qn("id")
    derived = ("attempt_count", "occurred_at", "last_attempt_at", "status", "error", "latency_ms")
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One pass over the messages' attempts: the latest row per message, with aggregates.
            assignments = ", ".join(f"{_qn(c)} = s.{_qn(c)}" for c in derived)
            cursor.execute(
                f"UPDATE {table} SET {assignments} FROM ("
                f"SELECT DISTINCT ON (a.{message_id}) a.{message_id}, "
                f"COUNT(*) OVER w AS {_qn('attempt_count')}, "
                f"MIN(a.{at}) OVER w AS {_qn('occurred_at')}, "
                f"MAX(a.{at}) OVER w AS {_qn('last_attempt_at')}, "
                f"a.{_qn('status')}, a.{_qn('error')}, a.{_qn('latency_ms')} "
                f"FROM {attempts} a WHERE a.{message_id} = ANY(%s) "
                f"WINDOW w AS (PARTITION BY a.{message_id}) "
                f"ORDER BY a.{message_id}, a.{at} DESC, a.{pk} DESC"
                f") s WHERE {table}.{pk} = s.{message_id}",
                [list(message_ids)],
            )
            return
        mine = f"FROM {attempts} a WHERE a.{message_id} = {table}.{pk}"
        latest = f"{mine} ORDER BY a.{at} DESC, a.{pk} DESC LIMIT 1"
        assignments = ", ".join(
            [
                f"{_qn('attempt_count')} = (SELECT COUNT(*) {mine})",
                f"{_qn('occurred_at')} = (SELECT MIN(a.{at}) {mine})",
                f"{_qn('last_attempt_at')} = (SELECT MAX(a.{at}) {mine})",
                f"{_qn('status')} = (SELECT a.{_qn('status')} {latest})",
                f"{_qn('error')} = (SELECT a.{_qn('error')} {latest})",
                f"{_qn('latency_ms')} = (SELECT a.{_qn('latency_ms')} {latest})",
            ]
        )
        for start in range(0, len(message_ids), SQLITE_MAX_VARS):
            part = list(message_ids[start : start + SQLITE_MAX_VARS])
            marks = ", ".join(["%s"] * len(part))
            cursor.execute(f"UPDATE {table} SET {assignments} WHERE {pk} IN ({marks})", part)


def merge_reports(
    reports: list[Report], known: dict[str, tuple[int, int | None]], result: BatchResult
) -> list[MergedMessage]:
    """Group reports by message (an exact repeat is a duplicate), in a stable lock order."""
    merged: dict[tuple[int, str], MergedMessage] = {}
    seen: set[tuple[int, str, datetime, str]] = set()
    for report in reports:
        connector_id = known[report.connector][0]
        attempt = (connector_id, report.external_id, report.at, report.status)
        if attempt in seen:
            result.duplicates += 1
            continue
        seen.add(attempt)
        message = merged.get((connector_id, report.external_id))
        if message is None:
            merged[(connector_id, report.external_id)] = MergedMessage(
                connector_id, report.external_id, [report], report.plant_id
            )
        else:
            message.reports.append(report)
            message.plant_id = message.plant_id or report.plant_id
    # Rows locked in one order keep concurrent overlapping batches from deadlocking.
    return sorted(merged.values(), key=lambda m: (m.connector_id, m.external_id))


def store_reports(
    reports: list[tuple[int, Report]],
    principal: Principal,
    attribution: Attribution,
    result: BatchResult,
) -> None:
    """Write checked ``(index, report)`` pairs set-based in one transaction into ``result``."""
    now = timezone.now()
    default_plant = scope_default_plant(principal)
    with transaction.atomic():
        known = known_connectors({r.connector for _, r in reports})
        allowed: list[Report] = []
        for index, report in reports:
            report.index = index
            if not report.plant_given:
                hit = known.get(report.connector)
                report.plant_id = hit[1] if hit is not None else None
            denied = plant_denied(principal, report.plant_id, attribution)
            if denied is not None:
                result.reject(index, report.external_id, denied, forbidden=True)
                continue
            if report.plant_id is None:
                report.plant_id = default_plant
            allowed.append(report)
        if not allowed:
            return
        known = discover_connectors({r.connector for r in allowed} - known.keys(), known)
        messages = merge_reports(allowed, known, result)
        stored = upsert_messages([m.row(now) for m in messages], principal.plant_ids)

        attempt_rows = []
        refs = []
        created: set[int] = set()
        for message in messages:
            hit = stored.get((message.connector_id, message.external_id))
            if hit is None:
                # Stored earlier under a plant this token is not scoped to.
                mine = ", ".join(sorted(principal.plant_keys))
                error = f"token is scoped to plant {mine}; this message belongs to another plant"
                for report in message.reports:
                    result.reject(report.index, report.external_id, error, forbidden=True)
                continue
            pk, is_new = hit
            if is_new:
                created.add(pk)
            for report in message.reports:
                attempt_rows.append(
                    (pk, report.at, report.status, report.latency_ms, report.error, now)
                )
            pairs = message.key_pairs()
            if pairs:
                at = min(r.at for r in message.reports)
                refs.extend(keys.keyref_rows(MESSAGE_KIND, pk, at, pairs))
        inserted = insert_ignore(
            MessageAttempt, ATTEMPT_FIELDS, attempt_rows, ATTEMPT_IDENTITY, ("message",)
        )
        result.accepted += len(inserted)
        result.duplicates += len(attempt_rows) - len(inserted)
        # A message this batch created already holds what its attempts say.
        refresh_from_attempts(sorted({row[0] for row in inserted} - created))
        keys.insert_keyrefs(refs)


@ingest_view("messages")
def ingest_messages_view(request: HttpRequest, principal: Principal) -> HttpResponse:
    """Record message reports; answer 202 with counts and per-item rejections (CONTRACT)."""
    body = read_body(request)
    items = request_reports(request, body)
    if len(items) > settings.ANDON_MAX_BATCH_ITEMS:
        raise too_many_items(len(items))
    if not items:
        return empty_batch_response()

    result = BatchResult()
    attribution = Attribution.load()
    checker = MessageChecker(attribution, check_nul=may_hold_nul(body))
    reports: list[tuple[int, Report]] = []
    for index, item in enumerate(items):
        try:
            reports.append((index, checker.report(item)))
        except Reject as exc:
            result.reject(index, item_id(item), exc.message, forbidden=exc.forbidden)
    if reports:
        store_reports(reports, principal, attribution, result)
    result.rejected.sort(key=lambda r: r["index"])  # type: ignore[arg-type,return-value]
    return with_counts(result.response(), result)


# The route answers GET with the message list (a DRF view, so the OpenAPI document shows it);
# a POST goes straight to the plain ingest view above.
messages_view = MessageListView.as_view(ingest=ingest_messages_view)
