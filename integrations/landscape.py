"""Loads the plant landscape (plants, systems, connectors) from a YAML document.

The whole document is validated first, references included; only a document
without a single error is written, in one transaction, so a bad file changes
nothing. Entries are created or updated by key and the file is declarative: a
field it leaves out takes its default. Entries in the database that the file
does not mention are left alone, and a ``discovered`` connector the file
declares becomes ``active``.

The format is CONTRACT's "Landscape file"; beyond it, a plant may name its
``timezone`` (IANA, default UTC), and a connector may list ``sensitive_fields``:
dotted paths into its JSON payload (``customer.email``, ``lines.*.price``)
masked for non-admins.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import models, transaction
from django.db.models import Q

from integrations.adapters import (
    ConfigError,
    ConfigReader,
    type_name,
    validate_adapter_config,
    validate_replay_policy,
)
from integrations.models import (
    Connector,
    ConnectorPattern,
    ConnectorStatus,
    Criticality,
    Plant,
    System,
    SystemKind,
)
from integrations.yamlio import YamlError, parse_yaml

SECTIONS = ("plants", "systems", "connectors")
PLANT_FIELDS = ("key", "name", "timezone")
SYSTEM_FIELDS = ("key", "name", "kind", "plant", "sources")
CONNECTOR_FIELDS = (
    "key",
    "name",
    "source",
    "target",
    "flow",
    "pattern",
    "criticality",
    "latency_slo_ms",
    "adapter",
    "replay",
    "sensitive_fields",
)
_TOP_LEVEL = "a mapping with plants, systems and/or connectors"
_SLUG = re.compile(r"^[-a-zA-Z0-9_]+\Z")
_PG_INT_MAX = 2_147_483_647


class LandscapeError(Exception):
    """A landscape document was refused; ``messages`` names each entry and field at fault."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


# --- Report ------------------------------------------------------------------------------


@dataclass
class Tally:
    """The keys created, updated and left unchanged of one kind of entry."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    def summary(self, kind: str) -> str:
        """Return one line of counts, e.g. ``plants: 1 created, 0 updated, 1 unchanged``."""
        return (
            f"{kind}: {len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged"
        )


@dataclass
class LandscapeReport:
    """What loading a landscape did (or, on a dry run, would do)."""

    plants: Tally = field(default_factory=Tally)
    systems: Tally = field(default_factory=Tally)
    connectors: Tally = field(default_factory=Tally)
    # Discovered connectors that the file declared, now active.
    promoted: list[str] = field(default_factory=list)
    # Connectors outside the file whose plant followed a system moved to another plant.
    replanted: list[str] = field(default_factory=list)
    dry_run: bool = False

    @property
    def changed(self) -> bool:
        """Return whether anything was (or would be) written."""
        tallies = (self.plants, self.systems, self.connectors)
        return bool(self.replanted) or any(t.created or t.updated for t in tallies)

    def lines(self) -> list[str]:
        """Return the human summary: counts per kind, then the keys that changed."""
        out = []
        for kind in SECTIONS:
            tally: Tally = getattr(self, kind)
            out.append(tally.summary(kind))
            if tally.updated:
                out.append(f"  updated: {', '.join(tally.updated)}")
        if self.promoted:
            out.append(f"promoted from discovered to active: {', '.join(self.promoted)}")
        if self.replanted:
            out.append(f"moved with their system to another plant: {', '.join(self.replanted)}")
        if self.dry_run:
            out.append("dry run: nothing was written")
        return out


# --- Parsing -----------------------------------------------------------------------------


def parse_landscape(text: str) -> Any:
    """Parse a landscape YAML document; raise LandscapeError naming the line of a syntax error."""
    try:
        return parse_yaml(text)
    except YamlError as exc:
        raise LandscapeError([str(exc)]) from None


def read_landscape_file(path: str | Path) -> Any:
    """Read and parse a landscape file; raise LandscapeError when it cannot be read or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LandscapeError([f"{path}: no such file"]) from None
    except UnicodeDecodeError:
        raise LandscapeError([f"{path}: not UTF-8 text"]) from None
    except OSError as exc:
        raise LandscapeError([f"{path}: cannot be read ({exc.strerror})"]) from None
    return parse_landscape(text)


# --- Validation --------------------------------------------------------------------------


def validate_sensitive_fields(value: Any) -> list[str]:
    """Return a connector's sensitive payload paths, or raise ConfigError naming the bad one.

    A path is dot-separated (``customer.email``, ``lines.*.price``), optionally
    starting with ``$.``.
    """
    paths = ConfigReader({"sensitive_fields": value}).string_list("sensitive_fields") or []
    for index, path in enumerate(paths):
        body = path.removeprefix("$.")
        if any(ch.isspace() for ch in path) or any(not part for part in body.split(".")):
            raise ConfigError(
                f"sensitive_fields[{index}]",
                f"must be a dotted path such as customer.email, not {path!r}",
            )
    return paths


@dataclass
class _Spec:
    """One entry as read: its key, its field values, and the keys it refers to."""

    key: str
    values: dict[str, Any]
    refs: dict[str, str | None] = field(default_factory=dict)
    label: str = ""
    index: int = 0


@dataclass
class _Plan:
    plants: list[_Spec] = field(default_factory=list)
    systems: list[_Spec] = field(default_factory=list)
    connectors: list[_Spec] = field(default_factory=list)


class _Problems:
    """Collects messages, kept in document order (section, then entry) for the report."""

    def __init__(self) -> None:
        self._items: list[tuple[int, int, int, str]] = []

    def add(self, message: str, section: str | None = None, index: int = -1) -> None:
        rank = SECTIONS.index(section) if section else -1
        self._items.append((rank, index, len(self._items), message))

    def __bool__(self) -> bool:
        return bool(self._items)

    def messages(self) -> list[str]:
        return [item[3] for item in sorted(self._items)]


class _Entry:
    """One entry of a section: reads its fields and reports problems under its label."""

    def __init__(self, section: str, index: int, data: Mapping[str, Any], allowed: tuple[str, ...]):
        self.section = section
        self.index = index
        key = data.get("key")
        self.label = f"{section}[{index}]" + (f" ({key})" if isinstance(key, str) and key else "")
        self.errors: list[ConfigError] = []
        self.read = ConfigReader(data, errors=self.errors)
        self.read.reject_unknown(allowed)

    def fail(self, field_name: str, message: str) -> None:
        self.errors.append(ConfigError(field_name, message))

    def key(self, max_length: int, slug: bool) -> str | None:
        key = self.read.string("key", required=True, max_length=max_length)
        if key is None:
            return None
        if slug and not _SLUG.match(key):
            self.fail("key", f"must contain only letters, digits, '-' and '_', not {key!r}")
        elif not slug and any(ch.isspace() or not ch.isprintable() for ch in key):
            self.fail("key", f"must not contain blanks, not {key!r}")
        return key

    def report(self, problems: _Problems) -> bool:
        """Move this entry's problems to ``problems``; return whether it had none."""
        for error in self.errors:
            problems.add(f"{self.label}: {error}", self.section, self.index)
        return not self.errors


def _section(data: Mapping[str, Any], section: str, problems: _Problems) -> list[tuple[int, Any]]:
    raw = data.get(section)
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.add(f"{section}: must be a list of entries, not {type_name(raw)}", section)
        return []
    entries = []
    for index, item in enumerate(raw):
        if isinstance(item, Mapping):
            entries.append((index, item))
        else:
            problems.add(
                f"{section}[{index}]: must be a mapping, not {type_name(item)}", section, index
            )
    return entries


def _read_plant(entry: _Entry) -> _Spec:
    key = entry.key(max_length=64, slug=True)
    name = entry.read.string("name", required=True, max_length=200)
    tz = entry.read.string("timezone", default="UTC", max_length=64)
    if tz is not None and not _known_timezone(tz):
        entry.fail("timezone", f"unknown time zone {tz!r} (use an IANA name like Europe/Berlin)")
    return _Spec(key or "", {"name": name, "timezone": tz})


def _read_system(entry: _Entry) -> _Spec:
    key = entry.key(max_length=64, slug=True)
    name = entry.read.string("name", required=True, max_length=200)
    kind = entry.read.choice("kind", SystemKind.values, required=True)
    plant = entry.read.string("plant", max_length=64)
    sources = entry.read.string_list("sources")
    for index, source in enumerate(sources or []):
        if len(source) > 512:
            entry.fail(f"sources[{index}]", "must be at most 512 characters long")
    return _Spec(key or "", {"name": name, "kind": kind, "sources": sources}, {"plant": plant})


def _read_connector(entry: _Entry) -> _Spec:
    read = entry.read
    key = entry.key(max_length=128, slug=False)
    values: dict[str, Any] = {
        "name": read.string("name", default="", max_length=200),
        "flow": read.string("flow", default="", max_length=64),
        "pattern": read.choice("pattern", ConnectorPattern.values, default=ConnectorPattern.API),
        "criticality": read.choice("criticality", Criticality.values, default=Criticality.NORMAL),
        "latency_slo_ms": read.integer("latency_slo_ms", minimum=1, maximum=_PG_INT_MAX),
        "adapter": {},
        "replay_policy": {},
        "sensitive_fields": [],
    }
    refs = {
        "source": read.string("source", required=True, max_length=64),
        "target": read.string("target", required=True, max_length=64),
    }
    adapter = read.mapping("adapter")
    if adapter is not None:
        try:
            values["adapter"] = validate_adapter_config(adapter)
        except ConfigError as exc:
            entry.errors.append(exc.under("adapter"))
    replay = read.mapping("replay")
    try:
        values["replay_policy"] = validate_replay_policy(replay or {})
    except ConfigError as exc:
        entry.errors.append(exc.under("replay"))
    try:
        values["sensitive_fields"] = validate_sensitive_fields(read.data.get("sensitive_fields"))
    except ConfigError as exc:
        entry.errors.append(exc)
    return _Spec(key or "", values, refs)


def _known_timezone(name: str) -> bool:
    if name == "UTC":
        return True  # known even where the system has no time zone database
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


_READERS = {
    "plants": (PLANT_FIELDS, _read_plant),
    "systems": (SYSTEM_FIELDS, _read_system),
    "connectors": (CONNECTOR_FIELDS, _read_connector),
}


def validate_landscape(data: Any) -> _Plan:
    """Check a parsed landscape document against itself and the database.

    Returns what to write; raises LandscapeError with every problem found, each
    naming its entry and field (``connectors[2] (erp-to-mes-orders): adapter.url: ...``).
    """
    if data is None:
        raise LandscapeError([f"the file is empty: expected {_TOP_LEVEL}"])
    if not isinstance(data, Mapping):
        raise LandscapeError([f"the top level must be {_TOP_LEVEL}, not {type_name(data)}"])
    problems = _Problems()
    for key in data:
        if key not in SECTIONS:
            problems.add(f"{key}: unknown top-level key (expected one of: {', '.join(SECTIONS)})")

    plan = _Plan()
    read: dict[str, list[_Spec]] = {}  # every entry with a key, valid or not, for references
    declared: dict[str, dict[str, int]] = {}  # section -> key -> index of first declaration
    for section in SECTIONS:
        allowed, read_entry = _READERS[section]
        first_index = declared.setdefault(section, {})
        for index, item in _section(data, section, problems):
            entry = _Entry(section, index, item, allowed)
            spec = read_entry(entry)
            spec.label, spec.index = entry.label, index
            if spec.key in first_index:
                entry.fail("key", f"duplicate of {section}[{first_index[spec.key]}]")
            elif spec.key:
                first_index[spec.key] = index
                read.setdefault(section, []).append(spec)
            if entry.report(problems):
                getattr(plan, section).append(spec)

    _check_references(read, declared, problems)
    _check_source_claims(plan.systems, declared, problems)
    if problems:
        raise LandscapeError(problems.messages())
    return plan


def _check_references(
    read: dict[str, list[_Spec]], declared: dict[str, dict[str, int]], problems: _Problems
) -> None:
    """Report references to plants and systems neither in the file nor in the database."""
    checks = (
        ("systems", ("plant",), Plant, "plants"),
        ("connectors", ("source", "target"), System, "systems"),
    )
    for section, ref_names, model, target_section in checks:
        specs = read.get(section, [])
        wanted = {spec.refs[n] for spec in specs for n in ref_names} - {None}
        missing = wanted - set(declared[target_section])
        known = set(model.objects.filter(key__in=missing).values_list("key", flat=True))
        for spec in specs:
            for name in ref_names:
                ref = spec.refs[name]
                if ref in missing and ref not in known:
                    problems.add(
                        f"{spec.label}: {name}: unknown {model.__name__.lower()} {ref!r} "
                        "(not in this file nor in the database)",
                        section,
                        spec.index,
                    )


def _check_source_claims(
    systems: list[_Spec], declared: dict[str, dict[str, int]], problems: _Problems
) -> None:
    """Report a source string claimed by two systems: attribution would depend on their order."""
    claims: dict[str, str] = {}
    others = System.objects.exclude(key__in=list(declared["systems"]))
    for key, sources in others.values_list("key", "sources"):
        for source in sources or [key]:
            claims.setdefault(str(source), key)
    for spec in systems:
        for source in spec.values["sources"] or [spec.key]:
            owner = claims.setdefault(source, spec.key)
            if owner != spec.key:
                problems.add(
                    f"{spec.label}: sources: {source!r} already belongs to system {owner!r}",
                    "systems",
                    spec.index,
                )


# --- Writing -----------------------------------------------------------------------------


def load_landscape(data: Any, *, dry_run: bool = False) -> LandscapeReport:
    """Validate a parsed landscape document and write it in one transaction.

    Raises LandscapeError, having written nothing, when anything is wrong. A dry
    run reports what would change and rolls everything back.
    """
    with transaction.atomic():
        plan = validate_landscape(data)
        report = _write(plan)
        report.dry_run = dry_run
        if dry_run:
            transaction.set_rollback(True)
    return report


def _write(plan: _Plan) -> LandscapeReport:
    report = LandscapeReport()
    existing_plants = Plant.objects.in_bulk([s.key for s in plan.plants], field_name="key")
    for spec in plan.plants:
        _upsert(Plant, existing_plants.get(spec.key), spec.key, spec.values, report.plants)

    plant_keys = {s.refs["plant"] for s in plan.systems} - {None}
    plants = Plant.objects.in_bulk(list(plant_keys), field_name="key")
    existing_systems = System.objects.select_related("plant").in_bulk(
        [s.key for s in plan.systems], field_name="key"
    )
    moved: set[int] = set()
    for spec in plan.systems:
        plant_key = spec.refs["plant"]
        values = {**spec.values, "plant": plants[plant_key] if plant_key else None}
        before = existing_systems.get(spec.key)
        old_plant_id = before.plant_id if before else None
        system = _upsert(System, before, spec.key, values, report.systems)
        if before is not None and system.plant_id != old_plant_id:
            moved.add(system.pk)

    system_keys = {s.refs[n] for s in plan.connectors for n in ("source", "target")}
    systems = System.objects.in_bulk(list(system_keys), field_name="key")
    existing_connectors = Connector.objects.select_related("source", "target").in_bulk(
        [s.key for s in plan.connectors], field_name="key"
    )
    for spec in plan.connectors:
        values = {
            **spec.values,
            "status": ConnectorStatus.ACTIVE,
            "source": systems[spec.refs["source"]],
            "target": systems[spec.refs["target"]],
        }
        before = existing_connectors.get(spec.key)
        if before is not None and before.status == ConnectorStatus.DISCOVERED:
            report.promoted.append(spec.key)
        _upsert(Connector, before, spec.key, values, report.connectors)

    # Connectors the file does not mention still follow their system's plant.
    if moved:
        declared = [s.key for s in plan.connectors]
        touching = Connector.objects.filter(Q(source_id__in=moved) | Q(target_id__in=moved))
        for connector in touching.exclude(key__in=declared).select_related("source", "target"):
            if connector.derived_plant_id() != connector.plant_id:
                connector.save(update_fields=["plant"])
                report.replanted.append(connector.key)
    return report


def _upsert(
    model: type[models.Model],
    existing: Any,
    key: str,
    values: dict[str, Any],
    tally: Tally,
) -> Any:
    """Create the entry, or update the fields that differ; record which in ``tally``."""
    if existing is None:
        obj = model(key=key, **values)
        obj.save()
        tally.created.append(key)
        return obj
    changed = [name for name, value in values.items() if getattr(existing, name) != value]
    for name in changed:
        setattr(existing, name, values[name])
    if isinstance(existing, Connector) and existing.derived_plant_id() != existing.plant_id:
        changed.append("plant")
    if changed:
        existing.save()
        tally.updated.append(key)
    else:
        tally.unchanged.append(key)
    return existing
