"""The correlation page: a key's story as a timeline with a swimlane per system, then its items.

``/correlations/?key=WO-1001`` shows every event, span and message tied to the
key (as the user's plants allow), the hops between systems with their latency
(SLO breaches marked), where the flow stopped and why, and the raw items with
their payloads (a connector's sensitive fields masked for non-admins).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import orjson
import plotly.graph_objects as go
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse

from console.auth import Principal
from console.pages.common import page
from integrations.correlation import Correlation, Hop, Item, correlate
from integrations.masking import mask_headers, render_payload

UNATTRIBUTED = "(unattributed)"
KIND_STYLE = {
    "event": {"color": "#0b5cad", "symbol": "circle"},
    "span": {"color": "#7b1fa2", "symbol": "diamond"},
    "message": {"color": "#00897b", "symbol": "square"},
}
FAILED_COLOR = "#c62828"
HOP_COLOR = "#5b6677"
# Past this many hops the labels would cover the lanes; the lines are still drawn.
MAX_HOP_LABELS = 60


@page()
def correlation(request: HttpRequest) -> HttpResponse:
    """Show the timeline and items of the key in ``?key=``, or say that nothing was found."""
    principal: Principal = request.principal  # type: ignore[attr-defined]
    key = request.GET.get("key", "").strip()
    context: dict[str, Any] = {"key": key, "search_query": key}
    if not key:
        return render(request, "console/correlation.html", context)
    result = correlate(key, principal)
    if not result.found:
        return render(request, "console/correlation.html", context, status=404)
    figure = timeline_figure(result)
    context.update(
        result=result,
        figure=json.loads(figure.to_json()),
        rows=[item_row(item, principal) for item in result.items],
        business_keys=[k for k in result.keys if k.via not in ("event_id", "causation_id")],
        event_keys=sum(k.via in ("event_id", "causation_id") for k in result.keys),
        breaches=[h for h in result.hops if h.slo_met is False],
        failed_hops=[h for h in result.hops if h.failed],
    )
    return render(request, "console/correlation.html", context)


# --- The timeline -------------------------------------------------------------------------------


def lanes(result: Correlation) -> list[str]:
    """Return the swimlanes: systems in order of first appearance, then unattributed items.

    A system only a failed hop points at (nothing arrived there) gets a lane too,
    after the reached ones, so the hop has somewhere to end.
    """
    names = [system.key for system in result.systems]
    for hop in result.hops:
        for system in (hop.source, hop.target):
            if system not in names:
                names.append(system)
    if any(item.system is None for item in result.items):
        names.append(UNATTRIBUTED)
    return names


def _hover(item: Item) -> str:
    status = f" · {item.status}" if item.status else ""
    return f"<b>{item.kind}</b> {item.title}<br>{item.time:%Y-%m-%d %H:%M:%S.%f}"[:-3] + status


def hop_label(hop: Hop) -> str:
    """Return what a hop's line says: its latency, an SLO breach, or its failure."""
    if hop.failed:
        return f"failed ({hop.connector})" if hop.connector else "failed"
    latency = "?" if hop.latency_ms is None else f"{hop.latency_ms:,.0f} ms"
    if hop.slo_met is False:
        return f"SLO {hop.slo_ms:,} ms exceeded ({latency})"
    return latency


def timeline_figure(result: Correlation) -> go.Figure:
    """Build the Plotly timeline: a lane per system, a marker per item, an arrow per hop."""
    names = lanes(result)
    lane = {name: index for index, name in enumerate(names)}
    reached = {system.key for system in result.systems} | {UNATTRIBUTED}
    figure = go.Figure()
    for kind, style in KIND_STYLE.items():
        items = [i for i in result.items if i.kind == kind and not i.failed]
        if items:
            figure.add_trace(_markers(f"{kind}s", items, lane, style["color"], style["symbol"]))
    failed = [i for i in result.items if i.failed]
    if failed:
        figure.add_trace(_markers("failed", failed, lane, FAILED_COLOR, "x", size=14))
    for name, hops, color, dash in (
        (
            "hops",
            [h for h in result.hops if not h.failed and h.slo_met is not False],
            HOP_COLOR,
            "solid",
        ),
        (
            "SLO breached",
            [h for h in result.hops if not h.failed and h.slo_met is False],
            FAILED_COLOR,
            "dash",
        ),
        ("failed hops", [h for h in result.hops if h.failed], FAILED_COLOR, "dot"),
    ):
        if hops:
            figure.add_trace(_hop_lines(name, hops, lane, color, dash))
    first, last = _time_range(result)
    for (x, y), group in _label_groups(result.hops, lane, first, last)[:MAX_HOP_LABELS]:
        bad = any(hop.failed or hop.slo_met is False for hop in group)
        figure.add_annotation(
            x=x,
            y=y,
            text=" / ".join(dict.fromkeys(hop_label(hop) for hop in group)),
            showarrow=False,
            font={"size": 11, "color": FAILED_COLOR if bad else HOP_COLOR},
            bgcolor="rgba(255,255,255,0.85)",
        )
    figure.update_layout(
        height=max(260, 90 * len(names) + 120),
        margin={"l": 110, "r": 30, "t": 30, "b": 50},
        plot_bgcolor="#ffffff",
        paper_bgcolor="#ffffff",
        hovermode="closest",
        legend={"orientation": "h", "y": -0.18},
        xaxis={"type": "date", "title": None, "gridcolor": "#eef1f5", "range": [first, last]},
        yaxis={
            "tickmode": "array",
            "tickvals": list(range(len(names))),
            "ticktext": [n if n in reached else f"{n} (not reached)" for n in names],
            "range": [len(names) - 0.5, -0.5],  # first system on top
            "zeroline": False,
            "gridcolor": "#dde2ea",
        },
    )
    return figure


def _time_range(result: Correlation) -> tuple[datetime, datetime]:
    """Return the x range: every item and hop end, padded so edge labels are not cut."""
    times = [item.time for item in result.items] + [_hop_end(hop) for hop in result.hops]
    first, last = min(times), max(times)
    pad = max((last - first) * 0.06, timedelta(milliseconds=200))
    return first - pad, last + pad


def _label_groups(
    hops: list[Hop], lane: dict[str, int], first: datetime, last: datetime
) -> list[tuple[tuple[datetime, float], list[Hop]]]:
    """Group hops whose labels would overlap (same lanes, about the same time): one label each."""
    bucket = max((last - first) / 100, timedelta(milliseconds=1))
    groups: dict[tuple[str, str, int], list[Hop]] = {}
    for hop in hops:
        middle = hop.at + (_hop_end(hop) - hop.at) / 2
        groups.setdefault((hop.source, hop.target, int((middle - first) / bucket)), []).append(hop)
    placed = []
    for (source, target, _), group in groups.items():
        hop = group[0]
        middle = hop.at + (_hop_end(hop) - hop.at) / 2
        placed.append(((middle, (lane[source] + lane[target]) / 2), group))
    return placed


def _markers(
    name: str, items: list[Item], lane: dict[str, int], color: str, symbol: str, size: int = 11
) -> go.Scatter:
    return go.Scatter(
        name=name,
        x=[item.time for item in items],
        y=[lane[item.system or UNATTRIBUTED] for item in items],
        mode="markers",
        marker={"color": color, "symbol": symbol, "size": size, "line": {"width": 1}},
        hovertext=[_hover(item) for item in items],
        hoverinfo="text",
        customdata=[f"{item.kind}-{item.id}" for item in items],
    )


def _hop_end(hop: Hop) -> datetime:
    # A failed message never arrived: its line ends where it would have, a tick later.
    return hop.arrived if hop.latency_ms else hop.at + timedelta(milliseconds=1)


def _hop_lines(
    name: str, hops: list[Hop], lane: dict[str, int], color: str, dash: str
) -> go.Scatter:
    """Return one trace drawing every hop as a segment ending in an arrowhead."""
    xs: list[datetime | None] = []
    ys: list[float | None] = []
    sizes: list[int] = []
    texts: list[str] = []
    for hop in hops:
        xs += [hop.at, _hop_end(hop), None]
        ys += [lane[hop.source], lane[hop.target], None]
        sizes += [0, 13, 0]
        label = f"{hop.source} → {hop.target}: {hop_label(hop)}"
        texts += [label, label, ""]
    return go.Scatter(
        name=name,
        x=xs,
        y=ys,
        mode="lines+markers",
        line={"color": color, "dash": dash, "width": 2},
        marker={"symbol": "arrow", "angleref": "previous", "size": sizes, "color": color},
        hovertext=texts,
        hoverinfo="text",
    )


# --- The items below the timeline --------------------------------------------------------


def _pretty(value: object) -> str:
    if value in (None, {}, [], ""):
        return ""
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode()


def item_row(item: Item, principal: Principal) -> dict[str, Any]:
    """Return what the items table shows of one item: details and, for messages, the payload."""
    row = item.row
    details: list[tuple[str, str]] = []
    body = ""
    attempts: list[dict[str, Any]] = []
    link = None
    masked = False
    if item.kind == "event":
        details = [
            ("type", row["type"]),
            ("source", row["source"]),
            ("id", row["event_id"]),
            ("subject", row["subject"]),
            ("correlation id", row["correlation_id"]),
            ("caused by", row["causation_id"]),
            ("trace", row["trace_id"]),
            ("keys", ", ".join(f"{k}={v}" for k, v in row["business_keys"].items())),
        ]
        body = _pretty(row["data"]) or (row["data_base64"] or "")
    elif item.kind == "span":
        details = [
            ("name", row["name"]),
            ("service", row["service_name"]),
            ("trace", row["trace_id"]),
            ("span", row["span_id"]),
            ("parent", row["parent_span_id"]),
            ("duration", f"{row['duration_ms']:,.1f} ms"),
            ("status", f"{row['status']} {row['status_message']}".strip()),
        ]
        body = _pretty(row["attributes"])
    else:
        paths = row["sensitive_fields"]
        masked = bool(paths) and not principal.is_admin
        headers = mask_headers(row["headers"], paths) if masked else row["headers"]
        details = [
            ("connector", row["connector"]),
            ("from → to", f"{row['source_system'] or '?'} → {row['target_system'] or '?'}"),
            ("id", row["external_id"]),
            ("correlation id", row["correlation_id"]),
            ("keys", ", ".join(f"{k}={v}" for k, v in row["business_keys"].items())),
            ("latency", "" if row["latency_ms"] is None else f"{row['latency_ms']:,} ms"),
            ("error", row["error"]),
            ("headers", ", ".join(f"{k}: {v}" for k, v in headers.items())),
        ]
        body = render_payload(row["payload"], row["content_type"], paths, masked=masked)
        attempts = row["attempts"]
        link = reverse("message", args=[item.id])
    return {
        "item": item,
        "details": [(name, value) for name, value in details if value],
        "body": body,
        "attempts": attempts,
        "link": link,
        "masked": masked,
    }
