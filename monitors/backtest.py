"""Backtests: what a rule (saved or not) would have raised over the stored history.

A backtest writes nothing. Each kind is one or two set-based queries over the
period, then a small summary in Python over the alerts found:

- follow-up: the ``when`` events of the period that were due by ``now``, each
  joined to its first ``expect`` event with the same key (one correlated
  subquery); those without an answer in time are overdue, and overdue triggers
  sharing a key and the same first answer are one alert (the first covers the
  rest), resolved late by that answer or still open;
- match: matching events per key, a new alert where the gap to the previous
  event of the key is longer than ``resolve_after`` (window function LAG);
- heartbeat: gaps between consecutive signals longer than ``within`` (LAG over
  the union of the source's events, spans and messages);
- threshold: the metric on a grid stepped every ``window / 5`` (one grouped
  query on PostgreSQL; one scan of the connector's messages elsewhere), then
  ``for`` applied along the grid.

Silences, maintenance windows and dependency suppression are not applied: a
backtest shows the rule's own noise.
"""

from __future__ import annotations

import bisect
import math
import operator
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import F, Min, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from integrations.models import Connector, Event, Message, MessageStatus, Span, System
from monitors.keys import Landscape, keyed_events
from monitors.models import Rule, RuleKind
from monitors.rules import KeySpec, Matcher, RuleSpec, format_duration

TOP_KEYS = 10
# A threshold grid finer than this many points is coarsened (a note says so).
MAX_GRID_POINTS = 20_000
LATENESS_BUCKETS: tuple[tuple[str, float], ...] = (
    ("under 1m", 60),
    ("1m to 5m", 300),
    ("5m to 15m", 900),
    ("15m to 1h", 3600),
    ("1h to 4h", 4 * 3600),
    ("4h or more", math.inf),
)
COMPARE = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
FAILED = (MessageStatus.FAILED, MessageStatus.DEAD_LETTERED)


@dataclass(frozen=True)
class SimulatedAlert:
    """One alert the rule would have raised: key, when it fired and how it ended."""

    key: str
    fired_at: datetime
    resolved_at: datetime | None = None
    late_by_s: float | None = None


@dataclass
class BacktestReport:
    """The noise a rule would have made over ``days`` of history ending at ``end``."""

    rule: str
    kind: str
    days: int
    start: datetime
    end: datetime
    # What was examined: trigger events (follow-up, match), signals (heartbeat), grid points.
    examined: int = 0
    examined_label: str = "events"
    alerts: int = 0
    open_at_end: int = 0
    resolved_late: int = 0
    # Threshold: episodes where the condition held but not for ``for``.
    pending_only: int = 0
    distinct_keys: int = 0
    keys: list[tuple[str, int]] = field(default_factory=list)
    per_day: list[tuple[date, int]] = field(default_factory=list)
    late_by_s: list[float] = field(default_factory=list)
    durations_s: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def alerts_per_day(self) -> float:
        return self.alerts / self.days if self.days else float(self.alerts)

    @property
    def max_per_day(self) -> int:
        return max((count for _, count in self.per_day), default=0)

    def lateness_buckets(self) -> list[tuple[str, int]]:
        """Return how many late alerts fall in each lateness bucket (under 1m ... 4h or more)."""
        counts = [0] * len(LATENESS_BUCKETS)
        for late in self.late_by_s:
            for index, (_, bound) in enumerate(LATENESS_BUCKETS):
                if late < bound:
                    counts[index] += 1
                    break
        return [(label, counts[i]) for i, (label, _) in enumerate(LATENESS_BUCKETS)]

    def lateness(self) -> dict[str, float]:
        """Return the median, 90th percentile and maximum lateness in seconds (empty: none)."""
        return _spread(self.late_by_s)

    def duration(self) -> dict[str, float]:
        """Return the median, 90th percentile and maximum duration of resolved alerts."""
        return _spread(self.durations_s)

    def lines(self) -> list[str]:
        """Return a plain-text summary of the report."""
        out = [
            f"backtest of {self.rule} ({self.kind}) over {self.days} days, "
            f"{self.start:%Y-%m-%d %H:%M} to {self.end:%Y-%m-%d %H:%M} UTC",
            f"  {self.examined} {self.examined_label} examined; {self.alerts} alerts would have "
            f"been raised on {self.distinct_keys} keys ({self.alerts_per_day:.1f} per day, "
            f"at most {self.max_per_day} in a day)",
        ]
        if self.kind == RuleKind.FOLLOWUP:
            out.append(f"  {self.resolved_late} resolved late, {self.open_at_end} still open")
            if self.late_by_s:
                spread = self.lateness()
                out.append(
                    "  late by: "
                    + ", ".join(f"{n} {_short(spread[n])}" for n in ("median", "p90", "max"))
                )
        else:
            out.append(f"  {self.open_at_end} still open at the end")
        if self.pending_only:
            out.append(f"  {self.pending_only} times pending without reaching `for`")
        if self.keys:
            out.append("  top keys: " + ", ".join(f"{k} ({n})" for k, n in self.keys))
        out.extend(f"  note: {note}" for note in self.notes)
        return out


def _spread(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "median": percentile(ordered, 0.5),
        "p90": percentile(ordered, 0.9),
        "max": ordered[-1],
    }


def _short(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Return the interpolated percentile of sorted values (as PostgreSQL's percentile_cont)."""
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# --- Entry point -------------------------------------------------------------------------


def backtest(
    spec: RuleSpec,
    days: int = 7,
    now: datetime | None = None,
    *,
    plant_ids: Collection[int] | None = None,
) -> BacktestReport:
    """Run ``spec`` over the ``days`` of history before ``now``, writing nothing.

    ``plant_ids`` limits the history to those plants (a plant-scoped admin).
    """
    now = now or timezone.now()
    start = now - timedelta(days=days)
    report = BacktestReport(rule=spec.name, kind=spec.kind, days=days, start=start, end=now)
    runner = {
        RuleKind.FOLLOWUP: _followup,
        RuleKind.MATCH: _match,
        RuleKind.HEARTBEAT: _heartbeat,
        RuleKind.THRESHOLD: _threshold,
    }[RuleKind(spec.kind)]
    alerts = runner(spec, start, now, plant_ids, report)
    _summarise(report, [a for a in alerts if start <= a.fired_at <= now])
    return report


def backtest_rule(rule: Rule, days: int = 7, now: datetime | None = None) -> BacktestReport:
    """Run a saved rule's backtest."""
    from monitors.ruleset import rule_spec

    return backtest(rule_spec(rule), days, now)


def _summarise(report: BacktestReport, alerts: list[SimulatedAlert]) -> None:
    report.alerts = len(alerts)
    report.open_at_end = sum(1 for a in alerts if a.resolved_at is None)
    report.late_by_s = sorted(a.late_by_s for a in alerts if a.late_by_s is not None)
    report.resolved_late = len(report.late_by_s)
    report.durations_s = sorted(
        (a.resolved_at - a.fired_at).total_seconds() for a in alerts if a.resolved_at is not None
    )
    keys = Counter(a.key for a in alerts)
    report.distinct_keys = len(keys)
    report.keys = keys.most_common(TOP_KEYS)
    by_day = Counter(a.fired_at.astimezone(UTC).date() for a in alerts)
    first, last = report.start.astimezone(UTC).date(), report.end.astimezone(UTC).date()
    report.per_day = [
        (first + timedelta(days=i), by_day.get(first + timedelta(days=i), 0))
        for i in range((last - first).days + 1)
    ]


# --- SQL helpers -------------------------------------------------------------------------


def _triggers(
    matcher: Matcher, key: KeySpec, landscape: Landscape, plant_ids: Collection[int] | None
) -> QuerySet[Event]:
    """Return the keyed events a matcher selects (the evaluator's own SQL), in the plants seen."""
    events = keyed_events(matcher, key, landscape)
    return events if plant_ids is None else events.filter(plant_id__in=plant_ids)


def _epoch(column: str) -> str:
    """Return SQL for a timestamp column as seconds since 1970 (a number on every backend)."""
    if connection.vendor == "postgresql":
        return f"EXTRACT(EPOCH FROM {column})"
    # julianday() carries about 20 microseconds of float error at today's dates: round to ms.
    return f"ROUND((julianday({column}) - 2440587.5) * 86400.0, 3)"


def _param(moment: datetime) -> Any:
    """Return a datetime as the backend stores it, for raw SQL parameters."""
    return connection.ops.adapt_datetimefield_value(moment)


def _moment(epoch: Any) -> datetime:
    return datetime.fromtimestamp(float(epoch), UTC)


def _table(model: type) -> str:
    return connection.ops.quote_name(model._meta.db_table)  # type: ignore[attr-defined]


# --- Follow-up ---------------------------------------------------------------------------


def _followup(
    spec: RuleSpec,
    start: datetime,
    now: datetime,
    plant_ids: Collection[int] | None,
    report: BacktestReport,
) -> list[SimulatedAlert]:
    assert spec.when is not None and spec.expect is not None and spec.key is not None
    within = timedelta(seconds=spec.within_s or 0)
    landscape = Landscape.load()
    triggers = _triggers(spec.when, spec.key, landscape, plant_ids).filter(
        occurred_at__gte=start, occurred_at__lte=now
    )
    report.examined = triggers.count()
    report.examined_label = "trigger events"
    first_answer = (
        keyed_events(spec.expect, spec.key, landscape)
        .filter(k=OuterRef("k"), occurred_at__gte=OuterRef("occurred_at"), occurred_at__lte=now)
        .order_by("occurred_at")
        .values("occurred_at")[:1]
    )
    rows = (
        triggers.filter(occurred_at__lte=now - within)
        .annotate(answer=Subquery(first_answer))
        .filter(Q(answer__isnull=True) | Q(answer__gt=F("occurred_at") + within))
        .values("k", "answer")
        .annotate(started=Min("occurred_at"))
        .order_by()
    )
    alerts = []
    for row in rows:
        fired = row["started"] + within
        answer = row["answer"]
        late = (answer - fired).total_seconds() if answer is not None else None
        alerts.append(SimulatedAlert(row["k"], fired, answer, late))
    return alerts


# --- Match -------------------------------------------------------------------------------


def _match(
    spec: RuleSpec,
    start: datetime,
    now: datetime,
    plant_ids: Collection[int] | None,
    report: BacktestReport,
) -> list[SimulatedAlert]:
    assert spec.when is not None and spec.key is not None
    resolve_after = spec.resolve_after_s or 86400.0
    events = _triggers(spec.when, spec.key, Landscape.load(), plant_ids)
    report.examined = events.filter(occurred_at__gte=start, occurred_at__lte=now).count()
    report.examined_label = "matching events"
    # Events shortly before the period may keep an alert open into it: they seed the gaps.
    seed_start = start - timedelta(seconds=resolve_after)
    inner = (
        events.filter(occurred_at__gte=seed_start, occurred_at__lte=now)
        .annotate(t=F("occurred_at"))
        .values("k", "t")
        .order_by()
    )
    inner_sql, params = inner.query.sql_with_params()
    sql = f"""
        SELECT k, {_epoch("t")}, {_epoch("prev")}, {_epoch("next")}
        FROM (
            SELECT k, t,
                   LAG(t) OVER (PARTITION BY k ORDER BY t) AS prev,
                   LEAD(t) OVER (PARTITION BY k ORDER BY t) AS next
            FROM ({inner_sql}) matched
        ) gaps
        WHERE prev IS NULL OR next IS NULL
           OR {_epoch("t")} - {_epoch("prev")} > %s OR {_epoch("next")} - {_epoch("t")} > %s
        ORDER BY k, t
    """
    alerts: list[SimulatedAlert] = []
    opened: dict[str, datetime] = {}
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, resolve_after, resolve_after])
        for key, t, prev, nxt in cursor.fetchall():
            moment = _moment(t)
            # Only the boundaries of each run of events (a new alert, its last event) matter.
            if prev is None or float(t) - float(prev) > resolve_after:
                opened[key] = moment
            if nxt is None or float(nxt) - float(t) > resolve_after:
                end = moment + timedelta(seconds=resolve_after)
                alerts.append(SimulatedAlert(key, opened.pop(key), end if end <= now else None))
    return alerts


# --- Heartbeat ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Branch:
    """One kind of signal of a heartbeat's source: a table, its time column and a filter."""

    source: str
    column: str
    where: str
    params: tuple[Any, ...]


def _signal_branches(spec: RuleSpec) -> tuple[list[_Branch], int | None]:
    """Return where the heartbeat source's signals are stored, and its plant.

    As the evaluator: a system's events and spans (attributed, or by its source
    names) and its connectors' messages; a connector's messages; any other key
    is taken as an event source or span service name.
    """
    event, span, message = _table(Event), _table(Span), _table(Message)
    connector = Connector.objects.filter(key=spec.source).first()
    if connector is not None:
        return [_Branch(message, "occurred_at", "connector_id = %s", (connector.pk,))], (
            connector.plant_id
        )
    system = System.objects.filter(key=spec.source).first()
    if system is None:
        source = spec.source or ""
        branches = [
            _Branch(event, "occurred_at", "source = %s", (source,)),
            _Branch(span, "start", "service_name = %s", (source,)),
        ]
        return branches, None
    names = system.source_names()
    marks = ", ".join(["%s"] * len(names))
    branches = [
        _Branch(
            event, "occurred_at", f"(system_id = %s OR source IN ({marks}))", (system.pk, *names)
        ),
        _Branch(
            span, "start", f"(system_id = %s OR service_name IN ({marks}))", (system.pk, *names)
        ),
    ]
    connector_ids = list(
        Connector.objects.filter(Q(source=system) | Q(target=system)).values_list("pk", flat=True)
    )
    if connector_ids:
        marks = ", ".join(["%s"] * len(connector_ids))
        branches.append(
            _Branch(message, "occurred_at", f"connector_id IN ({marks})", tuple(connector_ids))
        )
    return branches, system.plant_id


def _signals(branches: list[_Branch], condition: str, params: list[Any]) -> tuple[str, list[Any]]:
    """Return SQL selecting ``t`` of every signal meeting ``condition`` (``{t}``: the column)."""
    parts, values = [], []
    for branch in branches:
        parts.append(
            f"SELECT {branch.column} AS t FROM {branch.source} "
            f"WHERE {branch.where} AND {condition.format(t=branch.column)}"
        )
        values += [*branch.params, *params]
    return " UNION ALL ".join(parts), values


def _heartbeat(
    spec: RuleSpec,
    start: datetime,
    now: datetime,
    plant_ids: Collection[int] | None,
    report: BacktestReport,
) -> list[SimulatedAlert]:
    within = spec.within_s or 0.0
    report.examined_label = "signals"
    branches, plant_id = _signal_branches(spec)
    if plant_ids is not None and plant_id not in plant_ids:
        report.notes.append(f"{spec.source} belongs to a plant you do not see")
        return []
    in_period, period_params = _signals(
        branches, "{t} >= %s AND {t} <= %s", [_param(start), _param(now)]
    )
    before, before_params = _signals(branches, "{t} < %s", [_param(start)])
    # The last signal before the period seeds the first gap.
    ctes = f"""
        WITH period AS ({in_period}),
        seed AS (SELECT MAX(t) AS t FROM ({before}) earlier),
        signals AS (SELECT t FROM period UNION ALL SELECT t FROM seed WHERE t IS NOT NULL)
    """
    params = [*period_params, *before_params]
    gaps_sql = f"""{ctes}
        SELECT {_epoch("prev")}, {_epoch("t")}
        FROM (SELECT t, LAG(t) OVER (ORDER BY t) AS prev FROM signals) gaps
        WHERE prev IS NOT NULL AND {_epoch("t")} - {_epoch("prev")} > %s
        ORDER BY t
    """
    totals_sql = f"""{ctes}
        SELECT (SELECT COUNT(*) FROM period), (SELECT {_epoch("MAX(t)")} FROM signals)
    """
    with connection.cursor() as cursor:
        cursor.execute(gaps_sql, [*params, within])
        gaps = cursor.fetchall()
        cursor.execute(totals_sql, params)
        report.examined, last = cursor.fetchone()
    key = spec.source or ""
    alerts = [
        SimulatedAlert(key, _moment(prev) + timedelta(seconds=within), _moment(t))
        for prev, t in gaps
    ]
    # Silent at the end: since the last signal, or since the period began when there was none.
    silent_since = _moment(last) if last is not None else start
    if (now - silent_since).total_seconds() > within:
        fired = max(silent_since + timedelta(seconds=within), start)
        alerts.append(SimulatedAlert(key, fired))
    if last is None:
        report.notes.append("no signal at all: silence is counted from the start of the period")
    return alerts


# --- Threshold ---------------------------------------------------------------------------


def _grid(start: datetime, now: datetime, window_s: float, report: BacktestReport) -> float:
    step = window_s / 5
    span_s = (now - start).total_seconds()
    if span_s / step > MAX_GRID_POINTS:
        step = span_s / MAX_GRID_POINTS
        report.notes.append(
            f"evaluated every {format_duration(round(step))} (coarser than 1/5 of the window)"
        )
    return step


def _threshold(
    spec: RuleSpec,
    start: datetime,
    now: datetime,
    plant_ids: Collection[int] | None,
    report: BacktestReport,
) -> list[SimulatedAlert]:
    report.examined_label = "evaluation points"
    connector = Connector.objects.filter(key=spec.connector).first()
    if connector is None:
        report.notes.append(f"unknown connector {spec.connector!r}")
        return []
    if plant_ids is not None and connector.plant_id not in plant_ids:
        report.notes.append(f"{connector.key} belongs to a plant you do not see")
        return []
    window_s = spec.window_s or 60.0
    step = _grid(start, now, window_s, report)
    points = [
        start + timedelta(seconds=step * i)
        for i in range(1, int((now - start).total_seconds() // step) + 1)
    ]
    report.examined = len(points)
    if connection.vendor == "postgresql":
        series = _metric_series_sql(connector, spec.metric or "", points, step, window_s)
    else:
        series = _metric_series_scan(connector, spec.metric or "", points, window_s)
    compare = COMPARE[spec.op or ">"]
    threshold = spec.value or 0.0
    alerts: list[SimulatedAlert] = []
    since: datetime | None = None
    fired: datetime | None = None
    for moment, value in series:
        holds = value is not None and compare(value, threshold)
        if holds:
            since = since or moment
            if fired is None and (moment - since).total_seconds() >= spec.for_s:
                fired = moment
        elif since is not None:
            if fired is None:
                report.pending_only += 1
            else:
                alerts.append(SimulatedAlert(connector.key, fired, moment))
            since = fired = None
    if fired is not None:
        alerts.append(SimulatedAlert(connector.key, fired))
    return alerts


def _metric(metric: str, total: int, failed: int, dead: int, p95: Any, window_s: float) -> Any:
    if metric == "failure_ratio":
        return (failed + dead) / total if total else None
    if metric == "p95_latency_ms":
        return float(p95) if p95 is not None else None
    if metric == "failed_count":
        return failed
    if metric == "dead_lettered_count":
        return dead
    return total / (window_s / 60)  # throughput: messages per minute


def _metric_series_sql(
    connector: Connector, metric: str, points: list[datetime], step: float, window_s: float
) -> list[tuple[datetime, Any]]:
    """Return the metric at every grid point: one grouped query (PostgreSQL)."""
    if not points:
        return []
    sql = f"""
        SELECT g,
               COUNT(m.id),
               COUNT(m.id) FILTER (WHERE m.status = %s),
               COUNT(m.id) FILTER (WHERE m.status = %s),
               percentile_cont(0.95) WITHIN GROUP (ORDER BY m.latency_ms)
        FROM generate_series(%s::timestamptz, %s::timestamptz, %s * interval '1 second') g
        LEFT JOIN {_table(Message)} m
          ON m.connector_id = %s
         AND m.occurred_at > g - %s * interval '1 second'
         AND m.occurred_at <= g
        GROUP BY g
        ORDER BY g
    """
    params = [
        MessageStatus.FAILED,
        MessageStatus.DEAD_LETTERED,
        points[0],
        points[-1],
        step,
        connector.pk,
        window_s,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [
            (g, _metric(metric, total, failed, dead, p95, window_s))
            for g, total, failed, dead, p95 in cursor.fetchall()
        ]


def _metric_series_scan(
    connector: Connector, metric: str, points: list[datetime], window_s: float
) -> list[tuple[datetime, Any]]:
    """Return the metric at every grid point from one ordered scan of the connector's messages."""
    if not points:
        return []
    window = timedelta(seconds=window_s)
    rows = list(
        Message.objects.filter(
            connector=connector, occurred_at__gt=points[0] - window, occurred_at__lte=points[-1]
        )
        .order_by("occurred_at")
        .values_list("occurred_at", "status", "latency_ms")
    )
    times = [row[0] for row in rows]
    series = []
    for point in points:
        low = bisect.bisect_right(times, point - window)
        high = bisect.bisect_right(times, point)
        inside = rows[low:high]
        failed = sum(1 for _, status, _ in inside if status == MessageStatus.FAILED)
        dead = sum(1 for _, status, _ in inside if status == MessageStatus.DEAD_LETTERED)
        latencies = sorted(lat for _, _, lat in inside if lat is not None)
        p95 = percentile(latencies, 0.95) if latencies else None
        series.append((point, _metric(metric, len(inside), failed, dead, p95, window_s)))
    return series
