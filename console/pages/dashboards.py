"""The plant operations and IT dashboards: their figures, Plotly charts, pages and JSON.

**Plant operations** (``/dashboards/plant/<plant>/``), for one plant:

- open business alerts (rules of kind follow-up and match; firing or
  acknowledged) by severity, technical ones (heartbeat, threshold) counted beside;
- three backlogs, each from the follow-up rules that watch it (:data:`BACKLOGS`):
  work orders awaiting MES acknowledgement (rules whose ``when.type`` is
  ``erp.workorder.released``), quality holds not applied in WMS, machine alerts
  without a maintenance case. A backlog is its rules' open alerts of the plant
  (*overdue*) plus their triggers still within the deadline with no answer yet
  and no alert covering them (*waiting*), counted by key in one anti-join per rule;
- flow completion within SLA over the last 24 hours, per flow of :data:`FLOWS`:

      completion = 1 - breaches / triggers

  over the follow-up rules labelled with the flow: ``triggers`` are the rule's
  ``when`` events of the plant in the last 24 hours whose deadline has passed
  (so their outcome is known: occurred in ``[now - 24h, now - within)``);
  ``breaches`` are the rule's alerts of the plant that started in that same
  span and did not resolve ``recovered`` (still open, resolved late, or closed
  by hand). No trigger: no figure. A trigger answered in time leaves no alert,
  so every trigger without a breach counts as completed in time. Trigger
  counts of whole past hours are cached for ten minutes (:func:`trigger_count`);
- alerts that fired per hour over the last 24 hours, by severity (plant time;
  past hours cached for ten minutes too).

**IT** (``/dashboards/it/?window=1h|24h|7d``): per connector the user may see
(plant scoping by the connector's plant), from the per-minute rollups
(``integrations.rollups``): throughput, failure ratio, p95 latency against
the connector's SLO, dead letters, replay volume; last seen from the newest
message (one index probe per connector).

Each page embeds its payload (figures and HTML fragments) and
``static/console/dashboards.js`` redraws it from the ``data`` endpoint: every
15 s, and soon after a live ``andon:alerts`` / ``andon:health`` event.
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.db import connection, transaction
from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.db.models import Window as Over
from django.db.models.functions import TruncHour
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.template.loader import render_to_string
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString, mark_safe

from console.auth import Principal
from console.pages.common import page
from integrations.models import Connector, Plant
from integrations.queries import ConnectorHealth, Health, classify, with_last_seen
from integrations.rollups import (
    DEFAULT_WINDOW,
    WINDOWS,
    Figures,
    Series,
    Window,
    cache_namespace,
    window_series,
)
from monitors.keys import Landscape, keyed_events
from monitors.models import OPEN_STATES, Alert, AlertState, Resolution, Rule, RuleKind
from monitors.rules import RuleSpec, spec_from_definition

SEVERITIES = ("critical", "major", "minor", "info")
SEVERITY_COLOURS = {
    "critical": "#c62828",
    "major": "#ef6c00",
    "minor": "#f9a825",
    "info": "#1565c0",
}
BUSINESS_KINDS = (RuleKind.FOLLOWUP, RuleKind.MATCH)
RAISED = (AlertState.FIRING, AlertState.ACKNOWLEDGED)
FLOW_WINDOW = timedelta(hours=24)
TIMELINE_HOURS = 24
# Where the completion gauges turn amber and green.
COMPLETION_TARGET = 0.95
COMPLETION_WARN = 0.80
OLDEST_SHOWN = 5
POLL_S = 15
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
    "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#843c39",
)  # fmt: skip
FONT = {"family": "system-ui, -apple-system, Segoe UI, sans-serif", "size": 12, "color": "#1d2430"}


# --- Rules the plant dashboard reads -----------------------------------------------------------


@dataclass(frozen=True)
class Flow:
    """A business flow whose completion the plant dashboard shows, and the labels that name it."""

    key: str
    title: str
    labels: tuple[str, ...]


# Rules say which flow they watch with the label ``flow``; the second names are the
# ones the demo rules used before these three were settled.
FLOWS: tuple[Flow, ...] = (
    Flow("order-to-production", "Order to production", ("order-to-production",)),
    Flow(
        "production-to-inventory",
        "Production to inventory",
        ("production-to-inventory", "production-confirmation"),
    ),
    Flow(
        "quality-to-corrective-action",
        "Quality to corrective action",
        ("quality-to-corrective-action", "quality-hold"),
    ),
)


def _when_type(spec: RuleSpec) -> str:
    return spec.when.type if spec.when is not None else ""


def _expect_type(spec: RuleSpec) -> str:
    return spec.expect.type if spec.expect is not None else ""


@dataclass(frozen=True)
class Backlog:
    """A plant backlog: the follow-up rules that watch it and what its items are called."""

    key: str
    title: str
    items: str
    selects: Callable[[RuleSpec], bool]


BACKLOGS: tuple[Backlog, ...] = (
    Backlog(
        "workorders",
        "Work orders awaiting MES acknowledgement",
        "work orders",
        lambda spec: _when_type(spec) == "erp.workorder.released",
    ),
    Backlog(
        "holds",
        "Quality holds not applied in WMS",
        "lots on hold",
        lambda spec: (
            _when_type(spec).startswith("qms.hold") and _expect_type(spec).startswith("wms.")
        ),
    ),
    Backlog(
        "machines",
        "Machine alerts without a maintenance case",
        "machine alerts",
        lambda spec: _when_type(spec).startswith("iot.") and _expect_type(spec).startswith("eam."),
    ),
)


@dataclass
class RuleView:
    """An enabled rule with its spec and the plant it names (if any)."""

    rule: Rule
    spec: RuleSpec
    plant_key: str | None

    @property
    def is_followup(self) -> bool:
        return self.rule.kind == RuleKind.FOLLOWUP

    def concerns(self, plant: Plant) -> bool:
        """Return whether the rule can raise alerts of ``plant`` (it names none, or this one)."""
        return self.plant_key is None or self.plant_key == plant.key

    def trigger_plant(self, plant: Plant) -> Q:
        """Return the filter of this rule's triggers that belong to ``plant``.

        As evaluation attributes alerts: the event's plant, else the plant the rule names.
        """
        mine = Q(plant_id=plant.id)
        return mine | Q(plant_id__isnull=True) if self.plant_key == plant.key else mine


def rule_plant_key(spec: RuleSpec) -> str | None:
    """Return the plant a rule names: ``when.plant``, ``when.data.plant`` or label ``plant``."""
    named = [spec.when.plant, spec.when.data.get("plant")] if spec.when is not None else []
    named.append(spec.labels.get("plant"))
    return next((str(key) for key in named if key), None)


def enabled_rules() -> list[RuleView]:
    """Return every enabled rule with its spec (a small table, read once per page)."""
    views = []
    for rule in Rule.objects.filter(enabled=True).order_by("name"):
        spec = spec_from_definition(rule.definition)
        views.append(RuleView(rule, spec, rule_plant_key(spec)))
    return views


# --- Plant figures -------------------------------------------------------------------------------


@dataclass
class SeverityCounts:
    """Open alerts of a plant by severity: business ones split by state, technical ones."""

    firing: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEVERITIES, 0))
    acknowledged: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEVERITIES, 0))
    technical: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEVERITIES, 0))

    @property
    def business(self) -> int:
        return sum(self.firing.values()) + sum(self.acknowledged.values())

    @property
    def critical(self) -> int:
        return self.firing["critical"] + self.acknowledged["critical"]

    @property
    def technical_total(self) -> int:
        return sum(self.technical.values())

    @property
    def rows(self) -> list[dict[str, Any]]:
        """Return one row per severity: business total, acknowledged, colour."""
        return [
            {
                "severity": severity,
                "total": self.firing[severity] + self.acknowledged[severity],
                "acknowledged": self.acknowledged[severity],
                "colour": SEVERITY_COLOURS[severity],
            }
            for severity in SEVERITIES
        ]


def open_alerts_by_severity(plant: Plant) -> SeverityCounts:
    """Count the plant's firing and acknowledged alerts by severity and rule kind (one query)."""
    counts = SeverityCounts()
    rows = (
        Alert.objects.filter(plant_id=plant.id, state__in=RAISED)
        .values_list("severity", "state", "rule__kind")
        .annotate(n=Count("id"))
        .order_by()
    )
    for severity, state, kind, n in rows:
        if severity not in counts.firing:
            continue
        if kind not in BUSINESS_KINDS:
            counts.technical[severity] += n
        elif state == AlertState.FIRING:
            counts.firing[severity] += n
        else:
            counts.acknowledged[severity] += n
    return counts


@dataclass
class BacklogFigures:
    """One backlog of a plant: overdue (open alerts), waiting (within deadline), oldest items."""

    backlog: Backlog
    plant_key: str
    rules: list[str]
    overdue: int = 0
    waiting: int = 0
    oldest: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.overdue + self.waiting

    @property
    def alerts_url(self) -> str:
        query = {"state": "open", "plant": self.plant_key, "rule": ",".join(self.rules)}
        return reverse("alerts") + "?" + urlencode(query)


def covering_alerts(rule: Rule) -> QuerySet[Alert]:
    """Return the rule's alerts covering an outer trigger (its key ``k``, its time)."""
    at = OuterRef("occurred_at")
    return Alert.objects.filter(rule_id=rule.id, key=OuterRef("k"), started_at__lte=at).filter(
        Q(resolved_at__isnull=True) | Q(resolved_at__gte=at)
    )


def waiting_keys(view: RuleView, plant: Plant, landscape: Landscape, now: datetime) -> int:
    """Count the keys of the plant's triggers still within the deadline and not answered.

    One anti-join over the last ``within``: triggers with no expected event of
    the same key at or after them and no alert covering them (the earlier
    episode's alert counts them already).
    """
    spec = view.spec
    within = timedelta(seconds=spec.within_s or 0)
    since = now - within
    triggers = keyed_events(spec.when, spec.key, landscape).filter(  # type: ignore[arg-type]
        view.trigger_plant(plant), occurred_at__gt=since, occurred_at__lte=now
    )
    answers = keyed_events(spec.expect, spec.key, landscape).filter(  # type: ignore[arg-type]
        occurred_at__gt=since, occurred_at__lte=now
    )
    answered = answers.filter(k=OuterRef("k"), occurred_at__gte=OuterRef("occurred_at"))
    pending = triggers.filter(~Exists(answered), ~Exists(covering_alerts(view.rule)))
    return pending.values("k").distinct().count()


def backlog_figures(
    backlog: Backlog, views: list[RuleView], plant: Plant, landscape: Landscape, now: datetime
) -> BacklogFigures:
    """Return one backlog of the plant from the follow-up rules that watch it."""
    chosen = [v for v in views if v.is_followup and backlog.selects(v.spec) and v.concerns(plant)]
    figures = BacklogFigures(backlog, plant.key, [v.rule.name for v in chosen])
    if not chosen:
        return figures
    overdue = Alert.objects.filter(
        rule_id__in=[v.rule.id for v in chosen], plant_id=plant.id, state__in=OPEN_STATES
    )
    # The oldest few and, on each, how many there are in all: one query.
    oldest = list(
        overdue.annotate(n=Over(Count("id")))
        .order_by("started_at", "id")
        .values("id", "key", "started_at", "state", "n")[:OLDEST_SHOWN]
    )
    figures.overdue = oldest[0]["n"] if oldest else 0
    for item in oldest:
        item["url"] = reverse("alert", args=[item["id"]])
    figures.oldest = oldest
    figures.waiting = sum(waiting_keys(v, plant, landscape, now) for v in chosen)
    return figures


@dataclass
class FlowFigures:
    """A flow's completion within SLA over the last 24 hours (see the module docstring)."""

    flow: Flow
    rules: list[str]
    triggers: int = 0
    breaches: int = 0

    @property
    def completion(self) -> float | None:
        if not self.triggers:
            return None
        return max(0.0, 1.0 - self.breaches / self.triggers)

    @property
    def in_time(self) -> int:
        return max(0, self.triggers - self.breaches)

    @property
    def percent(self) -> float | None:
        completion = self.completion
        return None if completion is None else completion * 100

    @property
    def tone(self) -> str:
        completion = self.completion
        if completion is None:
            return "muted"
        if completion >= COMPLETION_TARGET:
            return "ok"
        return "warn" if completion >= COMPLETION_WARN else "bad"


HOUR = timedelta(hours=1)
# Figures of whole past hours (trigger counts, alerts fired) are kept this long: an
# event ingested, or an alert raised, late for such an hour shows within this time.
PAST_HOURS_TTL_S = 600


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def past_hours(
    prefix: str,
    hours: list[datetime],
    compute: Callable[[datetime, datetime], dict[datetime, Any]],
    empty: Any,
) -> dict[datetime, Any]:
    """Return a figure per whole past hour: cached, else ``compute``d for the missing span.

    ``compute(lo, hi)`` answers the figures of the hours in ``[lo, hi)`` in one
    query (an hour without rows is ``empty``); they are cached for
    :data:`PAST_HOURS_TTL_S` under ``prefix``.
    """
    keys = {f"{cache_namespace()}:{prefix}:{int(hour.timestamp())}": hour for hour in hours}
    values = {keys[key]: value for key, value in cache.get_many(list(keys)).items()}
    missing = [hour for hour in hours if hour not in values]
    if missing:
        computed = compute(missing[0], missing[-1] + HOUR)
        fresh = {hour: computed.get(hour, empty) for hour in missing}
        cache.set_many(
            {key: fresh[hour] for key, hour in keys.items() if hour in fresh},
            timeout=PAST_HOURS_TTL_S,
        )
        values.update(fresh)
    return values


def trigger_count(
    view: RuleView, plant: Plant, landscape: Landscape, since: datetime, until: datetime
) -> int:
    """Count the rule's triggers of the plant that occurred in ``[since, until)``.

    The whole hours in between come from :func:`past_hours`; the partial hours
    at both ends are counted live (one query), so the figure follows the clock.
    """
    triggers = keyed_events(view.spec.when, view.spec.key, landscape).filter(  # type: ignore[arg-type]
        view.trigger_plant(plant)
    )

    def live(*spans: tuple[datetime, datetime]) -> int:
        spans = tuple((lo, hi) for lo, hi in spans if lo < hi)
        if not spans:
            return 0
        within = Q()
        for lo, hi in spans:
            within |= Q(occurred_at__gte=lo, occurred_at__lt=hi)
        return triggers.filter(within).count()

    def per_hour(lo: datetime, hi: datetime) -> dict[datetime, int]:
        rows = (
            triggers.filter(occurred_at__gte=lo, occurred_at__lt=hi)
            .annotate(hour=TruncHour("occurred_at", tzinfo=UTC))
            .values_list("hour")
            .annotate(n=Count("id"))
            .values_list("hour", "n")
            .order_by()
        )
        return {hour.astimezone(UTC): n for hour, n in rows}

    first = _floor_hour(since) + (HOUR if _floor_hour(since) < since else timedelta(0))
    last = _floor_hour(until)
    if last <= first:
        return live((since, until))
    hours = [first + HOUR * i for i in range(int((last - first) / HOUR))]
    # The rule's definition is part of the key: an edited rule counts afresh.
    stamp = zlib.crc32(orjson.dumps(view.rule.definition, option=orjson.OPT_SORT_KEYS))
    prefix = f"triggers:{view.rule.id}:{stamp:08x}:{plant.id}"
    counts = past_hours(prefix, hours, per_hour, 0)
    return live((since, first), (last, until)) + sum(counts.values())


def flow_figures(
    views: list[RuleView], plant: Plant, landscape: Landscape, now: datetime
) -> list[FlowFigures]:
    """Return each flow's triggers and breaches of the plant over the last 24 hours.

    Triggers per rule (:func:`trigger_count`); breaches of every rule at once,
    one filtered count per rule in one query.
    """
    since = now - FLOW_WINDOW
    flows: list[FlowFigures] = []
    decided: dict[int, datetime] = {}
    members: list[tuple[FlowFigures, RuleView]] = []
    for flow in FLOWS:
        chosen = [
            v
            for v in views
            if v.is_followup and v.spec.labels.get("flow") in flow.labels and v.concerns(plant)
        ]
        figures = FlowFigures(flow, [v.rule.name for v in chosen])
        flows.append(figures)
        for view in chosen:
            until = now - timedelta(seconds=view.spec.within_s or 0)
            if until <= since:
                continue  # no deadline of this rule has passed in the window yet
            decided[view.rule.id] = until
            members.append((figures, view))
            figures.triggers += trigger_count(view, plant, landscape, since, until)
    if decided:
        counts = {
            f"r{rule_id}": Count(
                "id", filter=Q(rule_id=rule_id, started_at__gte=since, started_at__lt=until)
            )
            for rule_id, until in decided.items()
        }
        breaches = (
            Alert.objects.filter(rule_id__in=list(decided), plant_id=plant.id)
            .filter(started_at__gte=since, started_at__lt=max(decided.values()))
            .exclude(resolution=Resolution.RECOVERED)
            .aggregate(**counts)
        )
        for figures, view in members:
            figures.breaches += breaches[f"r{view.rule.id}"] or 0
    return flows


@dataclass
class Timeline:
    """Alerts fired per hour over the last day, by severity (hours in the plant's time)."""

    hours: list[datetime]
    counts: dict[str, list[int]]
    tz: ZoneInfo

    @property
    def total(self) -> int:
        return sum(sum(values) for values in self.counts.values())


def _plant_zone(plant: Plant) -> ZoneInfo:
    try:
        return ZoneInfo(plant.timezone or "UTC")
    except (ValueError, KeyError):
        return ZoneInfo("UTC")


def alert_timeline(plant: Plant, now: datetime) -> Timeline:
    """Count the plant's alerts by the hour they fired, over the last 24 hours.

    Past hours from :func:`past_hours`, the current one live: one grouped query each.
    """
    current = _floor_hour(now)
    hours = [current - HOUR * i for i in reversed(range(TIMELINE_HOURS))]
    alerts = Alert.objects.filter(plant_id=plant.id)

    def per_hour(lo: datetime, hi: datetime) -> dict[datetime, dict[str, int]]:
        rows = (
            alerts.filter(fired_at__gte=lo, fired_at__lt=hi)
            .annotate(hour=TruncHour("fired_at", tzinfo=UTC))
            .values_list("hour", "severity")
            .annotate(n=Count("id"))
            .order_by()
        )
        found: dict[datetime, dict[str, int]] = defaultdict(dict)
        for hour, severity, n in rows:
            found[hour.astimezone(UTC)][severity] = n
        return found

    by_hour = past_hours(f"fired:{plant.id}", hours[:-1], per_hour, {})
    by_hour.update(per_hour(current, now + timedelta(microseconds=1)).items())
    counts = {severity: [0] * len(hours) for severity in SEVERITIES}
    for i, hour in enumerate(hours):
        for severity, n in by_hour.get(hour, {}).items():
            if severity in counts:
                counts[severity][i] = n
    return Timeline(hours, counts, _plant_zone(plant))


@dataclass
class PlantDashboard:
    """Everything the plant operations dashboard shows."""

    plant: Plant
    now: datetime
    severities: SeverityCounts
    backlogs: list[BacklogFigures]
    flows: list[FlowFigures]
    timeline: Timeline

    @property
    def alerts_url(self) -> str:
        return reverse("alerts") + "?" + urlencode({"state": "open", "plant": self.plant.key})


@contextmanager
def quick_reads() -> Iterator[None]:
    """Read in one transaction with PostgreSQL's JIT off.

    The row estimates of a day of events make PostgreSQL compile these queries,
    which costs more than running them.
    """
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('jit', 'off', true)")
        yield


def load_plant_dashboard(plant: Plant, now: datetime | None = None) -> PlantDashboard:
    """Read the plant dashboard's figures (a handful of small queries, set-based)."""
    now = now or timezone.now()
    with quick_reads():
        views = enabled_rules()
        landscape = Landscape.load()
        return PlantDashboard(
            plant=plant,
            now=now,
            severities=open_alerts_by_severity(plant),
            backlogs=[backlog_figures(b, views, plant, landscape, now) for b in BACKLOGS],
            flows=flow_figures(views, plant, landscape, now),
            timeline=alert_timeline(plant, now),
        )


# --- Plotly figures (plain dicts: Plotly.js draws them as they are) -----------------------------


def _layout(**extra: Any) -> dict[str, Any]:
    layout: dict[str, Any] = {
        "font": FONT,
        "margin": {"l": 48, "r": 12, "t": 8, "b": 36},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "hovermode": "closest",
        "dragmode": False,
        "legend": {
            "orientation": "h",
            "x": 0,
            "y": 1.02,
            "yanchor": "bottom",
            "traceorder": "normal",
        },
        "height": 260,
    }
    layout.update(extra)
    return layout


def _axis(**extra: Any) -> dict[str, Any]:
    axis: dict[str, Any] = {"gridcolor": "#eef1f5", "zeroline": False, "fixedrange": True}
    axis.update(extra)
    return axis


def _tint(colour: str, alpha: float = 0.4) -> str:
    """Return a ``#rrggbb`` colour as a translucent ``rgba()`` (acknowledged: the same, paler)."""
    red, green, blue = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red}, {green}, {blue}, {alpha})"


def severity_figure(counts: SeverityCounts) -> dict[str, Any]:
    """Return bars of open business alerts per severity: firing solid, acknowledged pale."""
    colours = [SEVERITY_COLOURS[s] for s in SEVERITIES]
    traces = [
        {
            "type": "bar",
            "name": "firing",
            "x": list(SEVERITIES),
            "y": [counts.firing[s] for s in SEVERITIES],
            "marker": {"color": colours},
            "hovertemplate": "%{y} firing %{x}<extra></extra>",
        },
        {
            "type": "bar",
            "name": "acknowledged",
            "x": list(SEVERITIES),
            "y": [counts.acknowledged[s] for s in SEVERITIES],
            "marker": {"color": [_tint(colour) for colour in colours]},
            "hovertemplate": "%{y} acknowledged %{x}<extra></extra>",
        },
    ]
    return {
        "data": traces,
        "layout": _layout(
            barmode="stack",
            showlegend=True,
            xaxis=_axis(),
            yaxis=_count_axis(
                [counts.firing[s] + counts.acknowledged[s] for s in SEVERITIES],
                tickformat=",d",
                title={"text": "open alerts"},
            ),
        ),
    }


def flows_figure(flows: list[FlowFigures]) -> dict[str, Any]:
    """Return one completion gauge per flow (0-100 %, the target marked)."""
    traces = []
    width = 1 / max(len(flows), 1)
    for i, figures in enumerate(flows):
        colour = {"ok": "#2e7d32", "warn": "#f0a202", "bad": "#c62828"}.get(figures.tone, "#9aa5b1")
        if figures.triggers:
            subtitle = f"{figures.in_time:,} of {figures.triggers:,} in time"
        elif figures.rules:
            subtitle = "no deadline fell in the last 24 h"
        else:
            subtitle = "no rule is labelled with this flow"
        traces.append(
            {
                "type": "indicator",
                "mode": "gauge+number",
                "value": round(figures.percent, 1) if figures.percent is not None else None,
                "number": {"suffix": " %", "valueformat": ".1f", "font": {"size": 26}},
                "title": {
                    "text": f"<b>{figures.flow.title}</b><br>"
                    f"<span style='font-size:12px;color:#5b6677'>{subtitle}</span>",
                    "font": {"size": 14},
                },
                "domain": {"x": [i * width + 0.04, (i + 1) * width - 0.04], "y": [0, 1]},
                "gauge": {
                    "axis": {"range": [0, 100], "ticksuffix": "%", "nticks": 6},
                    "bar": {"color": colour, "thickness": 0.7},
                    "bgcolor": "#f1f4f8",
                    "borderwidth": 0,
                    "threshold": {
                        "line": {"color": "#1d2430", "width": 2},
                        "thickness": 0.85,
                        "value": COMPLETION_TARGET * 100,
                    },
                },
                "name": figures.flow.key,
            }
        )
    return {
        "data": traces,
        "layout": _layout(height=250, margin={"l": 30, "r": 30, "t": 60, "b": 10}),
    }


def timeline_figure(timeline: Timeline) -> dict[str, Any]:
    """Return stacked bars of alerts fired per hour by severity (hours in the plant's time)."""
    labels = [h.astimezone(timeline.tz).strftime("%Y-%m-%d %H:00") for h in timeline.hours]
    traces = [
        {
            "type": "bar",
            "name": severity,
            "x": labels,
            "y": timeline.counts[severity],
            "marker": {"color": SEVERITY_COLOURS[severity]},
            "hovertemplate": "%{y} " + severity + " at %{x|%H:00}<extra></extra>",
        }
        for severity in SEVERITIES
    ]
    return {
        "data": traces,
        "layout": _layout(
            barmode="stack",
            bargap=0.15,
            xaxis=_axis(type="date", tickformat="%H:%M", title={"text": f"hour ({timeline.tz})"}),
            yaxis=_count_axis(
                [sum(hour) for hour in zip(*(timeline.counts[s] for s in SEVERITIES), strict=True)],
                tickformat=",d",
                title={"text": "alerts fired"},
            ),
        ),
    }


# --- IT figures ------------------------------------------------------------------------------


@dataclass
class ConnectorRow:
    """One connector on the IT dashboard: its window figures, health and series colour."""

    connector: Connector
    figures: Figures
    p95_latency_ms: float | None
    state: Health
    last_seen: datetime | None
    colour: str
    minutes: float

    @property
    def per_minute(self) -> float:
        return self.figures.total / max(self.minutes, 1e-9)

    @property
    def failure_percent(self) -> float | None:
        ratio = self.figures.failure_ratio
        return None if ratio is None else ratio * 100

    @property
    def slo(self) -> int | None:
        return self.connector.latency_slo_ms

    @property
    def over_slo(self) -> bool:
        return (
            self.slo is not None
            and self.p95_latency_ms is not None
            and self.p95_latency_ms > self.slo
        )

    @property
    def messages_url(self) -> str:
        return reverse("messages") + "?" + urlencode({"connector": self.connector.key})


@dataclass
class ItDashboard:
    """Everything the IT dashboard shows for one window."""

    window: Window
    series: Series
    rows: list[ConnectorRow]

    @property
    def now(self) -> datetime:
        return self.series.now


def visible_connectors(principal: Principal) -> list[Connector]:
    """Return the connectors the principal may see (by plant), with their last message time."""
    connectors = principal.scope(Connector.objects.select_related("plant"), "plant")
    return list(with_last_seen(connectors).order_by("key"))


def load_it_dashboard(
    principal: Principal, window: Window, now: datetime | None = None
) -> ItDashboard:
    """Read the IT dashboard's figures from the rollups for the principal's connectors."""
    connectors = visible_connectors(principal)
    series = window_series(window, [c.id for c in connectors], now)
    minutes = series.minutes
    rows = []
    for i, connector in enumerate(connectors):
        figures = series.totals.get(connector.id) or Figures()
        p95 = figures.p95_latency_ms
        last_seen = connector.last_seen  # type: ignore[attr-defined]
        health = ConnectorHealth(
            connector.id, figures.total, figures.failed, figures.dead_lettered, p95, None
        )
        rows.append(
            ConnectorRow(
                connector=connector,
                figures=figures,
                p95_latency_ms=p95,
                state=classify(connector, health, last_seen),
                last_seen=last_seen,
                colour=PALETTE[i % len(PALETTE)],
                minutes=minutes,
            )
        )
    return ItDashboard(window, series, rows)


def _x(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _line(
    row: ConnectorRow, xs: list[str], ys: list[float | None], unit: str, **extra: Any
) -> dict:
    trace = {
        "type": "scatter",
        "mode": "lines",
        "name": row.connector.key,
        "x": xs,
        "y": ys,
        "line": {"color": row.colour, "width": 1.8, "shape": "linear"},
        "connectgaps": False,
        "hovertemplate": f"{row.connector.key}<br>%{{x}}<br>%{{y}}{unit}<extra></extra>",
    }
    trace.update(extra)
    return trace


def _count_axis(values: list[int], **extra: Any) -> dict[str, Any]:
    """Return a y axis for counts: whole-number ticks however small the counts."""
    top = max(values, default=0)
    return _axis(rangemode="tozero", tick0=0, dtick=max(1, math.ceil(top / 5)), **extra)


def _stacked_counts(
    dashboard: ItDashboard, xs: list[str], count: Callable[[Figures], int], unit: str
) -> dict[str, Any]:
    """Return stacked bars per step of a per-connector count (dead letters, replays)."""
    series = dashboard.series
    traces, totals = [], [0] * len(xs)
    for row in dashboard.rows:
        steps = series.steps.get(row.connector.id, [None] * len(xs))
        values = [count(f) if f else 0 for f in steps]
        totals = [a + b for a, b in zip(totals, values, strict=True)]
        if any(values):
            traces.append(
                {
                    "type": "bar",
                    "name": row.connector.key,
                    "x": xs,
                    "y": values,
                    "marker": {"color": row.colour},
                    "hovertemplate": f"{row.connector.key}<br>%{{x}}<br>%{{y}} {unit}"
                    "<extra></extra>",
                }
            )
    layout = _layout(
        barmode="stack",
        bargap=0.1,
        showlegend=True,
        xaxis=_axis(type="date", range=[xs[0], xs[-1]] if xs else None, title={"text": "UTC"}),
        yaxis=_count_axis(totals, title={"text": unit}),
    )
    if not traces:
        layout["annotations"] = [
            {
                "text": f"no {unit} in the last {dashboard.window.key}",
                "xref": "paper",
                "yref": "paper",
                "x": 0.5,
                "y": 0.5,
                "showarrow": False,
                "font": {"color": "#5b6677"},
            }
        ]
    return {"data": traces, "layout": layout}


def it_figures(dashboard: ItDashboard) -> dict[str, dict[str, Any]]:
    """Return the IT dashboard's charts: one per metric over time, and p95 against the SLO."""
    series = dashboard.series
    xs = [_x(start) for start in series.starts]
    step_minutes = [series.step_minutes(i) for i in range(len(xs))]
    throughput, failures, latency = [], [], []
    highest = 100.0
    for row in dashboard.rows:
        steps = series.steps.get(row.connector.id, [None] * len(xs))
        throughput.append(
            _line(
                row,
                xs,
                [_round((f.total if f else 0) / step_minutes[i]) for i, f in enumerate(steps)],
                " msgs/min",
            )
        )
        failures.append(
            _line(
                row,
                xs,
                [_round(f.failure_ratio * 100 if f and f.total else None) for f in steps],
                " % failed",
            )
        )
        if row.slo:
            values, texts = [], []
            for f in steps:
                p95 = f.p95_latency_ms if f else None
                share = None if p95 is None else p95 / row.slo * 100
                values.append(_round(share, 1))
                texts.append("" if p95 is None else f"{p95:,.0f} ms of {row.slo:,} ms")
                highest = max(highest, share or 0)
            latency.append(
                _line(
                    row,
                    xs,
                    values,
                    " % of SLO",
                    text=texts,
                    hovertemplate=f"{row.connector.key}<br>%{{x}}<br>p95 %{{text}}"
                    f" (%{{y}} %)<extra></extra>",
                )
            )
    time_axis = _axis(type="date", title={"text": "UTC"})
    slo_line = {
        "type": "line",
        "xref": "paper",
        "x0": 0,
        "x1": 1,
        "y0": 100,
        "y1": 100,
        "line": {"color": "#c62828", "width": 1.5, "dash": "dash"},
    }
    with_slo = [row for row in dashboard.rows if row.slo]
    shares = [
        None if row.p95_latency_ms is None else row.p95_latency_ms / row.slo * 100  # type: ignore[operator]
        for row in with_slo
    ]
    slo_bars = {
        "data": [
            {
                "type": "bar",
                "orientation": "h",
                "name": "p95 latency",
                "y": [row.connector.key for row in with_slo],
                "x": [_round(share, 1) for share in shares],
                "text": [
                    "no latency"
                    if row.p95_latency_ms is None
                    else f"{row.p95_latency_ms:,.0f} / {row.slo:,} ms"
                    for row in with_slo
                ],
                "textposition": "auto",
                "marker": {"color": ["#c62828" if r.over_slo else "#2e7d32" for r in with_slo]},
                "hovertemplate": "%{y}<br>p95 %{text} (%{x} % of the SLO)<extra></extra>",
            }
        ],
        "layout": _layout(
            height=max(220, 30 * len(with_slo) + 70),
            margin={"l": 12, "r": 12, "t": 8, "b": 36},
            showlegend=False,
            shapes=[
                {**slo_line, "xref": "x", "yref": "paper", "x0": 100, "x1": 100, "y0": 0, "y1": 1}
            ],  # fmt: skip
            xaxis=_axis(
                rangemode="tozero",
                range=[0, max([120.0, *(s * 1.08 for s in shares if s is not None)])],
                ticksuffix=" %",
                title={"text": "p95 as a share of the SLO (dashed: the SLO)"},
            ),
            yaxis=_axis(autorange="reversed", automargin=True),
        ),
    }
    return {
        "throughput": {
            "data": throughput,
            "layout": _layout(
                xaxis=time_axis, yaxis=_axis(rangemode="tozero", title={"text": "msgs/min"})
            ),
        },
        "failures": {
            "data": failures,
            "layout": _layout(
                xaxis=time_axis,
                yaxis=_axis(rangemode="tozero", ticksuffix=" %", title={"text": "failed"}),
            ),
        },
        "latency": {
            "data": latency,
            "layout": _layout(
                xaxis=time_axis,
                yaxis=_axis(
                    range=[0, highest * 1.08], ticksuffix=" %", title={"text": "p95 / SLO"}
                ),
                shapes=[slo_line],
            ),
        },
        "slo": slo_bars,
        "dead": _stacked_counts(dashboard, xs, lambda f: f.dead_lettered, "dead letters"),
        "replays": _stacked_counts(dashboard, xs, lambda f: f.replayed, "replays"),
    }


# --- Payloads and pages --------------------------------------------------------------------------


def script_json(payload: dict[str, Any], element_id: str) -> SafeString:
    """Return ``payload`` in a ``<script type="application/json">`` tag (as json_script, fast)."""
    raw = orjson.dumps(payload)
    raw = raw.replace(b"<", b"\\u003C").replace(b">", b"\\u003E").replace(b"&", b"\\u0026")
    text = raw.decode()
    return format_html(
        '<script id="{}" type="application/json">{}</script>', element_id, mark_safe(text)
    )


def json_response(payload: dict[str, Any], status: int = 200) -> HttpResponse:
    return HttpResponse(orjson.dumps(payload), status=status, content_type="application/json")


def plant_payload(request: HttpRequest, dashboard: PlantDashboard) -> dict[str, Any]:
    """Return the plant dashboard's figures and HTML fragments (what the page and JSON share)."""
    context = {"dashboard": dashboard}
    return {
        "generated_at": dashboard.now.isoformat(),
        "figures": {
            "severity": severity_figure(dashboard.severities),
            "flows": flows_figure(dashboard.flows),
            "timeline": timeline_figure(dashboard.timeline),
        },
        "fragments": {
            "tiles": render_to_string("console/dashboard_plant_tiles.html", context, request),
        },
    }


def it_payload(request: HttpRequest, dashboard: ItDashboard) -> dict[str, Any]:
    """Return the IT dashboard's figures and HTML fragments for its window."""
    context = {"dashboard": dashboard, "now": dashboard.now}
    return {
        "generated_at": dashboard.now.isoformat(),
        "window": dashboard.window.key,
        "figures": it_figures(dashboard),
        "fragments": {
            "table": render_to_string("console/dashboard_it_table.html", context, request),
        },
    }


def visible_plants(principal: Principal) -> list[Plant]:
    """Return the plants the principal may see, by key."""
    return list(principal.scope(Plant.objects.all(), "id").order_by("key"))


def plant_or_refuse(principal: Principal, key: str) -> Plant:
    """Return the plant ``key``: 404 when unknown, 403 when the principal may not see it."""
    plant = Plant.objects.filter(key=key).first()
    if plant is None:
        raise Http404(f"no plant {key!r}")
    if not principal.sees_plant(plant.id):
        raise PermissionDenied(f"you may not see plant {key!r}")
    return plant


def window_or_none(request: HttpRequest) -> tuple[Window | None, str]:
    """Return the requested window (or None) and the message naming the choices."""
    key = request.GET.get("window", "").strip() or DEFAULT_WINDOW
    if key not in WINDOWS:
        return None, f"window: choose one of {', '.join(WINDOWS)}, not {key[:20]!r}"
    return WINDOWS[key], ""


@page()
def dashboard_index(request: HttpRequest) -> HttpResponse:
    """Open the first plant's dashboard the user may see (or say there is none)."""
    plants = visible_plants(request.principal)  # type: ignore[attr-defined]
    if plants:
        return redirect("dashboard-plant", plant=plants[0].key)
    return render(request, "console/dashboard_none.html", {"nav": "dashboards"})


@page()
def plant_dashboard(request: HttpRequest, plant: str) -> HttpResponse:
    """Show a plant's operations dashboard."""
    principal: Principal = request.principal  # type: ignore[attr-defined]
    chosen = plant_or_refuse(principal, plant)
    dashboard = load_plant_dashboard(chosen)
    payload = plant_payload(request, dashboard)
    context = {
        "nav": "dashboards",
        "dashboard": dashboard,
        "plants": visible_plants(principal),
        "payload": script_json(payload, "dashboard-payload"),
        "tiles": mark_safe(payload["fragments"]["tiles"]),
        "data_url": reverse("dashboard-plant-data", kwargs={"plant": chosen.key}),
        "poll_s": POLL_S,
        "target": round(COMPLETION_TARGET * 100),
    }
    return render(request, "console/dashboard_plant.html", context)


@page()
def plant_dashboard_data(request: HttpRequest, plant: str) -> HttpResponse:
    """Answer the plant dashboard's figures as JSON (what dashboards.js redraws from)."""
    principal: Principal = request.principal  # type: ignore[attr-defined]
    chosen = plant_or_refuse(principal, plant)
    return json_response(plant_payload(request, load_plant_dashboard(chosen)))


@page()
def it_dashboard(request: HttpRequest) -> HttpResponse:
    """Show the IT dashboard: per connector, from the rollups, over ``?window=``."""
    principal: Principal = request.principal  # type: ignore[attr-defined]
    window, error = window_or_none(request)
    context: dict[str, Any] = {
        "nav": "dashboards",
        "windows": list(WINDOWS),
        "window_key": window.key if window else DEFAULT_WINDOW,
        "error": error,
        "plants": visible_plants(principal),
        "poll_s": POLL_S,
    }
    if window is None:
        return render(request, "console/dashboard_it.html", context, status=400)
    dashboard = load_it_dashboard(principal, window)
    payload = it_payload(request, dashboard)
    context.update(
        dashboard=dashboard,
        payload=script_json(payload, "dashboard-payload"),
        table=mark_safe(payload["fragments"]["table"]),
        data_url=reverse("dashboard-it-data") + "?" + urlencode({"window": window.key}),
    )
    return render(request, "console/dashboard_it.html", context)


@page()
def it_dashboard_data(request: HttpRequest) -> HttpResponse:
    """Answer the IT dashboard's figures for ``?window=`` as JSON."""
    window, error = window_or_none(request)
    if window is None:
        return json_response({"error": error}, status=400)
    dashboard = load_it_dashboard(request.principal, window)  # type: ignore[attr-defined]
    return json_response(it_payload(request, dashboard))


# Included by console.urls under ``dashboards/``.
urlpatterns = [
    path("", dashboard_index, name="dashboards"),
    path("plant/<slug:plant>/", plant_dashboard, name="dashboard-plant"),
    path("plant/<slug:plant>/data", plant_dashboard_data, name="dashboard-plant-data"),
    path("it/", it_dashboard, name="dashboard-it"),
    path("it/data", it_dashboard_data, name="dashboard-it-data"),
]
