"""``POST /api/v1/events``: CloudEvents 1.0 over HTTP in structured, binary and batched modes.

A request costs one body read, one orjson parse, a plain-Python check of each
event (no serializer, no per-item query), one attribution load and one
transaction around a COPY-backed ``insert_ignore``. ``(source, id)`` identifies
an event: a re-sent one is counted as a duplicate and stored once.
"""

from __future__ import annotations

import base64
import binascii
import operator
import re
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import orjson
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone

from console.auth import Principal
from integrations.ingest import keys
from integrations.ingest.bulk import insert_ignore
from integrations.ingest.common import (
    Attribution,
    BatchResult,
    IngestError,
    ingest_view,
    json_response,
    media_type,
    parse_json,
    plant_denied,
    read_body,
    with_counts,
)
from integrations.models import Event, ItemKind

STRUCTURED = "application/cloudevents+json"
BATCHED = "application/cloudevents-batch+json"
SPECVERSION = "1.0"

EVENT_FIELDS = (
    "source",
    "event_id",
    "type",
    "specversion",
    "subject",
    "time",
    "occurred_at",
    "received_at",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "extensions",
    "correlation_id",
    "causation_id",
    "trace_id",
    "parent_span_id",
    "business_keys",
    "system",
    "plant",
)
EVENT_IDENTITY = ("source", "event_id")
_identity = operator.itemgetter(0, 1)

# Limits equal the Event column sizes, so a checked value never makes the database refuse a batch.
MAX_ID = 512
MAX_SOURCE = 512
MAX_TYPE = 255
MAX_SUBJECT = 512
MAX_DATACONTENTTYPE = 255
MAX_DATASCHEMA = 1024
MAX_CORRELATION_ID = 255
MAX_CAUSATION_ID = 512

# Members of the JSON format that are not extension attributes.
CORE_MEMBERS = frozenset(
    {
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "datacontenttype",
        "dataschema",
        "data",
        "data_base64",
    }
)

_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+\Z")
# ASCII digits only: ``\d`` would match any Unicode digit.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)
# W3C Trace Context: version 00 has exactly four fields; later versions may append more.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\Z")
_ZERO_TRACE_ID = "0" * 32
_ZERO_SPAN_ID = "0" * 16
_EXTENSION_TYPES = frozenset({str, int, float, bool})
_EMPTY_OBJECT = orjson.Fragment(b"{}")
# A plain str: psycopg would dump an Enum member by its name.
EVENT_KIND = ItemKind.EVENT.value


class Reject(Exception):
    """One item is unacceptable; ``message`` names the attribute and the problem."""

    def __init__(self, message: str, *, forbidden: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.forbidden = forbidden


# --- Checks shared with the messages endpoint ---------------------------------------------


def json_type(value: object) -> str:
    """Name the JSON type of a parsed value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def required_text(value: object, name: str, limit: int) -> str:
    """Return a required non-empty string; raise Reject naming ``name``."""
    if type(value) is not str or not value:
        if value is None:
            raise Reject(f"{name} is required")
        if type(value) is str:
            raise Reject(f"{name} must not be empty")
        raise Reject(f"{name} must be a string, not {json_type(value)}")
    if len(value) > limit:
        raise Reject(f"{name} exceeds {limit} characters")
    return value


def optional_text(value: object, name: str, limit: int | None = None) -> str:
    """Return an optional string ("" when absent); raise Reject naming ``name``."""
    if value is None:
        return ""
    if type(value) is not str:
        raise Reject(f"{name} must be a string, not {json_type(value)}")
    if limit is not None and len(value) > limit:
        raise Reject(f"{name} exceeds {limit} characters")
    return value


def parse_rfc3339(value: object, what: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware datetime; raise Reject naming ``what``."""
    if type(value) is not str:
        raise Reject(f"{what} must be an RFC 3339 timestamp string, not {json_type(value)}")
    if _RFC3339.match(value) is None:
        raise Reject(f"{what} is not an RFC 3339 timestamp: {value[:64]!r}")
    try:
        # fromisoformat wants the upper-case 'T' and 'Z' that RFC 3339 only recommends.
        parsed = datetime.fromisoformat(
            value if value[10] == "T" and value[-1] != "z" else value.upper()
        )
    except ValueError as exc:
        raise Reject(f"{what} is not a valid timestamp: {value[:64]!r} ({exc})") from None
    # Years at the edge of the range overflow once converted to UTC.
    if not 1 < parsed.year < 9999:
        raise Reject(f"{what} is out of range: {value[:64]!r}")
    return parsed


def decode_base64(value: object, what: str) -> bytes:
    """Decode strict base64; raise Reject naming ``what``."""
    if type(value) is not str:
        raise Reject(f"{what} must be a base64 string, not {json_type(value)}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Reject(f"{what} is not valid base64") from None


def contains_nul(value: object) -> bool:
    """Return whether a parsed JSON value holds a NUL character (PostgreSQL text refuses it)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return True
        elif isinstance(item, dict):
            for key, inner in item.items():
                if "\x00" in key:
                    return True
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)
    return False


def may_hold_nul(body: bytes) -> bool:
    """Return whether a JSON body may hold a NUL character (cheap: one substring search)."""
    return b"\\u0000" in body


def json_fragment(value: object, what: str) -> orjson.Fragment:
    """Serialise a JSON value once, so the bulk writer copies it verbatim; raise Reject."""
    try:
        return orjson.Fragment(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:
        raise Reject(f"{what} cannot be stored: {exc}") from None


def item_id(item: object, field: str = "id") -> object:
    """Return an item's id for a rejection (shortened, since it may be what was wrong)."""
    if isinstance(item, dict):
        value = item.get(field)
        if isinstance(value, str) and len(value) > MAX_ID:
            return value[:MAX_ID] + "…"
        return value
    return None


def scope_default_plant(principal: Principal) -> int | None:
    """Return the plant that unattributed items of a single-plant token are attributed to."""
    if principal.plant_ids is not None and len(principal.plant_ids) == 1:
        return next(iter(principal.plant_ids))
    return None


def too_many_items(count: int) -> IngestError:
    """Return the 413 for a request with more items than ANDON_MAX_BATCH_ITEMS."""
    limit = settings.ANDON_MAX_BATCH_ITEMS
    return IngestError(
        413, f"{count} items exceed the limit of {limit} per request (ANDON_MAX_BATCH_ITEMS)"
    )


def empty_batch_response() -> HttpResponse:
    """Answer an empty array: nothing to store, nothing wrong (a batch may be empty)."""
    return json_response({"accepted": 0, "duplicates": 0, "rejected": []}, 202)


# --- Reading the request ------------------------------------------------------------------


def _is_json_media(mtype: str) -> bool:
    return mtype == "application/json" or mtype == "text/json" or mtype.endswith("+json")


def _has_ce_headers(meta: dict[str, Any]) -> bool:
    return any(key.startswith("HTTP_CE_") for key in meta)


def request_events(request: HttpRequest, body: bytes) -> list[object]:
    """Return the request's events (parsed JSON objects, unchecked) by content mode."""
    mtype = media_type(request)
    binary = _has_ce_headers(request.META)
    if not binary and not body.strip():
        # Before the media type: some clients send no Content-Type with an empty body.
        raise IngestError(400, "request body is empty")
    if mtype == STRUCTURED:
        document = parse_json(body)
        if not isinstance(document, dict):
            raise IngestError(
                400,
                f"a structured-mode body ({STRUCTURED}) must be one JSON object, not "
                f"{json_type(document)}; send arrays as {BATCHED}",
            )
        return [document]
    if mtype == BATCHED:
        document = parse_json(body)
        if not isinstance(document, list):
            raise IngestError(
                400,
                f"a batched-mode body ({BATCHED}) must be a JSON array of events, not "
                f"{json_type(document)}",
            )
        return document
    if binary:
        return [binary_event(request, body, mtype)]
    if mtype == "application/json":
        document = parse_json(body)
        if isinstance(document, dict | list):
            return [document] if isinstance(document, dict) else document
        raise IngestError(
            400,
            "an application/json body must be a CloudEvent object or an array of them, not "
            f"{json_type(document)}",
        )
    shown = mtype or "none"
    raise IngestError(
        415,
        f"unsupported Content-Type {shown!r}: use {STRUCTURED}, {BATCHED}, or binary mode "
        "(ce-id, ce-source, ce-specversion and ce-type headers)",
    )


def binary_event(request: HttpRequest, body: bytes, mtype: str) -> dict[str, object]:
    """Build an event from a binary-mode request: ``ce-*`` headers and the body as data."""
    event: dict[str, object] = {}
    for key, value in request.META.items():
        if key.startswith("HTTP_CE_"):
            # Header values are percent-encoded (HTTP binding, 3.1.3.2); '-' came back as '_'.
            name = key[8:].lower().replace("_", "-")
            event[name] = unquote(value) if "%" in value else value
    content_type = request.META.get("CONTENT_TYPE", "").strip()
    if content_type:
        event["datacontenttype"] = content_type
    if body:
        if _is_json_media(mtype):
            try:
                event["data"] = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise IngestError(
                    400, f"the body is not valid JSON although Content-Type is {mtype}: {exc}"
                ) from None
        else:
            event["data_base64"] = base64.b64encode(body).decode("ascii")
    return event


# --- Checking one event ---------------------------------------------------------------------


def _extension_text(value: object, name: str, limit: int) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Reject(f"extension {name} must be a string, not {json_type(value)}")
    text = value if type(value) is str else str(value)
    if len(text) > limit:
        raise Reject(f"extension {name} exceeds {limit} characters")
    return text


def parse_traceparent(value: object) -> tuple[str, str]:
    """Return ``(trace_id, parent_span_id)`` of a W3C traceparent; raise Reject naming it."""
    if type(value) is not str:
        raise Reject(f"extension traceparent must be a string, not {json_type(value)}")
    match = _TRACEPARENT.match(value)
    if (
        match is None
        or match[1] == "ff"
        or (match[1] == "00" and match[5] is not None)
        or match[2] == _ZERO_TRACE_ID
        or match[3] == _ZERO_SPAN_ID
    ):
        raise Reject(
            "extension traceparent is not a W3C traceparent "
            f"('00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>'): {value[:80]!r}"
        )
    return match[2], match[3]


class EventChecker:
    """Turns one parsed CloudEvent into an Event row, or raises Reject naming the problem.

    The common case (valid strings within their limits) takes the inline fast
    checks; the helper functions only run to name what is wrong.
    """

    def __init__(
        self,
        attribution: Attribution,
        principal: Principal,
        now: datetime,
        *,
        check_nul: bool,
    ) -> None:
        self.attribution = attribution
        self.principal = principal
        self.now = now
        self.check_nul = check_nul
        self.key_extensions = keys.event_key_extensions()
        self.default_plant = scope_default_plant(principal)
        self.scoped_to = principal.plant_ids
        # Extension names repeat from event to event: check each name's syntax once.
        self.valid_names: set[str] = set()

    def row(self, item: object) -> tuple[tuple[Any, ...], list[tuple[str, str]] | None]:
        """Return the item's row (``EVENT_FIELDS`` order) and its business keys."""
        if type(item) is not dict:
            raise Reject(f"an event must be a JSON object, not {json_type(item)}")
        get = item.get
        specversion = get("specversion")
        if specversion != SPECVERSION:
            if specversion is None:
                raise Reject("specversion is required")
            raise Reject(f"specversion must be '1.0', not {str(specversion)[:20]!r}")
        event_id = get("id")
        if type(event_id) is not str or not 0 < len(event_id) <= MAX_ID:
            required_text(event_id, "id", MAX_ID)
        source = get("source")
        if type(source) is not str or not 0 < len(source) <= MAX_SOURCE:
            required_text(source, "source", MAX_SOURCE)
        event_type = get("type")
        if type(event_type) is not str or not 0 < len(event_type) <= MAX_TYPE:
            required_text(event_type, "type", MAX_TYPE)
        subject = get("subject")
        if subject is None:
            subject = ""
        elif type(subject) is not str or len(subject) > MAX_SUBJECT:
            optional_text(subject, "subject", MAX_SUBJECT)
        time_value = get("time")
        when = None if time_value is None else parse_rfc3339(time_value, "time")
        datacontenttype = get("datacontenttype")
        if datacontenttype is None:
            datacontenttype = ""
        elif type(datacontenttype) is not str or len(datacontenttype) > MAX_DATACONTENTTYPE:
            optional_text(datacontenttype, "datacontenttype", MAX_DATACONTENTTYPE)
        dataschema = optional_text(get("dataschema"), "dataschema", MAX_DATASCHEMA)
        if self.check_nul and contains_nul(item):
            raise Reject("the event contains a NUL character (\\u0000), which cannot be stored")

        data = get("data")
        data_base64 = get("data_base64")
        if data_base64 is not None:
            if data is not None:
                raise Reject("data and data_base64 are mutually exclusive")
            decode_base64(data_base64, "data_base64")
        stored_data = None if data is None else json_fragment(data, "data")

        system_id, plant_id = self.attribution.resolve(source)
        extensions: dict[str, object] | None = None
        correlation_id = causation_id = trace_id = parent_span_id = ""
        key_pairs: list[tuple[str, str]] | None = None
        business_keys: dict[str, str] | None = None
        for name, value in item.items():
            if name in CORE_MEMBERS:
                continue
            if name not in self.valid_names:
                if _ATTRIBUTE_NAME.match(name) is None:
                    raise Reject(
                        f"attribute name {name[:40]!r} is invalid: CloudEvents attribute names "
                        "are lowercase letters a-z and digits only"
                    )
                self.valid_names.add(name)
            if value is None:
                continue
            if type(value) not in _EXTENSION_TYPES:
                raise Reject(
                    f"extension {name} must be a string, number or boolean, not {json_type(value)}"
                )
            if extensions is None:
                extensions = {}
            extensions[name] = value
            if name == "correlationid":
                if type(value) is str and len(value) <= MAX_CORRELATION_ID:
                    correlation_id = value
                else:
                    correlation_id = _extension_text(value, name, MAX_CORRELATION_ID)
            elif name == "causationid":
                if type(value) is str and len(value) <= MAX_CAUSATION_ID:
                    causation_id = value
                else:
                    causation_id = _extension_text(value, name, MAX_CAUSATION_ID)
            elif name == "traceparent":
                trace_id, parent_span_id = parse_traceparent(value)
            elif name == "plant":
                plant_id = self.attribution.plant_by_key.get(value) if type(value) is str else None
                if plant_id is None:
                    raise Reject(f"extension plant names an unknown plant: {str(value)[:64]!r}")
            elif name in self.key_extensions:
                text = keys.key_value(value)
                if text is None:
                    raise Reject(f"extension {name} must be a string or number")
                if len(text) > keys.MAX_KEY_VALUE:
                    raise Reject(f"extension {name} exceeds {keys.MAX_KEY_VALUE} characters")
                if text:
                    key_name = self.key_extensions[name]
                    if business_keys is None:
                        business_keys, key_pairs = {}, []
                    business_keys[key_name] = text
                    key_pairs.append((key_name, text))  # type: ignore[union-attr]

        if plant_id is None:
            plant_id = self.default_plant
        elif self.scoped_to is not None and plant_id not in self.scoped_to:
            denied = plant_denied(self.principal, plant_id, self.attribution)
            raise Reject(denied or "token is not scoped to this plant", forbidden=True)

        now = self.now
        return (
            source,
            event_id,
            event_type,
            SPECVERSION,
            subject,
            when,
            when or now,
            now,
            datacontenttype,
            dataschema,
            stored_data,
            data_base64 or "",
            _EMPTY_OBJECT if extensions is None else extensions,
            correlation_id,
            causation_id,
            trace_id,
            parent_span_id,
            _EMPTY_OBJECT if business_keys is None else business_keys,
            system_id,
            plant_id,
        ), key_pairs


# --- Storing -------------------------------------------------------------------------------


def store_events(
    rows: list[tuple[Any, ...]], keyed: dict[tuple[str, str], tuple[datetime, list]]
) -> int:
    """Insert new events (and KeyRefs for their business keys) in one transaction.

    Return how many events were new; the others were already stored.
    """
    if not rows:
        return 0
    returning = ("id", "source", "event_id") if keyed else ("id",)
    # Rows inserted in one order keep concurrent overlapping batches from deadlocking.
    rows.sort(key=_identity)
    with transaction.atomic():
        inserted = insert_ignore(Event, EVENT_FIELDS, rows, EVENT_IDENTITY, returning)
        if keyed and inserted:
            refs: list[tuple[Any, ...]] = []
            for event_pk, source, event_id in inserted:
                hit = keyed.get((source, event_id))
                if hit is not None:
                    refs.extend(keys.keyref_rows(EVENT_KIND, event_pk, hit[0], hit[1]))
            keys.insert_keyrefs(refs)
    return len(inserted)


@ingest_view("events")
def events_view(request: HttpRequest, principal: Principal) -> HttpResponse:
    """Accept CloudEvents; answer 202 with counts and per-item rejections (CONTRACT)."""
    body = read_body(request)
    items = request_events(request, body)
    if len(items) > settings.ANDON_MAX_BATCH_ITEMS:
        raise too_many_items(len(items))
    if not items:
        return empty_batch_response()

    result = BatchResult()
    checker = EventChecker(
        Attribution.load(),
        principal,
        timezone.now(),
        # A binary-mode event's headers may hold a percent-encoded NUL the body search misses.
        check_nul=len(items) == 1 or may_hold_nul(body),
    )
    rows: list[tuple[Any, ...]] = []
    keyed: dict[tuple[str, str], tuple[datetime, list]] = {}
    seen: set[tuple[str, str]] = set()
    check = checker.row
    for index, item in enumerate(items):
        try:
            row, key_pairs = check(item)
        except Reject as exc:
            result.reject(index, item_id(item), exc.message, forbidden=exc.forbidden)
            continue
        identity = (row[0], row[1])
        if identity in seen:
            result.duplicates += 1
            continue
        seen.add(identity)
        rows.append(row)
        if key_pairs:
            keyed[identity] = (row[6], key_pairs)

    inserted = store_events(rows, keyed)
    result.accepted += inserted
    result.duplicates += len(rows) - inserted
    return with_counts(result.response(), result)
