"""Rules as code: apply validated rule specs to the database with an audit trail, export them.

A rules file is validated whole (``monitors.rules``) before anything is written;
:func:`apply_specs` then creates or updates rules by name in one transaction. A
rule whose definition is unchanged is not touched (no version bump, no audit
row), so loading the same file twice, or an export of the database, changes
nothing. Every change that is written records a :class:`RuleChange` with the
actor and the definition before and after.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from django.db import transaction
from django.utils import timezone

from integrations.models import Connector, System
from integrations.yamlio import YamlError, parse_yaml
from monitors.models import Rule, RuleChange
from monitors.rules import (
    RuleError,
    RuleSpec,
    spec_from_definition,
    validate_rule,
    validate_rules_document,
)

# Names the console's URLs use beside /rules/<name>/: a rule so named could not be edited.
RESERVED_NAMES = frozenset({"new"})

EXPORT_HEADER = (
    '# Andon alert rules (CONTRACT "Rules file").\n'
    "# Load with: python manage.py loadrules FILE.yaml\n"
)


# --- Reading -----------------------------------------------------------------------------


def parse_rules_text(text: str) -> list[RuleSpec]:
    """Parse and validate a rules document; raise RuleError naming every problem."""
    try:
        data = parse_yaml(text)
    except YamlError as exc:
        raise RuleError([str(exc)]) from None
    specs = validate_rules_document(data)
    check_names(specs)
    return specs


def read_rules_file(path: str | Path) -> list[RuleSpec]:
    """Read, parse and validate a rules file; raise RuleError when it cannot be used."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RuleError([f"{path}: no such file"]) from None
    except UnicodeDecodeError:
        raise RuleError([f"{path}: not UTF-8 text"]) from None
    except OSError as exc:
        raise RuleError([f"{path}: cannot be read ({exc.strerror})"]) from None
    return parse_rules_text(text)


def parse_rule_entry(text: str) -> RuleSpec:
    """Parse and validate one rule given as YAML (a single entry, or a document with one rule).

    Raise RuleError with ``field: message`` lines (the editor shows them beside the text).
    """
    try:
        data = parse_yaml(text)
    except YamlError as exc:
        raise RuleError([str(exc)]) from None
    if isinstance(data, dict) and set(data) == {"rules"} and isinstance(data["rules"], list):
        if len(data["rules"]) != 1:
            raise RuleError([f"rules: must hold exactly one rule here, not {len(data['rules'])}"])
        data = data["rules"][0]
    spec = validate_rule(data)
    check_names([spec], single=True)
    return spec


def check_names(specs: Sequence[RuleSpec], *, single: bool = False) -> None:
    """Refuse names the console reserves for its own pages (``/rules/new/``).

    Messages name the entry (``rules[I] (name): name: ...``), or just the field for
    a ``single`` rule (the editor).
    """
    problems = []
    for index, spec in enumerate(specs):
        if spec.name in RESERVED_NAMES:
            where = "name" if single else f"rules[{index}] ({spec.name}): name"
            problems.append(f"{where}: {spec.name!r} is reserved by the console; choose another")
    if problems:
        raise RuleError(problems)


# --- Writing -----------------------------------------------------------------------------


@dataclass
class ApplyReport:
    """What applying rule specs did: rule names created, updated, unchanged and pruned."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    # References the landscape does not (yet) hold: loaded anyway, since order may differ.
    warnings: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Return whether anything was written."""
        return bool(self.created or self.updated or self.disabled)

    def lines(self) -> list[str]:
        """Return the human summary: counts, then the names that changed."""
        out = [
            f"rules: {len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged"
        ]
        if self.created:
            out.append(f"  created: {', '.join(self.created)}")
        if self.updated:
            out.append(f"  updated: {', '.join(self.updated)}")
        if self.disabled:
            out.append(f"  disabled (not in the file): {', '.join(self.disabled)}")
        out.extend(f"warning: {warning}" for warning in self.warnings)
        return out


def unknown_references(specs: Sequence[RuleSpec]) -> list[str]:
    """Return a warning per system or connector key a rule names that the landscape lacks."""
    systems = set(System.objects.values_list("key", flat=True))
    connectors = set(Connector.objects.values_list("key", flat=True))
    warnings = []
    for spec in specs:
        if spec.connector is not None and spec.connector not in connectors:
            warnings.append(f"{spec.name}: connector: {spec.connector!r} is not in the landscape")
        if spec.source is not None and spec.source not in systems | connectors:
            warnings.append(
                f"{spec.name}: source: {spec.source!r} is no system or connector of the landscape"
                " (taken as an event source or span service name)"
            )
        for key in spec.depends_on:
            if key not in systems | connectors:
                warnings.append(f"{spec.name}: depends_on: {key!r} is not in the landscape")
    return warnings


def _normalised(definition: Any) -> dict[str, Any] | None:
    """Return a stored definition as a freshly validated one would be, None when unreadable."""
    try:
        return spec_from_definition(definition).definition()
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def _columns(spec: RuleSpec) -> dict[str, Any]:
    return {
        "kind": spec.kind,
        "severity": spec.severity,
        "enabled": spec.enabled,
        "definition": spec.definition(),
    }


def _action(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """Name an update: enable/disable when only that flipped, else update."""
    if before is not None and {**before, "enabled": after["enabled"]} == after:
        return RuleChange.Action.ENABLE if after["enabled"] else RuleChange.Action.DISABLE
    return RuleChange.Action.UPDATE


def _write(rule: Rule | None, spec: RuleSpec, actor: str) -> tuple[Rule, str | None]:
    """Create or update one rule from ``spec``; return it and the audited action (None: no-op)."""
    after = spec.definition()
    before: dict[str, Any] | None = None
    if rule is None:
        rule = Rule.objects.create(name=spec.name, version=1, **_columns(spec))
        action = RuleChange.Action.CREATE
    else:
        normalised = _normalised(rule.definition)
        if normalised == after and rule.kind == spec.kind and rule.enabled == spec.enabled:
            return rule, None
        # An unreadable stored definition (an older format) is kept as it was, for the record.
        before = normalised if normalised is not None else rule.definition
        action = _action(normalised, after)
        for name, value in _columns(spec).items():
            setattr(rule, name, value)
        rule.version += 1
        rule.save()
    RuleChange.objects.create(
        rule=rule,
        rule_name=rule.name,
        action=action,
        actor=actor[:150] or "system",
        before=before,
        after=after,
    )
    return rule, action


@transaction.atomic
def apply_specs(specs: Iterable[RuleSpec], actor: str, *, prune: bool = False) -> ApplyReport:
    """Create or update rules by name in one transaction, auditing each change.

    Rules in the database that ``specs`` do not name are left alone, or disabled
    (audited) with ``prune``. Unchanged rules are not touched.
    """
    specs = list(specs)
    check_names(specs)
    report = ApplyReport(warnings=unknown_references(specs))
    existing = {
        rule.name: rule
        for rule in Rule.objects.select_for_update().filter(name__in=[s.name for s in specs])
    }
    for spec in specs:
        _, action = _write(existing.get(spec.name), spec, actor)
        if action is None:
            report.unchanged.append(spec.name)
        elif action == RuleChange.Action.CREATE:
            report.created.append(spec.name)
        else:
            report.updated.append(spec.name)
    if prune:
        named = {spec.name for spec in specs}
        for rule in Rule.objects.select_for_update().filter(enabled=True).exclude(name__in=named):
            set_enabled(rule, False, actor)
            report.disabled.append(rule.name)
    return report


class StaleRuleError(Exception):
    """The rule changed since the editor loaded it (optimistic locking by version)."""


@transaction.atomic
def save_rule(
    spec: RuleSpec,
    actor: str,
    *,
    name: str | None = None,
    expected_version: int | None = None,
) -> tuple[Rule, str | None]:
    """Create (``name`` None) or update the rule ``name`` from an editor; audit the change.

    Return the rule and the recorded action (None when nothing changed). Raise
    RuleError naming the field when the name is taken or would change, and
    StaleRuleError when ``expected_version`` is not the stored version.
    """
    check_names([spec], single=True)
    if name is None:
        if Rule.objects.filter(name=spec.name).exists():
            raise RuleError([f"name: a rule named {spec.name!r} already exists; edit it instead"])
        return _write(None, spec, actor)
    rule = Rule.objects.select_for_update().get(name=name)
    if spec.name != name:
        raise RuleError(
            [
                f"name: must stay {name!r} (alerts are identified by rule name; to rename, "
                "create a new rule and disable this one)"
            ]
        )
    if expected_version is not None and rule.version != expected_version:
        last = rule.changes.first()
        who = f" by {last.actor}" if last else ""
        raise StaleRuleError(
            f"this rule was changed{who} while you edited it (now version {rule.version})"
        )
    return _write(rule, spec, actor)


@transaction.atomic
def set_enabled(rule: Rule, enabled: bool, actor: str) -> bool:
    """Enable or disable a rule without deleting it (audited); return whether it changed."""
    rule = Rule.objects.select_for_update().get(pk=rule.pk)
    if rule.enabled == enabled and rule.definition.get("enabled", True) == enabled:
        return False
    before = _normalised(rule.definition) or dict(rule.definition)
    after = {**before, "enabled": enabled}
    rule.enabled = enabled
    rule.definition = after
    rule.version += 1
    rule.save(update_fields=["enabled", "definition", "version", "updated_at"])
    RuleChange.objects.create(
        rule=rule,
        rule_name=rule.name,
        action=RuleChange.Action.ENABLE if enabled else RuleChange.Action.DISABLE,
        actor=actor[:150] or "system",
        before=before,
        after=after,
    )
    return True


# --- Export ------------------------------------------------------------------------------


def rule_spec(rule: Rule) -> RuleSpec:
    """Return a stored rule's spec; the ``enabled`` column wins over the definition."""
    spec = spec_from_definition(rule.definition)
    return replace(spec, enabled=rule.enabled) if spec.enabled != rule.enabled else spec


class _Dumper(yaml.SafeDumper):
    """Indent lists under their key (``rules:\n  - name: ...``), as the CONTRACT examples do."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def dump_yaml(data: Any) -> str:
    """Return YAML in the rules-file style (block style, keys in the order given)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def entry_yaml(spec: RuleSpec) -> str:
    """Return one rule as the YAML entry the editor shows."""
    return dump_yaml(spec.to_yaml())


def export_yaml(rules: Iterable[Rule] | None = None) -> str:
    """Return rules (default: all, by name) as a rules file that ``loadrules`` reads back."""
    rules = Rule.objects.order_by("name") if rules is None else rules
    entries = [rule_spec(rule).to_yaml() for rule in rules]
    stamp = timezone.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{EXPORT_HEADER}# Exported {stamp}.\n" + dump_yaml({"rules": entries})


def definition_yaml(definition: dict[str, Any] | None) -> str:
    """Return a stored definition as its YAML entry (empty for none); raw JSON if unreadable."""
    if definition is None:
        return ""
    try:
        return entry_yaml(spec_from_definition(definition))
    except (TypeError, ValueError, KeyError, AttributeError):
        return dump_yaml(definition)


def change_diff(change: RuleChange) -> list[str]:
    """Return the unified diff (YAML lines) between a change's before and after."""
    before = definition_yaml(change.before).splitlines()
    after = definition_yaml(change.after).splitlines()
    return list(difflib.unified_diff(before, after, "before", "after", lineterm="", n=2))[2:]
