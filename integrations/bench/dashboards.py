"""Dashboard speed: the plant and IT dashboards over a week of two plants vs the messages table.

Run it against a PostgreSQL database of its own (it TRUNCATEs the stores, the
rollups and the alerts)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/andon_bench_dashboards \\
        python manage.py bench dashboards

It seeds a fixed week of two plants: 1,000,000 captured messages over twelve
connectors (each with its attempt; most failures replayed; an order-release
outage on the sixth day), 2,000,000 events (work orders released,
acknowledged, completed and posted; holds placed and applied; lab results and
deviations; machine alerts and maintenance cases; shop-floor progress) and
200,000 alerts (the follow-up breaches those events imply, IoT anomaly alerts
of a match rule, a few technical ones). Rows are COPYed in and ANALYZEd; a
seed already in place is reused unless ``--reseed``.

Then it refreshes the rollups (a full backfill, then the periodic job), and
with the clock at the end of the week times each dashboard page in-process
through Django's test client (``--runs`` each, p50/p95) and, in the same run,
the IT figures straight from the messages table, the baseline that shows what
the rollups buy.
"""

from __future__ import annotations

import math
import random
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from django.core.management import call_command
from django.db import connection, transaction

from integrations.bench.harness import (
    ensure_database,
    require_bench_database,
    row_count,
    seed_label,
)
from integrations.ingest.bulk import copy_rows

P95_TARGET_MS = 150.0
SEED_VERSION = 1
START = datetime(2026, 5, 4, tzinfo=UTC)
END = START + timedelta(days=7)
CHUNK = 50_000
BASELINE_RUNS = 5
BENCH_USER = "bench-dashboards-operator"

PLANTS = (("p1", "Plant 1 Stuttgart", "Europe/Berlin"), ("p2", "Plant 2 Lyon", "Europe/Paris"))
# key, name, kind, plant, sources
SYSTEMS = (
    ("erp", "Cloud ERP", "ERP", None, ["/erp", "erp"]),
    ("qms", "Quality Management (SaaS)", "QMS", None, ["/qms", "qms"]),
    ("tms", "Transport Management", "TMS", None, ["/tms", "tms"]),
    ("mes-p1", "MES Plant 1", "MES", "p1", ["/mes/p1", "mes-p1"]),
    ("wms-p1", "WMS Plant 1", "WMS", "p1", ["/wms/p1", "wms-p1"]),
    ("iot-p1", "IoT Plant 1", "IOT", "p1", ["/iot/p1", "iot-p1"]),
    ("eam-p1", "EAM Plant 1", "EAM", "p1", ["/eam/p1", "eam-p1"]),
    ("mes-p2", "MES Plant 2", "MES", "p2", ["/mes/p2", "mes-p2"]),
    ("wms-p2", "WMS Plant 2", "WMS", "p2", ["/wms/p2", "wms-p2"]),
    ("lims-p2", "LIMS Plant 2", "LIMS", "p2", ["/lims/p2", "lims-p2"]),
)


@dataclass(frozen=True)
class Route:
    """A bench connector and its traffic: share of messages, typical latency, failure rate."""

    key: str
    source: str
    target: str
    flow: str
    criticality: str
    slo_ms: int
    share: float
    latency_ms: int
    failing: float


ROUTES = (
    Route("erp-to-mes-p1-orders", "erp", "mes-p1", "order-to-production", "critical", 2_000,
          0.16, 450, 0.02),
    Route("erp-to-mes-p2-orders", "erp", "mes-p2", "order-to-production", "critical", 2_000,
          0.08, 520, 0.03),
    Route("mes-p1-to-erp-confirmations", "mes-p1", "erp", "production-to-inventory", "high",
          120_000, 0.14, 1_800, 0.01),
    Route("mes-p2-to-erp-confirmations", "mes-p2", "erp", "production-to-inventory", "high",
          120_000, 0.07, 2_100, 0.01),
    Route("mes-p1-to-wms-p1-goods-receipt", "mes-p1", "wms-p1", "production-to-inventory",
          "high", 120_000, 0.12, 900, 0.01),
    Route("mes-p2-to-wms-p2-goods-receipt", "mes-p2", "wms-p2", "production-to-inventory",
          "high", 120_000, 0.06, 950, 0.01),
    Route("qms-to-wms-p1-holds", "qms", "wms-p1", "quality-to-corrective-action", "critical",
          60_000, 0.04, 2_500, 0.02),
    Route("qms-to-wms-p2-holds", "qms", "wms-p2", "quality-to-corrective-action", "critical",
          60_000, 0.02, 2_700, 0.02),
    Route("lims-p2-to-qms-results", "lims-p2", "qms", "quality-to-corrective-action", "high",
          300_000, 0.05, 4_000, 0.01),
    Route("iot-p1-to-eam-p1-cases", "iot-p1", "eam-p1", "maintenance-trigger", "normal",
          600_000, 0.04, 3_000, 0.02),
    Route("wms-p1-to-tms-shipments", "wms-p1", "tms", "shipment-confirmation", "high", 60_000,
          0.12, 700, 0.015),
    Route("wms-p2-to-tms-shipments", "wms-p2", "tms", "shipment-confirmation", "high", 60_000,
          0.10, 760, 0.015),
)  # fmt: skip
# ERP cannot reach MES plant 1 for 20 minutes on the sixth day.
OUTAGE = (START + timedelta(days=5, hours=9, minutes=40), START + timedelta(days=5, hours=10))

RULES: tuple[dict[str, Any], ...] = (
    {
        "name": "wo-not-acknowledged-p1",
        "kind": "followup",
        "when": {"type": "erp.workorder.released", "data.plant": "p1"},
        "expect": {"type": "mes.workorder.acknowledged", "source": "mes-p1"},
        "key": "subject",
        "within": "10m",
        "severity": "critical",
        "labels": {"flow": "order-to-production", "plant": "p1"},
    },
    {
        "name": "wo-not-acknowledged-p2",
        "kind": "followup",
        "when": {"type": "erp.workorder.released", "data.plant": "p2"},
        "expect": {"type": "mes.workorder.acknowledged", "source": "mes-p2"},
        "key": "subject",
        "within": "10m",
        "severity": "critical",
        "labels": {"flow": "order-to-production", "plant": "p2"},
    },
    {
        "name": "goods-receipt-not-posted",
        "kind": "followup",
        "when": {"type": "mes.workorder.completed"},
        "expect": {"type": "erp.goodsreceipt.posted", "source": "erp"},
        "key": "subject",
        "within": "15m",
        "severity": "major",
        "labels": {"flow": "production-to-inventory"},
    },
    {
        "name": "hold-not-applied-p1",
        "kind": "followup",
        "when": {"type": "qms.hold.placed", "data.plant": "p1"},
        "expect": {"type": "wms.hold.applied", "source": "wms-p1"},
        "key": "data.lot",
        "within": "15m",
        "severity": "critical",
        "labels": {"flow": "quality-to-corrective-action", "plant": "p1"},
    },
    {
        "name": "hold-not-applied-p2",
        "kind": "followup",
        "when": {"type": "qms.hold.placed", "data.plant": "p2"},
        "expect": {"type": "wms.hold.applied", "source": "wms-p2"},
        "key": "data.lot",
        "within": "15m",
        "severity": "critical",
        "labels": {"flow": "quality-to-corrective-action", "plant": "p2"},
    },
    {
        "name": "lab-failed-without-deviation",
        "kind": "followup",
        "when": {"type": "lims.result.failed"},
        "expect": {"type": "qms.deviation.opened"},
        "key": "data.lot",
        "within": "4h",
        "severity": "major",
        "labels": {"flow": "quality-to-corrective-action", "plant": "p2"},
    },
    {
        "name": "machine-alert-without-case",
        "kind": "followup",
        "when": {"type": "iot.asset.alert"},
        "expect": {"type": "eam.case.opened"},
        "key": "data.asset",
        "within": "30m",
        "severity": "major",
        "labels": {"flow": "maintenance-trigger", "plant": "p1"},
    },
    {
        "name": "asset-anomaly",
        "kind": "match",
        "when": {"type": "iot.asset.anomaly"},
        "key": "data.asset",
        "resolve_after": "1h",
        "severity": "minor",
        "labels": {"flow": "maintenance-trigger"},
    },
    {"name": "mes-p1-silent", "kind": "heartbeat", "source": "mes-p1", "within": "5m",
     "severity": "major", "labels": {"plant": "p1"}},
    {"name": "mes-p2-silent", "kind": "heartbeat", "source": "mes-p2", "within": "5m",
     "severity": "major", "labels": {"plant": "p2"}},
    {
        "name": "erp-mes-p1-failures",
        "kind": "threshold",
        "connector": "erp-to-mes-p1-orders",
        "metric": "failure_ratio",
        "window": "15m",
        "op": ">",
        "value": 0.05,
        "for": "5m",
        "severity": "major",
        "labels": {"plant": "p1"},
    },
)  # fmt: skip

EVENT_FIELDS = (
    "source", "event_id", "type", "specversion", "subject", "time", "occurred_at",
    "received_at", "datacontenttype", "dataschema", "data", "data_base64", "extensions",
    "correlation_id", "causation_id", "trace_id", "parent_span_id", "business_keys",
    "system", "plant",
)  # fmt: skip
MESSAGE_FIELDS = (
    "id", "connector", "external_id", "status", "occurred_at", "last_attempt_at",
    "received_at", "correlation_id", "business_keys", "latency_ms", "error", "headers",
    "content_type", "attempt_count", "plant",
)  # fmt: skip
ATTEMPT_FIELDS = ("message", "at", "status", "latency_ms", "error", "received_at", "replay_id")


@dataclass
class DashboardsOptions:
    """What ``bench dashboards`` seeds and measures."""

    messages: int = 1_000_000
    events: int = 2_000_000
    alerts: int = 200_000
    runs: int = 50
    reseed: bool = False
    seed: int = 20260521


# --- The landscape and the rules -------------------------------------------------------------


@dataclass
class Ids:
    """Ids of what the seeded rows point at."""

    plants: dict[str, int]
    systems: dict[str, int]
    plant_of_system: dict[str, int | None]
    connectors: dict[str, int]
    plant_of_connector: dict[str, int | None]
    rules: dict[str, int] = field(default_factory=dict)


def load_landscape() -> Ids:
    """Create (or update) the bench's plants, systems and connectors."""
    from integrations.models import Connector, Plant, System

    plants = {
        key: Plant.objects.update_or_create(key=key, defaults={"name": name, "timezone": tz})[0]
        for key, name, tz in PLANTS
    }
    systems = {}
    for key, name, kind, plant, sources in SYSTEMS:
        systems[key] = System.objects.update_or_create(
            key=key,
            defaults={
                "name": name,
                "kind": kind,
                "plant": plants[plant] if plant else None,
                "sources": sources,
            },
        )[0]
    for route in ROUTES:
        connector = Connector.objects.filter(key=route.key).first() or Connector(key=route.key)
        connector.source, connector.target = systems[route.source], systems[route.target]
        connector.flow = route.flow
        connector.criticality = route.criticality
        connector.latency_slo_ms = route.slo_ms
        connector.save()
    connectors = Connector.objects.filter(key__in=[r.key for r in ROUTES])
    return Ids(
        plants={key: plant.id for key, plant in plants.items()},
        systems={key: system.id for key, system in systems.items()},
        plant_of_system={key: system.plant_id for key, system in systems.items()},
        connectors={c.key: c.id for c in connectors},
        plant_of_connector={c.key: c.plant_id for c in connectors},
    )


def load_rules(ids: Ids) -> None:
    """Create or update the bench's rules (enabled, created before the week)."""
    from monitors.models import Rule
    from monitors.rules import validate_rule

    for entry in RULES:
        spec = validate_rule(entry)
        rule, _ = Rule.objects.update_or_create(
            name=spec.name,
            defaults={
                "kind": spec.kind,
                "definition": spec.definition(),
                "severity": spec.severity,
                "enabled": True,
            },
        )
        ids.rules[spec.name] = rule.id
    Rule.objects.filter(pk__in=ids.rules.values()).update(created_at=START - timedelta(days=1))


# --- Seeding ---------------------------------------------------------------------------------


def _chunks(rows: Iterator[tuple[Any, ...]], size: int = CHUNK) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _copy(model: Any, fields: Sequence[str], rows: Iterator[tuple[Any, ...]]) -> int:
    """COPY ``rows`` (generated lazily) into ``model``'s table; return how many."""
    count = 0
    for batch in _chunks(rows):
        with transaction.atomic():
            count += copy_rows(model, fields, batch)
    return count


def _in_week(moment: datetime) -> bool:
    return START <= moment < END


@dataclass
class Breach:
    """A follow-up deadline missed in the seeded week: the alert it raises."""

    rule: str
    key: str
    plant: str
    started_at: datetime
    due_at: datetime
    answered_at: datetime | None


class World:
    """Generates the week: events (with the breaches they imply), messages and alerts."""

    def __init__(self, options: DashboardsOptions, ids: Ids) -> None:
        self.options = options
        self.ids = ids
        self.rng = random.Random(options.seed)
        self.breaches: list[Breach] = []
        self.events = 0

    # Events.

    def event(
        self,
        type_: str,
        system: str,
        at: datetime,
        subject: str,
        data: dict[str, Any],
        plant: str | None = None,
    ) -> tuple[Any, ...] | None:
        if not _in_week(at):
            return None
        self.events += 1
        source = "/" + system.replace("-", "/")
        plant_id = self.ids.plants[plant] if plant else self.ids.plant_of_system[system]
        return (
            source, f"e{self.events}", type_, "1.0", subject, at, at,
            at + timedelta(milliseconds=300), "application/json", "", data, "", {}, "", "", "",
            "", {}, self.ids.systems[system], plant_id,
        )  # fmt: skip

    def followup(
        self,
        rule: str,
        key: str,
        plant: str,
        at: datetime,
        within: timedelta,
        answer: datetime | None,
    ) -> None:
        """Record a breach when ``answer`` misses the deadline (or never comes)."""
        due = at + within
        if due >= END or not _in_week(at):
            return
        if answer is None or answer > due:
            answered = answer if answer is not None and answer < END else None
            self.breaches.append(Breach(rule, key, plant, at, due, answered))

    def generate_events(self) -> Iterator[tuple[Any, ...]]:
        """Yield the week's events; the last ones are shop-floor progress up to the size."""
        rng = self.rng
        target = self.options.events
        span = (END - START).total_seconds()
        orders = max(1, target * 3 // 40)
        step = span / orders
        progress: list[tuple[str, str, datetime]] = []
        for n in range(orders):
            released = START + timedelta(seconds=n * step + rng.uniform(0, step))
            plant = "p1" if rng.random() < 0.65 else "p2"
            mes = f"mes-{plant}"
            wo = f"WO-{100_000 + n}"
            yield from self._maybe(
                self.event(
                    "erp.workorder.released", "erp", released, wo, {"plant": plant}, plant=plant
                )
            )
            ack: datetime | None = None
            if rng.random() < 0.97 and not (OUTAGE[0] <= released < OUTAGE[1] and plant == "p1"):
                late = rng.random() < 0.02
                delay = rng.uniform(600, 5400) if late else min(rng.lognormvariate(3.5, 0.8), 590)
                ack = released + timedelta(seconds=delay)
                yield from self._maybe(
                    self.event("mes.workorder.acknowledged", mes, ack, wo, {"plant": plant})
                )
            self.followup(
                f"wo-not-acknowledged-{plant}", wo, plant, released, timedelta(minutes=10), ack
            )
            completed = released + timedelta(minutes=rng.uniform(60, 240))
            if rng.random() < 0.92:
                yield from self._maybe(
                    self.event("mes.workorder.completed", mes, completed, wo, {"plant": plant})
                )
                posted: datetime | None = None
                if rng.random() < 0.98:
                    late = rng.random() < 0.03
                    posted = completed + timedelta(
                        seconds=rng.uniform(900, 3600) if late else rng.uniform(5, 600)
                    )
                    yield from self._maybe(
                        self.event("erp.goodsreceipt.posted", "erp", posted, wo, {"plant": plant})
                    )
                self.followup(
                    "goods-receipt-not-posted", wo, plant, completed, timedelta(minutes=15), posted
                )
            progress.append((wo, mes, released))
        for n in range(orders // 4):
            lot = f"L-{500_000 + n}"
            plant = "p1" if rng.random() < 0.6 else "p2"
            placed = START + timedelta(seconds=rng.uniform(0, span))
            data = {"lot": lot, "plant": plant, "reason": "spec"}
            yield from self._maybe(self.event("qms.hold.placed", "qms", placed, lot, data, plant))
            applied: datetime | None = None
            if rng.random() < 0.97:
                applied = placed + timedelta(
                    seconds=rng.uniform(5, 600) if rng.random() < 0.96 else rng.uniform(900, 7200)
                )
                yield from self._maybe(
                    self.event("wms.hold.applied", f"wms-{plant}", applied, lot, {"lot": lot})
                )
            self.followup(
                f"hold-not-applied-{plant}", lot, plant, placed, timedelta(minutes=15), applied
            )
        for n in range(orders // 6):
            lot = f"L-{800_000 + n}"
            at = START + timedelta(seconds=rng.uniform(0, span))
            failed = rng.random() < 0.05
            kind = "lims.result.failed" if failed else "lims.result.passed"
            yield from self._maybe(self.event(kind, "lims-p2", at, lot, {"lot": lot}))
            if failed:
                opened: datetime | None = None
                if rng.random() < 0.92:
                    opened = at + timedelta(minutes=rng.uniform(10, 300))
                    yield from self._maybe(
                        self.event("qms.deviation.opened", "qms", opened, lot, {"lot": lot}, "p2")
                    )
                self.followup(
                    "lab-failed-without-deviation", lot, "p2", at, timedelta(hours=4), opened
                )
        for n in range(orders // 8):
            asset = f"PRESS-{rng.randrange(1, 61):02d}"
            alert = f"MA-{n}"
            raised = START + timedelta(seconds=rng.uniform(0, span))
            data = {"asset": asset, "alert": alert, "signal": "vibration"}
            yield from self._maybe(self.event("iot.asset.alert", "iot-p1", raised, asset, data))
            case: datetime | None = None
            if rng.random() < 0.93:
                case = raised + timedelta(minutes=rng.uniform(2, 45))
                yield from self._maybe(
                    self.event("eam.case.opened", "eam-p1", case, asset, {"asset": asset})
                )
            self.followup(
                "machine-alert-without-case", asset, "p1", raised, timedelta(minutes=30), case
            )
        kinds = ("mes.workorder.started", "mes.operation.completed", "wms.material.issued")
        index = 0
        while self.events < target:
            wo, mes, released = progress[index % len(progress)]
            kind = kinds[(index // len(progress)) % len(kinds)]
            system = mes.replace("mes", "wms") if kind.startswith("wms") else mes
            at = released + timedelta(minutes=rng.uniform(15, 240))
            if at >= END:
                at = END - timedelta(seconds=rng.uniform(1, 7200))
            yield from self._maybe(self.event(kind, system, at, wo, {"step": index}))
            index += 1

    @staticmethod
    def _maybe(row: tuple[Any, ...] | None) -> Iterator[tuple[Any, ...]]:
        if row is not None:
            yield row

    # Messages.

    def generate_messages(self) -> Iterator[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
        """Yield each message row with its attempt rows (its own, plus any replays)."""
        rng = random.Random(self.options.seed + 1)
        span = (END - START).total_seconds()
        total = self.options.messages
        weights = [route.share for route in ROUTES]
        step = span / total
        replay_job = 0
        for n in range(total):
            at = START + timedelta(seconds=n * step + rng.uniform(0, step))
            route = rng.choices(ROUTES, weights)[0]
            failing = route.failing
            if route.key == "erp-to-mes-p1-orders" and OUTAGE[0] <= at < OUTAGE[1]:
                failing = 0.7
            roll = rng.random()
            status = (
                "dead_lettered"
                if roll < failing / 4
                else "failed"
                if roll < failing
                else "delivered"
            )
            latency = max(1, int(rng.lognormvariate(math.log(route.latency_ms), 0.55)))
            if status != "delivered":
                latency = int(latency * rng.uniform(2, 6))
            message_id = n + 1
            error = "" if status == "delivered" else "target answered 503"
            received = at + timedelta(seconds=1)
            message = (
                message_id, self.ids.connectors[route.key], f"M-{n}", status, at,
                at + timedelta(milliseconds=latency), received, f"C-{n // 3}", {}, latency,
                error, {}, "application/json", 1, self.ids.plant_of_connector[route.key],
            )  # fmt: skip
            attempts = [(message_id, at, status, latency, error, received, None)]
            if status == "failed" and rng.random() < 0.6:
                replay_job += 1 if rng.random() < 0.02 else 0
                replayed = at + timedelta(minutes=rng.uniform(20, 90))
                if replayed < END:
                    attempts.append(
                        (message_id, replayed, "delivered", latency // 3, "", replayed,
                         1 + replay_job)
                    )  # fmt: skip
            yield message, attempts

    # Alerts.

    def generate_alerts(self, rule_severity: dict[str, str]) -> Iterator[tuple[Any, ...]]:
        """Yield the week's alerts: follow-up breaches, anomaly alerts, technical ones."""
        rng = random.Random(self.options.seed + 2)
        kinds = {entry["name"]: entry["kind"] for entry in RULES}
        flows = {entry["name"]: entry.get("labels", {}).get("flow") for entry in RULES}
        made = 0
        still_open: set[tuple[str, str]] = set()
        for breach in self.breaches:
            if made >= self.options.alerts:
                return
            if breach.answered_at is not None:
                state, resolution = "resolved", "late"
                resolved_at = breach.answered_at
            elif breach.due_at < END - timedelta(hours=36):
                state, resolution = "resolved", "manual"
                resolved_at = breach.due_at + timedelta(hours=rng.uniform(1, 30))
            else:
                if (breach.rule, breach.key) in still_open:
                    continue  # the key's open alert covers this trigger too
                still_open.add((breach.rule, breach.key))
                state = "acknowledged" if rng.random() < 0.3 else "firing"
                resolution, resolved_at = "", None
            made += 1
            yield self._alert(
                breach.rule, breach.key, breach.plant, state, rule_severity[breach.rule],
                kinds[breach.rule], flows[breach.rule], breach.started_at, breach.due_at,
                breach.due_at, resolved_at, resolution,
            )  # fmt: skip
        technical = max(0, min(2_000, self.options.alerts - made) // 2)
        span = (END - START).total_seconds()
        for n in range(technical):
            rule = ("mes-p1-silent", "mes-p2-silent", "erp-mes-p1-failures")[n % 3]
            plant = "p2" if rule == "mes-p2-silent" else "p1"
            started = START + timedelta(seconds=rng.uniform(0, span - 3600))
            fired = started + timedelta(minutes=5)
            ended = fired + timedelta(minutes=rng.uniform(1, 40))
            key = {"mes-p1-silent": "mes-p1", "mes-p2-silent": "mes-p2"}.get(
                rule, "erp-to-mes-p1-orders"
            )
            made += 1
            yield self._alert(
                rule, key, plant, "resolved", rule_severity[rule], kinds[rule], None, started,
                fired, fired, ended, "recovered",
            )  # fmt: skip
        anomalies = self.options.alerts - made
        for n in range(anomalies):
            started = START + timedelta(seconds=n * span / max(anomalies, 1) + rng.uniform(0, 60))
            asset = f"PRESS-{rng.randrange(1, 61):02d}-S{rng.randrange(1, 9)}"
            ends = started + timedelta(hours=1, minutes=rng.uniform(0, 30))
            if ends < END:
                state, resolution, resolved_at = "resolved", "recovered", ends
            else:
                state, resolution, resolved_at = "firing", "", None
            yield self._alert(
                "asset-anomaly", f"{asset}-{n}", "p1" if n % 3 else "p2", state,
                rule_severity["asset-anomaly"], "match", "maintenance-trigger", started, started,
                None, resolved_at, resolution,
            )  # fmt: skip

    def _alert(
        self,
        rule: str,
        key: str,
        plant: str,
        state: str,
        severity: str,
        kind: str,
        flow: str | None,
        started_at: datetime,
        fired_at: datetime,
        due_at: datetime | None,
        resolved_at: datetime | None,
        resolution: str,
    ) -> tuple[Any, ...]:
        labels = {"rule": rule, "key": key, "severity": severity, "kind": kind, "plant": plant}
        if flow:
            labels["flow"] = flow
        late_by = (
            (resolved_at - due_at).total_seconds()
            if resolution == "late" and resolved_at and due_at
            else None
        )
        acknowledged = state == "acknowledged"
        return (
            self.ids.rules[rule], key, state, severity, labels, f"{rule}: {key}",
            self.ids.plants[plant], started_at, fired_at, due_at, resolved_at, resolution,
            late_by, fired_at + timedelta(minutes=3) if acknowledged else None,
            "bench" if acknowledged else "", "", "", None, None, {}, started_at,
            resolved_at or fired_at,
        )  # fmt: skip


ALERT_FIELDS = (
    "rule", "key", "state", "severity", "labels", "summary", "plant", "started_at", "fired_at",
    "due_at", "resolved_at", "resolution", "late_by_s", "acknowledged_at", "acknowledged_by",
    "ack_comment", "resolved_by", "suppressed_by", "value", "context", "created_at",
    "updated_at",
)  # fmt: skip


def signature(options: DashboardsOptions) -> str:
    """Return what the seeded messages table is labelled with (a table comment)."""
    return (
        f"andon bench dashboards v{SEED_VERSION}: {options.messages} messages, "
        f"{options.events} events, {options.alerts} alerts, seed {options.seed}"
    )


def _tables() -> dict[str, str]:
    from integrations.models import (
        ConnectorRollup,
        Event,
        KeyRef,
        Message,
        MessageAttempt,
        Span,
    )
    from monitors.models import Alert

    qn = connection.ops.quote_name
    models = {
        "events": Event,
        "spans": Span,
        "keyrefs": KeyRef,
        "attempts": MessageAttempt,
        "messages": Message,
        "rollups": ConnectorRollup,
        "alerts": Alert,
    }
    return {name: qn(model._meta.db_table) for name, model in models.items()}


def seeded(options: DashboardsOptions) -> bool:
    """Return whether this seed is in place (its label and the row counts)."""
    from integrations.models import Event, Message
    from monitors.models import Alert

    label = seed_label(_tables()["messages"])
    return (
        label == signature(options)
        and row_count(Message) == options.messages
        and row_count(Event) == options.events
        and row_count(Alert) == options.alerts
    )


def seed_stores(options: DashboardsOptions, ids: Ids, out: TextIO) -> None:
    """Empty the stores, rollups and alerts; COPY the week in; ANALYZE and label it."""
    from integrations.models import Event, Message, MessageAttempt
    from monitors.models import Alert

    tables = _tables()
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {', '.join(tables.values())} RESTART IDENTITY CASCADE")
    world = World(options, ids)
    started = time.perf_counter()
    events = _copy(Event, EVENT_FIELDS, world.generate_events())
    out.write(f"seeded {events:,} events ({time.perf_counter() - started:.0f}s)\n")

    attempts: list[tuple[Any, ...]] = []

    def messages() -> Iterator[tuple[Any, ...]]:
        for message, its_attempts in world.generate_messages():
            attempts.extend(its_attempts)
            yield message

    count = 0
    for batch in _chunks(messages()):
        with transaction.atomic():
            count += copy_rows(Message, MESSAGE_FIELDS, batch)
            copy_rows(MessageAttempt, ATTEMPT_FIELDS, attempts)
        attempts.clear()
    out.write(
        f"seeded {count:,} messages and their attempts ({time.perf_counter() - started:.0f}s)\n"
    )

    from monitors.models import Rule

    severity = dict(Rule.objects.values_list("name", "severity"))
    alerts = _copy(Alert, ALERT_FIELDS, world.generate_alerts(severity))
    out.write(f"seeded {alerts:,} alerts ({time.perf_counter() - started:.0f}s)\n")
    with connection.cursor() as cursor:
        for name in ("messages", "attempts", "events", "alerts"):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{tables[name]}', 'id'), "
                f"(SELECT COALESCE(MAX(id), 1) FROM {tables[name]}))"
            )
        for table in tables.values():
            cursor.execute(f"ANALYZE {table}")
        cursor.execute(f"COMMENT ON TABLE {tables['messages']} IS %s", [signature(options)])
    out.write(f"seed ready in {time.perf_counter() - started:.0f}s (COPY and ANALYZE)\n")


# --- Measuring -------------------------------------------------------------------------------


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Return the ``fraction`` quantile (nearest rank) of ``samples``."""
    ordered = sorted(samples)
    index = max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass
class Timing:
    """A page's (or the baseline's) times in ms."""

    name: str
    times: list[float]
    failures: list[str] = field(default_factory=list)
    target: bool = True

    @property
    def p50(self) -> float:
        return statistics.median(self.times) if self.times else math.inf

    @property
    def p95(self) -> float:
        return percentile(self.times, 0.95) if self.times else math.inf

    @property
    def passed(self) -> bool:
        return not self.failures and self.p95 < P95_TARGET_MS


def _client():  # type: ignore[no-untyped-def]
    from django.contrib.auth.models import Group, User
    from django.test import Client

    user = User.objects.filter(username=BENCH_USER).first()
    if user is None:
        user = User.objects.create_user(BENCH_USER)
    user.groups.add(Group.objects.get_or_create(name="operator")[0])
    client = Client()
    client.force_login(user)
    return client


PAGES: tuple[tuple[str, str], ...] = (
    ("plant p1", "/dashboards/plant/p1/"),
    ("plant p2", "/dashboards/plant/p2/"),
    ("IT 1h", "/dashboards/it/?window=1h"),
    ("IT 24h", "/dashboards/it/?window=24h"),
    ("IT 7d", "/dashboards/it/?window=7d"),
)


def time_page(client: Any, name: str, url: str, runs: int) -> Timing:
    """Request ``url`` ``runs`` times (after two warm-ups); return the times."""
    timing = Timing(name, [])
    for _ in range(2):
        client.get(url)
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(url)
        timing.times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            timing.failures.append(f"{url} answered {response.status_code}")
            break
    return timing


# The IT figures straight from the messages: per connector and step, and per connector over
# the window, written as well as plain SQL allows (each message's replays by an index probe).
BASELINE_SQL = """
SELECT m.connector_id,
       (floor(extract(epoch FROM m.occurred_at) / %(step)s) * %(step)s)::bigint AS block,
       COUNT(*), COUNT(*) FILTER (WHERE m.status = 'delivered'),
       COUNT(*) FILTER (WHERE m.status = 'failed'),
       COUNT(*) FILTER (WHERE m.status = 'dead_lettered'),
       COALESCE(SUM(r.n), 0),
       percentile_cont(0.95) WITHIN GROUP (ORDER BY m.latency_ms)
FROM {message} m
LEFT JOIN LATERAL (SELECT COUNT(*) AS n FROM {attempt} a
                   WHERE a.message_id = m.id AND a.replay_id IS NOT NULL) r ON TRUE
WHERE m.occurred_at >= %(since)s AND m.occurred_at < %(until)s
  AND m.connector_id = ANY(%(connectors)s)
GROUP BY GROUPING SETS ((m.connector_id, block), (m.connector_id))
"""


def time_figures(window_key: str, runs: int) -> tuple[Timing, Timing]:
    """Time a window's IT figures from the rollups and from the messages table, interleaved."""
    from django.utils import timezone

    from integrations.models import Connector, Message, MessageAttempt
    from integrations.rollups import WINDOWS, floor_to, window_series

    window = WINDOWS[window_key]
    qn = connection.ops.quote_name
    sql = BASELINE_SQL.format(
        message=qn(Message._meta.db_table), attempt=qn(MessageAttempt._meta.db_table)
    )
    rollups = Timing(f"IT {window_key} from rollups", [], target=False)
    messages = Timing(f"IT {window_key} from messages", [], target=False)
    connectors = list(Connector.objects.values_list("id", flat=True))
    for _ in range(runs):
        started = time.perf_counter()
        window_series(window, connectors)
        rollups.times.append((time.perf_counter() - started) * 1000)
        now = timezone.now()
        current = floor_to(now, window.step_s)
        since = current - timedelta(seconds=window.step_s * (window.steps - 1))
        params = {
            "step": window.step_s,
            "since": since,
            "until": current + timedelta(seconds=window.step_s),
            "connectors": connectors,
        }
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT set_config('jit', 'off', true)")
            started = time.perf_counter()
            cursor.execute(sql, params)
            cursor.fetchall()
            messages.times.append((time.perf_counter() - started) * 1000)
    return rollups, messages


@dataclass
class Results:
    """What the bench measured."""

    refresh_s: float
    refresh_rows: int
    periodic_ms: list[float]
    cold_7d_ms: float
    pages: list[Timing]
    figures: dict[str, tuple[Timing, Timing]]

    @property
    def passed(self) -> bool:
        return all(page.passed for page in self.pages)

    def lines(self) -> list[str]:
        """Return the verdict lines."""
        verdict = {True: "PASS", False: "FAIL"}
        out = [
            f"dashboards: rollup backfill of the week: {self.refresh_rows:,} rows in "
            f"{self.refresh_s:.1f} s; periodic refresh p50 "
            f"{statistics.median(self.periodic_ms):.1f} ms; IT 7d page with no cached block "
            f"{self.cold_7d_ms:.0f} ms (once)"
        ]
        for page in self.pages:
            out.append(
                f"dashboards: {page.name} p50 {page.p50:.1f} ms, p95 {page.p95:.1f} ms over "
                f"{len(page.times)} runs (target p95 < {P95_TARGET_MS:.0f} ms) "
                f"{verdict[page.passed]}"
            )
            out.extend(f"dashboards: ERROR {failure}" for failure in page.failures)
        for key, (rollups, messages) in self.figures.items():
            out.append(
                f"dashboards: IT {key} figures: from rollups p50 {rollups.p50:.1f} ms, from the "
                f"messages table p50 {messages.p50:,.1f} ms over {len(messages.times)} runs "
                f"({messages.p50 / rollups.p50:.1f}x)"
            )
        return out


def measure(options: DashboardsOptions, out: TextIO) -> Results:
    """Refresh the rollups, then time the pages and the baseline (the clock at the week's end)."""
    from django.utils import timezone

    from integrations import rollups
    from integrations.models import ConnectorRollup

    rollups.forget_cached_blocks()
    out.write("refreshing the rollups (a full backfill of the week)...\n")
    report = rollups.refresh_all()
    rows = ConnectorRollup.objects.count()
    out.write(report.line() + "\n")
    periodic = []
    for _ in range(5):
        started = time.perf_counter()
        rollups.refresh_recent()
        periodic.append((time.perf_counter() - started) * 1000)
    client = _client()
    rollups.forget_cached_blocks()
    started = time.perf_counter()
    response = client.get("/dashboards/it/?window=7d")
    cold = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        out.write(f"IT 7d answered {response.status_code}\n")
    out.write(
        f"timing {len(PAGES)} pages, {options.runs} runs each (clock {timezone.now():%c})...\n"
    )
    pages = [time_page(client, name, url, options.runs) for name, url in PAGES]
    out.write("timing the IT figures from the rollups and straight from the messages table...\n")
    figures = {
        key: time_figures(key, min(options.runs, BASELINE_RUNS)) for key in ("1h", "24h", "7d")
    }
    return Results(report.seconds, rows, periodic, cold, pages, figures)


def run(options: DashboardsOptions, out: TextIO) -> Results:
    """Run the dashboards bench end to end; print progress and verdicts; return the figures."""
    from integrations.bench.harness import BenchError

    try:
        import time_machine
    except ImportError:
        raise BenchError(
            "bench dashboards stands its clock at the end of the seeded week with time-machine: "
            "pip install -e '.[dev]'"
        ) from None
    require_bench_database("dashboards")
    if ensure_database():
        out.write(f"created database {connection.settings_dict['NAME']}\n")
    call_command("migrate", verbosity=0, interactive=False)
    ids = load_landscape()
    load_rules(ids)
    if options.reseed or not seeded(options):
        out.write(
            f"seeding {options.messages:,} messages, {options.events:,} events and "
            f"{options.alerts:,} alerts over {START:%Y-%m-%d} to {END:%Y-%m-%d}...\n"
        )
        seed_stores(options, ids, out)
    else:
        out.write(f"reusing the seed in place ({signature(options)}; --reseed to rebuild it)\n")
    with time_machine.travel(END - timedelta(seconds=5), tick=True):
        figures = measure(options, out)
    out.write("\n" + "\n".join(figures.lines()) + "\n")
    return figures


# --- The command -------------------------------------------------------------------------------


def add_parser(benches: Any) -> None:
    """Add ``dashboards`` and its options to the bench command's subparsers."""
    defaults = DashboardsOptions()
    sub = benches.add_parser(
        "dashboards",
        help="plant and IT dashboard pages over 1M messages, 2M events, 200k alerts vs SQL",
    )
    sub.add_argument("--messages", type=int, default=defaults.messages, help="messages to seed")
    sub.add_argument("--events", type=int, default=defaults.events, help="events to seed")
    sub.add_argument("--alerts", type=int, default=defaults.alerts, help="alerts to seed")
    sub.add_argument("--runs", type=int, default=defaults.runs, help="requests per page")
    sub.add_argument("--reseed", action="store_true", help="seed again even if in place")
    sub.add_argument("--seed", type=int, default=defaults.seed, help="workload seed")


def command(options: dict[str, Any], out: TextIO) -> None:
    """Run ``bench dashboards`` from the command's options; CommandError on a missed target."""
    from django.core.management.base import CommandError

    from integrations.bench.harness import BenchError

    bench = DashboardsOptions(
        messages=options["messages"],
        events=options["events"],
        alerts=options["alerts"],
        runs=options["runs"],
        reseed=options["reseed"],
        seed=options["seed"],
    )
    for name in ("messages", "events", "alerts", "runs"):
        if getattr(bench, name) < 1:
            raise CommandError(f"--{name} must be at least 1")
    try:
        figures = run(bench, out)
    except BenchError as exc:
        raise CommandError(str(exc)) from None
    if not figures.passed:
        raise CommandError("the dashboards bench missed a target (see above)")
