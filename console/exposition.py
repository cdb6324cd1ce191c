"""Prometheus text exposition (format 0.0.4) of Andon's own health.

Counters and the latency histogram come from :mod:`console.metrics` (shared by
every process); gauges are computed at scrape time from the database. Only
aggregate figures are exposed, never item data, because ``/metrics`` is
unauthenticated like most exporters.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict

from django.db import DatabaseError, connection

from console import metrics

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

GAUGE_HELP = {
    "andon_up": "Whether this Andon process answers (always 1 when scraped).",
    "andon_database_up": "Whether the database answered the scrape's queries.",
    "andon_store_rows": (
        "Rows per store (PostgreSQL: the planner's estimate from pg_class; elsewhere COUNT)."
    ),
    "andon_connectors": "Connectors by status.",
}

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?$")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def render() -> str:
    """Return the whole exposition: counter and histogram families, then scrape-time gauges."""
    lines = render_counters(metrics.snapshot())
    lines.extend(render_gauges(scrape_gauges()))
    return "\n".join(lines) + "\n"


def _family(name: str) -> str:
    """Return the metric family a sample name belongs to (histograms drop their suffix)."""
    for suffix in _HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and metrics.HELP.get(base, ("",))[0] == "histogram":
            return base
    return name


def _labels(raw: str | None) -> dict[str, str]:
    return {m["key"]: m["value"] for m in _LABEL.finditer(raw or "")}


def _format_labels(labels: dict[str, str]) -> str:
    # Values arrive already escaped from console.metrics; keep them as they are.
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"{{{inner}}}" if inner else ""


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _le_key(le: str) -> float:
    return math.inf if le == "+Inf" else float(le)


def render_counters(snapshot: dict[str, float]) -> list[str]:
    """Render the shared counters, HELP/TYPE once per family, buckets complete and in order.

    ``console.metrics`` only stores the buckets an observation reached, so the
    missing ones (zero) are filled in: Prometheus expects every ``le`` of a series.
    """
    families: dict[str, list[tuple[str, dict[str, str], float]]] = defaultdict(list)
    for field, value in snapshot.items():
        match = _SAMPLE.match(field)
        if match is None:
            log.warning("skipping malformed metric field %r", field)
            continue
        name = match["name"]
        families[_family(name)].append((name, _labels(match["labels"]), value))

    lines: list[str] = []
    for family in sorted(set(families) | set(metrics.HELP)):
        kind, help_text = metrics.HELP.get(family, ("untyped", ""))
        lines.append(f"# HELP {family} {help_text}".rstrip())
        lines.append(f"# TYPE {family} {kind}")
        samples = families.get(family, [])
        if kind == "histogram":
            lines.extend(_render_histogram(family, samples))
        else:
            for name, labels, value in sorted(samples, key=lambda s: sorted(s[1].items())):
                lines.append(f"{name}{_format_labels(labels)} {_format_value(value)}")
    return lines


def _render_histogram(family: str, samples: list[tuple[str, dict[str, str], float]]) -> list[str]:
    series: dict[tuple[tuple[str, str], ...], dict[str, object]] = defaultdict(
        lambda: {"buckets": {}, "sum": 0.0, "count": 0.0}
    )
    for name, labels, value in samples:
        le = labels.pop("le", None)
        entry = series[tuple(sorted(labels.items()))]
        if name.endswith("_bucket") and le is not None:
            entry["buckets"][le] = value  # type: ignore[index]
        elif name.endswith("_sum"):
            entry["sum"] = value
        elif name.endswith("_count"):
            entry["count"] = value
    lines = []
    for key in sorted(series):
        entry = series[key]
        labels = dict(key)
        buckets: dict[str, float] = dict(entry["buckets"])  # type: ignore[call-overload]
        for bound in metrics.LATENCY_BUCKETS:
            buckets.setdefault(str(bound), 0.0)
        buckets.setdefault("+Inf", float(entry["count"]))  # type: ignore[arg-type]
        for le in sorted(buckets, key=_le_key):
            bucket_labels = _format_labels({**labels, "le": le})
            lines.append(f"{family}_bucket{bucket_labels} {_format_value(buckets[le])}")
        lines.append(f"{family}_sum{_format_labels(labels)} {_format_value(entry['sum'])}")  # type: ignore[arg-type]
        lines.append(f"{family}_count{_format_labels(labels)} {_format_value(entry['count'])}")  # type: ignore[arg-type]
    return lines


def render_gauges(gauges: list[tuple[str, dict[str, str], float]]) -> list[str]:
    """Render gauges, grouped by family in first-seen order, HELP/TYPE once each."""
    grouped: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, value in gauges:
        grouped.setdefault(name, []).append((labels, value))
    lines: list[str] = []
    for name, samples in grouped.items():
        lines.append(f"# HELP {name} {GAUGE_HELP.get(name, '')}".rstrip())
        lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            escaped = {k: metrics._escape(v) for k, v in labels.items()}
            lines.append(f"{name}{_format_labels(escaped)} {_format_value(value)}")
    return lines


def scrape_gauges() -> list[tuple[str, dict[str, str], float]]:
    """Compute the scrape-time gauges; a database outage leaves only ``andon_up`` and a 0."""
    gauges: list[tuple[str, dict[str, str], float]] = [("andon_up", {}, 1)]
    try:
        store_rows = _store_rows()
        connectors = _connectors_by_status()
    except DatabaseError as exc:
        log.warning("metrics scrape could not query the database: %s", exc)
        gauges.append(("andon_database_up", {}, 0))
        return gauges
    gauges.append(("andon_database_up", {}, 1))
    gauges.extend(("andon_store_rows", {"store": store}, rows) for store, rows in store_rows)
    gauges.extend(("andon_connectors", {"status": status}, n) for status, n in connectors)
    return gauges


def _stores() -> list[tuple[str, str]]:
    """Return ``(store label, table name)`` of every store Andon keeps items in."""
    from integrations.models import Event, KeyRef, Message, MessageAttempt, Span

    return [
        ("events", Event._meta.db_table),
        ("spans", Span._meta.db_table),
        ("messages", Message._meta.db_table),
        ("message_attempts", MessageAttempt._meta.db_table),
        ("keyrefs", KeyRef._meta.db_table),
    ]


def _store_rows() -> list[tuple[str, float]]:
    """Return the row count of each store; on PostgreSQL the planner's estimate.

    An exact COUNT over millions of rows on every scrape would cost a sequential
    scan each time; ``reltuples`` is kept current by autovacuum/ANALYZE. A table
    never analysed reports -1 there, and only then is it counted.
    """
    stores = _stores()
    estimates: dict[str, float] = {}
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT c.relname, c.reltuples FROM pg_class c "
                "WHERE c.relkind IN ('r', 'p') AND c.relname = ANY(%s) "
                "AND pg_table_is_visible(c.oid)",
                [[table for _, table in stores]],
            )
            estimates = {name: float(n) for name, n in cursor.fetchall() if n is not None}
        rows = []
        for store, table in stores:
            estimate = estimates.get(table, -1.0)
            if estimate < 0:
                cursor.execute(f"SELECT COUNT(*) FROM {connection.ops.quote_name(table)}")
                estimate = float(cursor.fetchone()[0])
            rows.append((store, max(estimate, 0.0)))
    return rows


def _connectors_by_status() -> list[tuple[str, float]]:
    """Return how many connectors are in each status (every status, zero included)."""
    from django.db.models import Count

    from integrations.models import Connector, ConnectorStatus

    counts = {
        row["status"]: row["n"]
        for row in Connector.objects.order_by().values("status").annotate(n=Count("id"))
    }
    statuses = [str(s) for s in ConnectorStatus.values] + sorted(
        set(counts) - set(ConnectorStatus.values)
    )
    return [(status, float(counts.get(status, 0))) for status in statuses]
