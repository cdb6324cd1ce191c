"""Ingest throughput: HTTP ingest through a real server against a raw COPY of the same rows.

Run it against a PostgreSQL database of its own (it TRUNCATEs the stores)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/andon_bench python manage.py bench ingest

It creates that database when missing and migrates it, loads a small landscape
and an ingest token, starts the console under uvicorn (``--workers 2``) and
posts pre-serialised batches from forked sender processes over keep-alive
connections. Then it COPYs the very rows the endpoint stored (built by the
endpoint's own checking code) straight into the table, one transaction per
batch like the endpoint: HTTP, parsing, checking and de-duplication make the
gap between the two figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from django.core.management import call_command
from django.db import connection, models

from integrations.bench import workload
from integrations.bench.harness import (
    SendReport,
    Server,
    copy_baseline,
    database_url,
    ensure_database,
    free_port,
    require_bench_database,
    row_count,
    send_all,
    truncate_stores,
)

EVENTS_CONTENT_TYPE = "application/cloudevents-batch+json"
OTLP_CONTENT_TYPE = "application/x-protobuf"
EVENT_RATIO_TARGET = 0.5
SPAN_RATE_TARGET = 20_000
BENCH_TOKEN_NAME = "bench-ingest"

Rows = tuple[tuple[str, ...], list[tuple[Any, ...]]]


@dataclass
class IngestOptions:
    """What ``bench ingest`` sends and how."""

    events: int = 200_000
    spans: int = 200_000
    batch: int = 500
    senders: int = 4
    workers: int = 2
    port: int | None = None
    seed: int = 20260521


# --- Setting up -------------------------------------------------------------------------------


def load_bench_landscape() -> None:
    """Create (or update) the plants, systems and connectors the generated traffic names."""
    from integrations.models import Connector, Plant, System

    plants = {
        key: Plant.objects.update_or_create(key=key, defaults={"name": name})[0]
        for key, name in (("p1", "Bench Plant 1"), ("p2", "Bench Plant 2"))
    }
    systems = {}
    for key, name, kind, plant, source in (
        ("erp", "Cloud ERP", "ERP", None, "/erp"),
        ("mes-p1", "MES Plant 1", "MES", "p1", "/mes/p1"),
        ("mes-p2", "MES Plant 2", "MES", "p2", "/mes/p2"),
        ("wms-p1", "WMS Plant 1", "WMS", "p1", "/wms/p1"),
        ("qms-p1", "QMS Plant 1", "QMS", "p1", "/qms/p1"),
    ):
        systems[key] = System.objects.update_or_create(
            key=key,
            defaults={
                "name": name,
                "kind": kind,
                "plant": plants[plant] if plant else None,
                "sources": [source, key],
            },
        )[0]
    for key, source, target in (
        ("erp-to-mes-p1-orders", "erp", "mes-p1"),
        ("erp-to-mes-p2-orders", "erp", "mes-p2"),
        ("mes-p1-to-wms-p1-reservations", "mes-p1", "wms-p1"),
        ("qms-p1-to-erp-results", "qms-p1", "erp"),
    ):
        connector = Connector.objects.filter(key=key).first() or Connector(key=key)
        connector.source, connector.target = systems[source], systems[target]
        connector.save()


def issue_bench_token() -> str:
    """Replace the bench's ingest token and return its clear value."""
    from console.models import ApiToken, Role

    ApiToken.objects.filter(name=BENCH_TOKEN_NAME).delete()
    _, raw = ApiToken.issue(BENCH_TOKEN_NAME, Role.INGEST)
    return raw


def _bench_principal():  # type: ignore[no-untyped-def]
    from console.auth import Principal

    return Principal(name=BENCH_TOKEN_NAME, role="ingest")


# --- The rows the endpoints store ----------------------------------------------------------


def event_rows(events: Sequence[dict[str, Any]], now: datetime | None = None) -> Rows:
    """Return the Event fields and the rows the events endpoint stores for ``events``.

    Uses the endpoint's own checker, so the baseline COPYs exactly its column values.
    """
    from integrations.ingest.common import Attribution
    from integrations.ingest.events import EVENT_FIELDS, EventChecker

    checker = EventChecker(
        Attribution.load(), _bench_principal(), now or datetime.now(UTC), check_nul=False
    )
    return tuple(EVENT_FIELDS), [checker.row(event)[0] for event in events]


def span_rows(bodies: Sequence[bytes]) -> Rows:
    """Return the Span fields and the rows the OTLP endpoint stores for these request bodies.

    Decodes them with the endpoint's own walker, so the baseline COPYs exactly its values.
    """
    from integrations.ingest.common import Attribution
    from integrations.ingest.otlp import SPAN_FIELDS, SpanBatch, walk_protobuf

    principal = _bench_principal()
    attribution = Attribution.load()
    rows: list[tuple[Any, ...]] = []
    for body in bodies:
        batch = SpanBatch(principal, attribution)
        walk_protobuf(body, batch)
        rows.extend(batch.rows)
    return tuple(SPAN_FIELDS), rows


def rejected_events(payload: bytes) -> int:
    """Return how many events a 2xx events answer rejected."""
    return len(orjson.loads(payload).get("rejected", []))


def rejected_spans(payload: bytes) -> int:
    """Return how many spans a 2xx protobuf OTLP answer rejected."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceResponse,
    )

    return int(ExportTraceServiceResponse.FromString(payload).partial_success.rejected_spans)


# --- Results ----------------------------------------------------------------------------------


@dataclass
class Result:
    """One store's figures: HTTP ingest rate, raw COPY rate and the verdict."""

    store: str
    items: int
    stored: int
    http_seconds: float
    copy_seconds: float
    copied: int
    send: SendReport
    ratio_target: float | None = None
    rate_target: float | None = None

    @property
    def http_rate(self) -> float:
        return self.items / self.http_seconds if self.http_seconds else 0.0

    @property
    def copy_rate(self) -> float:
        return self.copied / self.copy_seconds if self.copy_seconds else 0.0

    @property
    def ratio(self) -> float:
        return self.http_rate / self.copy_rate if self.copy_rate else 0.0

    @property
    def problems(self) -> list[str]:
        """Return what went wrong besides speed: lost items, error answers."""
        found = []
        if self.stored != self.items:
            found.append(f"stored {self.stored:,} of {self.items:,} via HTTP")
        if self.copied != self.items:
            found.append(f"COPY stored {self.copied:,} of {self.items:,}")
        if not self.send.ok:
            statuses = ", ".join(f"{n}x {s}" for s, n in sorted(self.send.statuses.items()))
            found.append(f"HTTP answers: {statuses}; {'; '.join(self.send.errors[:3])}")
        return found

    @property
    def passed(self) -> bool:
        if self.problems:
            return False
        if self.ratio_target is not None and self.ratio < self.ratio_target:
            return False
        return not (self.rate_target is not None and self.http_rate < self.rate_target)

    def line(self) -> str:
        """Return the one-line verdict, e.g. ``ingest events: 41,200/s via HTTP vs ...``."""
        if self.rate_target is not None:
            target = f"target >= {self.rate_target:,.0f}/s"
        else:
            target = f"target >= {self.ratio_target or 0:.2f}"
        text = (
            f"ingest {self.store}: {self.http_rate:,.0f}/s via HTTP vs "
            f"{self.copy_rate:,.0f}/s raw COPY: ratio {self.ratio:.2f} ({target}) "
            + ("PASS" if self.passed else "FAIL")
        )
        if self.problems:
            text += " (" + "; ".join(self.problems) + ")"
        return text


# --- The run ----------------------------------------------------------------------------------


def measure(
    *,
    store: str,
    model: type[models.Model],
    server: Server,
    path: str,
    content_type: str,
    token: str,
    bodies: list[bytes],
    items: int,
    rows: Callable[[], Rows],
    count_rejected: Callable[[bytes], int],
    options: IngestOptions,
    out: TextIO,
) -> Result:
    """Post ``bodies`` to ``path`` and time it, then time a raw COPY of the same rows."""
    truncate_stores()
    out.write(
        f"{store}: posting {items:,} in {len(bodies):,} requests from "
        f"{options.senders} senders to {options.workers} workers...\n"
    )
    headers = {
        "Content-Type": content_type,
        "Authorization": f"Bearer {token}",
        "Connection": "keep-alive",
    }
    send = send_all(server.port, path, headers, bodies, options.senders, count_rejected)
    stored = row_count(model)
    out.write(
        f"{store}: {send.seconds:.2f}s via HTTP, {stored:,} stored, "
        f"{send.rejected:,} rejected, {send.retries:,} retries\n"
    )
    fields, data = rows()
    truncate_stores()
    copy_seconds = copy_baseline(model, fields, data, options.batch)
    copied = row_count(model)
    out.write(f"{store}: {copy_seconds:.2f}s raw COPY of the same rows, {copied:,} stored\n")
    return Result(
        store=store,
        items=items,
        stored=stored,
        http_seconds=send.seconds,
        copy_seconds=copy_seconds,
        copied=copied,
        send=send,
    )


def run(options: IngestOptions, out: TextIO) -> list[Result]:
    """Run the ingest bench end to end; print progress and verdicts; return the results."""
    from integrations.models import Event, Span

    require_bench_database("ingest")
    if ensure_database():
        out.write(f"created database {connection.settings_dict['NAME']}\n")
    call_command("migrate", verbosity=0, interactive=False)
    load_bench_landscape()
    token = issue_bench_token()
    truncate_stores()

    started = time.perf_counter()
    events = workload.generate_events(options.events, options.seed)
    event_bodies = workload.event_bodies(events, options.batch)
    spans = workload.generate_spans(options.spans, options.seed + 1)
    span_bodies = workload.span_bodies(spans, options.batch)
    del spans  # the bodies are all the span phase needs
    out.write(
        f"generated {len(events):,} events and {options.spans:,} spans "
        f"in {time.perf_counter() - started:.1f}s\n"
    )

    results: list[Result] = []
    with Server(options.port or free_port(), options.workers, database_url()) as server:
        out.write(f"server up on 127.0.0.1:{server.port} with {options.workers} workers\n")
        if events:
            result = measure(
                store="events",
                model=Event,
                server=server,
                path="/api/v1/events",
                content_type=EVENTS_CONTENT_TYPE,
                token=token,
                bodies=event_bodies,
                items=len(events),
                rows=lambda: event_rows(events),
                count_rejected=rejected_events,
                options=options,
                out=out,
            )
            result.ratio_target = EVENT_RATIO_TARGET
            results.append(result)
        if span_bodies:
            result = measure(
                store="spans",
                model=Span,
                server=server,
                path="/v1/traces",
                content_type=OTLP_CONTENT_TYPE,
                token=token,
                bodies=span_bodies,
                items=options.spans,
                rows=lambda: span_rows(span_bodies),
                count_rejected=rejected_spans,
                options=options,
                out=out,
            )
            result.rate_target = SPAN_RATE_TARGET
            results.append(result)
    truncate_stores()
    out.write("\n" + "\n".join(result.line() for result in results) + "\n")
    return results
