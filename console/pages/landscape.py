"""The systems and connectors pages, and the flow map both show.

Both pages read one window of recent traffic (``?window=``, default one hour):
the connectors' health in one grouped query over the window's messages
(``integrations.queries.connector_health``), each connector's last message
ever (one index probe each), and for the systems page their events and spans
in the window (one grouped query per store).

Plant scoping: a plant-scoped user sees the connectors and systems of their
plants, and shared systems (no plant, such as the cloud ERP) only where one of
their connectors ends, with figures computed from their plants' items alone.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import plotly.graph_objects as go
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.timesince import timesince

from console.auth import Principal
from console.pages.common import page
from integrations.models import Connector, System
from integrations.queries import (
    ConnectorHealth,
    Health,
    SystemActivity,
    classify,
    connector_health,
    system_activity,
    with_last_seen,
)

WINDOWS = {
    "15m": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "6h": timedelta(hours=6),
    "24h": timedelta(hours=24),
    "7d": timedelta(days=7),
}
DEFAULT_WINDOW = "1h"


class BadWindow(ValueError):
    """The ``window`` parameter is not one of :data:`WINDOWS`."""


def window_param(request: HttpRequest) -> str:
    """Return the requested window key; raise BadWindow naming the choices."""
    key = request.GET.get("window", "").strip() or DEFAULT_WINDOW
    if key not in WINDOWS:
        raise BadWindow(f"window: choose one of {', '.join(WINDOWS)}, not {key[:20]!r}")
    return key


# --- What the pages show ---------------------------------------------------------------------


@dataclass
class ConnectorRow:
    """A connector with its recent figures and health state."""

    connector: Connector
    health: ConnectorHealth
    state: Health
    last_seen: datetime | None
    window: timedelta

    @property
    def per_minute(self) -> float:
        return self.health.per_minute(self.window)

    @property
    def failure_percent(self) -> float:
        return self.health.failure_ratio * 100

    @property
    def over_slo(self) -> bool:
        slo, p95 = self.connector.latency_slo_ms, self.health.p95_latency_ms
        return slo is not None and p95 is not None and p95 > slo

    @property
    def messages_url(self) -> str:
        return reverse("messages") + "?" + urlencode({"connector": self.connector.key})


@dataclass
class SystemRow:
    """A system with what it did in the window."""

    system: System
    activity: SystemActivity
    shared: bool
    sent: int = 0
    received: int = 0
    outbound: int = 0
    inbound: int = 0

    @property
    def last_seen(self) -> datetime | None:
        return self.activity.last_seen


@dataclass
class Landscape:
    """The systems and connectors a principal sees, with one window of figures."""

    window_key: str
    since: datetime
    until: datetime
    connectors: list[ConnectorRow]
    systems: list[SystemRow] = field(default_factory=list)


def load_landscape(principal: Principal, window_key: str) -> Landscape:
    """Read what the pages show: visible connectors with health, and the systems they join."""
    until = timezone.now()
    since = until - WINDOWS[window_key]
    plants = None if principal.plant_ids is None else sorted(principal.plant_ids)
    connectors = principal.scope(
        Connector.objects.select_related("source", "target", "plant"), "plant"
    )
    connectors = list(with_last_seen(connectors, plants).order_by("key"))
    health = connector_health(since, until, plants)
    rows = []
    for connector in connectors:
        figures = health.get(connector.pk) or ConnectorHealth(connector.pk)
        state = classify(connector, figures, connector.last_seen)  # type: ignore[attr-defined]
        rows.append(
            ConnectorRow(connector, figures, state, connector.last_seen, WINDOWS[window_key])  # type: ignore[attr-defined]
        )

    systems = System.objects.select_related("plant").order_by("key")
    if principal.plant_ids is not None:
        ends = {s for c in connectors for s in (c.source_id, c.target_id) if s is not None}
        systems = systems.filter(
            Q(plant_id__in=principal.plant_ids) | Q(plant__isnull=True, pk__in=ends)
        )
    activity = system_activity(since, until, plants)
    system_rows = {
        s.pk: SystemRow(s, activity.get(s.pk) or SystemActivity(), s.plant_id is None)
        for s in systems
    }
    for row in rows:
        for system_id, sent in ((row.connector.source_id, True), (row.connector.target_id, False)):
            entry = system_rows.get(system_id)  # type: ignore[arg-type]
            if entry is None:
                continue
            if sent:
                entry.sent += row.health.total
                entry.outbound += 1
            else:
                entry.received += row.health.total
                entry.inbound += 1
            entry.activity.saw(row.health.last_seen)
    return Landscape(window_key, since, until, rows, list(system_rows.values()))


# --- The flow map -------------------------------------------------------------------------------

# Columns left to right: the enterprise, plant support, plant execution, the shop floor, the rest.
KIND_COLUMN = {
    "ERP": 0,
    "SAAS": 1,
    "QMS": 1,
    "LIMS": 1,
    "EAM": 1,
    "MES": 2,
    "WMS": 2,
    "SCADA": 3,
    "IOT": 3,
    "TMS": 3,
    "OTHER": 4,
}
KIND_COLOUR = {
    "ERP": "#1f4e79",
    "MES": "#5b3f8c",
    "WMS": "#00695c",
    "QMS": "#8d4a00",
    "LIMS": "#8d4a00",
    "EAM": "#6d4c41",
    "SCADA": "#37474f",
    "IOT": "#37474f",
    "TMS": "#2e5d8a",
    "SAAS": "#455a64",
    "OTHER": "#616161",
}
UNKNOWN = "?"
ROW_HEIGHT = 1.0
BAND_GAP = 0.45
CURVE_SPACING = 0.22
SAMPLES = 24
EDGE_WIDTH = {"critical": 4.5, "high": 3.5, "normal": 2.5, "low": 1.8}


@dataclass
class Node:
    key: str
    label: str
    kind: str
    band: str
    hover: str
    x: float = 0.0
    y: float = 0.0


def _ago(at: datetime | None, now: datetime) -> str:
    if at is None:
        return "never"
    return f"{timesince(at, now).split(',')[0]} ago"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def edge_hover(row: ConnectorRow, window_key: str, now: datetime) -> str:
    """Return a connector's hover text: path, SLO and the window's figures."""
    c, h = row.connector, row.health
    source = c.source.key if c.source else UNKNOWN
    target = c.target.key if c.target else UNKNOWN
    slo = f"SLO {c.latency_slo_ms:,} ms" if c.latency_slo_ms is not None else "no SLO"
    lines = [
        f"<b>{c.key}</b> · {row.state.label}",
        f"{source} → {target}" + (f" · {c.flow}" if c.flow else ""),
        f"{c.pattern} · {c.criticality} · {slo}",
        f"last {window_key}: {h.total:,} messages ({row.per_minute:.1f}/min)",
        f"failed {h.failed:,} · dead-lettered {h.dead_lettered:,} ({h.failure_ratio:.1%})",
        f"p95 latency {_ms(h.p95_latency_ms)}" + (" — over SLO" if row.over_slo else ""),
        f"last seen {_ago(row.last_seen, now)}",
    ]
    return "<br>".join(lines)


def _layout_nodes(nodes: list[Node], band_order: list[str]) -> tuple[dict[str, float], list[int]]:
    """Place nodes in columns by kind and bands by plant; return band tops and used columns."""
    columns = sorted({KIND_COLUMN.get(n.kind, 4) for n in nodes})
    x_of = {column: float(i) for i, column in enumerate(columns)}
    tops: dict[str, float] = {}
    y = 0.0
    for band in band_order:
        members = [n for n in nodes if n.band == band]
        if not members:
            continue
        by_column: dict[int, list[Node]] = defaultdict(list)
        for node in sorted(members, key=lambda n: (n.kind, n.key)):
            by_column[KIND_COLUMN.get(node.kind, 4)].append(node)
        height = max(len(column) for column in by_column.values())
        tops[band] = y
        for column, stack in by_column.items():
            # Centre a short column against the band's tallest one.
            start = y - (height - len(stack)) * ROW_HEIGHT / 2
            for i, node in enumerate(stack):
                node.x, node.y = x_of[column], start - i * ROW_HEIGHT
        y -= (height - 1) * ROW_HEIGHT + ROW_HEIGHT + BAND_GAP
    return tops, columns


def _curve(
    a: tuple[float, float], b: tuple[float, float], offset: float, canonical: bool
) -> list[tuple[float, float]]:
    """Return points of a quadratic curve from a to b, bowed ``offset`` sideways.

    The bow is measured in the pair's canonical direction, so two opposite
    connectors between the same systems bow apart instead of overlapping.
    """
    (x0, y0), (x1, y1) = a, b
    dx, dy = (x1 - x0, y1 - y0) if canonical else (x0 - x1, y0 - y1)
    length = max((dx * dx + dy * dy) ** 0.5, 1e-9)
    cx = (x0 + x1) / 2 - dy / length * offset
    cy = (y0 + y1) / 2 + dx / length * offset
    points = []
    for i in range(SAMPLES + 1):
        u = i / SAMPLES
        points.append(
            (
                (1 - u) ** 2 * x0 + 2 * (1 - u) * u * cx + u * u * x1,
                (1 - u) ** 2 * y0 + 2 * (1 - u) * u * cy + u * u * y1,
            )
        )
    return points


def flow_map(landscape: Landscape, *, plant_names: dict[str, str] | None = None) -> dict:
    """Return the Plotly figure (as JSON data) of systems and connectors coloured by health.

    Nodes are systems, in columns by kind (ERP left, MES and WMS in the middle,
    shop floor right) and bands by plant (shared systems on top). Each
    connector is a curve from its source to its target with an arrowhead,
    coloured by its health state; its midpoint carries the hover text and,
    in ``customdata``, ``[connector key, messages URL]`` for a click.
    """
    now = landscape.until
    nodes: dict[str, Node] = {}
    for row in landscape.systems:
        s = row.system
        band = s.plant.key if s.plant_id else ""
        hover = (
            f"<b>{s.key}</b> · {s.name}<br>{s.kind} · "
            + (f"plant {s.plant.key}" if s.plant_id else "shared")
            + f"<br>last {landscape.window_key}: {row.activity.events:,} events, "
            f"{row.activity.spans:,} spans, {row.sent:,} messages out, "
            f"{row.received:,} in<br>last seen {_ago(row.last_seen, now)}"
        )
        nodes[s.key] = Node(s.key, s.key, s.kind, band, hover)

    edges: list[tuple[ConnectorRow, str, str]] = []
    for row in landscape.connectors:
        c = row.connector
        source = c.source.key if c.source and c.source.key in nodes else None
        target = c.target.key if c.target and c.target.key in nodes else None
        if source is None and target is None:
            continue  # nothing to anchor it: listed in the table only
        if source is None or target is None:
            nodes.setdefault(
                UNKNOWN, Node(UNKNOWN, "unknown", "OTHER", "", "A system Andon does not know")
            )
        edges.append((row, source or UNKNOWN, target or UNKNOWN))

    names = plant_names or {}
    band_order = [""] + sorted({n.band for n in nodes.values()} - {""})
    tops, columns = _layout_nodes(list(nodes.values()), band_order)

    fig = go.Figure()
    shapes, annotations = [], []
    x_max = max(len(columns) - 1, 1)
    ys = [n.y for n in nodes.values()] or [0.0]
    for band, top in tops.items():
        bottom = min(n.y for n in nodes.values() if n.band == band)
        shapes.append(
            dict(
                type="rect",
                layer="below",
                x0=-0.75,
                x1=x_max + 0.5,
                y0=bottom - 0.45,
                y1=top + 0.5,
                fillcolor="#f1f4f8" if band else "#fbf6e9",
                line=dict(width=0),
            )
        )
        title = names.get(band, f"Plant {band}") if band else "Shared"
        annotations.append(
            dict(
                x=-0.72,
                y=top + 0.44,
                xref="x",
                yref="y",
                text=f"<b>{title}</b>",
                showarrow=False,
                xanchor="left",
                yanchor="top",
                font=dict(size=12, color="#5b6677"),
            )
        )

    # Connectors between the same two systems bow apart.
    pairs: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, (_, source, target) in enumerate(edges):
        pairs[tuple(sorted((source, target)))].append(index)  # type: ignore[index]
    lines: dict[tuple[Health, float, str], tuple[list, list]] = {}
    mids: dict[Health, dict[str, list]] = {}
    for (first, _), members in pairs.items():
        for rank, index in enumerate(members):
            row, source, target = edges[index]
            if source == target:
                continue
            offset = (rank - (len(members) - 1) / 2) * CURVE_SPACING
            a, b = nodes[source], nodes[target]
            points = _curve((a.x, a.y), (b.x, b.y), offset, canonical=source == first)
            dash = "dash" if row.state is Health.DISCOVERED else "solid"
            width = EDGE_WIDTH.get(row.connector.criticality, 2.5)
            xs, ys_ = lines.setdefault((row.state, width, dash), ([], []))
            xs.extend([p[0] for p in points] + [None])
            ys_.extend([p[1] for p in points] + [None])
            tail = points[int(SAMPLES * 0.8)]
            annotations.append(
                dict(
                    x=b.x,
                    y=b.y,
                    ax=tail[0],
                    ay=tail[1],
                    xref="x",
                    yref="y",
                    axref="x",
                    ayref="y",
                    showarrow=True,
                    arrowhead=2,
                    arrowsize=1.0,
                    arrowwidth=max(width, 2.5),
                    arrowcolor=row.state.colour,
                    standoff=17,
                    text="",
                )
            )
            mid = points[SAMPLES // 2]
            entry = mids.setdefault(row.state, {"x": [], "y": [], "text": [], "data": []})
            entry["x"].append(mid[0])
            entry["y"].append(mid[1])
            entry["text"].append(edge_hover(row, landscape.window_key, now))
            entry["data"].append([row.connector.key, row.messages_url])

    for (state, width, dash), (xs, ys_) in lines.items():
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys_,
                mode="lines",
                line=dict(color=state.colour, width=width, dash=dash),
                hoverinfo="skip",
                showlegend=False,
                legendgroup=state.value,
                name=f"edges {state.value}",
            )
        )
    for state in Health:
        entry = mids.get(state)
        if entry is None:
            continue
        fig.add_trace(
            go.Scatter(
                x=entry["x"],
                y=entry["y"],
                mode="markers",
                marker=dict(size=11, color=state.colour, line=dict(color="#ffffff", width=1.5)),
                hovertext=entry["text"],
                hovertemplate="%{hovertext}<extra></extra>",
                customdata=entry["data"],
                name=state.label,
                legendgroup=state.value,
                meta=state.value,
            )
        )
    ordered = list(nodes.values())
    fig.add_trace(
        go.Scatter(
            x=[n.x for n in ordered],
            y=[n.y for n in ordered],
            mode="markers+text",
            text=[f"<b>{n.label}</b>" for n in ordered],
            textposition="bottom center",
            textfont=dict(size=12, color="#1d2430"),
            marker=dict(
                size=30,
                symbol="square",
                color=[KIND_COLOUR.get(n.kind, "#616161") for n in ordered],
                line=dict(color="#ffffff", width=2),
            ),
            hovertext=[n.hover for n in ordered],
            hovertemplate="%{hovertext}<extra></extra>",
            customdata=[[n.key, ""] for n in ordered],
            name="systems",
            showlegend=False,
            meta="systems",
        )
    )
    for i, column in enumerate(columns):
        kinds = sorted({n.kind for n in ordered if KIND_COLUMN.get(n.kind, 4) == column})
        annotations.append(
            dict(
                x=i,
                y=max(ys) + 0.95,
                xref="x",
                yref="y",
                text=" · ".join(kinds),
                showarrow=False,
                font=dict(size=11, color="#5b6677"),
            )
        )
    height_units = max(ys) - min(ys) + 2.2
    fig.update_layout(
        template="none",
        font=dict(family="system-ui, -apple-system, Segoe UI, sans-serif"),
        height=int(max(320, 95 * height_units + 60)),
        margin=dict(l=10, r=10, t=10, b=10),
        plot_bgcolor="#ffffff",
        paper_bgcolor="#ffffff",
        hovermode="closest",
        dragmode=False,
        showlegend=bool(mids),
        legend=dict(orientation="h", x=0, y=1.0, yanchor="bottom", font=dict(size=11)),
        xaxis=dict(visible=False, range=[-0.8, x_max + 0.55], fixedrange=True),
        yaxis=dict(visible=False, range=[min(ys) - 0.8, max(ys) + 1.15], fixedrange=True),
        shapes=shapes,
        annotations=annotations,
        hoverlabel=dict(align="left"),
    )
    return json.loads(fig.to_json())


# --- Pages -------------------------------------------------------------------------------------


def _render(
    request: HttpRequest, template: str, nav: str, window_key: str | None, error: str = ""
) -> HttpResponse:
    principal: Principal = request.principal  # type: ignore[attr-defined]
    context: dict[str, object] = {"nav": nav, "windows": list(WINDOWS), "error": error}
    if window_key is None:
        context["window_key"] = DEFAULT_WINDOW
        return render(request, template, context, status=400)
    landscape = load_landscape(principal, window_key)
    plant_names = {
        row.system.plant.key: row.system.plant.name
        for row in landscape.systems
        if row.system.plant_id
    }
    unmapped = [
        row
        for row in landscape.connectors
        if row.connector.source_id is None and row.connector.target_id is None
    ]
    context.update(
        landscape=landscape,
        window_key=window_key,
        figure=flow_map(landscape, plant_names=plant_names),
        unmapped=unmapped,
        now=landscape.until,
    )
    return render(request, template, context)


@page()
def systems(request: HttpRequest) -> HttpResponse:
    """Show the systems (kind, plant, sources, recent items, last seen) and the flow map."""
    try:
        window_key: str | None = window_param(request)
        error = ""
    except BadWindow as exc:
        window_key, error = None, str(exc)
    return _render(request, "console/systems.html", "systems", window_key, error)


@page()
def connectors(request: HttpRequest) -> HttpResponse:
    """Show the connectors with their recent health over ``?window=`` and the flow map."""
    try:
        window_key: str | None = window_param(request)
        error = ""
    except BadWindow as exc:
        window_key, error = None, str(exc)
    return _render(request, "console/connectors.html", "connectors", window_key, error)
