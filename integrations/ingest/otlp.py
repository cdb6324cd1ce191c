"""OTLP/HTTP trace ingest: ``POST /v1/traces`` as the OTLP specification describes it.

Binary protobuf (``application/x-protobuf``) and OTLP/JSON (``application/json``)
requests carry an ``ExportTraceServiceRequest``. Both are walked straight into
rows of :class:`~integrations.models.Span` (protobuf objects are read field by
field, JSON by a hand-written walker because protobuf's ``json_format`` reads ids
as base64 where OTLP/JSON writes hex) and stored with one set-based insert.

Answers follow the specification: ``200`` with an ``ExportTraceServiceResponse``
(``partialSuccess`` naming rejected spans) in the request's content type; a
``google.rpc.Status`` body for every 4xx/5xx.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as PbStatus

from console.auth import Principal
from integrations.ingest import keys
from integrations.ingest.bulk import insert_ignore
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
from integrations.models import ItemKind, Span

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# HTTP status -> google.rpc.Code, so a Status body says the same thing as the status line.
GRPC_CODES = {
    400: 3,  # INVALID_ARGUMENT
    401: 16,  # UNAUTHENTICATED
    403: 7,  # PERMISSION_DENIED
    404: 5,  # NOT_FOUND
    405: 12,  # UNIMPLEMENTED
    413: 8,  # RESOURCE_EXHAUSTED
    415: 3,  # INVALID_ARGUMENT
    429: 8,  # RESOURCE_EXHAUSTED
    500: 13,  # INTERNAL
    503: 14,  # UNAVAILABLE
}
UNKNOWN_CODE = 2

SPAN_FIELDS = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "service_name",
    "start",
    "end",
    "duration_ms",
    "status_code",
    "status_message",
    "attributes",
    "events",
    "resource",
    "scope",
    "correlation_id",
    "business_keys",
    "received_at",
    "system",
    "plant",
)

CORRELATION_ATTRIBUTES = ("andon.correlation_id", "messaging.message.conversation_id")
PLANT_ATTRIBUTE = "andon.plant"
SERVICE_NAME = "service.name"

# Column widths of Span and KeyRef: longer values are cut rather than failing the batch.
NAME_MAX = 512
SHORT_MAX = 255
KEY_NAME_MAX = 64

# How many rejected spans an errorMessage lists before summarising the rest.
MESSAGE_SPANS = 20

SPAN_KINDS = frozenset(PbSpan.SpanKind.values())
STATUS_CODES = frozenset(PbStatus.StatusCode.values())
SPAN_KIND_NAMES = {name: number for name, number in PbSpan.SpanKind.items()}
STATUS_CODE_NAMES = {name: number for name, number in PbStatus.StatusCode.items()}

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
UINT64_MAX = 2**64 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ZERO_TRACE_ID = bytes(16)
ZERO_SPAN_ID = bytes(8)

EMPTY_OBJECT = orjson.Fragment(b"{}")
EMPTY_ARRAY = orjson.Fragment(b"[]")


class SpanProblem(Exception):
    """Why one span (or every span of a resource) cannot be stored."""


# --- Values shared by both encodings ---------------------------------------------------


def ns_to_datetime(ns: int) -> datetime:
    """Return the aware UTC datetime of a Unix-epoch nanosecond count (microsecond precision)."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def text(value: str, limit: int | None = None) -> str:
    """Return ``value`` fit for a text column: no NUL characters, at most ``limit`` long."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    return value if limit is None else value[:limit]


def json_fragment(value: object) -> orjson.Fragment:
    """Serialise a JSON column value once, free of the NUL escapes PostgreSQL rejects."""
    try:
        blob = orjson.dumps(value)
        if b"\\u0000" in blob:
            blob = orjson.dumps(scrub_nul(value))
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise SpanProblem(f"attributes cannot be encoded as JSON: {exc}") from None
    return orjson.Fragment(blob)


def scrub_nul(value: Any) -> Any:
    """Return ``value`` with NUL characters removed from every string and key in it."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {scrub_nul(k): scrub_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_nul(v) for v in value]
    return value


def key_text(value: object) -> str | None:
    """Return an attribute value usable as a key (string or integer), else None."""
    if isinstance(value, str):
        return text(value, SHORT_MAX) or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


# --- The batch: validation, attribution, storage --------------------------------------


@dataclass(slots=True)
class ResourceContext:
    """What every span of one ResourceSpans shares."""

    service_name: str
    system_id: int | None
    plant_id: int | None
    resource: orjson.Fragment
    problem: str | None = None


class SpanBatch:
    """Collects the spans of one export request as rows, then stores them at once.

    Walkers (one per encoding) call :meth:`open_resource` per ResourceSpans and
    :meth:`add` or :meth:`reject` per span; :meth:`store` inserts the rows and
    their business-key index rows; :meth:`response` answers the exporter.
    """

    def __init__(self, principal: Principal, attribution: Attribution) -> None:
        self.principal = principal
        self.attribution = attribution
        self.received_at = timezone.now()
        self.result = BatchResult()
        self.total = 0
        self.notes: list[str] = []
        self.violations: list[tuple[str, str]] = []
        self.rows: list[tuple] = []
        self.keys: dict[tuple[str, str], tuple[datetime, list[tuple[str, str]]]] = {}
        self._seen: set[tuple[str, str]] = set()
        self._key_attributes = [
            (attribute, text(keys.short_key_name(attribute), KEY_NAME_MAX))
            for attribute in settings.ANDON_BUSINESS_KEY_ATTRIBUTES
        ]
        self._scoped = principal.plant_ids is not None
        self._own_plant = (
            next(iter(principal.plant_ids))
            if principal.plant_ids is not None and len(principal.plant_ids) == 1
            else None
        )

    @staticmethod
    def check_size(count: int) -> None:
        """Refuse a request carrying more spans than one request may."""
        limit = int(settings.ANDON_MAX_BATCH_ITEMS)
        if count > limit:
            raise IngestError(
                413,
                f"request carries {count} spans; at most {limit} are accepted per request "
                "(export smaller batches)",
            )

    def open_resource(
        self, attributes: dict[str, Any], problem: str | None = None
    ) -> ResourceContext:
        """Attribute a resource: ``service.name`` to a system, ``andon.plant`` to a plant."""
        service = attributes.get(SERVICE_NAME)
        service_name = text(service, SHORT_MAX) if isinstance(service, str) else ""
        system_id, plant_id = (
            self.attribution.resolve(service_name) if service_name else (None, None)
        )
        if problem is None and PLANT_ATTRIBUTE in attributes:
            override = attributes[PLANT_ATTRIBUTE]
            plant_id = (
                self.attribution.plant_by_key.get(override) if isinstance(override, str) else None
            )
            if plant_id is None:
                problem = f"resource attribute {PLANT_ATTRIBUTE}={override!r} is not a known plant"
        try:
            resource = json_fragment(attributes) if attributes else EMPTY_OBJECT
        except SpanProblem as exc:
            resource, problem = EMPTY_OBJECT, problem or f"resource {exc}"
        return ResourceContext(service_name, system_id, plant_id, resource, problem)

    def note(self, message: str) -> None:
        """Record a problem with the request's structure that no span can be blamed for."""
        self.notes.append(message)
        self.violations.append(("", message))

    def reject(self, where: str, name: object, problem: str, *, forbidden: bool = False) -> None:
        """Count the span at ``where`` as rejected because of ``problem``."""
        index = self.total
        self.total += 1
        label = f" {name[:80]!r}" if isinstance(name, str) and name else ""
        self.result.reject(index, where, f"{where}{label}: {problem}", forbidden=forbidden)
        self.violations.append((where, problem))

    def add(
        self,
        context: ResourceContext,
        scope: str,
        where: tuple[int, int, int],
        trace_id: str,
        span_id: str,
        parent_span_id: str,
        name: str,
        kind: int,
        start_ns: int,
        end_ns: int,
        status_code: int,
        status_message: str,
        attributes: dict[str, Any],
        events: list[dict[str, Any]] | None,
    ) -> None:
        """Validate a decoded span and queue its row (or reject it, naming why)."""
        if context.problem is not None:
            return self.reject(span_path(where), name, context.problem)
        if start_ns == 0:
            return self.reject(span_path(where), name, "startTimeUnixNano is missing")
        if end_ns < start_ns:
            return self.reject(
                span_path(where),
                name,
                f"endTimeUnixNano {end_ns} is before startTimeUnixNano {start_ns}",
            )
        plant_id = context.plant_id
        if PLANT_ATTRIBUTE in attributes:
            override = attributes[PLANT_ATTRIBUTE]
            plant_id = (
                self.attribution.plant_by_key.get(override) if isinstance(override, str) else None
            )
            if plant_id is None:
                return self.reject(
                    span_path(where),
                    name,
                    f"attribute {PLANT_ATTRIBUTE}={override!r} is not a known plant",
                )
        if self._scoped:
            if plant_id is None:
                plant_id = self._own_plant
            else:
                denied = plant_denied(self.principal, plant_id, self.attribution)
                if denied is not None:
                    return self.reject(span_path(where), name, denied, forbidden=True)
        try:
            attributes_json = json_fragment(attributes) if attributes else EMPTY_OBJECT
            events_json = json_fragment(events) if events else EMPTY_ARRAY
        except SpanProblem as exc:
            return self.reject(span_path(where), name, str(exc))

        self.total += 1
        identity = (trace_id, span_id)
        if identity in self._seen:
            self.result.duplicates += 1
            return None
        self._seen.add(identity)

        correlation = ""
        for attribute in CORRELATION_ATTRIBUTES:
            value = attributes.get(attribute)
            if value is not None and (value := key_text(value)):
                correlation = value
                break
        business_keys = None
        for attribute, key_name in self._key_attributes:
            value = attributes.get(attribute)
            if value is not None and (value := key_text(value)):
                if business_keys is None:
                    business_keys = {}
                business_keys[key_name] = value
        start = ns_to_datetime(start_ns)
        if business_keys is not None:
            # A key equal to the correlation id is found through the indexed column already.
            extra = [(k, v) for k, v in business_keys.items() if v != correlation]
            if extra:
                self.keys[identity] = (start, extra)
        self.rows.append(
            (
                trace_id,
                span_id,
                parent_span_id,
                text(name, NAME_MAX),
                # Enums are open: a kind or code from a newer OTLP is kept as "unspecified".
                kind if kind in SPAN_KINDS else 0,
                context.service_name,
                start,
                ns_to_datetime(end_ns),
                (end_ns - start_ns) / 1e6,
                status_code if status_code in STATUS_CODES else 0,
                text(status_message) if status_message else "",
                attributes_json,
                events_json,
                context.resource,
                scope,
                correlation,
                json_fragment(business_keys) if business_keys else EMPTY_OBJECT,
                self.received_at,
                context.system_id,
                plant_id,
            )
        )
        return None

    def store(self) -> None:
        """Insert the queued spans (a re-sent span is kept once) and their key index rows."""
        if not self.rows:
            return
        with transaction.atomic():
            returning = ("id", "trace_id", "span_id") if self.keys else ("id",)
            inserted = insert_ignore(
                Span, SPAN_FIELDS, self.rows, ("trace_id", "span_id"), returning
            )
            if self.keys:
                refs = []
                for span_pk, trace_id, span_id in inserted:
                    hit = self.keys.get((trace_id, span_id))
                    if hit is not None:
                        refs.extend(keys.keyref_rows(ItemKind.SPAN.value, span_pk, *hit))
                keys.insert_keyrefs(refs)
        self.result.accepted = len(inserted)
        self.result.duplicates += len(self.rows) - len(inserted)

    def error_message(self) -> str:
        """Summarise rejected spans and structural problems for a human."""
        rejected = self.result.rejected
        parts = [str(item["error"]) for item in rejected[:MESSAGE_SPANS]]
        if len(rejected) > MESSAGE_SPANS:
            parts.append(f"and {len(rejected) - MESSAGE_SPANS} more")
        parts.extend(self.notes)
        head = f"{len(rejected)} of {self.total} spans rejected"
        return f"{head}: " + "; ".join(parts)

    def response(self, protobuf: bool) -> HttpResponse:
        """Answer 200 (partialSuccess when something was rejected), else 403 or 400."""
        result = self.result
        stored = result.accepted or result.duplicates
        if not stored and (result.rejected or self.notes):
            forbidden = bool(result.rejected) and result.forbidden == len(result.rejected)
            if forbidden and not self.notes:
                response = render_status(protobuf, 403, self.error_message())
            else:
                response = render_status(
                    protobuf, 400, self.error_message(), self.violations[: MESSAGE_SPANS * 5]
                )
            return with_counts(response, result)
        partial = None
        if result.rejected or self.notes:
            partial = (len(result.rejected), self.error_message())
        return with_counts(export_response(protobuf, partial), result)


def span_path(where: tuple[int, int, int]) -> str:
    """Return a span's position in the request, e.g. ``resourceSpans[0].scopeSpans[1].spans[7]``."""
    r, s, p = where
    return f"resourceSpans[{r}].scopeSpans[{s}].spans[{p}]"


# --- Binary protobuf --------------------------------------------------------------------

SCALAR_VALUES = frozenset({"bool_value", "int_value", "double_value"})


def pb_attributes(pairs: Iterable[Any]) -> dict[str, Any]:
    """Flatten repeated KeyValue into a dict of plain values."""
    out: dict[str, Any] = {}
    for pair in pairs:
        value = pair.value
        which = value.WhichOneof("value")
        if which == "string_value":
            out[pair.key] = value.string_value
        elif which in SCALAR_VALUES:
            out[pair.key] = getattr(value, which)
        else:
            out[pair.key] = pb_value(value, which)
    return out


def pb_value(value: Any, which: str | None) -> Any:
    """Return the plain value of an AnyValue whose set field is ``which``."""
    if which is None:
        return None
    if which == "array_value":
        return [pb_value(item, item.WhichOneof("value")) for item in value.array_value.values]
    if which == "kvlist_value":
        return pb_attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return getattr(value, which)


def pb_events(events: Iterable[Any]) -> list[dict[str, Any]]:
    """Return span events as ``{"name", "time", "attributes"}`` objects."""
    return [
        {
            "name": event.name,
            "time": ns_to_datetime(event.time_unix_nano).isoformat(),
            "attributes": pb_attributes(event.attributes),
        }
        for event in events
    ]


def pb_id_problem(value: bytes, size: int, field: str) -> str | None:
    """Return what is wrong with a binary trace or span id, None when it is valid."""
    if len(value) != size:
        return f"{field} must be {size} bytes, got {len(value)}"
    if value.count(0) == size:
        return f"{field} is all zeros, which is not a valid id"
    return None


def walk_protobuf(body: bytes, batch: SpanBatch) -> None:
    """Decode a binary ExportTraceServiceRequest into ``batch``."""
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise IngestError(
            400, f"body is not a valid protobuf ExportTraceServiceRequest: {exc}"
        ) from None
    batch.check_size(sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans))
    add = batch.add
    for r, resource_spans in enumerate(request.resource_spans):
        context = batch.open_resource(pb_attributes(resource_spans.resource.attributes))
        for s, scope_spans in enumerate(resource_spans.scope_spans):
            scope = text(scope_spans.scope.name, SHORT_MAX)
            for p, span in enumerate(scope_spans.spans):
                trace_id = span.trace_id
                span_id = span.span_id
                parent = span.parent_span_id
                problem = None
                if len(trace_id) != 16 or trace_id == ZERO_TRACE_ID:
                    problem = pb_id_problem(trace_id, 16, "traceId")
                elif len(span_id) != 8 or span_id == ZERO_SPAN_ID:
                    problem = pb_id_problem(span_id, 8, "spanId")
                elif parent and len(parent) != 8:
                    problem = f"parentSpanId must be empty or 8 bytes, got {len(parent)}"
                if problem is not None:
                    batch.reject(span_path((r, s, p)), span.name, problem)
                    continue
                status = span.status
                add(
                    context,
                    scope,
                    (r, s, p),
                    trace_id.hex(),
                    span_id.hex(),
                    "" if not parent or parent == ZERO_SPAN_ID else parent.hex(),
                    span.name,
                    span.kind,
                    span.start_time_unix_nano,
                    span.end_time_unix_nano,
                    status.code,
                    status.message,
                    pb_attributes(span.attributes),
                    pb_events(span.events) if span.events else None,
                )


# --- OTLP/JSON ------------------------------------------------------------------------


def jget(obj: dict[str, Any], camel: str, snake: str) -> Any:
    """Read a field by its lowerCamelCase name, falling back to the proto (snake_case) name."""
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def json_array(value: Any, what: str) -> list[Any]:
    """Return a JSON array field (absent: empty); raise SpanProblem for another type."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise SpanProblem(f"{what} must be an array")
    return value


def json_object(value: Any, what: str) -> dict[str, Any]:
    """Return a JSON object field (absent: empty); raise SpanProblem for another type."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpanProblem(f"{what} must be an object")
    return value


def json_string(value: Any, what: str) -> str:
    """Return a JSON string field (absent: empty); raise SpanProblem for another type."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SpanProblem(f"{what} must be a string")
    return value


def is_decimal(value: str) -> bool:
    """Return whether ``value`` is an optionally negative run of ASCII digits."""
    digits = value[1:] if value[:1] == "-" else value
    return digits.isascii() and digits.isdigit()


def json_integer(value: Any, what: str, low: int, high: int) -> int:
    """Read a (64-bit) integer given as a JSON number or a decimal string."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise SpanProblem(f"{what} must be an integer, not a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and is_decimal(value):
        number = int(value)
    else:
        raise SpanProblem(f"{what} must be an integer or a decimal string, got {value!r:.40}")
    if not low <= number <= high:
        raise SpanProblem(f"{what} {number} is out of range")
    return number


def json_enum(value: Any, names: dict[str, int], what: str) -> int:
    """Read an enum given as an integer (OTLP/JSON) or, leniently, by its name."""
    if isinstance(value, str) and not is_decimal(value):
        number = names.get(value)
        if number is None:
            raise SpanProblem(f"{what} {value!r:.60} is not a known value")
        return number
    return json_integer(value, what, INT64_MIN, INT64_MAX)


def json_double(value: Any, what: str) -> float:
    """Read a double given as a JSON number or a string ("NaN", "Infinity", "1.5")."""
    if isinstance(value, bool):
        raise SpanProblem(f"{what} must be a number")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    raise SpanProblem(f"{what} must be a number, got {value!r:.40}")


def json_id(value: Any, size: int, what: str, *, zero_is_none: bool = False) -> str:
    """Read a hex-encoded id; return '' when absent, lower-case hex when valid."""
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise SpanProblem(f"{what} must be a hex string")
    if len(value) != size * 2:
        raise SpanProblem(
            f"{what} must be {size * 2} hex characters ({size} bytes), got {len(value)} "
            f"({value[:48]!r}); OTLP/JSON encodes ids as hex, not base64"
        )
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise SpanProblem(f"{what} is not hex: {value!r}") from None
    if len(raw) != size:
        raise SpanProblem(f"{what} is not hex: {value!r}")
    if raw.count(0) == size:
        if zero_is_none:
            return ""
        raise SpanProblem(f"{what} is all zeros, which is not a valid id")
    return raw.hex()


def json_attributes(pairs: Any, what: str) -> dict[str, Any]:
    """Flatten a JSON array of KeyValue objects into a dict of plain values."""
    out: dict[str, Any] = {}
    for pair in json_array(pairs, what):
        if not isinstance(pair, dict):
            raise SpanProblem(f"{what} entries must be {{key, value}} objects")
        key = pair.get("key")
        if not isinstance(key, str):
            raise SpanProblem(f"{what} has an entry without a string key")
        out[key] = json_value(pair.get("value"), f"{what}[{key!r}]")
    return out


def json_value(value: Any, what: str) -> Any:
    """Return the plain value of an AnyValue object."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise SpanProblem(f"{what} must be an AnyValue object")
    for field, item in value.items():
        if field in ("stringValue", "string_value"):
            return json_string(item, what)
        if field in ("intValue", "int_value"):
            return json_integer(item, what, INT64_MIN, INT64_MAX)
        if field in ("boolValue", "bool_value"):
            if not isinstance(item, bool):
                raise SpanProblem(f"{what} boolValue must be true or false")
            return item
        if field in ("doubleValue", "double_value"):
            return json_double(item, what)
        if field in ("arrayValue", "array_value"):
            values = json_object(item, what).get("values")
            return [json_value(v, what) for v in json_array(values, what)]
        if field in ("kvlistValue", "kvlist_value"):
            return json_attributes(json_object(item, what).get("values"), what)
        if field in ("bytesValue", "bytes_value"):
            return json_string(item, what)
    return None


def json_events(events: Any) -> list[dict[str, Any]] | None:
    """Return span events as ``{"name", "time", "attributes"}`` objects, None when none."""
    out = []
    for i, event in enumerate(json_array(events, "events")):
        what = f"events[{i}]"
        event = json_object(event, what)
        out.append(
            {
                "name": json_string(event.get("name"), f"{what}.name"),
                "time": ns_to_datetime(
                    json_integer(
                        jget(event, "timeUnixNano", "time_unix_nano"),
                        f"{what}.timeUnixNano",
                        0,
                        UINT64_MAX,
                    )
                ).isoformat(),
                "attributes": json_attributes(event.get("attributes"), f"{what}.attributes"),
            }
        )
    return out or None


def walk_json(body: bytes, batch: SpanBatch) -> None:
    """Decode an OTLP/JSON ExportTraceServiceRequest into ``batch``."""
    document = parse_json(body)
    if not isinstance(document, dict):
        raise IngestError(400, "OTLP/JSON body must be an ExportTraceServiceRequest object")
    resource_spans = jget(document, "resourceSpans", "resource_spans")
    if resource_spans is None:
        return
    if not isinstance(resource_spans, list):
        raise IngestError(400, "resourceSpans must be an array")
    groups = json_groups(resource_spans, batch)
    batch.check_size(sum(len(spans) for _, _, scopes in groups for _, _, spans in scopes))
    for r, item, scopes in groups:
        problem = None
        try:
            resource = json_object(item.get("resource"), "resource")
            attributes = json_attributes(resource.get("attributes"), "resource.attributes")
        except SpanProblem as exc:
            attributes, problem = {}, str(exc)
        context = batch.open_resource(attributes, problem)
        for s, scoped, spans in scopes:
            scope_problem = None
            try:
                scope = json_object(scoped.get("scope"), "scope")
                scope_name = text(json_string(scope.get("name"), "scope.name"), SHORT_MAX)
            except SpanProblem as exc:
                scope_name, scope_problem = "", str(exc)
            for p, span in enumerate(spans):
                walk_json_span(batch, context, scope_name, scope_problem, (r, s, p), span)


JsonGroup = tuple[int, dict[str, Any], list[tuple[int, dict[str, Any], list[Any]]]]


def json_groups(resource_spans: list[Any], batch: SpanBatch) -> list[JsonGroup]:
    """Return the well-formed ResourceSpans and ScopeSpans; note the malformed ones."""
    groups: list[JsonGroup] = []
    for r, item in enumerate(resource_spans):
        where = f"resourceSpans[{r}]"
        if not isinstance(item, dict):
            batch.note(f"{where} is not an object")
            continue
        scope_spans = jget(item, "scopeSpans", "scope_spans")
        if not isinstance(scope_spans, list | None):
            batch.note(f"{where}.scopeSpans is not an array")
            continue
        scopes = []
        for s, scoped in enumerate(scope_spans or ()):
            if not isinstance(scoped, dict):
                batch.note(f"{where}.scopeSpans[{s}] is not an object")
                continue
            spans = scoped.get("spans")
            if not isinstance(spans, list | None):
                batch.note(f"{where}.scopeSpans[{s}].spans is not an array")
                continue
            scopes.append((s, scoped, spans or []))
        groups.append((r, item, scopes))
    return groups


def walk_json_span(
    batch: SpanBatch,
    context: ResourceContext,
    scope: str,
    scope_problem: str | None,
    where: tuple[int, int, int],
    span: Any,
) -> None:
    """Decode one OTLP/JSON span into ``batch`` (or reject it, naming the problem)."""
    name = span.get("name") if isinstance(span, dict) else None
    try:
        if not isinstance(span, dict):
            raise SpanProblem("span must be an object")
        if scope_problem is not None:
            raise SpanProblem(scope_problem)
        trace_id = json_id(jget(span, "traceId", "trace_id"), 16, "traceId")
        if not trace_id:
            raise SpanProblem("traceId is missing")
        span_id = json_id(jget(span, "spanId", "span_id"), 8, "spanId")
        if not span_id:
            raise SpanProblem("spanId is missing")
        parent_span_id = json_id(
            jget(span, "parentSpanId", "parent_span_id"), 8, "parentSpanId", zero_is_none=True
        )
        status = json_object(span.get("status"), "status")
        fields = (
            json_string(name, "name"),
            json_enum(span.get("kind"), SPAN_KIND_NAMES, "kind"),
            json_integer(
                jget(span, "startTimeUnixNano", "start_time_unix_nano"),
                "startTimeUnixNano",
                0,
                UINT64_MAX,
            ),
            json_integer(
                jget(span, "endTimeUnixNano", "end_time_unix_nano"),
                "endTimeUnixNano",
                0,
                UINT64_MAX,
            ),
            json_enum(status.get("code"), STATUS_CODE_NAMES, "status.code"),
            json_string(status.get("message"), "status.message"),
            json_attributes(span.get("attributes"), "attributes"),
            json_events(span.get("events")),
        )
    except SpanProblem as exc:
        batch.reject(span_path(where), name, str(exc))
        return
    batch.add(context, scope, where, trace_id, span_id, parent_span_id, *fields)


# --- Answers ----------------------------------------------------------------------------


def export_response(protobuf: bool, partial: tuple[int, str] | None) -> HttpResponse:
    """Return 200 with an ExportTraceServiceResponse; ``partial`` is (rejected, message)."""
    if protobuf:
        message = ExportTraceServiceResponse()
        if partial is not None:
            message.partial_success.CopyFrom(
                ExportTracePartialSuccess(rejected_spans=partial[0], error_message=partial[1])
            )
        return HttpResponse(message.SerializeToString(), status=200, content_type=PROTOBUF)
    body: dict[str, Any] = {}
    if partial is not None:
        # int64 is a decimal string in the proto3 JSON mapping.
        body["partialSuccess"] = {"rejectedSpans": str(partial[0]), "errorMessage": partial[1]}
    return HttpResponse(orjson.dumps(body), status=200, content_type=JSON)


def render_status(
    protobuf: bool, status: int, message: str, violations: list[tuple[str, str]] | None = None
) -> HttpResponse:
    """Return a google.rpc.Status body (with a BadRequest detail when given violations)."""
    code = GRPC_CODES.get(status, UNKNOWN_CODE)
    if protobuf:
        body = status_pb2.Status(code=code, message=message)
        if violations:
            detail = error_details_pb2.BadRequest()
            for field, description in violations:
                detail.field_violations.add(field=field, description=description)
            body.details.add().Pack(detail)
        return HttpResponse(body.SerializeToString(), status=status, content_type=PROTOBUF)
    document: dict[str, Any] = {"code": code, "message": message}
    if violations:
        document["details"] = [
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [
                    {"field": field, "description": description}
                    for field, description in violations
                ],
            }
        ]
    return HttpResponse(orjson.dumps(document), status=status, content_type=JSON)


def render_error(request: HttpRequest, status: int, message: str) -> HttpResponse:
    """Render a request-level failure as google.rpc.Status in the request's encoding."""
    return render_status(media_type(request) == PROTOBUF, status, message)


# --- The view ---------------------------------------------------------------------------


@ingest_view("traces", render_error)
def traces_view(request: HttpRequest, principal: Principal) -> HttpResponse:
    """Ingest an OTLP/HTTP ExportTraceServiceRequest (binary protobuf or JSON)."""
    kind = media_type(request)
    if kind not in (PROTOBUF, JSON):
        raise IngestError(
            415,
            f"unsupported Content-Type {kind or '(none)'!r}; use {PROTOBUF} or {JSON}",
        )
    body = read_body(request)
    batch = SpanBatch(principal, Attribution.load())
    protobuf = kind == PROTOBUF
    if protobuf:
        walk_protobuf(body, batch)
    else:
        walk_json(body, batch)
    batch.store()
    return batch.response(protobuf)
