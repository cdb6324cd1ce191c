"""Realistic traffic for the benches: work orders flowing from ERP through MES, WMS and QMS.

Generation is seeded, so a run is repeatable, and happens before any clock starts.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from integrations.bench.harness import chunks

# --- CloudEvents ---------------------------------------------------------------------------

# A work order's life across the landscape: (type, source; {plant} is the work order's plant).
WORK_ORDER_FLOW: tuple[tuple[str, str], ...] = (
    ("erp.workorder.released", "/erp"),
    ("mes.workorder.acknowledged", "/mes/{plant}"),
    ("wms.material.issued", "/wms/p1"),
    ("mes.workorder.started", "/mes/{plant}"),
    ("mes.operation.completed", "/mes/{plant}"),
    ("qms.inspection.passed", "/qms/p1"),
    ("mes.workorder.completed", "/mes/{plant}"),
    ("erp.goodsreceipt.posted", "/erp"),
)
MATERIALS = ("MAT-10042", "MAT-10077", "MAT-20310", "MAT-31005", "MAT-40890")
LINES = ("L1", "L2", "L3", "L4")


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generate_events(n: int, seed: int = 1, start: datetime | None = None) -> list[dict[str, Any]]:
    """Return ``n`` CloudEvents of work orders flowing from ERP through MES, WMS and QMS."""
    rng = random.Random(seed)
    moment = start or datetime.now(UTC) - timedelta(days=1)
    events: list[dict[str, Any]] = []
    order = 100_000
    while len(events) < n:
        order += 1
        plant = "p1" if rng.random() < 0.7 else "p2"
        work_order = f"WO-{order}"
        sales_order = f"SO-{4_500_000 + order // 3}"
        lot = f"LOT-{rng.randrange(10**6):06d}"
        trace_id = f"{rng.getrandbits(128):032x}"
        qty = rng.choice((10, 20, 40, 80, 120))
        material = rng.choice(MATERIALS)
        previous_id = ""
        for step, (event_type, source) in enumerate(WORK_ORDER_FLOW):
            if len(events) >= n:
                break
            if plant == "p2" and source in ("/wms/p1", "/qms/p1"):
                continue
            moment += timedelta(milliseconds=rng.randrange(5, 400))
            event_id = _uuid(rng)
            event: dict[str, Any] = {
                "specversion": "1.0",
                "id": event_id,
                "source": source.format(plant=plant),
                "type": event_type,
                "subject": work_order,
                "time": _rfc3339(moment),
                "datacontenttype": "application/json",
                "correlationid": sales_order,
                "data": {
                    "order": work_order,
                    "material": material,
                    "qty": qty,
                    "line": rng.choice(LINES),
                    "plant": plant,
                    "step": step,
                },
            }
            if previous_id:
                event["causationid"] = previous_id
            if rng.random() < 0.3:
                event["traceparent"] = f"00-{trace_id}-{rng.getrandbits(64) | 1:016x}-01"
            if event_type.startswith(("qms.", "wms.")):
                event["lot"] = lot
                event["data"]["lot"] = lot
            events.append(event)
            previous_id = event_id
    return events


def event_bodies(events: Sequence[dict[str, Any]], batch: int) -> list[bytes]:
    """Serialise events as batched-mode bodies of ``batch`` events each."""
    return [orjson.dumps(list(part)) for part in chunks(events, batch)]


# --- OTLP spans ----------------------------------------------------------------------------

# One trace per work order: (service, span name, kind, parent index or None).
TRACE_SHAPE: tuple[tuple[str, str, int, int | None], ...] = (
    ("erp", "POST /api/workorders/release", 2, None),
    ("erp", "erp.workorders publish", 4, 0),
    ("mes-{plant}", "erp.workorders process", 5, 1),
    ("mes-{plant}", "POST /wms/reservations", 3, 2),
    ("wms-p1", "POST /reservations", 2, 3),
)


def generate_spans(n: int, seed: int = 1, start: datetime | None = None) -> list[dict[str, Any]]:
    """Return ``n`` spans (plain dicts) of work-order traces across ERP, MES and WMS."""
    rng = random.Random(seed)
    moment = start or datetime.now(UTC) - timedelta(days=1)
    base_ns = int(moment.timestamp()) * 1_000_000_000
    spans: list[dict[str, Any]] = []
    order = 100_000
    offset_ns = 0
    while len(spans) < n:
        order += 1
        plant = "p1" if rng.random() < 0.7 else "p2"
        work_order = f"WO-{order}"
        trace_id = rng.getrandbits(128).to_bytes(16, "big")
        ids: list[bytes] = []
        offset_ns += rng.randrange(1, 50) * 1_000_000
        start_ns = base_ns + offset_ns
        for service, name, kind, parent in TRACE_SHAPE:
            if len(spans) >= n:
                break
            span_id = (rng.getrandbits(64) | 1).to_bytes(8, "big")
            ids.append(span_id)
            start_ns += rng.randrange(1, 30) * 1_000_000
            duration_ns = rng.randrange(2, 400) * 1_000_000
            failed = rng.random() < 0.02
            attributes: dict[str, Any] = {
                "andon.correlation_id": work_order,
                "workorder.id": work_order,
                "plant": plant,
            }
            if kind in (2, 3):
                method, _, route = name.partition(" ")
                attributes.update(
                    {
                        "http.request.method": method,
                        "http.route": route,
                        "http.response.status_code": 503 if failed else 201,
                    }
                )
            else:
                attributes.update(
                    {
                        "messaging.system": "kafka",
                        "messaging.destination.name": "erp.workorders",
                        "messaging.message.conversation_id": work_order,
                    }
                )
            events = []
            if failed:
                events.append(
                    {
                        "name": "exception",
                        "time_unix_nano": start_ns + duration_ns,
                        "attributes": {
                            "exception.type": "HTTPError",
                            "exception.message": "upstream answered 503",
                        },
                    }
                )
            spans.append(
                {
                    "trace_id": trace_id,
                    "span_id": span_id,
                    "parent_span_id": ids[parent] if parent is not None else b"",
                    "name": name,
                    "kind": kind,
                    "service": service.format(plant=plant),
                    "start_ns": start_ns,
                    "end_ns": start_ns + duration_ns,
                    "status_code": 2 if failed else 1 if kind == 2 else 0,
                    "status_message": "upstream answered 503" if failed else "",
                    "attributes": attributes,
                    "events": events,
                }
            )
            if plant == "p2" and service == "mes-{plant}" and kind == 3:
                break  # plant 2 has no WMS in this landscape
    return spans


def _resource_attributes(service: str) -> dict[str, Any]:
    return {
        "service.name": service,
        "service.version": "4.2.1",
        "deployment.environment.name": "bench",
        "host.name": f"{service}-01",
    }


SCOPE_NAME = "andon.bench"
SCOPE_VERSION = "1.0"


def _any_value(value: Any):  # type: ignore[no-untyped-def]
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    return AnyValue(string_value=str(value))


def _key_values(attributes: dict[str, Any]) -> list[Any]:
    from opentelemetry.proto.common.v1.common_pb2 import KeyValue

    return [KeyValue(key=k, value=_any_value(v)) for k, v in attributes.items()]


def span_request(spans: Sequence[dict[str, Any]]):  # type: ignore[no-untyped-def]
    """Build one ``ExportTraceServiceRequest`` of ``spans``, one ResourceSpans per service."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

    by_service: dict[str, list[Any]] = {}
    for spec in spans:
        by_service.setdefault(spec["service"], []).append(
            Span(
                trace_id=spec["trace_id"],
                span_id=spec["span_id"],
                parent_span_id=spec["parent_span_id"],
                name=spec["name"],
                kind=spec["kind"],
                start_time_unix_nano=spec["start_ns"],
                end_time_unix_nano=spec["end_ns"],
                attributes=_key_values(spec["attributes"]),
                events=[
                    Span.Event(
                        time_unix_nano=e["time_unix_nano"],
                        name=e["name"],
                        attributes=_key_values(e["attributes"]),
                    )
                    for e in spec["events"]
                ],
                status=Status(code=spec["status_code"], message=spec["status_message"]),
            )
        )
    scope = InstrumentationScope(name=SCOPE_NAME, version=SCOPE_VERSION)
    return ExportTraceServiceRequest(
        resource_spans=[
            ResourceSpans(
                resource=Resource(attributes=_key_values(_resource_attributes(service))),
                scope_spans=[ScopeSpans(scope=scope, spans=items)],
            )
            for service, items in by_service.items()
        ]
    )


def span_bodies(spans: Sequence[dict[str, Any]], batch: int) -> list[bytes]:
    """Serialise spans as protobuf ``ExportTraceServiceRequest`` bodies of ``batch`` spans."""
    return [span_request(part).SerializeToString() for part in chunks(spans, batch)]
