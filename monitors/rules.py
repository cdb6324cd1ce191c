"""Rule definitions: parsing and validating rules-file entries into typed specs.

A rules file (CONTRACT "Rules file") is validated whole: every problem is
reported as ``rules[I] (name): field: message``, and a file with any problem
changes nothing. A validated entry is stored normalised in ``Rule.definition``
(durations as seconds) and read back with :func:`spec_from_definition`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from integrations.adapters import ConfigError, ConfigReader, type_name
from monitors.models import RuleKind, Severity

DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)\s*$")
UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

METRICS = ("failure_ratio", "p95_latency_ms", "failed_count", "dead_lettered_count", "throughput")
OPERATORS = (">", ">=", "<", "<=", "==", "!=")
KEY_COLUMNS = ("subject", "correlationid")
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,127}$")

COMMON_FIELDS = (
    "name",
    "kind",
    "severity",
    "labels",
    "summary",
    "runbook",
    "description",
    "enabled",
    "depends_on",
)
KIND_FIELDS = {
    RuleKind.FOLLOWUP: ("when", "expect", "key", "within", "lookback"),
    RuleKind.HEARTBEAT: ("source", "within"),
    RuleKind.THRESHOLD: ("connector", "metric", "window", "op", "value", "for"),
    RuleKind.MATCH: ("when", "key", "resolve_after"),
}
MATCHER_ATTRIBUTES = ("type", "source", "plant", "subject")


class RuleError(Exception):
    """A rules document was refused; ``messages`` names each rule and field at fault."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


def parse_duration(value: Any) -> float:
    """Return seconds for ``30s``, ``10m``, ``2h``, ``1d`` (a bare number is seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"must be a duration like 30s, 10m, 2h or 1d, not {type_name(value)}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := DURATION.match(value)):
        seconds = float(match.group(1)) * UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"must be a duration like 30s, 10m, 2h or 1d, not {value!r}")
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """Return the shortest exact rules-file spelling of a duration."""
    for unit in ("w", "d", "h", "m", "s"):
        size = UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Matcher:
    """Which events a ``when``/``expect`` clause selects: type plus optional equalities.

    ``data`` maps a JSON path (``lot`` or ``result.status``) to the required value.
    """

    type: str
    source: str | None = None
    plant: str | None = None
    subject: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        for name in ("source", "plant", "subject"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        for path, value in self.data.items():
            out[f"data.{path}"] = value
        return out


@dataclass(frozen=True)
class KeySpec:
    """Where an event's key comes from: ``subject``, ``correlationid`` or ``data.<path>``."""

    source: str  # "subject" | "correlationid" | "data"
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> KeySpec:
        if text in KEY_COLUMNS:
            return cls(text)
        if text.startswith("data.") and len(text) > 5 and all(text[5:].split(".")):
            return cls("data", text[5:])
        raise ValueError(f"must be subject, correlationid or data.<json path>, not {text!r}")

    def to_yaml(self) -> str:
        return f"data.{self.path}" if self.source == "data" else self.source


@dataclass(frozen=True)
class RuleSpec:
    """A validated rule. Durations are seconds; kind-specific fields are None elsewhere."""

    name: str
    kind: str
    severity: str = Severity.MAJOR
    labels: dict[str, str] = field(default_factory=dict)
    summary: str = ""
    runbook: str = ""
    description: str = ""
    enabled: bool = True
    depends_on: tuple[str, ...] = ()
    # followup and match
    when: Matcher | None = None
    expect: Matcher | None = None
    key: KeySpec | None = None
    within_s: float | None = None
    lookback_s: float | None = None
    resolve_after_s: float | None = None
    # heartbeat
    source: str | None = None
    # threshold
    connector: str | None = None
    metric: str | None = None
    window_s: float | None = None
    op: str | None = None
    value: float | None = None
    for_s: float = 0.0

    def definition(self) -> dict[str, Any]:
        """Return the JSON stored in ``Rule.definition`` (read back by spec_from_definition)."""
        data = asdict(self)
        data["depends_on"] = list(self.depends_on)
        return data

    def to_yaml(self) -> dict[str, Any]:
        """Return the rules-file entry for this rule (what ``exportrules`` writes)."""
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == RuleKind.FOLLOWUP:
            out.update(when=self.when.to_yaml(), expect=self.expect.to_yaml())  # type: ignore[union-attr]
            out["key"] = self.key.to_yaml()  # type: ignore[union-attr]
            out["within"] = format_duration(self.within_s)  # type: ignore[arg-type]
            if self.lookback_s is not None:
                out["lookback"] = format_duration(self.lookback_s)
        elif self.kind == RuleKind.HEARTBEAT:
            out["source"] = self.source
            out["within"] = format_duration(self.within_s)  # type: ignore[arg-type]
        elif self.kind == RuleKind.THRESHOLD:
            out.update(connector=self.connector, metric=self.metric)
            out["window"] = format_duration(self.window_s)  # type: ignore[arg-type]
            out.update(op=self.op, value=self.value)
            if self.for_s:
                out["for"] = format_duration(self.for_s)
        else:
            out["when"] = self.when.to_yaml()  # type: ignore[union-attr]
            out["key"] = self.key.to_yaml()  # type: ignore[union-attr]
            if self.resolve_after_s is not None:
                out["resolve_after"] = format_duration(self.resolve_after_s)
        out["severity"] = self.severity
        for name in ("summary", "runbook", "description"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.depends_on:
            out["depends_on"] = list(self.depends_on)
        if not self.enabled:
            out["enabled"] = False
        return out

    @property
    def default_lookback_s(self) -> float:
        """How far back a follow-up rule looks for triggers (default: 1 day, or 2x within)."""
        return self.lookback_s or max(86400.0, 2 * (self.within_s or 0))


def spec_from_definition(definition: Mapping[str, Any]) -> RuleSpec:
    """Rebuild a RuleSpec from ``Rule.definition``."""
    data = dict(definition)
    for name in ("when", "expect"):
        if data.get(name) is not None:
            data[name] = Matcher(**data[name])
    if data.get("key") is not None:
        data["key"] = KeySpec(**data["key"])
    data["depends_on"] = tuple(data.get("depends_on") or ())
    return RuleSpec(**data)


def _duration(reader: ConfigReader, name: str, *, required: bool) -> float | None:
    value = reader.data.get(name)
    if value is None:
        if required:
            reader.fail(name, "is required")
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        reader.fail(name, str(exc))
        return None


def _matcher(reader: ConfigReader, name: str) -> Matcher | None:
    raw = reader.mapping(name, required=True)
    if raw is None:
        return None
    sub = ConfigReader(raw, errors=[])
    data: dict[str, Any] = {}
    for attribute in raw:
        if not isinstance(attribute, str):
            sub.fail(str(attribute), "must be a string")
        elif attribute.startswith("data.") and len(attribute) > 5 and all(attribute[5:].split(".")):
            value = raw[attribute]
            if isinstance(value, dict | list):
                sub.fail(attribute, "must be a plain value (string, number, boolean)")
            data[attribute[5:]] = value
        elif attribute not in MATCHER_ATTRIBUTES:
            sub.fail(
                attribute,
                f"unknown field (expected {', '.join(MATCHER_ATTRIBUTES)} or data.<path>)",
            )
    type_ = sub.string("type", required=True, max_length=255)
    strings = {n: sub.string(n, max_length=512) for n in ("source", "plant", "subject")}
    for error in sub.errors or []:
        reader.fail(f"{name}.{error.field}", error.message)
    if sub.errors or type_ is None:
        return None
    return Matcher(type=type_, data=data, **strings)


def validate_rule(raw: Any) -> RuleSpec:
    """Validate one rules-file entry; raise RuleError listing every problem (``field: message``)."""
    if not isinstance(raw, Mapping):
        raise RuleError([f"must be a mapping, not {type_name(raw)}"])
    errors: list[ConfigError] = []
    reader = ConfigReader(raw, errors=errors)
    name = reader.string("name", required=True, max_length=128)
    if name is not None and not NAME_PATTERN.match(name):
        reader.fail(
            "name", "must be lowercase letters, digits, '-' or '_' (like wo-not-acknowledged)"
        )
    kind = reader.choice("kind", [k.value for k in RuleKind], required=True)
    allowed = COMMON_FIELDS + (KIND_FIELDS[RuleKind(kind)] if kind else ())
    if kind:
        reader.reject_unknown(allowed)
    common = {
        "severity": reader.choice("severity", [s.value for s in Severity], default="major"),
        "labels": reader.string_map("labels") or {},
        "summary": reader.string("summary", default="", max_length=1000) or "",
        "runbook": reader.string("runbook", default="", max_length=1000) or "",
        "description": reader.string("description", default="", max_length=4000) or "",
        "depends_on": tuple(reader.string_list("depends_on") or ()),
    }
    enabled = raw.get("enabled", True)
    if not isinstance(enabled, bool):
        reader.fail("enabled", f"must be true or false, not {type_name(enabled)}")
    specific: dict[str, Any] = {}
    if kind in (RuleKind.FOLLOWUP, RuleKind.MATCH):
        specific["when"] = _matcher(reader, "when")
        key_text = reader.string("key", required=True)
        if key_text is not None:
            try:
                specific["key"] = KeySpec.parse(key_text)
            except ValueError as exc:
                reader.fail("key", str(exc))
    if kind == RuleKind.FOLLOWUP:
        specific["expect"] = _matcher(reader, "expect")
        specific["within_s"] = _duration(reader, "within", required=True)
        specific["lookback_s"] = _duration(reader, "lookback", required=False)
        if specific["lookback_s"] is not None and specific["within_s"] is not None:
            if specific["lookback_s"] <= specific["within_s"]:
                reader.fail("lookback", "must be longer than within")
    elif kind == RuleKind.MATCH:
        specific["resolve_after_s"] = _duration(reader, "resolve_after", required=False)
    elif kind == RuleKind.HEARTBEAT:
        specific["source"] = reader.string("source", required=True, max_length=128)
        specific["within_s"] = _duration(reader, "within", required=True)
    elif kind == RuleKind.THRESHOLD:
        specific["connector"] = reader.string("connector", required=True, max_length=128)
        specific["metric"] = reader.choice("metric", METRICS, required=True)
        specific["window_s"] = _duration(reader, "window", required=True)
        specific["op"] = reader.choice("op", OPERATORS, required=True)
        specific["value"] = reader.number("value", required=True)
        for_s = raw.get("for")
        specific["for_s"] = (
            0.0 if for_s in (None, 0, "0", "0s") else _duration(reader, "for", required=False)
        )
    if errors:
        raise RuleError([str(error) for error in errors])
    return RuleSpec(name=name, kind=kind, enabled=enabled, **common, **specific)  # type: ignore[arg-type]


def validate_rules_document(data: Any) -> list[RuleSpec]:
    """Validate a rules document (``{"rules": [...]}``); raise RuleError naming every problem."""
    if not isinstance(data, Mapping):
        raise RuleError(
            [f"the rules file must be a mapping with a 'rules' list, not {type_name(data)}"]
        )
    unknown = [str(k) for k in data if k != "rules"]
    problems = [f"{k}: unknown top-level field (expected 'rules')" for k in unknown]
    entries = data.get("rules")
    if not isinstance(entries, list):
        raise RuleError(problems + [f"rules: must be a list, not {type_name(entries)}"])
    specs: list[RuleSpec] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        label = f"rules[{index}]"
        if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
            label += f" ({entry['name']})"
        try:
            spec = validate_rule(entry)
        except RuleError as exc:
            problems.extend(f"{label}: {message}" for message in exc.messages)
            continue
        if spec.name in seen:
            problems.append(
                f"{label}: name: {spec.name!r} is already used by rules[{seen[spec.name]}]"
            )
            continue
        seen[spec.name] = index
        specs.append(spec)
    if problems:
        raise RuleError(problems)
    return specs
