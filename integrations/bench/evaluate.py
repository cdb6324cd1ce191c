"""Rule evaluation speed: full passes of ten rules over a week of history vs the bare anti-join.

Run it against a PostgreSQL database of its own (it TRUNCATEs the stores, and
shares no seed with the other benches, so give it its own name)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/andon_bench_evaluate \\
        python manage.py bench evaluate

It seeds 2,000,000 events over seven days: 200,000 work orders released by ERP,
95% acknowledged by MES (most within a minute, some late), each followed by
shop-floor events; holds placed in QMS and applied in WMS; machine alerts and
maintenance cases; lab results, some failed and most of those followed by a
deviation; and the order messages of both ERP-to-MES connectors (with a
failure burst at the end). WMS falls silent 20 minutes before the end. Rows
are COPYed in and ANALYZEd; a seed already in place is reused unless
``--reseed``.

Then it loads ten rules of the four kinds and, on the clock of the seed's end,
times the first evaluation pass (which raises the week's alerts) and
steady-state passes, each rule's share, and the bare anti-join SQL of the main
follow-up rule over its 24-hour window, the baseline that rule is held to.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

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

PASS_TARGET_MS = 1000.0
FOLLOWUP_RATIO_TARGET = 2.0
SEED_VERSION = 2
MAIN_RULE = "wo-not-acknowledged"
# The week the seed covers; the bench's clock stands at its end.
START = datetime(2026, 5, 4, tzinfo=UTC)
END = START + timedelta(days=7)

EVENT_COLUMNS = (
    "source", "event_id", "type", "specversion", "subject", "time", "occurred_at",
    "received_at", "datacontenttype", "dataschema", "data", "data_base64", "extensions",
    "correlation_id", "causation_id", "trace_id", "parent_span_id", "business_keys",
    "system_id", "plant_id",
)  # fmt: skip
MESSAGE_COLUMNS = (
    "connector_id", "external_id", "status", "occurred_at", "last_attempt_at", "received_at",
    "correlation_id", "business_keys", "latency_ms", "error", "headers", "content_type",
    "attempt_count", "plant_id",
)  # fmt: skip

RULES: tuple[dict[str, Any], ...] = (
    {
        "name": MAIN_RULE,
        "kind": "followup",
        "when": {"type": "erp.workorder.released"},
        "expect": {"type": "mes.workorder.acknowledged"},
        "key": "subject",
        "within": "10m",
        "severity": "critical",
        "labels": {"flow": "order-to-production"},
        "summary": "Work order {{ key }} not acknowledged by MES",
        "depends_on": ["mes-p1", "mes-p2"],
    },
    {
        "name": "wo-p2-not-acknowledged-fast",
        "kind": "followup",
        "when": {"type": "erp.workorder.released", "plant": "p2"},
        "expect": {"type": "mes.workorder.acknowledged", "source": "mes-p2"},
        "key": "subject",
        "within": "5m",
        "severity": "minor",
    },
    {
        "name": "hold-not-applied",
        "kind": "followup",
        "when": {"type": "qms.hold.placed"},
        "expect": {"type": "wms.hold.applied"},
        "key": "data.lot",
        "within": "15m",
        "severity": "critical",
        "summary": "Lot {{ key }} is on hold in QMS but still pickable in WMS",
        "depends_on": ["wms-p1"],
    },
    {
        "name": "machine-alert-without-case",
        "kind": "followup",
        "when": {"type": "iot.machine.alert", "data.severity": "high"},
        "expect": {"type": "eam.maintenance.case.opened"},
        "key": "data.alert",
        "within": "30m",
        "severity": "major",
    },
    {
        "name": "lab-failed-without-deviation",
        "kind": "followup",
        "when": {"type": "lims.result.failed"},
        "expect": {"type": "qms.deviation.opened"},
        "key": "data.lot",
        "within": "4h",
        "severity": "major",
    },
    {"name": "mes-p1-silent", "kind": "heartbeat", "source": "mes-p1", "within": "5m"},
    {"name": "mes-p2-silent", "kind": "heartbeat", "source": "mes-p2", "within": "5m"},
    {"name": "wms-p1-silent", "kind": "heartbeat", "source": "wms-p1", "within": "5m"},
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
    },
    {
        "name": "lab-result-failed",
        "kind": "match",
        "when": {"type": "lims.result.failed"},
        "key": "data.lot",
        "severity": "critical",
    },
)

# The work orders released in the window and not acknowledged in time, written by
# hand as well as it can be (the same window bounds on both sides as the engine's).
BARE_ANTI_JOIN = """
SELECT w.subject, MIN(w.occurred_at)
FROM {event} w
WHERE w.type = %(when)s AND w.occurred_at > %(since)s AND w.occurred_at <= %(due)s
  AND w.subject <> ''
  AND NOT EXISTS (
    SELECT 1 FROM {event} x
    WHERE x.type = %(expect)s AND x.subject = w.subject AND x.subject <> ''
      AND x.occurred_at > %(since)s AND x.occurred_at <= %(now)s
      AND x.occurred_at >= w.occurred_at AND x.occurred_at <= w.occurred_at + %(within)s)
GROUP BY w.subject
"""


@dataclass
class EvaluateOptions:
    """What ``bench evaluate`` seeds and measures."""

    work_orders: int = 200_000
    events: int = 2_000_000
    passes: int = 20
    reseed: bool = False
    seed: int = 20260521


# --- Seeding ---------------------------------------------------------------------------------


@dataclass
class Ids:
    """Ids of the plants, systems and connectors the seeded rows point at."""

    plants: dict[str, int]
    systems: dict[str, int]
    plant_of_system: dict[str, int | None]
    connectors: dict[str, int]


def load_landscape() -> Ids:
    """Create the bench landscape plus the LIMS, EAM and IoT systems of plant 1."""
    from integrations.models import Connector, Plant, System

    load_bench_landscape()
    p1 = Plant.objects.get(key="p1")
    for key, name, kind in (
        ("lims-p1", "LIMS Plant 1", "LIMS"),
        ("eam-p1", "EAM Plant 1", "EAM"),
        ("iot-p1", "IoT Plant 1", "IOT"),
    ):
        System.objects.update_or_create(
            key=key,
            defaults={"name": name, "kind": kind, "plant": p1, "sources": [f"/{key[:-3]}/p1"]},
        )
    systems = System.objects.all()
    return Ids(
        plants=dict(Plant.objects.values_list("key", "id")),
        systems={s.key: s.id for s in systems},
        plant_of_system={s.key: s.plant_id for s in systems},
        connectors=dict(Connector.objects.values_list("key", "id")),
    )


def _ts(moment: datetime) -> str:
    return moment.isoformat()


@dataclass
class Seed:
    """The seed as COPY lines, built by :func:`generate`."""

    events: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


class _Events:
    """Appends event lines, numbering event ids, and drops events after the end of the week."""

    def __init__(self, ids: Ids, out: list[str]) -> None:
        self.ids = ids
        self.out = out
        self.count = 0

    def add(
        self,
        type_: str,
        system: str,
        at: datetime,
        subject: str = "",
        data: Any = None,
        plant: str | None = None,
    ) -> None:
        if at > END:
            return
        self.count += 1
        source = "/" + system.replace("-", "/")  # mes-p1 sends as /mes/p1
        self.out.append(
            copy_line(
                (
                    source, f"e{self.count}", type_, "1.0", subject, _ts(at), _ts(at),
                    _ts(at + timedelta(milliseconds=300)), "application/json", "",
                    "\\N" if data is None else copy_json(data), "", "{}", "", "", "", "", "{}",
                    self.ids.systems[system],
                    self.ids.plants[plant] if plant else self.ids.plant_of_system[system],
                )
            )
        )  # fmt: skip


def _ack_delay(rng: random.Random) -> timedelta:
    """Return how long MES takes to acknowledge: seconds mostly, sometimes far too long."""
    if rng.random() < 0.03:
        return timedelta(minutes=rng.uniform(10, 90))
    return timedelta(seconds=min(rng.lognormvariate(3.8, 0.8), 590))


def generate(options: EvaluateOptions, ids: Ids) -> Seed:
    """Return the week's events and messages as COPY lines (seeded, so repeatable)."""
    rng = random.Random(options.seed)
    seed = Seed()
    events = _Events(ids, seed.events)
    span = (END - START).total_seconds()
    step = span / options.work_orders
    burst = END - timedelta(minutes=30)
    wms_silent = END - timedelta(minutes=20)
    orders: list[tuple[str, str, datetime]] = []
    for n in range(options.work_orders):
        released = START + timedelta(seconds=n * step + rng.uniform(0, step))
        plant = "p1" if rng.random() < 0.7 else "p2"
        wo = f"WO-{100_000 + n}"
        mes = f"mes-{plant}"
        data = {"workorder": wo, "plant": plant, "qty": rng.choice((10, 20, 40, 80))}
        # The ERP serves every plant; a release names its plant (as ingest attributes it).
        events.add("erp.workorder.released", "erp", released, wo, data, plant=plant)
        if rng.random() < 0.95:
            events.add("mes.workorder.acknowledged", mes, released + _ack_delay(rng), wo)
        orders.append((wo, mes, released))
        # The order message ERP sends to this plant's MES.
        failing = 0.12 if released > burst else 0.03
        roll = rng.random()
        status = (
            "dead_lettered" if roll < failing / 3 else "failed" if roll < failing else "delivered"
        )
        latency = rng.randrange(150, 2600)
        connector = ids.connectors[f"erp-to-mes-{plant}-orders"]
        seed.messages.append(
            copy_line(
                (
                    connector, f"ORD-{wo}", status, _ts(released),
                    _ts(released + timedelta(milliseconds=latency)),
                    _ts(released + timedelta(seconds=1)), wo, copy_json({"workorder": wo}),
                    latency, "" if status == "delivered" else "target answered 503", "{}",
                    "application/json", 1, ids.plants[plant],
                )
            )
        )  # fmt: skip
    for n in range(options.work_orders // 4):
        lot = f"L-{500_000 + n}"
        placed = START + timedelta(seconds=rng.uniform(0, span))
        events.add("qms.hold.placed", "qms-p1", placed, lot, {"lot": lot, "reason": "spec"})
        applied = placed + timedelta(seconds=rng.uniform(5, 600 if rng.random() < 0.97 else 3600))
        # Holds placed while WMS is silent stay unapplied (alerts suppressed by its heartbeat).
        if rng.random() < 0.95 and applied <= wms_silent:
            events.add("wms.hold.applied", "wms-p1", applied, lot, {"lot": lot})
    for n in range(options.work_orders * 3 // 20):
        alert = f"MA-{n}"
        raised = START + timedelta(seconds=rng.uniform(0, span))
        severity = "high" if rng.random() < 0.3 else "low"
        asset = f"PRESS-{rng.randrange(1, 41):02d}"
        events.add(
            "iot.machine.alert",
            "iot-p1",
            raised,
            asset,
            {"alert": alert, "asset": asset, "severity": severity, "signal": "vibration"},
        )
        if rng.random() < 0.9:
            opened = raised + timedelta(minutes=rng.uniform(1, 40))
            events.add("eam.maintenance.case.opened", "eam-p1", opened, asset, {"alert": alert})
    for n in range(options.work_orders // 2):
        lot = f"L-{800_000 + n}"
        at = START + timedelta(seconds=rng.uniform(0, span))
        failed = rng.random() < 0.05
        data = {"lot": lot, "test": "tensile", "result": "failed" if failed else "passed"}
        events.add(
            "lims.result.failed" if failed else "lims.result.passed", "lims-p1", at, lot, data
        )
        if failed and rng.random() < 0.9:
            opened = at + timedelta(minutes=rng.uniform(10, 300))
            events.add("qms.deviation.opened", "qms-p1", opened, lot, {"lot": lot})
    # Shop-floor progress of the work orders fills the store up to its size.
    steps = ("mes.workorder.started", "mes.operation.completed", "wms.material.issued")
    index = 0
    while events.count < options.events:
        wo, mes, released = orders[index % len(orders)]
        kind = steps[(index // len(orders)) % len(steps)]
        system = "wms-p1" if kind.startswith("wms") else mes
        at = released + timedelta(minutes=rng.uniform(15, 240))
        if system == "wms-p1" and at > wms_silent:
            at = wms_silent - timedelta(seconds=rng.uniform(1, 3600))
        before = events.count
        events.add(kind, system, at, wo, {"workorder": wo, "step": index // len(orders)})
        if events.count == before:  # after the end of the week: put it inside it
            events.add(kind, system, END - timedelta(seconds=rng.uniform(1, 7200)), wo, None)
        index += 1
    return seed


def signature(options: EvaluateOptions) -> str:
    """Return what the seeded events table is labelled with (a table comment)."""
    return (
        f"andon bench evaluate v{SEED_VERSION}: {options.work_orders} work orders, "
        f"{options.events} events, seed {options.seed}"
    )


def seeded(options: EvaluateOptions) -> bool:
    """Return whether this seed is in place (its label and the event count)."""
    from integrations.models import Event

    label = seed_label(Event._meta.db_table)
    return label == signature(options) and row_count(Event) == options.events


def seed_stores(options: EvaluateOptions, ids: Ids, out: TextIO) -> None:
    """Empty the stores, COPY the week in, ANALYZE and label it."""
    from integrations.models import Event, Message

    started = time.perf_counter()
    data = generate(options, ids)
    out.write(
        f"generated {len(data.events):,} events and {len(data.messages):,} messages "
        f"in {time.perf_counter() - started:.0f}s\n"
    )
    truncate_stores()
    event_table, message_table = Event._meta.db_table, Message._meta.db_table
    started = time.perf_counter()
    copy_lines(event_table, EVENT_COLUMNS, data.events)
    copy_lines(message_table, MESSAGE_COLUMNS, data.messages)
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {event_table}")
        cursor.execute(f"ANALYZE {message_table}")
        cursor.execute(f"COMMENT ON TABLE {event_table} IS %s", [signature(options)])
    out.write(f"seed ready in {time.perf_counter() - started:.0f}s (COPY and ANALYZE)\n")


# --- Measuring -------------------------------------------------------------------------------


def load_rules() -> list[Any]:
    """Create or update the bench's ten rules; clear their alerts; return them."""
    from monitors.models import Alert, Rule
    from monitors.rules import validate_rule

    rules = []
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
        rules.append(rule)
    # Heartbeats count silence from a rule's creation: the rules exist all week.
    Rule.objects.filter(pk__in=[r.pk for r in rules]).update(created_at=START)
    Alert.objects.filter(rule__in=rules).delete()
    return list(Rule.objects.filter(pk__in=[r.pk for r in rules]))


def bare_anti_join(now: datetime) -> tuple[float, int]:
    """Run the main rule's anti-join over its 24-hour window; return (ms, rows)."""
    from integrations.models import Event

    sql = BARE_ANTI_JOIN.format(event=connection.ops.quote_name(Event._meta.db_table))
    params = {
        "when": "erp.workorder.released",
        "expect": "mes.workorder.acknowledged",
        "since": now - timedelta(days=1),
        "due": now - timedelta(minutes=10),
        "now": now,
        "within": timedelta(minutes=10),
    }
    with connection.cursor() as cursor:
        cursor.execute("SET jit = off")  # as evaluation does: compiling costs more than it saves
        started = time.perf_counter()
        cursor.execute(sql, params)
        rows = len(cursor.fetchall())
        elapsed = time.perf_counter() - started
        cursor.execute("RESET jit")
    return elapsed * 1000, rows


@dataclass
class Figures:
    """Pass and rule times (ms) and the baseline's."""

    first_ms: float
    first_lines: list[str]
    passes_ms: list[float]
    rule_ms: dict[str, list[float]]
    baseline_ms: list[float]
    baseline_rows: int
    alerts: dict[str, int]
    errors: list[str]

    @property
    def pass_p50(self) -> float:
        return statistics.median(self.passes_ms)

    @property
    def pass_max(self) -> float:
        return max(self.passes_ms)

    @property
    def followup_p50(self) -> float:
        return statistics.median(self.rule_ms[MAIN_RULE])

    @property
    def baseline_p50(self) -> float:
        return statistics.median(self.baseline_ms)

    @property
    def ratio(self) -> float:
        return self.followup_p50 / self.baseline_p50 if self.baseline_p50 else 0.0

    @property
    def pass_ok(self) -> bool:
        return not self.errors and self.first_ms < PASS_TARGET_MS and self.pass_max < PASS_TARGET_MS

    @property
    def ratio_ok(self) -> bool:
        return not self.errors and self.ratio <= FOLLOWUP_RATIO_TARGET

    @property
    def passed(self) -> bool:
        return self.pass_ok and self.ratio_ok

    def lines(self) -> list[str]:
        """Return the verdict lines."""
        verdict = {True: "PASS", False: "FAIL"}
        out = [
            f"evaluate: a pass of {len(RULES)} rules: first {self.first_ms:.0f} ms, then p50 "
            f"{self.pass_p50:.0f} ms, max {self.pass_max:.0f} ms over {len(self.passes_ms)} "
            f"passes (target < {PASS_TARGET_MS:.0f} ms) {verdict[self.pass_ok]}",
            f"evaluate: {MAIN_RULE} p50 {self.followup_p50:.1f} ms vs its bare anti-join "
            f"p50 {self.baseline_p50:.1f} ms ({self.baseline_rows:,} overdue): ratio "
            f"{self.ratio:.2f} (target <= {FOLLOWUP_RATIO_TARGET:.2f}) {verdict[self.ratio_ok]}",
        ]
        out.extend(f"evaluate: ERROR {error}" for error in self.errors)
        return out


def measure(rules: list[Any], passes: int, out: TextIO) -> Figures:
    """Time the first pass, ``passes`` steady-state passes and the baseline, interleaved."""
    from monitors.evaluate import evaluate
    from monitors.models import Alert

    bare_anti_join(END)  # warm the cache like the passes below warm theirs
    first = evaluate(now=END, rules=rules)
    out.write("first pass:\n" + "\n".join(first.lines()) + "\n")
    errors = [f"{r.rule}: {r.error}" for r in first.errors]
    passes_ms: list[float] = []
    rule_ms: dict[str, list[float]] = {r.name: [] for r in rules}
    baseline_ms: list[float] = []
    baseline_rows = 0
    last = first
    for i in range(1, passes + 1):
        now = END + timedelta(seconds=i)
        ms, baseline_rows = bare_anti_join(now)
        baseline_ms.append(ms)
        last = evaluate(now=now, rules=rules)
        passes_ms.append(last.seconds * 1000)
        for result in last.rules:
            rule_ms[result.rule].append(result.seconds * 1000)
        errors.extend(f"{r.rule}: {r.error}" for r in last.errors)
    out.write("steady-state pass (the last):\n" + "\n".join(last.lines()) + "\n")
    out.write(
        "steady-state p50 per rule: "
        + ", ".join(f"{name} {statistics.median(ms):.1f} ms" for name, ms in rule_ms.items())
        + "\n"
    )
    alerts = {
        state: Alert.objects.filter(rule__in=rules, state=state).count()
        for state in ("pending", "firing", "resolved")
    }
    return Figures(
        first_ms=first.seconds * 1000,
        first_lines=first.lines(),
        passes_ms=passes_ms,
        rule_ms=rule_ms,
        baseline_ms=baseline_ms,
        baseline_rows=baseline_rows,
        alerts=alerts,
        errors=sorted(set(errors)),
    )


def run(options: EvaluateOptions, out: TextIO) -> Figures:
    """Run the evaluate bench end to end; print progress and verdicts; return the figures."""
    require_bench_database("evaluate")
    if ensure_database():
        out.write(f"created database {connection.settings_dict['NAME']}\n")
    call_command("migrate", verbosity=0, interactive=False)
    ids = load_landscape()
    if options.reseed or not seeded(options):
        seed_stores(options, ids, out)
    else:
        out.write(f"reusing the seed in place ({options.events:,} events)\n")
    rules = load_rules()
    figures = measure(rules, options.passes, out)
    out.write(
        "alerts after the passes: "
        + ", ".join(f"{n:,} {state}" for state, n in figures.alerts.items())
        + "\n"
    )
    out.write("\n" + "\n".join(figures.lines()) + "\n")
    return figures


# --- The command -------------------------------------------------------------------------------


def add_parser(benches: Any) -> None:
    """Add ``evaluate`` and its options to the bench command's subparsers."""
    defaults = EvaluateOptions()
    sub = benches.add_parser(
        "evaluate", help="evaluation passes of ten rules over 2M seeded events vs the anti-join"
    )
    sub.add_argument(
        "--work-orders", type=int, default=defaults.work_orders, help="work orders to release"
    )
    sub.add_argument("--events", type=int, default=defaults.events, help="events to seed")
    sub.add_argument("--passes", type=int, default=defaults.passes, help="steady-state passes")
    sub.add_argument("--reseed", action="store_true", help="seed again even if in place")
    sub.add_argument("--seed", type=int, default=defaults.seed, help="workload seed")


def command(options: dict[str, Any], out: TextIO) -> None:
    """Run ``bench evaluate`` from the command's options; raise CommandError on a missed target."""
    from django.core.management.base import CommandError

    from integrations.bench.harness import BenchError

    bench = EvaluateOptions(
        work_orders=options["work_orders"],
        events=options["events"],
        passes=options["passes"],
        reseed=options["reseed"],
        seed=options["seed"],
    )
    for name in ("work_orders", "events", "passes"):
        if getattr(bench, name) < 1:
            raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
    if bench.events < 4 * bench.work_orders:
        # Releases, acknowledgements, holds, machine alerts and lab results alone make ~3.3x.
        raise CommandError("--events must be at least four times --work-orders")
    try:
        figures = run(bench, out)
    except BenchError as exc:
        raise CommandError(str(exc)) from None
    if not figures.passed:
        raise CommandError("the evaluate bench missed a target (see above)")
