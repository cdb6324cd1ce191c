"""Rule unit tests (CONTRACT "Rule tests file"): rules run against a simulated world and clock.

A test file names rule files (paths relative to it), optionally a landscape file,
and tests. Each test starts from an empty world (the landscape and the rules
only), then walks a simulated clock: at every moment where something arrives or
an expectation is due, the items received so far are stored through the ORM
(an event's ``occurred_at`` = origin + ``at``) and one evaluation pass runs with
``now`` = origin + that moment. Each expectation then compares the alerts that
exist at that moment with the listed ones, exactly::

    rule_files: [rules.yaml]
    landscape: ../integrations/fixtures/demo_landscape.yaml   # optional
    tests:
      - name: acknowledgement arrives late
        rules: [wo-not-acknowledged]          # optional: only these rules exist in the test
        events:
          - {at: 0m, type: erp.workorder.released, source: /erp, subject: WO-1}
          - {at: 14m, type: mes.workorder.acknowledged, source: /mes/p1, subject: WO-1}
          - {at: 2m, message: {connector: erp-to-mes-orders, status: failed}, count: 3}
          - {at: 1m, received: 6m, type: ...}  # stored late: arrival order differs from time
          - {at: 12m, ack: {rule: wo-not-acknowledged, key: WO-1}, by: alice}
        expect:
          - {at: 11m, firing: [{rule: wo-not-acknowledged, key: WO-1}]}
          - {at: 15m, firing: [], resolved: [{rule: wo-not-acknowledged, key: WO-1,
                                              resolution: late, late_by: 4m}]}

``firing`` lists the alerts in state firing or acknowledged, ``pending`` those
pending, ``resolved`` every alert resolved so far in the test; a category left
out is not checked. ``evaluate_every`` (file or test) adds periodic passes, as
the scheduler would run them.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from django.apps import apps
from django.db import connection, transaction
from django.db.models import ProtectedError

from integrations.adapters import type_name
from integrations.ingest.common import Attribution
from integrations.landscape import LandscapeError, load_landscape, read_landscape_file
from integrations.models import (
    Connector,
    Event,
    Message,
    MessageAttempt,
    MessageStatus,
    Plant,
    Span,
    System,
)
from integrations.yamlio import YamlError, parse_yaml
from monitors import lifecycle
from monitors.models import OPEN_STATES, Alert, AlertState, Resolution, Rule
from monitors.rules import UNIT_SECONDS, RuleError, RuleSpec
from monitors.ruleset import apply_specs, read_rules_file

OFFSET_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
OFFSET = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*(?:ms|s|m|h|d|w)\s*)+$")

# The simulated clock's zero: a Monday morning, far from any real data.
ORIGIN = datetime(2024, 1, 1, 6, 0, tzinfo=UTC)
ACTOR = "testrules"

TOP_FIELDS = ("rule_files", "landscape", "evaluate_every", "tests")
TEST_FIELDS = ("name", "rules", "events", "expect", "evaluate_every")
EVENT_FIELDS = (
    "at",
    "received",
    "type",
    "source",
    "subject",
    "data",
    "plant",
    "correlationid",
    "id",
)
MESSAGE_FIELDS = ("connector", "status", "latency_ms", "id", "correlationid", "error")
SPAN_FIELDS = ("service", "name")
EXPECT_FIELDS = ("at", "firing", "pending", "resolved")
REF_FIELDS = ("rule", "key", "resolution", "late_by", "suppressed_by")
STEP_KINDS = ("type", "message", "span", "ack", "resolve")

# The world the tests keep between tests; everything else is deleted before each test.
LANDSCAPE_MODELS = (Plant, System, Connector)

Evaluate = Callable[..., Any]


class RuleTestError(Exception):
    """A test file (or a file it names) cannot be used; ``messages`` says where and why."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


# --- The parsed file ---------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """Something that happens in a test's world: an item arrives, or a person acts.

    ``kind`` is event, message, span, ack or resolve; ``fields`` its attributes.
    """

    kind: str
    at_s: float
    received_s: float
    fields: Mapping[str, Any]
    index: int
    count: int = 1


@dataclass(frozen=True)
class AlertRef:
    """An alert an expectation lists: rule and key, optionally its resolution and lateness."""

    rule: str
    key: str
    resolution: str | None = None
    late_by_s: float | None = None
    suppressed_by: str | None = None
    checks_suppression: bool = False

    def __str__(self) -> str:
        return f"{self.rule} {self.key}"


@dataclass(frozen=True)
class Expectation:
    """What must exist at ``at_s``: None for a category means it is not checked."""

    at_s: float
    firing: tuple[AlertRef, ...] | None = None
    pending: tuple[AlertRef, ...] | None = None
    resolved: tuple[AlertRef, ...] | None = None


@dataclass(frozen=True)
class RuleTest:
    name: str
    steps: tuple[Step, ...]
    expectations: tuple[Expectation, ...]
    rules: tuple[str, ...] | None = None
    evaluate_every_s: float | None = None


@dataclass(frozen=True)
class RuleTestFile:
    path: Path
    specs: tuple[RuleSpec, ...]
    tests: tuple[RuleTest, ...]
    landscape: Path | None = None


@dataclass
class TestResult:
    name: str
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class SuiteResult:
    results: list[TestResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.results)

    def lines(self) -> list[str]:
        """Return the report: PASS/FAIL per test with its diff, then a summary line."""
        out = []
        for result in self.results:
            out.append(f"{'PASS' if result.passed else 'FAIL'} {result.name}")
            out.extend(f"  {line}" for line in result.failures)
        failed = sum(not r.passed for r in self.results)
        out.append(
            f"{len(self.results)} rule tests: {len(self.results) - failed} passed, {failed} failed"
        )
        return out


# --- Reading -----------------------------------------------------------------------------


def parse_offset(value: Any) -> float:
    """Return seconds from the test's origin for ``0m``, ``90s``, ``2h`` (a number is seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a time like 0m, 90s or 2h, not {type_name(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and OFFSET.match(value):
        seconds = sum(
            float(number) * UNIT_SECONDS[unit] for number, unit in OFFSET_PART.findall(value)
        )
    else:
        raise ValueError(f"must be a time like 0m, 90s, 2h or 9m30s, not {value!r}")
    if seconds < 0:
        raise ValueError("must not be negative")
    return seconds


def format_offset(seconds: float) -> str:
    """Return an offset the way a test file writes it (``0m``, ``11m``, ``1h30m``, ``9m59s``)."""
    if seconds == 0:
        return "0m"
    parts = []
    rest = seconds
    for unit in ("d", "h", "m"):
        whole = int(rest // UNIT_SECONDS[unit])
        if whole:
            parts.append(f"{whole}{unit}")
            rest -= whole * UNIT_SECONDS[unit]
    if rest:
        parts.append(f"{rest:g}s")
    return "".join(parts)


def _join(where: str, name: str) -> str:
    """Return the location of a field: ``tests[0] (name): events[1].at``."""
    if not where:
        return name
    return f"{where}: {name}" if where.endswith(")") else f"{where}.{name}"


class _Reader:
    """Collects problems as ``where: field: message`` while reading a test file."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}" if where else message)

    def mapping(self, value: Any, where: str) -> Mapping[str, Any] | None:
        if not isinstance(value, Mapping):
            self.fail(where, f"must be a mapping, not {type_name(value)}")
            return None
        return value

    def unknown(self, raw: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
        allowed = tuple(allowed)
        for name in raw:
            if name not in allowed:
                self.fail(
                    _join(where, str(name)),
                    f"unknown field (expected {', '.join(allowed)})",
                )

    def offset(self, raw: Mapping[str, Any], name: str, where: str, required: bool) -> float | None:
        if name not in raw:
            if required:
                self.fail(_join(where, name), "is required (a time like 0m, 90s or 2h)")
            return None
        try:
            return parse_offset(raw[name])
        except ValueError as exc:
            self.fail(_join(where, name), str(exc))
            return None

    def text(self, raw: Mapping[str, Any], name: str, where: str, required: bool = False) -> Any:
        value = raw.get(name)
        if value is None:
            if required:
                self.fail(_join(where, name), "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.fail(_join(where, name), f"must be a string, not {type_name(value)}")
            return None
        return str(value)

    def names(self, value: Any, where: str) -> tuple[str, ...] | None:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.fail(where, "must be a list of names")
            return None
        return tuple(value)


def read_test_file(path: str | Path) -> RuleTestFile:
    """Read and validate a rule tests file and the rule files it names.

    Raise RuleTestError listing every problem (``tests[1] (name): events[0].at: ...``).
    """
    path = Path(path)
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RuleTestError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleTestError([f"{path}: cannot be read ({exc})"]) from None
    except YamlError as exc:
        raise RuleTestError([f"{path}: {exc}"]) from None
    reader = _Reader()
    raw = reader.mapping(data, "")
    if raw is None:
        raise RuleTestError([f"{path}: the file must be a mapping with rule_files and tests"])
    reader.unknown(raw, TOP_FIELDS, "")
    specs = _read_rule_files(raw, path, reader)
    known_rules = {spec.name for spec in specs}
    landscape = None
    if raw.get("landscape") is not None:
        name = reader.text(raw, "landscape", "")
        if name is not None:
            landscape = path.parent / name
            if not landscape.is_file():
                reader.fail("landscape", f"{landscape}: no such file")
    every = reader.offset(raw, "evaluate_every", "", required=False) or None
    tests_raw = raw.get("tests")
    tests: list[RuleTest] = []
    if not isinstance(tests_raw, list) or not tests_raw:
        reader.fail("tests", "must be a non-empty list of tests")
    else:
        seen: set[str] = set()
        for index, entry in enumerate(tests_raw):
            test = _read_test(entry, index, known_rules, every, reader)
            if test is None:
                continue
            if test.name in seen:
                reader.fail(f"tests[{index}] ({test.name})", "name: is already used")
            seen.add(test.name)
            tests.append(test)
    if reader.problems:
        raise RuleTestError([f"{path}: {problem}" for problem in reader.problems])
    return RuleTestFile(path=path, specs=tuple(specs), tests=tuple(tests), landscape=landscape)


def _read_rule_files(raw: Mapping[str, Any], path: Path, reader: _Reader) -> list[RuleSpec]:
    names = reader.names(raw.get("rule_files"), "rule_files") if "rule_files" in raw else None
    if names is None:
        if "rule_files" not in raw:
            reader.fail("rule_files", "is required (a list of rules files, relative to this file)")
        return []
    specs: list[RuleSpec] = []
    origin: dict[str, str] = {}
    for name in names:
        try:
            file_specs = read_rules_file(path.parent / name)
        except RuleError as exc:
            reader.problems.extend(
                m if m.startswith(str(path.parent / name)) else f"{name}: {m}" for m in exc.messages
            )
            continue
        for spec in file_specs:
            if spec.name in origin:
                reader.fail(name, f"rule {spec.name!r} is already defined in {origin[spec.name]}")
                continue
            origin[spec.name] = name
            specs.append(spec)
    return specs


def _read_test(
    entry: Any, index: int, known_rules: set[str], every: float | None, reader: _Reader
) -> RuleTest | None:
    where = f"tests[{index}]"
    raw = reader.mapping(entry, where)
    if raw is None:
        return None
    name = raw.get("name")
    if isinstance(name, str) and name.strip():
        where += f" ({name})"
    else:
        reader.fail(_join(where, "name"), "is required (a string)")
    before = len(reader.problems)
    reader.unknown(raw, TEST_FIELDS, where)
    rules = None
    if raw.get("rules") is not None:
        rules = reader.names(raw["rules"], _join(where, "rules"))
        for rule in rules or ():
            if rule not in known_rules:
                reader.fail(_join(where, "rules"), f"unknown rule {rule!r}")
    events = raw.get("events") or []
    steps: list[Step] = []
    if not isinstance(events, list):
        reader.fail(_join(where, "events"), f"must be a list, not {type_name(events)}")
    else:
        for step_index, step_raw in enumerate(events):
            step = _read_step(step_raw, step_index, _join(where, f"events[{step_index}]"), reader)
            if step is not None:
                steps.append(step)
    expectations: list[Expectation] = []
    expect = raw.get("expect")
    if not isinstance(expect, list) or not expect:
        reader.fail(
            _join(where, "expect"), "must be a non-empty list of {at, firing/pending/resolved}"
        )
    else:
        for exp_index, exp_raw in enumerate(expect):
            expectation = _read_expectation(
                exp_raw, _join(where, f"expect[{exp_index}]"), known_rules, reader
            )
            if expectation is not None:
                expectations.append(expectation)
    test_every = reader.offset(raw, "evaluate_every", where, required=False) or every
    if len(reader.problems) > before or not isinstance(name, str):
        return None
    return RuleTest(
        name=name.strip(),
        steps=tuple(steps),
        expectations=tuple(expectations),
        rules=rules,
        evaluate_every_s=test_every,
    )


def _read_step(raw_step: Any, index: int, where: str, reader: _Reader) -> Step | None:
    raw = reader.mapping(raw_step, where)
    if raw is None:
        return None
    kinds = [kind for kind in STEP_KINDS if kind in raw]
    if len(kinds) != 1:
        reader.fail(
            where,
            "must be exactly one of an event (type: ...), message: {...}, span: {...}, "
            "ack: {rule, key} or resolve: {rule, key}",
        )
        return None
    kind = "event" if kinds == ["type"] else kinds[0]
    at = reader.offset(raw, "at", where, required=True)
    received = reader.offset(raw, "received", where, required=False)
    count = 1
    fields: dict[str, Any] = {}
    if kind == "event":
        reader.unknown(raw, EVENT_FIELDS, where)
        for name in ("type", "source", "subject", "plant", "correlationid", "id"):
            value = reader.text(raw, name, where, required=name == "type")
            if value is not None:
                fields[name] = value
        if "data" in raw:
            fields["data"] = raw["data"]
    else:
        reader.unknown(raw, ("at", "received", kind, "count", "by", "comment"), where)
        inner = reader.mapping(raw[kind], _join(where, kind))
        if inner is None:
            return None
        inner_where = _join(where, kind)
        if kind == "message":
            reader.unknown(inner, MESSAGE_FIELDS, inner_where)
            for name in ("connector", "id", "correlationid", "error"):
                value = reader.text(inner, name, inner_where, required=name == "connector")
                if value is not None:
                    fields[name] = value
            status = inner.get("status", MessageStatus.DELIVERED)
            if status not in MessageStatus.values:
                reader.fail(
                    _join(inner_where, "status"), f"must be one of {', '.join(MessageStatus)}"
                )
            fields["status"] = status
            latency = inner.get("latency_ms")
            if latency is not None and (isinstance(latency, bool) or not isinstance(latency, int)):
                reader.fail(
                    _join(inner_where, "latency_ms"), "must be a whole number of milliseconds"
                )
            fields["latency_ms"] = latency
            raw_count = raw.get("count", 1)
            if isinstance(raw_count, bool) or not isinstance(raw_count, int) or raw_count < 1:
                reader.fail(_join(where, "count"), "must be a whole number of at least 1")
            else:
                count = raw_count
                if count > 1 and "id" in fields:
                    reader.fail(_join(where, "count"), "cannot be used with message.id")
        elif kind == "span":
            reader.unknown(inner, SPAN_FIELDS, inner_where)
            fields["service"] = reader.text(inner, "service", inner_where, required=True)
            fields["name"] = reader.text(inner, "name", inner_where) or "span"
        else:
            reader.unknown(inner, ("rule", "key"), inner_where)
            fields["rule"] = reader.text(inner, "rule", inner_where, required=True)
            fields["key"] = reader.text(inner, "key", inner_where, required=True)
            fields["by"] = str(raw.get("by") or ACTOR)
            fields["comment"] = str(raw.get("comment") or "")
        if kind != "message" and "count" in raw:
            reader.fail(_join(where, "count"), "is only for messages")
    if at is None:
        return None
    return Step(
        kind=kind,
        at_s=at,
        received_s=at if received is None else received,
        fields=fields,
        index=index,
        count=count,
    )


def _read_expectation(
    raw_exp: Any, where: str, known_rules: set[str], reader: _Reader
) -> Expectation | None:
    raw = reader.mapping(raw_exp, where)
    if raw is None:
        return None
    reader.unknown(raw, EXPECT_FIELDS, where)
    at = reader.offset(raw, "at", where, required=True)
    lists: dict[str, tuple[AlertRef, ...] | None] = {}
    for category in ("firing", "pending", "resolved"):
        if category not in raw:
            lists[category] = None
            continue
        entries = raw[category] if raw[category] is not None else []
        if not isinstance(entries, list):
            reader.fail(_join(where, category), "must be a list of {rule, key}")
            continue
        refs = []
        for index, entry in enumerate(entries):
            ref = _read_ref(
                entry, _join(where, f"{category}[{index}]"), known_rules, reader, category
            )
            if ref is not None:
                refs.append(ref)
        lists[category] = tuple(refs)
    if not any(category in raw for category in ("firing", "pending", "resolved")):
        reader.fail(where, "must list firing, pending and/or resolved alerts")
    if at is None:
        return None
    return Expectation(at_s=at, **lists)


def _read_ref(
    raw_ref: Any, where: str, known_rules: set[str], reader: _Reader, category: str
) -> AlertRef | None:
    raw = reader.mapping(raw_ref, where)
    if raw is None:
        return None
    reader.unknown(raw, REF_FIELDS, where)
    rule = reader.text(raw, "rule", where, required=True)
    key = reader.text(raw, "key", where, required=True)
    if rule is not None and rule not in known_rules:
        reader.fail(_join(where, "rule"), f"unknown rule {rule!r} (not in the rule files)")
    resolution = raw.get("resolution")
    if resolution is not None:
        if category != "resolved":
            reader.fail(_join(where, "resolution"), "is only for resolved alerts")
        elif resolution not in Resolution.values:
            reader.fail(_join(where, "resolution"), f"must be one of {', '.join(Resolution)}")
    late_by = reader.offset(raw, "late_by", where, required=False)
    suppressed_by = raw.get("suppressed_by")
    if suppressed_by is not None and not isinstance(suppressed_by, str):
        reader.fail(_join(where, "suppressed_by"), "must be the name of the suppressing rule")
    if rule is None or key is None:
        return None
    return AlertRef(
        rule=rule,
        key=key,
        resolution=resolution,
        late_by_s=late_by,
        suppressed_by=suppressed_by,
        checks_suppression="suppressed_by" in raw,
    )


# --- Running -----------------------------------------------------------------------------


def in_memory_database() -> bool:
    """Return whether the default database is an in-memory SQLite one (safe to wipe)."""
    return connection.vendor == "sqlite" and connection.is_in_memory_db()


def wipe_world() -> None:
    """Delete every row except the landscape (plants, systems, connectors)."""
    models = [
        model
        for app in ("monitors", "integrations")
        for model in apps.get_app_config(app).get_models()
        if model not in LANDSCAPE_MODELS
    ]
    # A PROTECT reference between two of these tables fails until the referrer is gone.
    for _ in range(len(models)):
        protected = []
        for model in models:
            try:
                with transaction.atomic():
                    model._base_manager.all().delete()
            except ProtectedError:
                protected.append(model)
        if not protected:
            return
        models = protected
    raise RuleTestError([f"cannot empty {', '.join(m.__name__ for m in models)}"])


def load_world(suite: RuleTestFile) -> None:
    """Load the suite's landscape (when it names one) into the current database."""
    if suite.landscape is None:
        return
    try:
        load_landscape(read_landscape_file(suite.landscape))
    except LandscapeError as exc:
        raise RuleTestError([f"{suite.landscape}: {m}" for m in exc.messages]) from None


def default_evaluate() -> Evaluate:
    """Return ``monitors.evaluate.evaluate`` (imported late: the engine is optional here)."""
    try:
        from monitors.evaluate import evaluate
    except ImportError as exc:
        raise RuleTestError([f"the evaluation engine is not available: {exc}"]) from None
    return evaluate


def run_suite(suite: RuleTestFile, evaluate: Evaluate | None = None) -> SuiteResult:
    """Run every test of ``suite`` against the current (empty, in-memory) database."""
    evaluate = evaluate or default_evaluate()
    load_world(suite)
    result = SuiteResult()
    # A rule the engine cannot evaluate fails its test with the reason; no traceback needed.
    engine_log = logging.getLogger("monitors.evaluate")
    was_disabled, engine_log.disabled = engine_log.disabled, True
    try:
        for test in suite.tests:
            result.results.append(_Run(suite, test, evaluate).run())
    finally:
        engine_log.disabled = was_disabled
    wipe_world()
    return result


class _Run:
    """One test: a fresh world, the simulated clock, and the expectations checked on it."""

    def __init__(self, suite: RuleTestFile, test: RuleTest, evaluate: Evaluate) -> None:
        self.suite = suite
        self.test = test
        self.evaluate = evaluate
        self.failures: list[str] = []
        self.broken: set[str] = set()
        self.ids = itertools.count(1)

    def run(self) -> TestResult:
        wipe_world()
        self._create_rules()
        self.attribution = Attribution.load()
        self.connectors = {c.key: c for c in Connector.objects.all()}
        self.plants = {p.key: p for p in Plant.objects.all()}
        moments = {step.received_s for step in self.test.steps}
        moments |= {exp.at_s for exp in self.test.expectations}
        if self.test.evaluate_every_s:
            end = max(moments)
            moments |= {
                k * self.test.evaluate_every_s
                for k in range(int(end // self.test.evaluate_every_s) + 1)
            }
        steps = sorted(self.test.steps, key=lambda s: (s.received_s, s.index))
        for moment in sorted(moments):
            now = ORIGIN + timedelta(seconds=moment)
            arriving = [s for s in steps if s.received_s == moment]
            for step in arriving:
                if step.kind not in ("ack", "resolve"):
                    self._store(step)
            self._note_errors(self.evaluate(now=now), moment)
            for step in arriving:
                if step.kind in ("ack", "resolve"):
                    self._act(step, now)
            for expectation in self.test.expectations:
                if expectation.at_s == moment:
                    self._check(expectation)
        return TestResult(self.test.name, self.failures)

    def _note_errors(self, report: Any, moment: float) -> None:
        """Fail the test, once per rule, when the engine could not evaluate a rule."""
        for result in getattr(report, "errors", None) or ():
            if result.rule not in self.broken:
                self.broken.add(result.rule)
                self.failures.append(
                    f"at {format_offset(moment)}: rule {result.rule} could not be evaluated: "
                    f"{result.error}"
                )

    def _create_rules(self) -> None:
        specs = [
            spec
            for spec in self.suite.specs
            if self.test.rules is None or spec.name in self.test.rules
        ]
        apply_specs(specs, ACTOR)
        # Heartbeats count silence from a rule's creation: the rules exist from the origin on.
        Rule.objects.update(created_at=ORIGIN, updated_at=ORIGIN)

    # -- the world ------------------------------------------------------------------------

    def _store(self, step: Step) -> None:
        at = ORIGIN + timedelta(seconds=step.at_s)
        received = ORIGIN + timedelta(seconds=step.received_s)
        fields = step.fields
        if step.kind == "event":
            source = fields.get("source", "/test")
            system_id, plant_id = self.attribution.resolve(source)
            if "plant" in fields:
                plant = self.plants.get(fields["plant"])
                if plant is None:
                    self._fail(step, f"unknown plant {fields['plant']!r} (not in the landscape)")
                    return
                plant_id = plant.pk
            Event.objects.create(
                source=source,
                event_id=fields.get("id") or f"testrules-{next(self.ids)}",
                type=fields["type"],
                subject=fields.get("subject", ""),
                time=at,
                occurred_at=at,
                received_at=received,
                datacontenttype="application/json",
                data=fields.get("data"),
                correlation_id=fields.get("correlationid", ""),
                system_id=system_id,
                plant_id=plant_id,
            )
        elif step.kind == "message":
            connector = self.connectors.get(fields["connector"])
            if connector is None:
                self._fail(step, f"unknown connector {fields['connector']!r} (load a landscape)")
                return
            for _ in range(step.count):
                self._store_message(connector, fields, at, received)
        elif step.kind == "span":
            system_id, plant_id = self.attribution.resolve(fields["service"])
            Span.objects.create(
                trace_id=f"{next(self.ids):032x}",
                span_id=f"{next(self.ids):016x}",
                name=fields["name"],
                service_name=fields["service"],
                start=at,
                end=at,
                received_at=received,
                system_id=system_id,
                plant_id=plant_id,
            )

    def _store_message(
        self, connector: Connector, fields: Mapping[str, Any], at: datetime, received: datetime
    ) -> None:
        external_id = fields.get("id") or f"testrules-{next(self.ids)}"
        message, created = Message.objects.get_or_create(
            connector=connector,
            external_id=external_id,
            defaults={
                "status": fields["status"],
                "occurred_at": at,
                "last_attempt_at": at,
                "received_at": received,
                "correlation_id": fields.get("correlationid", ""),
                "latency_ms": fields.get("latency_ms"),
                "error": fields.get("error", ""),
                "plant_id": connector.plant_id,
            },
        )
        if not created:  # a later attempt of the same message
            message.attempt_count += 1
            if at >= message.last_attempt_at:
                message.status = fields["status"]
                message.last_attempt_at = at
                message.latency_ms = fields.get("latency_ms")
            message.save()
        MessageAttempt.objects.create(
            message=message,
            at=at,
            status=fields["status"],
            latency_ms=fields.get("latency_ms"),
            error=fields.get("error", ""),
            received_at=received,
        )

    def _act(self, step: Step, now: datetime) -> None:
        fields = step.fields
        alert = (
            Alert.objects.filter(
                rule__name=fields["rule"], key=fields["key"], state__in=OPEN_STATES
            )
            .order_by("-started_at")
            .first()
        )
        if alert is None:
            self._fail(step, f"no open alert {fields['rule']} {fields['key']} to {step.kind}")
            return
        verb = lifecycle.acknowledge if step.kind == "ack" else lifecycle.resolve_manually
        verb(alert.pk, fields["by"], fields["comment"], now=now)

    def _fail(self, step: Step, message: str) -> None:
        self.failures.append(
            f"at {format_offset(step.received_s)}: events[{step.index}]: {message}"
        )

    # -- the expectations -----------------------------------------------------------------

    def _check(self, expectation: Expectation) -> None:
        states = {
            "firing": (AlertState.FIRING, AlertState.ACKNOWLEDGED),
            "pending": (AlertState.PENDING,),
            "resolved": (AlertState.RESOLVED,),
        }
        for category, wanted in states.items():
            expected = getattr(expectation, category)
            if expected is None:
                continue
            actual = list(
                Alert.objects.filter(state__in=wanted)
                .select_related("rule", "suppressed_by__rule")
                .order_by("rule__name", "key", "started_at", "id")
            )
            self.failures.extend(compare(expectation.at_s, category, expected, actual))


def _label(alert: Alert) -> str:
    return f"{alert.rule.name} {alert.key}"


def _listing(items: Iterable[object]) -> str:
    return "[" + ", ".join(str(item) for item in items) + "]"


def compare(
    at_s: float, category: str, expected: tuple[AlertRef, ...], actual: list[Alert]
) -> list[str]:
    """Return the readable differences between expected and actual alerts (empty: equal)."""
    at = format_offset(at_s)
    want = Counter((ref.rule, ref.key) for ref in expected)
    have = Counter((alert.rule.name, alert.key) for alert in actual)
    out: list[str] = []
    if want != have:
        out.append(
            f"at {at}: expected {category} {_listing(sorted(expected, key=str))}, "
            f"got {_listing(sorted(_label(a) for a in actual))}"
        )
        missing = want - have
        unexpected = have - want
        if missing:
            out.append(f"  missing: {', '.join(f'{r} {k}' for r, k in sorted(missing.elements()))}")
        if unexpected:
            out.append(
                f"  unexpected: {', '.join(f'{r} {k}' for r, k in sorted(unexpected.elements()))}"
            )
    # Details of the alerts present on both sides, in the order they started.
    pool: dict[tuple[str, str], list[Alert]] = {}
    for alert in actual:
        pool.setdefault((alert.rule.name, alert.key), []).append(alert)
    for ref in expected:
        candidates = pool.get((ref.rule, ref.key))
        if not candidates:
            continue
        alert = candidates.pop(0)
        out.extend(f"at {at}: {category} {ref}: {problem}" for problem in _details(ref, alert))
    return out


def _details(ref: AlertRef, alert: Alert) -> list[str]:
    problems = []
    if ref.resolution is not None and alert.resolution != ref.resolution:
        problems.append(f"expected resolution {ref.resolution}, got {alert.resolution or 'none'}")
    if ref.late_by_s is not None:
        got = alert.late_by_s
        if got is None or abs(got - ref.late_by_s) > 0.5:
            shown = "none" if got is None else format_offset(round(got))
            problems.append(f"expected late_by {format_offset(ref.late_by_s)}, got {shown}")
    if ref.checks_suppression:
        got_rule = alert.suppressed_by.rule.name if alert.suppressed_by_id else None
        if got_rule != ref.suppressed_by:
            problems.append(
                f"expected suppressed_by {ref.suppressed_by or 'none'}, got {got_rule or 'none'}"
            )
    return problems
