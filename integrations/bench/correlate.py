"""Correlation speed: the correlation API against the bare indexed lookup of a key's rows.

Run it against a PostgreSQL database of its own (it TRUNCATEs the stores)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/andon_bench python manage.py bench correlate

It seeds 2,000,000 events, 2,000,000 spans and 1,000,000 messages (with their
attempts and business-key index rows) as 500,000 work-order chains of ten
items whose keys change along the way::

    ERP releases WO-n (trace T-n) -> order message to MES (key workorder=WO-n)
    -> MES acknowledges WO-n -> MES produces lot L-n (subject WO-n, lot=L-n)
    -> WMS receives L-n -> shipment message to TMS (keys lot=L-n, shipment=SH-n)

plus four spans of trace T-n. Rows are COPYed straight into the tables and the
tables ANALYZEd; a seed already in place (same size and seed) is reused unless
``--reseed``. Then, over random keys (work orders, lots and shipments mixed),
it times ``GET /api/v1/correlations/{key}`` in-process through Django's test
client with an operator token, and the bare SQL lookup of each key's direct
rows as the baseline; and the message explorer's list page (a few filter
combinations and page 2 by its cursor).
"""

from __future__ import annotations

import random
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import unescape
from typing import Any, TextIO
from urllib.parse import quote

import orjson
from django.core.management import call_command
from django.db import connection

from integrations.bench.harness import (
    copy_json,
    copy_line,
    copy_lines,
    ensure_database,
    require_bench_database,
    row_count,
    seed_label,
    truncate_stores,
)
from integrations.bench.ingest import load_bench_landscape

API_P99_TARGET_MS = 20.0
EXPLORER_P95_TARGET_MS = 150.0
SEED_VERSION = 1
OPERATOR_TOKEN_NAME = "bench-correlate-operator"
EXPLORER_USER = "bench-correlate-operator"
# Items per work order, by store.
EVENTS_PER_ORDER, SPANS_PER_ORDER, MESSAGES_PER_ORDER = 4, 4, 2


@dataclass
class CorrelateOptions:
    """What ``bench correlate`` seeds and measures."""

    work_orders: int = 500_000
    keys: int = 1_000
    explorer_runs: int = 20
    reseed: bool = False
    seed: int = 20260521


# --- The landscape the chains run through ----------------------------------------------------


@dataclass
class Landscape:
    """Ids of the plants, systems and connectors the seeded rows point at."""

    plants: dict[str, int]
    systems: dict[str, int]
    connectors: dict[str, int]


def load_landscape() -> Landscape:
    """Create the bench landscape plus WMS of plant 2, TMS and the connectors of the chains."""
    from integrations.models import Connector, Plant, System

    load_bench_landscape()
    p2 = Plant.objects.get(key="p2")
    wms2 = System.objects.update_or_create(
        key="wms-p2",
        defaults={"name": "WMS Plant 2", "kind": "WMS", "plant": p2, "sources": ["/wms/p2"]},
    )[0]
    tms = System.objects.update_or_create(
        key="tms", defaults={"name": "Carrier TMS", "kind": "TMS", "sources": ["tms"]}
    )[0]
    systems = {s.key: s for s in System.objects.all()}
    systems["wms-p2"], systems["tms"] = wms2, tms
    for key, source, target, slo in (
        ("erp-to-mes-p1-orders", "erp", "mes-p1", 2000),
        ("erp-to-mes-p2-orders", "erp", "mes-p2", 2000),
        ("wms-p1-to-tms-shipments", "wms-p1", "tms", 1000),
        ("wms-p2-to-tms-shipments", "wms-p2", "tms", 1000),
    ):
        connector = Connector.objects.filter(key=key).first() or Connector(key=key)
        connector.source, connector.target = systems[source], systems[target]
        connector.latency_slo_ms = slo
        connector.sensitive_fields = ["customer.email"] if "shipments" in key else []
        connector.save()
    return Landscape(
        plants=dict(Plant.objects.values_list("key", "id")),
        systems=dict(System.objects.values_list("key", "id")),
        connectors=dict(Connector.objects.values_list("key", "id")),
    )


# --- Seeding ---------------------------------------------------------------------------------

EVENT_COLUMNS = (
    "id", "source", "event_id", "type", "specversion", "subject", "time", "occurred_at",
    "received_at", "datacontenttype", "dataschema", "data", "data_base64", "extensions",
    "correlation_id", "causation_id", "trace_id", "parent_span_id", "business_keys",
    "system_id", "plant_id",
)  # fmt: skip
SPAN_COLUMNS = (
    "id", "trace_id", "span_id", "parent_span_id", "name", "kind", "service_name", "start", "end",
    "duration_ms", "status_code", "status_message", "attributes", "events", "resource", "scope",
    "correlation_id", "business_keys", "received_at", "system_id", "plant_id",
)  # fmt: skip
MESSAGE_COLUMNS = (
    "id", "connector_id", "external_id", "status", "occurred_at", "last_attempt_at",
    "received_at", "correlation_id", "business_keys", "latency_ms", "error", "headers",
    "content_type", "payload", "attempt_count", "plant_id",
)  # fmt: skip
ATTEMPT_COLUMNS = ("message_id", "at", "status", "latency_ms", "error", "received_at")
KEYREF_COLUMNS = ("value", "name", "item_kind", "item_id", "at")

MATERIALS = ("MAT-10042", "MAT-10077", "MAT-20310", "MAT-31005", "MAT-40890")


def _ts(moment: datetime) -> str:
    return moment.isoformat()


def _bytea(value: bytes) -> str:
    return "\\\\x" + value.hex()


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


@dataclass
class Chains:
    """Lines (COPY text format) of every store for a range of work orders."""

    events: list[str]
    spans: list[str]
    messages: list[str]
    attempts: list[str]
    keyrefs: list[str]


def generate(first: int, last: int, land: Landscape, start: datetime, seed: int) -> Chains:
    """Return the rows of work orders ``first`` to ``last`` (inclusive) as COPY lines.

    Ids are assigned from the work order's number, so any range is generated alone.
    """
    rng = random.Random(seed * 1_000_003 + first)
    out = Chains([], [], [], [], [])
    plants, systems, connectors = land.plants, land.systems, land.connectors
    for n in range(first, last + 1):
        plant = "p1" if n % 10 < 7 else "p2"
        plant_id = plants[plant]
        mes, wms = f"mes-{plant}", f"wms-{plant}"
        wo, lot, shipment = f"WO-{n}", f"L-{n}", f"SH-{n}"
        trace = f"{rng.getrandbits(128):032x}"
        span_ids = [f"{rng.getrandbits(64) | 1:016x}" for _ in range(SPANS_PER_ORDER)]
        t0 = start + timedelta(seconds=n * 5)
        order_latency = rng.randrange(150, 2600)
        order_status = "delivered"
        roll = rng.random()
        if roll < 0.02:
            order_status = "dead_lettered"
        elif roll < 0.05:
            order_status = "failed"
        t_ack = t0 + timedelta(milliseconds=order_latency + rng.randrange(50, 400))
        t_lot = t0 + timedelta(minutes=rng.randrange(30, 90))
        t_receipt = t_lot + timedelta(milliseconds=rng.randrange(500, 5000))
        t_ship = t_receipt + timedelta(minutes=rng.randrange(10, 60))
        material, qty = rng.choice(MATERIALS), rng.choice((10, 20, 40, 80, 120))

        # Events: released -> acknowledged -> lot produced -> goods received.
        base = (n - 1) * EVENTS_PER_ORDER
        ids = [_uuid(rng) for _ in range(EVENTS_PER_ORDER)]
        data = {"order": wo, "material": material, "qty": qty, "plant": plant}
        specs = (
            ("/erp", "erp.workorder.released", wo, t0, "erp", {}, "", trace, span_ids[0]),
            ("/mes/" + plant, "mes.workorder.acknowledged", wo, t_ack, mes, {}, ids[0], "", ""),
            ("/mes/" + plant, "mes.lot.produced", wo, t_lot, mes, {"lot": lot}, ids[1], "", ""),
            ("/wms/" + plant, "wms.goods.received", lot, t_receipt, wms, {}, ids[2], "", ""),
        )
        for k, (source, kind, subject, moment, system, keys, cause, trace_id, parent) in enumerate(
            specs
        ):
            extensions: dict[str, Any] = {"plant": plant, **keys}
            if cause:
                extensions["causationid"] = cause
            if trace_id:
                extensions["traceparent"] = f"00-{trace_id}-{parent}-01"
            event_pk = base + k + 1
            out.events.append(
                copy_line(
                    (
                        event_pk, source, ids[k], kind, "1.0", subject, _ts(moment), _ts(moment),
                        _ts(moment + timedelta(milliseconds=40)), "application/json", "",
                        copy_json(data), "", copy_json(extensions), "", cause, trace_id, parent,
                        copy_json(keys), systems[system], plant_id,
                    )
                )
            )  # fmt: skip
            if keys:
                out.keyrefs.append(copy_line((lot, "lot", "e", event_pk, _ts(moment))))

        # Spans of trace T-n: ERP release -> ERP client call -> MES server -> MES lot production.
        base = (n - 1) * SPANS_PER_ORDER
        shapes = (
            ("erp", "POST /workorders/release", 2, "", t0 - timedelta(milliseconds=20), 80, {}),
            ("erp", "POST mes /orders", 3, span_ids[0], t0, order_latency, {}),
            (mes, "POST /orders", 2, span_ids[1], t0 + timedelta(milliseconds=order_latency // 4),
             rng.randrange(20, 200), {}),
            (mes, "lot.produce", 1, span_ids[2], t_lot, rng.randrange(5, 50), {"lot.id": lot}),
        )  # fmt: skip
        for k, (service, name, kind, parent, moment, duration, extra) in enumerate(shapes):
            failed = rng.random() < 0.02
            attributes = {"andon.correlation_id": wo, "workorder.id": wo, **extra}
            keys = {"workorder": wo, **({"lot": lot} if extra else {})}
            span_pk = base + k + 1
            out.spans.append(
                copy_line(
                    (
                        span_pk, trace, span_ids[k], parent, name, kind, service, _ts(moment),
                        _ts(moment + timedelta(milliseconds=duration)), float(duration),
                        2 if failed else 1, "upstream answered 503" if failed else "",
                        copy_json(attributes), "[]", copy_json({"service.name": service}),
                        "andon.bench",
                        wo, copy_json(keys), _ts(moment + timedelta(seconds=1)), systems[service],
                        plant_id,
                    )
                )
            )  # fmt: skip
            if extra:
                out.keyrefs.append(copy_line((lot, "lot", "s", span_pk, _ts(moment))))

        # Messages: the order to MES, the shipment to TMS; each with its attempts.
        base = (n - 1) * MESSAGES_PER_ORDER
        ship_status = "failed" if rng.random() < 0.03 else "delivered"
        messages = (
            (f"erp-to-mes-{plant}-orders", f"ORD-{n}", order_status, t0, order_latency, wo,
             {"workorder": wo}, {"order": wo, "material": material, "qty": qty}),
            (f"{wms}-to-tms-shipments", f"SHP-{n}", ship_status, t_ship, rng.randrange(80, 1400),
             shipment, {"lot": lot, "shipment": shipment},
             {"shipment": shipment, "lot": lot, "customer": {"email": f"buyer{n}@example.com"}}),
        )  # fmt: skip
        for k, (connector, external, status, moment, latency, corr, keys, body) in enumerate(
            messages
        ):
            message_pk = base + k + 1
            attempts = {"delivered": ["delivered"], "failed": ["failed", "failed"]}.get(
                status, ["failed", "failed", "dead_lettered"]
            )
            error = "" if status == "delivered" else "target answered 503"
            last = moment + timedelta(seconds=30 * (len(attempts) - 1))
            out.messages.append(
                copy_line(
                    (
                        message_pk, connectors[connector], external, status, _ts(moment),
                        _ts(last), _ts(last + timedelta(milliseconds=30)), corr, copy_json(keys),
                        latency if status == "delivered" else None, error,
                        copy_json({"content-type": "application/json"}), "application/json",
                        _bytea(orjson.dumps(body)), len(attempts), plant_id,
                    )
                )
            )  # fmt: skip
            for index, attempt in enumerate(attempts):
                at = moment + timedelta(seconds=30 * index)
                out.attempts.append(
                    copy_line(
                        (
                            message_pk, _ts(at), attempt,
                            latency if attempt == "delivered" else None,
                            "" if attempt == "delivered" else "target answered 503",
                            _ts(at + timedelta(milliseconds=30)),
                        )
                    )
                )  # fmt: skip
            for name, value in keys.items():
                out.keyrefs.append(copy_line((value, name, "m", message_pk, _ts(moment))))
    return out


def _tables() -> dict[str, str]:
    from integrations.models import Event, KeyRef, Message, MessageAttempt, Span

    return {
        "events": Event._meta.db_table,
        "spans": Span._meta.db_table,
        "messages": Message._meta.db_table,
        "attempts": MessageAttempt._meta.db_table,
        "keyrefs": KeyRef._meta.db_table,
    }


def signature(options: CorrelateOptions) -> str:
    """Return what the seeded events table is labelled with (a table comment)."""
    return (
        f"andon bench correlate v{SEED_VERSION}: {options.work_orders} work orders, "
        f"seed {options.seed}"
    )


def seeded(options: CorrelateOptions) -> bool:
    """Return whether the seed of these options is already in place (label and row counts)."""
    from integrations.models import Event, Message, Span

    label = seed_label(Event._meta.db_table)
    n = options.work_orders
    return (
        label == signature(options)
        and row_count(Event) == n * EVENTS_PER_ORDER
        and row_count(Span) == n * SPANS_PER_ORDER
        and row_count(Message) == n * MESSAGES_PER_ORDER
    )


def seed(options: CorrelateOptions, land: Landscape, start: datetime, out: TextIO) -> None:
    """Empty the stores and COPY the chains in, then ANALYZE and label the seed."""
    tables = _tables()
    truncate_stores()
    with connection.cursor() as cursor:
        cursor.execute(f"COMMENT ON TABLE {tables['events']} IS NULL")
    columns = {
        "events": EVENT_COLUMNS,
        "spans": SPAN_COLUMNS,
        "messages": MESSAGE_COLUMNS,
        "attempts": ATTEMPT_COLUMNS,
        "keyrefs": KEYREF_COLUMNS,
    }
    started = time.perf_counter()
    step = 25_000
    for first in range(1, options.work_orders + 1, step):
        last = min(first + step - 1, options.work_orders)
        chains = generate(first, last, land, start, options.seed)
        for store, cols in columns.items():
            copy_lines(tables[store], cols, getattr(chains, store))
        if last % 100_000 == 0 or last == options.work_orders:
            out.write(
                f"seeded {last:,} of {options.work_orders:,} work orders "
                f"({time.perf_counter() - started:.0f}s)\n"
            )
    with connection.cursor() as cursor:
        for store in ("events", "spans", "messages", "attempts", "keyrefs"):
            table = tables[store]
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"(SELECT COALESCE(MAX(id), 1) FROM {table}))"
            )
        for table in tables.values():
            cursor.execute(f"ANALYZE {table}")
        cursor.execute(f"COMMENT ON TABLE {tables['events']} IS %s", [signature(options)])
    out.write(f"seed ready in {time.perf_counter() - started:.0f}s (COPY and ANALYZE)\n")


# --- Measuring -------------------------------------------------------------------------------


def percentile(samples: list[float], fraction: float) -> float:
    """Return the ``fraction`` quantile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def sample_keys(options: CorrelateOptions) -> list[str]:
    """Return random keys: work orders, lots and shipments in equal parts."""
    rng = random.Random(options.seed + 7)
    makers = (lambda n: f"WO-{n}", lambda n: f"L-{n}", lambda n: f"SH-{n}")
    return [makers[i % 3](rng.randint(1, options.work_orders)) for i in range(options.keys)]


def _operator_token() -> str:
    from console.models import ApiToken, Role

    ApiToken.objects.filter(name=OPERATOR_TOKEN_NAME).delete()
    _, raw = ApiToken.issue(OPERATOR_TOKEN_NAME, Role.OPERATOR)
    return raw


@dataclass
class ApiFigures:
    """The correlation API's and the baseline's times (ms), and what the API answered."""

    api: list[float]
    sql: list[float]
    items: list[int]
    failures: list[str]

    @property
    def passed(self) -> bool:
        return (
            bool(self.api) and not self.failures and percentile(self.api, 0.99) < API_P99_TARGET_MS
        )

    def line(self) -> str:
        api99, sql99 = percentile(self.api, 0.99), percentile(self.sql, 0.99)
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"correlate: API p50 {statistics.median(self.api):.1f} ms, p99 {api99:.1f} ms "
            f"(target p99 < {API_P99_TARGET_MS:.0f} ms) {verdict}; bare SQL p50 "
            f"{statistics.median(self.sql):.2f} ms, p99 {sql99:.2f} ms; "
            f"ratio p99 {api99 / sql99 if sql99 else 0:.1f}x"
        )


BASELINE_SQL = """
SELECT * FROM {event} WHERE id IN (
    SELECT id FROM {event} WHERE subject = %(k)s AND subject <> ''
    UNION SELECT id FROM {event} WHERE correlation_id = %(k)s AND correlation_id <> ''
    UNION SELECT item_id FROM {keyref} WHERE value = %(k)s AND item_kind = 'e');
SELECT * FROM {span} WHERE id IN (
    SELECT id FROM {span} WHERE correlation_id = %(k)s AND correlation_id <> ''
    UNION SELECT item_id FROM {keyref} WHERE value = %(k)s AND item_kind = 's');
SELECT * FROM {message} WHERE id IN (
    SELECT id FROM {message} WHERE correlation_id = %(k)s AND correlation_id <> ''
    UNION SELECT item_id FROM {keyref} WHERE value = %(k)s AND item_kind = 'm');
"""


def bare_lookup() -> Callable[[str], int]:
    """Return a function fetching a key's direct rows in one round trip (the baseline)."""
    tables = _tables()
    sql = BASELINE_SQL.format(
        event=tables["events"],
        span=tables["spans"],
        message=tables["messages"],
        keyref=tables["keyrefs"],
    )
    connection.ensure_connection()
    raw = connection.connection

    def lookup(key: str) -> int:
        rows = 0
        with raw.cursor() as cursor:
            cursor.execute(sql, {"k": key})
            while True:
                rows += len(cursor.fetchall())
                if not cursor.nextset():
                    break
        return rows

    return lookup


def measure_api(keys: list[str], token: str) -> ApiFigures:
    """Time the correlation API (in-process) and the bare lookup, key by key, interleaved."""
    from django.test import Client

    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    lookup = bare_lookup()
    for key in keys[:50]:  # warm up: imports, caches, the connection
        client.get("/api/v1/correlations/" + quote(key, safe=""))
        lookup(key)
    figures = ApiFigures([], [], [], [])
    for key in keys:
        started = time.perf_counter()
        response = client.get("/api/v1/correlations/" + quote(key, safe=""))
        figures.api.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        lookup(key)
        figures.sql.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            figures.failures.append(f"{key}: {response.status_code}")
            continue
        figures.items.append(len(orjson.loads(response.content)["items"]))
    return figures


EXPLORER_FILTERS: tuple[dict[str, str], ...] = (
    {},
    {"status": "failed"},
    {"connector": "erp-to-mes-p1-orders"},
    {"plant": "p1", "status": "failed"},
    {"status": "dead_lettered", "connector": "erp-to-mes-p2-orders"},
    {"error": "503"},
)
_OLDER = re.compile(r'href="(\?[^"]*cursor=[^"]*)"')


def _explorer_client():  # type: ignore[no-untyped-def]
    from django.contrib.auth.models import Group, User
    from django.test import Client

    user = User.objects.filter(username=EXPLORER_USER).first()
    if user is None:
        user = User.objects.create_user(EXPLORER_USER)
    user.groups.add(Group.objects.get_or_create(name="operator")[0])
    client = Client()
    client.force_login(user)
    return client


@dataclass
class ExplorerFigures:
    """The message explorer's page times (ms), or why it was skipped."""

    times: list[float]
    pages: dict[str, float]
    skipped: str = ""
    failures: list[str] | None = None

    @property
    def passed(self) -> bool:
        """Return whether the explorer met its target; a skipped explorer is not failed here."""
        if self.skipped:
            return True
        return not self.failures and percentile(self.times, 0.95) < EXPLORER_P95_TARGET_MS

    def line(self) -> str:
        if self.skipped:
            return f"explorer: skipped ({self.skipped})"
        p95 = percentile(self.times, 0.95)
        verdict = "PASS" if self.passed else "FAIL"
        worst = max(self.pages, key=self.pages.__getitem__)
        return (
            f"explorer: p95 {p95:.1f} ms over {len(self.times)} pages "
            f"(target < {EXPLORER_P95_TARGET_MS:.0f} ms) {verdict}; slowest: {worst} "
            f"p50 {self.pages[worst]:.1f} ms"
        )


def measure_explorer(runs: int) -> ExplorerFigures:
    """Time ``/messages/`` for each filter and its page 2 (the "Older" cursor link)."""
    client = _explorer_client()
    first = client.get("/messages/")
    if first.status_code != 200:
        return ExplorerFigures([], {}, skipped=f"/messages/ answered {first.status_code}")
    figures = ExplorerFigures([], {}, failures=[])
    for filters in EXPLORER_FILTERS:
        name = "&".join(f"{k}={v}" for k, v in filters.items()) or "no filter"
        response = client.get("/messages/", filters)
        older = _OLDER.search(response.content.decode())
        targets = [(name, "/messages/", filters)]
        if older:
            targets.append((f"{name} page 2", "/messages/" + unescape(older.group(1)), {}))
        for label, path, params in targets:
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                response = client.get(path, params)
                times.append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    figures.failures.append(f"{label}: {response.status_code}")  # type: ignore[union-attr]
                    break
            figures.times.extend(times)
            figures.pages[label] = statistics.median(times)
    return figures


# --- The run ---------------------------------------------------------------------------------


def run(options: CorrelateOptions, out: TextIO) -> tuple[ApiFigures, ExplorerFigures]:
    """Seed (or reuse the seed), measure, print the figures and return them."""
    require_bench_database("correlate")
    if ensure_database():
        out.write(f"created database {connection.settings_dict['NAME']}\n")
    call_command("migrate", verbosity=0, interactive=False)
    land = load_landscape()
    if options.reseed or not seeded(options):
        out.write(
            f"seeding {options.work_orders:,} work orders: "
            f"{options.work_orders * EVENTS_PER_ORDER:,} events, "
            f"{options.work_orders * SPANS_PER_ORDER:,} spans, "
            f"{options.work_orders * MESSAGES_PER_ORDER:,} messages...\n"
        )
        start = datetime.now(UTC).replace(microsecond=0) - timedelta(
            seconds=options.work_orders * 5 + 86_400
        )
        seed(options, land, start, out)
    else:
        out.write(f"reusing the seed ({signature(options)}; --reseed to rebuild it)\n")
    keys = sample_keys(options)
    out.write(f"timing the correlation API and the bare lookup over {len(keys):,} keys...\n")
    api = measure_api(keys, _operator_token())
    if api.items:
        out.write(
            f"items per key: min {min(api.items)}, median {statistics.median(api.items):.0f}, "
            f"max {max(api.items)}\n"
        )
    for failure in api.failures[:5]:
        out.write(f"  failed: {failure}\n")
    out.write("timing the message explorer...\n")
    explorer = measure_explorer(options.explorer_runs)
    for label, median in explorer.pages.items():
        out.write(f"  /messages/ {label}: p50 {median:.1f} ms\n")
    out.write("\n" + api.line() + "\n" + explorer.line() + "\n")
    return api, explorer
