"""One evaluation pass: every enabled rule, set-based, safe when several passes run at once.

Each rule is evaluated in a transaction of its own. On PostgreSQL the pass first
takes a transaction-scoped advisory lock for the rule and skips the rule when
another pass holds it; the partial unique index on open alerts (one per rule
and key) is the backstop, since new open alerts are inserted with ``ON CONFLICT
DO NOTHING``. On SQLite writes serialise anyway (``BEGIN IMMEDIATE``).

The kinds (see CONTRACT "Rules file" and the shared semantics):

- follow-up: one anti-join over the rule's window (``lookback``) finds the
  ``when`` events whose deadline passed without an ``expect`` event of the same
  key and that no alert of (rule, key) covers; open alerts whose expected event
  has since arrived resolve ``late`` (or ``recovered`` when it came in time but
  was stored after the deadline). Answers, like triggers, are looked for in the
  window, so a pass costs what the window holds, not the whole history;
- heartbeat: the latest signal of a system or connector against ``within``;
- threshold: a health metric over the connector's messages in the window, with
  ``for`` making it pending first;
- match: every matching event not covered by an alert opens one, which
  recovers ``resolve_after`` after the last matching event of its key.

Times recorded on alerts and in the alarm log are the times things happened
(an event's time, a deadline), not the time the pass noticed, so a pass that
runs late or a simulated clock yields the same history.
"""

from __future__ import annotations

import bisect
import logging
import operator
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import groupby
from typing import Any

import orjson
from django.db import connection, transaction
from django.db.models import (
    Aggregate,
    Count,
    Exists,
    F,
    FloatField,
    JSONField,
    Max,
    Min,
    OuterRef,
    Q,
    QuerySet,
)
from django.utils import timezone

from console import live
from integrations.ingest.bulk import copy_rows
from integrations.models import Event, Message, MessageStatus, Span
from monitors.keys import Landscape, OneOf, keyed_events
from monitors.models import (
    OPEN_STATES,
    Alert,
    AlertState,
    AlertTransition,
    Resolution,
    Rule,
    RuleKind,
)
from monitors.rules import RuleSpec, format_duration, spec_from_definition

logger = logging.getLogger(__name__)

# High half of the advisory lock key of a rule ("ANDN"); the low half is the rule's id.
LOCK_NAMESPACE = 0x414E444E
DEFAULT_RESOLVE_AFTER_S = 86400.0
# States in which a heartbeat alert explains (suppresses) the alerts that depend on it.
OUTAGE_STATES = (AlertState.FIRING, AlertState.ACKNOWLEDGED)
INSERT_CHUNK = 500
OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
PLACEHOLDER = re.compile(r"\{\{\s*(key|rule|value|labels\.[A-Za-z0-9_.\-]+)\s*\}\}")


class RuleProblem(Exception):
    """The rule cannot be evaluated as written (an unknown connector...); the message says why."""


# --- The report -------------------------------------------------------------------------------


@dataclass
class RuleResult:
    """What one pass did with one rule."""

    rule: str
    kind: str
    seconds: float = 0.0
    fired: int = 0
    resolved: int = 0
    late: int = 0
    pending: int = 0
    # Another pass held the rule's lock, so this pass left the rule to it.
    skipped: bool = False
    error: str = ""
    next_deadline: datetime | None = None

    def note_deadline(self, moment: datetime | None) -> None:
        """Keep the earliest future moment at which this rule's outcome may change."""
        if moment is not None and (self.next_deadline is None or moment < self.next_deadline):
            self.next_deadline = moment

    def line(self) -> str:
        """Return the rule's one-line account, e.g. ``wo-ack (followup): 2 fired ... 41.3 ms``."""
        head = f"{self.rule} ({self.kind}): "
        if self.error:
            return head + f"ERROR {self.error}"
        if self.skipped:
            return head + "skipped (another pass is evaluating it)"
        return head + (
            f"{self.fired} fired, {self.resolved} resolved ({self.late} late), "
            f"{self.pending} pending, {self.seconds * 1000:.1f} ms"
        )


@dataclass
class PassReport:
    """What one evaluation pass did: per-rule results and the next known deadline."""

    at: datetime
    rules: list[RuleResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def fired(self) -> int:
        return sum(r.fired for r in self.rules)

    @property
    def resolved(self) -> int:
        return sum(r.resolved for r in self.rules)

    @property
    def late(self) -> int:
        return sum(r.late for r in self.rules)

    @property
    def pending(self) -> int:
        return sum(r.pending for r in self.rules)

    @property
    def errors(self) -> list[RuleResult]:
        return [r for r in self.rules if r.error]

    @property
    def next_deadline(self) -> datetime | None:
        """Return the earliest known future moment a rule's outcome changes (None: none known)."""
        moments = [r.next_deadline for r in self.rules if r.next_deadline is not None]
        return min(moments) if moments else None

    def lines(self) -> list[str]:
        """Return a human-readable account of the pass."""
        head = (
            f"evaluated {len(self.rules)} rules at {self.at.isoformat()}: {self.fired} fired, "
            f"{self.resolved} resolved ({self.late} late), {self.pending} pending "
            f"in {self.seconds * 1000:.1f} ms"
        )
        deadline = self.next_deadline
        tail = f"next deadline: {deadline.isoformat() if deadline else 'none known'}"
        return [head] + ["  " + r.line() for r in self.rules] + [tail]


# --- The pass ---------------------------------------------------------------------------------


def evaluate(now: datetime | None = None, rules: Iterable[Rule] | None = None) -> PassReport:
    """Run one evaluation pass of every enabled rule (or of ``rules``) at ``now``.

    Heartbeat rules go first so that dependency suppression sees this pass's
    outages. A rule that fails is reported (and logged) without stopping the others.
    """
    now = _aware(now or timezone.now())
    started = time.perf_counter()
    selected = list(Rule.objects.filter(enabled=True) if rules is None else rules)
    selected.sort(key=lambda rule: (rule.kind != RuleKind.HEARTBEAT, rule.name))
    landscape = Landscape.load()
    report = PassReport(at=now)
    for rule in selected:
        report.rules.append(evaluate_rule(rule, now, landscape))
    report.seconds = time.perf_counter() - started
    # Open pages hear of the alerts this pass changed (after commit; never raises).
    live.publish_pass(report, selected)
    return report


def evaluate_rule(rule: Rule, now: datetime, landscape: Landscape) -> RuleResult:
    """Evaluate one rule in a transaction of its own, unless another pass holds it."""
    result = RuleResult(rule=rule.name, kind=rule.kind)
    started = time.perf_counter()
    try:
        spec = spec_from_definition(rule.definition)
        with transaction.atomic():
            if not try_rule_lock(rule.id):
                result.skipped = True
            else:
                run = RulePass(rule, spec, landscape, now, result)
                EVALUATORS[rule.kind](run)
                run.suppress()
                run.finish()
    except RuleProblem as exc:
        logger.warning("rule %s cannot be evaluated: %s", rule.name, exc)
        result.error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - one broken rule must not stop the pass
        logger.exception("evaluating rule %s failed", rule.name)
        result.error = f"{type(exc).__name__}: {exc}"
    result.seconds = time.perf_counter() - started
    return result


def _aware(moment: datetime) -> datetime:
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)


def try_rule_lock(rule_id: int) -> bool:
    """Take the rule's transaction-scoped advisory lock; False when another pass holds it.

    Also turns PostgreSQL's JIT compilation off for the transaction: the big
    row estimates of an anti-join trigger it, and compiling costs seconds where
    the query itself takes milliseconds.
    """
    if connection.vendor != "postgresql":
        return True  # SQLite: the IMMEDIATE transaction already serialises writers
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(%s), set_config('jit', 'off', true)",
            [(LOCK_NAMESPACE << 32) | rule_id],
        )
        return bool(cursor.fetchone()[0])


def render_summary(template: str, rule: str, key: str, labels: dict[str, str], value: Any) -> str:
    """Substitute ``{{ key }}``, ``{{ rule }}``, ``{{ value }}``, ``{{ labels.NAME }}``."""
    if not template:
        return f"{rule}: {key}"

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name == "key":
            return key
        if name == "rule":
            return rule
        if name == "value":
            return "" if value is None else f"{value:g}"
        return str(labels.get(name[len("labels.") :], ""))

    return PLACEHOLDER.sub(substitute, template)


class RulePass:
    """One rule's share of a pass: builds, inserts and resolves its alerts, logs transitions."""

    def __init__(
        self, rule: Rule, spec: RuleSpec, landscape: Landscape, now: datetime, result: RuleResult
    ) -> None:
        self.rule = rule
        self.spec = spec
        self.landscape = landscape
        self.now = now
        self.result = result
        self.transitions: list[AlertTransition] = []

    # Building alerts.

    def labels(self, key: str, plant_id: int | None) -> dict[str, str]:
        """Return the alert's labels: the rule's plus rule, key, severity, kind and plant."""
        labels = dict(self.spec.labels)
        labels.update(
            rule=self.rule.name, key=key, severity=self.rule.severity, kind=self.rule.kind
        )
        plant = self.landscape.plant_key(plant_id)
        if plant is not None:
            labels["plant"] = plant
        return labels

    def rule_plant_id(self) -> int | None:
        """Return the plant a rule names (``when.plant``, ``when.data.plant``, label ``plant``).

        A trigger from a shared system (the cloud ERP) carries no plant; a rule
        written for one plant still scopes its alerts to that plant's operators.
        """
        when = self.spec.when
        named = [when.plant, when.data.get("plant")] if when is not None else []
        named.append(self.spec.labels.get("plant"))
        key = next((str(k) for k in named if k), None)
        return self.landscape.plant_ids.get(key) if key else None

    def summary(self, key: str, labels: dict[str, str], value: float | None) -> str:
        return render_summary(self.spec.summary, self.rule.name, key, labels, value)

    def new_alert(
        self,
        key: str,
        plant_id: int | None,
        *,
        started_at: datetime,
        state: str = AlertState.FIRING,
        fired_at: datetime | None = None,
        due_at: datetime | None = None,
        value: float | None = None,
        context: dict[str, Any] | None = None,
    ) -> Alert:
        """Return an unsaved alert of this rule for ``key``."""
        if plant_id is None:
            plant_id = self.rule_plant_id()
        labels = self.labels(key, plant_id)
        return Alert(
            rule=self.rule,
            key=key[:255],
            state=state,
            severity=self.rule.severity,
            labels=labels,
            summary=self.summary(key, labels, value),
            plant_id=plant_id,
            started_at=started_at,
            fired_at=fired_at,
            due_at=due_at,
            value=value,
            context=context or {},
        )

    @staticmethod
    def close(alert: Alert, at: datetime, resolution: str, late_by_s: float | None = None) -> None:
        """Mark an (unsaved or loaded) alert resolved at ``at``."""
        alert.state = AlertState.RESOLVED
        alert.resolved_at = at
        alert.resolution = resolution
        alert.late_by_s = late_by_s

    # Writing.

    def create(self, alerts: list[Alert]) -> list[Alert]:
        """Insert new alerts and log their transitions; return those actually inserted.

        An open alert of a key that already has one (opened by another pass, or
        from a later trigger stored earlier) is skipped; resolved ones (an SLA
        breach answered late before anyone looked) cannot conflict.
        """
        inserted = insert_alerts(alerts)
        for alert in inserted:
            if alert.state == AlertState.PENDING:
                self.log(alert, AlertState.PENDING, alert.started_at)
                continue
            self.log(alert, AlertState.FIRING, alert.fired_at or alert.started_at)
            if alert.state == AlertState.RESOLVED:
                self.log_resolution(alert)
        return inserted

    def resolve(self, alerts: list[Alert]) -> None:
        """Save alerts that ``close`` resolved (one UPDATE per batch) and log the transitions."""
        if not alerts:
            return
        for alert in alerts:
            alert.updated_at = timezone.now()
        Alert.objects.bulk_update(
            alerts,
            ["state", "resolved_at", "resolution", "late_by_s", "updated_at"],
            batch_size=INSERT_CHUNK,
        )
        for alert in alerts:
            self.log_resolution(alert)

    def log(self, alert: Alert, state: str, at: datetime, note: str = "") -> None:
        """Queue one alarm-log row and count it in the result."""
        self.transitions.append(
            AlertTransition(
                alert=alert,
                rule_id=alert.rule_id,
                plant_id=alert.plant_id,
                at=at,
                state=state,
                note=note,
            )
        )
        if state == AlertState.FIRING:
            self.result.fired += 1
        elif state == AlertState.PENDING:
            self.result.pending += 1
        elif state == AlertState.RESOLVED:
            self.result.resolved += 1
            if alert.resolution == Resolution.LATE:
                self.result.late += 1

    def log_resolution(self, alert: Alert) -> None:
        note = str(alert.resolution)
        if alert.resolution == Resolution.LATE and alert.late_by_s is not None:
            note = f"late by {format_duration(round(alert.late_by_s, 3))}"
        self.log(alert, AlertState.RESOLVED, alert.resolved_at or self.now, note)

    def finish(self) -> None:
        """Write the queued alarm-log rows (in one go)."""
        insert_transitions(self.transitions)
        self.transitions = []

    # Queries every kind needs.

    def open_alerts(self) -> QuerySet[Alert]:
        return Alert.objects.filter(rule_id=self.rule.id, state__in=OPEN_STATES)

    def covering(self) -> QuerySet[Alert]:
        """Return the alerts of this rule that cover an outer event (its key ``k``, its time).

        An alert covers a trigger when it started at or before it and had not
        resolved before it; such a trigger belongs to that alert's episode.
        """
        at = OuterRef("occurred_at")
        return Alert.objects.filter(
            rule_id=self.rule.id, key=OuterRef("k"), started_at__lte=at
        ).filter(Q(resolved_at__isnull=True) | Q(resolved_at__gte=at))

    def open_starts(self) -> dict[str, datetime]:
        """Return when each of this rule's open alerts started, by key."""
        return dict(self.open_alerts().values_list("key", "started_at"))

    def lock_open(self, keys: Iterable[str]) -> list[Alert]:
        """Return (locked against operators' actions) this rule's open alerts of ``keys``."""
        keys = list(keys)
        if not keys:
            return []
        return list(self.open_alerts().select_for_update().filter(key__in=keys))

    def suppress(self) -> None:
        """Mark this rule's open alerts suppressed by a firing heartbeat it depends on, or clear."""
        open_alerts = self.open_alerts()
        outage = None
        if self.spec.depends_on:
            outage = (
                Alert.objects.filter(
                    rule__kind=RuleKind.HEARTBEAT,
                    key__in=self.spec.depends_on,
                    state__in=OUTAGE_STATES,
                )
                .order_by("started_at", "id")
                .values_list("id", flat=True)
                .first()
            )
        if outage is None:
            open_alerts.filter(suppressed_by__isnull=False).update(suppressed_by=None)
        else:
            open_alerts.exclude(suppressed_by=outage).update(suppressed_by=outage)


def key_times(events: QuerySet[Event], keys: Iterable[str]) -> list[tuple[str, datetime]]:
    """Return (key, time) of the keyed ``events`` whose key is one of ``keys``.

    The keys go as one array the database hashes, which holds up whatever its
    statistics say about the alerts they come from (a join with the alerts table
    turns into a nested loop when those are stale).
    """
    keys = list(keys)
    if not keys:
        return []
    return list(events.filter(OneOf(F("k"), keys)).values_list("k", "occurred_at"))


def insert_alerts(alerts: list[Alert]) -> list[Alert]:
    """INSERT alerts with ON CONFLICT DO NOTHING; return those inserted, ids set.

    At most one open alert per (rule, key) exists (a partial unique index), so an
    open alert that would be a second one is silently not inserted: two passes
    at once cannot duplicate an alert (resolved ones never conflict). PostgreSQL
    COPYs the rows into a staging table first (thousands of alerts in one go on a
    rule's first pass); SQLite takes a multi-row INSERT (3.35+: RETURNING).
    """
    if not alerts:
        return []
    fields = [f for f in Alert._meta.concrete_fields if not f.primary_key]
    qn = connection.ops.quote_name
    table = qn(Alert._meta.db_table)
    columns = ", ".join(qn(f.column) for f in fields)
    returning = f"RETURNING {qn('id')}, {qn('key')}, {qn('started_at')}"
    # (key, started_at) identifies an alert within a batch.
    by_identity = {(a.key, _utc(a.started_at)): a for a in alerts}
    rows: list[tuple] = []
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            stage = "andon_alert_stage"
            cursor.execute(
                f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
                f"SELECT {columns} FROM {table} WITH NO DATA"
            )
            with cursor.cursor.copy(f"COPY {stage} ({columns}) FROM STDIN") as copy:
                for alert in alerts:
                    copy.write_row([_copy_value(f, f.pre_save(alert, True)) for f in fields])
            cursor.execute(
                f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage} "
                f"ON CONFLICT DO NOTHING {returning}"
            )
            rows = cursor.fetchall()
            cursor.execute(f"TRUNCATE {stage}")
        else:
            row = "(" + ", ".join(["%s"] * len(fields)) + ")"
            for start in range(0, len(alerts), INSERT_CHUNK):
                part = alerts[start : start + INSERT_CHUNK]
                params = [
                    f.get_db_prep_save(f.pre_save(alert, True), connection)
                    for alert in part
                    for f in fields
                ]
                cursor.execute(
                    f"INSERT INTO {table} ({columns}) VALUES {', '.join([row] * len(part))} "
                    f"ON CONFLICT DO NOTHING {returning}",
                    params,
                )
                rows.extend(cursor.fetchall())
    inserted = []
    for alert_id, key, started_at in rows:
        alert = by_identity[(key, _utc(started_at))]
        alert.pk = alert_id
        alert._state.adding = False
        inserted.append(alert)
    return inserted


def _utc(moment: datetime | str) -> datetime:
    """Return a stored time as an aware UTC datetime (SQLite hands back naive UTC ones)."""
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return _aware(moment).astimezone(UTC)


def _copy_value(field: Any, value: Any) -> Any:
    """Return ``value`` as COPY takes it (JSON as text; the rest as psycopg adapts it)."""
    if isinstance(field, JSONField):
        return orjson.dumps(value).decode()
    return value


def insert_transitions(transitions: list[AlertTransition]) -> None:
    """Write alarm-log rows: COPY on PostgreSQL, a multi-row INSERT elsewhere."""
    if not transitions:
        return
    if connection.vendor != "postgresql":
        AlertTransition.objects.bulk_create(transitions, batch_size=INSERT_CHUNK)
        return
    fields = ("alert", "rule", "plant", "at", "state", "actor", "note")
    rows = [
        (t.alert_id, t.rule_id, t.plant_id, t.at, t.state, t.actor, t.note) for t in transitions
    ]
    copy_rows(AlertTransition, fields, rows)


# --- Follow-up --------------------------------------------------------------------------------


def evaluate_followup(run: RulePass) -> None:
    """Resolve answered alerts, open alerts for overdue triggers, find the next deadline."""
    spec, now = run.spec, run.now
    within = timedelta(seconds=spec.within_s or 0)
    lookback = timedelta(seconds=spec.default_lookback_s)
    when = keyed_events(spec.when, spec.key, run.landscape)  # type: ignore[arg-type]
    expect = keyed_events(spec.expect, spec.key, run.landscape)  # type: ignore[arg-type]

    # The constant bounds on the expected events repeat what the correlated ones imply
    # (an answer comes after its trigger, which is in the window): they let the planner
    # hash the window's expected events instead of every one ever stored.
    since = now - lookback
    answers = expect.filter(occurred_at__gt=since, occurred_at__lte=now)

    # Open alerts whose expected event has arrived since: late, or (stored after the
    # deadline but stamped before it) in time after all.
    seen: dict[str, list[datetime]] = {}
    for key, at in key_times(answers, run.open_alerts().values_list("key", flat=True)):
        seen.setdefault(key, []).append(at)
    answered = []
    for alert in run.lock_open(seen):
        after = [at for at in seen[alert.key] if at >= alert.started_at]
        if not after:
            continue  # an answer to an earlier episode of the key
        answered.append(alert)
        answer_at, due = min(after), alert.due_at or alert.started_at
        if answer_at > due:
            run.close(alert, answer_at, Resolution.LATE, (answer_at - due).total_seconds())
        else:
            run.close(alert, answer_at, Resolution.RECOVERED)
    run.resolve(answered)

    # The anti-join: triggers in the window whose deadline passed unanswered and
    # that no alert covers.
    triggers = when.filter(occurred_at__gt=since, occurred_at__lte=now - within)
    triggers = triggers.annotate(due=F("occurred_at") + within)
    in_time = answers.filter(
        k=OuterRef("k"), occurred_at__gte=OuterRef("occurred_at"), occurred_at__lte=OuterRef("due")
    )
    overdue = list(
        triggers.filter(~Exists(in_time), ~Exists(run.covering()))
        .order_by("k", "occurred_at")
        .values_list("id", "k", "occurred_at", "plant_id")
    )
    # Their late answers, if any, looked up for their keys alone.
    late: dict[str, list[datetime]] = {}
    for key, at in key_times(answers, {row[1] for row in overdue}):
        late.setdefault(key, []).append(at)
    for times in late.values():
        times.sort()
    alerts: list[Alert] = []
    for key, rows in groupby(overdue, key=operator.itemgetter(1)):
        covered_until: datetime | None = None
        for event_id, _, at, plant_id in rows:
            if covered_until is not None and at <= covered_until:
                continue  # within the episode just created for an earlier trigger
            due = at + within
            alert = run.new_alert(
                key, plant_id, started_at=at, fired_at=due, due_at=due, context={"event": event_id}
            )
            alerts.append(alert)
            times = late.get(key, [])
            answer = bisect.bisect_left(times, at)
            if answer == len(times):
                break  # an open alert covers every later trigger of the key
            answer_at = times[answer]  # after the deadline: none came in time
            run.close(alert, answer_at, Resolution.LATE, (answer_at - due).total_seconds())
            covered_until = answer_at
    run.create(alerts)

    # The next deadline: the earliest unanswered, uncovered trigger not yet due.
    recent = expect.filter(occurred_at__gt=now - within, occurred_at__lte=now)
    waiting = when.filter(occurred_at__gt=now - within, occurred_at__lte=now).filter(
        ~Exists(recent.filter(k=OuterRef("k"), occurred_at__gte=OuterRef("occurred_at"))),
        ~Exists(run.covering()),
    )
    earliest = waiting.aggregate(at=Min("occurred_at"))["at"]
    if earliest is not None:
        run.result.note_deadline(earliest + within)


# --- Match ------------------------------------------------------------------------------------


def evaluate_match(run: RulePass) -> None:
    """Recover alerts quiet for ``resolve_after``; open one per uncovered matching event."""
    spec, now = run.spec, run.now
    resolve_after = timedelta(seconds=spec.resolve_after_s or DEFAULT_RESOLVE_AFTER_S)
    lookback = timedelta(seconds=max(spec.default_lookback_s, resolve_after.total_seconds()))
    events = keyed_events(spec.when, spec.key, run.landscape)  # type: ignore[arg-type]

    since = now - lookback
    in_window = events.filter(occurred_at__gt=since, occurred_at__lte=now)

    # The last matching event of each open alert's key.
    opened = run.open_starts()
    last_seen: dict[str, datetime] = {}
    for key, at in key_times(in_window, opened):
        if at >= opened[key] and (key not in last_seen or at > last_seen[key]):
            last_seen[key] = at
    ends: dict[str, datetime] = {}
    for key, started_at in opened.items():
        last = last_seen.get(key)
        if last is None and started_at <= since:
            # Quiet for the whole window: only its last event, before the window, is unknown.
            before = events.filter(k=key, occurred_at__gte=started_at, occurred_at__lte=since)
            last = before.aggregate(at=Max("occurred_at"))["at"]
        ends[key] = (last or started_at) + resolve_after
    quiet = run.lock_open({key for key, end in ends.items() if end <= now})
    for alert in quiet:
        run.close(alert, ends[alert.key], Resolution.RECOVERED)
    run.resolve(quiet)
    waiting = [end for end in ends.values() if end > now]
    if waiting:
        run.result.note_deadline(min(waiting))

    # Every matching event no alert covers starts an episode; episodes of one key
    # chain while events come less than resolve_after apart.
    uncovered = (
        in_window.filter(~Exists(run.covering()))
        .order_by("k", "occurred_at")
        .values_list("id", "k", "occurred_at", "plant_id")
    )
    alerts: list[Alert] = []
    for key, rows in groupby(uncovered, key=operator.itemgetter(1)):
        episode: Alert | None = None
        last_at = None
        for event_id, _, at, plant_id in rows:
            if episode is not None and at <= last_at + resolve_after:
                last_at = at
                continue
            if episode is not None:
                run.close(episode, last_at + resolve_after, Resolution.RECOVERED)
            episode = run.new_alert(
                key, plant_id, started_at=at, fired_at=at, context={"event": event_id}
            )
            alerts.append(episode)
            last_at = at
        if episode is not None:
            if last_at + resolve_after <= now:
                run.close(episode, last_at + resolve_after, Resolution.RECOVERED)
            else:
                run.result.note_deadline(last_at + resolve_after)
    run.create(alerts)


# --- Heartbeat --------------------------------------------------------------------------------


@dataclass
class Signals:
    """Where a heartbeat source's signals are: (queryset, time field) pairs."""

    plant_id: int | None
    sources: list[tuple[QuerySet[Any], str]]

    def latest(self, now: datetime) -> datetime | None:
        """Return the time of the latest signal at or before ``now``."""
        times = [
            qs.filter(**{f"{name}__lte": now}).order_by(f"-{name}").values_list(name, flat=True)[:1]
            for qs, name in self.sources
        ]
        found = [row[0] for row in times if row]
        return max(found) if found else None

    def first_after(self, since: datetime, now: datetime) -> datetime | None:
        """Return the time of the first signal after ``since`` (and at or before ``now``)."""
        times = [
            qs.filter(**{f"{name}__gt": since, f"{name}__lte": now})
            .order_by(name)
            .values_list(name, flat=True)[:1]
            for qs, name in self.sources
        ]
        found = [row[0] for row in times if row]
        return min(found) if found else None


def heartbeat_signals(source: str, landscape: Landscape) -> Signals:
    """Return the signals of a system (events, spans, its connectors' messages) or connector.

    A key that is neither is taken as a source string (an event's ``source``, a
    span's service name), so a rule can watch a sender the landscape lacks.
    """
    connector = landscape.connectors.get(source)
    if connector is not None:
        return Signals(
            connector.plant_id, [(Message.objects.filter(connector_id=connector.id), "occurred_at")]
        )
    system = landscape.systems.get(source)
    if system is None:
        return Signals(
            None,
            [
                (Event.objects.filter(source=source), "occurred_at"),
                (Span.objects.filter(service_name=source), "start"),
            ],
        )
    names = system.source_names()
    connector_ids = [
        c.id for c in landscape.connectors.values() if system.id in (c.source_id, c.target_id)
    ]
    sources: list[tuple[QuerySet[Any], str]] = [
        (Event.objects.filter(Q(system_id=system.id) | Q(source__in=names)), "occurred_at"),
        (Span.objects.filter(Q(system_id=system.id) | Q(service_name__in=names)), "start"),
    ]
    if connector_ids:
        sources.append((Message.objects.filter(connector_id__in=connector_ids), "occurred_at"))
    return Signals(system.plant_id, sources)


def evaluate_heartbeat(run: RulePass) -> None:
    """Fire when the source has been silent longer than ``within``; recover on a signal."""
    spec, now = run.spec, run.now
    source = spec.source or ""
    within = timedelta(seconds=spec.within_s or 0)
    signals = heartbeat_signals(source, run.landscape)
    last = signals.latest(now)
    # Never any signal: the silence is counted from the rule's creation.
    since = last or run.rule.created_at
    current = run.open_alerts().select_for_update().first()
    if current is not None and last is not None and last > current.started_at:
        first = signals.first_after(current.started_at, now) or last
        run.close(current, first, Resolution.RECOVERED)
        run.resolve([current])
        current = None
    silent = now - since
    if silent <= within:
        run.result.note_deadline(since + within)
        return
    if current is None:
        alert = run.new_alert(
            source,
            signals.plant_id,
            started_at=since,
            fired_at=since + within,
            due_at=since + within,
            value=silent.total_seconds(),
            context={"last_signal_at": last.isoformat() if last else None},
        )
        run.create([alert])


# --- Threshold --------------------------------------------------------------------------------


class Percentile(Aggregate):
    """PostgreSQL's ``percentile_cont(fraction) WITHIN GROUP (ORDER BY expr)``."""

    function = "PERCENTILE_CONT"
    name = "Percentile"
    output_field = FloatField()
    template = "%(function)s(%(fraction)s) WITHIN GROUP (ORDER BY %(expressions)s)"

    def __init__(self, expression: str, fraction: float) -> None:
        super().__init__(expression, fraction=float(fraction))


def interpolated_percentile(values: list[float], fraction: float) -> float | None:
    """Return the linearly interpolated percentile of ``values`` (as percentile_cont does)."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def connector_metric(
    connector_id: int, metric: str, since: datetime, now: datetime
) -> float | None:
    """Return a health metric over the connector's messages in (since, now]; None: no data."""
    messages = Message.objects.filter(
        connector_id=connector_id, occurred_at__gt=since, occurred_at__lte=now
    )
    if metric == "p95_latency_ms":
        timed = messages.filter(latency_ms__isnull=False)
        if connection.vendor == "postgresql":
            return timed.aggregate(p=Percentile("latency_ms", 0.95))["p"]
        return interpolated_percentile(
            [float(v) for v in timed.values_list("latency_ms", flat=True)], 0.95
        )
    failed = (MessageStatus.FAILED, MessageStatus.DEAD_LETTERED)
    counts = messages.aggregate(
        all=Count("id"),
        failed=Count("id", filter=Q(status__in=failed)),
        dead=Count("id", filter=Q(status=MessageStatus.DEAD_LETTERED)),
        failed_only=Count("id", filter=Q(status=MessageStatus.FAILED)),
    )
    if metric == "failure_ratio":
        return counts["failed"] / counts["all"] if counts["all"] else None
    if metric == "failed_count":
        return float(counts["failed_only"])
    if metric == "dead_lettered_count":
        return float(counts["dead"])
    if metric == "throughput":
        return counts["all"] / ((now - since).total_seconds() / 60)
    raise RuleProblem(f"unknown metric {metric!r}")


def evaluate_threshold(run: RulePass) -> None:
    """Compare the connector's metric with the threshold; pending for ``for``, then firing."""
    spec, now = run.spec, run.now
    connector = run.landscape.connectors.get(spec.connector or "")
    if connector is None:
        raise RuleProblem(f"connector {spec.connector!r} is not in the landscape")
    window = timedelta(seconds=spec.window_s or 0)
    value = connector_metric(connector.id, spec.metric or "", now - window, now)
    holds = value is not None and OPERATORS[spec.op or ">"](value, float(spec.value or 0))
    current = run.open_alerts().select_for_update().first()
    if not holds:
        if current is not None:
            run.close(current, now, Resolution.RECOVERED)
            run.resolve([current])
        return
    if current is None:
        hold_for = timedelta(seconds=spec.for_s or 0)
        pending = hold_for > timedelta(0)
        alert = run.new_alert(
            connector.key,
            connector.plant_id,
            state=AlertState.PENDING if pending else AlertState.FIRING,
            started_at=now,
            fired_at=None if pending else now,
            due_at=now + hold_for,
            value=value,
            context={"metric": spec.metric, "window_s": spec.window_s},
        )
        run.create([alert])
        if pending:
            run.result.note_deadline(alert.due_at)
        return
    current.value = value
    current.summary = run.summary(current.key, current.labels, value)
    fields = ["value", "summary", "updated_at"]
    if current.state == AlertState.PENDING:
        if current.due_at is not None and now < current.due_at:
            run.result.note_deadline(current.due_at)
        else:
            current.state = AlertState.FIRING
            current.fired_at = now
            fields += ["state", "fired_at"]
            run.log(current, AlertState.FIRING, now)
    current.save(update_fields=fields)


EVALUATORS: dict[str, Callable[[RulePass], None]] = {
    RuleKind.FOLLOWUP: evaluate_followup,
    RuleKind.HEARTBEAT: evaluate_heartbeat,
    RuleKind.THRESHOLD: evaluate_threshold,
    RuleKind.MATCH: evaluate_match,
}
