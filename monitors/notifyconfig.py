"""The notification config file: contact points and routing policies (``loadnotifications``).

```yaml
contact_points:
  - name: oncall-email
    kind: email                 # email | webhook | slack | teams
    to: [oncall@example.com]
    send_resolved: true         # default true
  - name: mes-webhook
    kind: webhook
    url: http://127.0.0.1:9100/notify/mes
    secret_env: ANDON_MES_WEBHOOK_SECRET   # the variable holding the HMAC secret
routing:
  default:                      # alerts no policy takes; its timings are every policy's defaults
    contact_points: [oncall-email]
    group_by: [rule, plant]
    group_wait: 30s
    group_interval: 5m
    repeat_interval: 4h
  policies:                     # tried in order
    - name: p1-critical
      matchers: {plant: p1, severity: critical}   # or silence-style [{name, value, is_regex}]
      contact_points: [mes-webhook]
      continue: false
      escalate_after: 15m
      escalate_to: [oncall-email]
```

Loading is all or nothing: every problem is reported (naming the entry and
field) and nothing is written unless the whole file is valid. Contact points
are created or updated by name (others are kept); the routing policies are
replaced by the file's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import transaction

from integrations.yamlio import YamlError, parse_yaml
from monitors.models import ContactPoint, RoutingPolicy
from monitors.notifiers import notifier_class
from monitors.notifiers.base import NotifierConfigError
from monitors.rules import parse_duration
from monitors.silences import MuteError, parse_matchers

DEFAULT_NAME = "default"
DEFAULT_TIMINGS = {"group_wait": 30.0, "group_interval": 300.0, "repeat_interval": 4 * 3600.0}
DEFAULT_GROUP_BY = ["rule", "plant"]
CONTACT_FIELDS = ("name", "kind", "send_resolved", "enabled")
POLICY_FIELDS = (
    "name",
    "matchers",
    "contact_points",
    "continue",
    "group_by",
    "group_wait",
    "group_interval",
    "repeat_interval",
    "escalate_after",
    "escalate_to",
)


class NotificationConfigError(Exception):
    """A notification config was refused; ``messages`` names each entry and field at fault."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("\n".join(messages))
        self.messages = messages


@dataclass
class ContactSpec:
    name: str
    kind: str
    options: dict[str, Any]
    send_resolved: bool = True
    enabled: bool = True


@dataclass
class PolicySpec:
    name: str
    is_default: bool
    matchers: list[dict[str, Any]]
    contact_points: list[str]
    continue_matching: bool
    group_by: list[str]
    group_wait_s: float
    group_interval_s: float
    repeat_interval_s: float
    escalate_after_s: float | None
    escalate_to: list[str]


@dataclass
class NotificationConfig:
    contact_points: list[ContactSpec] = field(default_factory=list)
    policies: list[PolicySpec] = field(default_factory=list)


# --- Reading -----------------------------------------------------------------------------


def read_file(path: str | Path) -> NotificationConfig:
    """Read and validate a notification config file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotificationConfigError([f"{path}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NotificationConfigError([f"{path}: cannot be read ({exc})"]) from None
    return parse_text(text)


def parse_text(text: str) -> NotificationConfig:
    """Parse and validate a notification config document."""
    try:
        data = parse_yaml(text)
    except YamlError as exc:
        raise NotificationConfigError([str(exc)]) from None
    return validate(data)


def validate(data: Any) -> NotificationConfig:
    """Validate a parsed document; raise NotificationConfigError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise NotificationConfigError(
            ["the file must be a mapping with contact_points and routing"]
        )
    for key in data:
        if key not in ("contact_points", "routing"):
            problems.append(f"{key}: unknown section (expected contact_points, routing)")
    config = NotificationConfig()
    raw_points = data.get("contact_points") or []
    if not isinstance(raw_points, list):
        problems.append("contact_points: must be a list")
        raw_points = []
    for index, raw in enumerate(raw_points):
        spec = _contact(raw, f"contact_points[{index}]", problems)
        if spec is not None:
            if any(c.name == spec.name for c in config.contact_points):
                problems.append(f"contact_points[{index}].name: {spec.name!r} is defined twice")
            config.contact_points.append(spec)
    known = {c.name for c in config.contact_points} | set(
        ContactPoint.objects.values_list("name", flat=True)
    )
    routing = data.get("routing")
    if not isinstance(routing, Mapping):
        problems.append("routing: is required (with a default route)")
    else:
        for key in routing:
            if key not in ("default", "policies"):
                problems.append(f"routing.{key}: unknown field (expected default, policies)")
        default = routing.get("default")
        if not isinstance(default, Mapping):
            problems.append("routing.default: is required (where unmatched alerts go)")
            defaults = dict(DEFAULT_TIMINGS, group_by=DEFAULT_GROUP_BY)
        else:
            spec = _policy(default, "routing.default", problems, known, None, is_default=True)
            if spec is not None:
                config.policies.append(spec)
                defaults = {
                    "group_wait": spec.group_wait_s,
                    "group_interval": spec.group_interval_s,
                    "repeat_interval": spec.repeat_interval_s,
                    "group_by": spec.group_by,
                }
            else:
                defaults = dict(DEFAULT_TIMINGS, group_by=DEFAULT_GROUP_BY)
        raw_policies = routing.get("policies") or []
        if not isinstance(raw_policies, list):
            problems.append("routing.policies: must be a list")
            raw_policies = []
        for index, raw in enumerate(raw_policies):
            where = f"routing.policies[{index}]"
            spec = _policy(raw, where, problems, known, defaults)
            if spec is None:
                continue
            if any(p.name == spec.name for p in config.policies):
                problems.append(f"{where}.name: {spec.name!r} is used twice")
            config.policies.append(spec)
    if problems:
        raise NotificationConfigError(problems)
    return config


def _name(raw: Mapping[str, Any], where: str, problems: list[str]) -> str | None:
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(f"{where}.name: is required")
        return None
    if len(name) > 128 or not all(ch.isalnum() or ch in "-_" for ch in name):
        problems.append(f"{where}.name: use letters, digits, - and _ (at most 128), not {name!r}")
        return None
    return name


def _flag(raw: Mapping[str, Any], name: str, default: bool, where: str, problems: list[str]):
    value = raw.get(name, default)
    if not isinstance(value, bool):
        problems.append(f"{where}.{name}: must be true or false")
        return default
    return value


def _contact(raw: Any, where: str, problems: list[str]) -> ContactSpec | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a mapping")
        return None
    name = _name(raw, where, problems)
    where = f"contact_points[{name}]" if name else where
    kind = raw.get("kind")
    try:
        cls = notifier_class(str(kind))
    except NotifierConfigError as exc:
        problems.append(f"{where}.{exc}")
        return None
    options = {k: v for k, v in raw.items() if k not in CONTACT_FIELDS}
    try:
        cleaned = cls.clean(options)
    except NotifierConfigError as exc:
        problems.append(f"{where}.{exc}" if exc.field else f"{where}: {exc}")
        return None
    send_resolved = _flag(raw, "send_resolved", True, where, problems)
    enabled = _flag(raw, "enabled", True, where, problems)
    if name is None:
        return None
    return ContactSpec(name, str(kind), cleaned, send_resolved, enabled)


def _duration(raw: Mapping[str, Any], name: str, default: float | None, where: str, problems):
    value = raw.get(name)
    if value is None:
        return default
    if value in (0, "0", "0s") and name == "group_wait":
        return 0.0
    try:
        return parse_duration(value)
    except ValueError as exc:
        problems.append(f"{where}.{name}: {exc}")
        return default


def _names(raw: Mapping[str, Any], name: str, where: str, problems, known: set[str]) -> list[str]:
    value = raw.get(name) or []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}.{name}: must be a list of contact point names")
        return []
    for item in value:
        if item not in known:
            problems.append(f"{where}.{name}: no contact point named {item!r}")
    return list(dict.fromkeys(value))


def _matchers(raw: Any, where: str, problems: list[str]) -> list[dict[str, Any]]:
    if raw is None or raw == [] or raw == {}:
        return []
    if isinstance(raw, Mapping):
        raw = [{"name": str(k), "value": v} for k, v in raw.items()]
    try:
        return [m.as_json() for m in parse_matchers(raw)]
    except MuteError as exc:
        problems.append(f"{where}.{exc}")
        return []


def _policy(
    raw: Any,
    where: str,
    problems: list[str],
    known: set[str],
    defaults: Mapping[str, Any] | None,
    is_default: bool = False,
) -> PolicySpec | None:
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: must be a mapping")
        return None
    allowed = (
        POLICY_FIELDS
        if not is_default
        else tuple(f for f in POLICY_FIELDS if f not in ("matchers", "continue"))
    )
    for key in raw:
        if key not in allowed:
            problems.append(f"{where}.{key}: unknown field (expected one of: {', '.join(allowed)})")
    if is_default:
        name: str | None = str(raw.get("name") or DEFAULT_NAME)
    else:
        name = _name(raw, where, problems)
    base = defaults or dict(DEFAULT_TIMINGS, group_by=DEFAULT_GROUP_BY)
    matchers = [] if is_default else _matchers(raw.get("matchers"), where, problems)
    if not is_default and not matchers:
        problems.append(f"{where}.matchers: at least one matcher is required")
    contact_points = _names(raw, "contact_points", where, problems, known)
    if not contact_points:
        problems.append(f"{where}.contact_points: at least one contact point is required")
    group_by = raw.get("group_by", base["group_by"])
    if not isinstance(group_by, list) or not all(isinstance(g, str) and g for g in group_by):
        problems.append(f"{where}.group_by: must be a list of label names (or ['...'])")
        group_by = list(base["group_by"])
    escalate_after = _duration(raw, "escalate_after", None, where, problems)
    escalate_to = _names(raw, "escalate_to", where, problems, known)
    if (escalate_after is None) != (not escalate_to):
        problems.append(f"{where}.escalate_after: give escalate_after and escalate_to together")
    spec = PolicySpec(
        name=name or "",
        is_default=is_default,
        matchers=matchers,
        contact_points=contact_points,
        continue_matching=False if is_default else _flag(raw, "continue", False, where, problems),
        group_by=list(group_by),
        group_wait_s=_duration(raw, "group_wait", base["group_wait"], where, problems),
        group_interval_s=_duration(raw, "group_interval", base["group_interval"], where, problems),
        repeat_interval_s=_duration(
            raw, "repeat_interval", base["repeat_interval"], where, problems
        ),
        escalate_after_s=escalate_after,
        escalate_to=escalate_to,
    )
    return spec if name else None


# --- Writing -----------------------------------------------------------------------------


@dataclass
class ApplyReport:
    """What loading did, for the command's output."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    removed_policies: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"contact points: {len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged",
            f"routing policies: {', '.join(self.policies) or 'none'}",
        ]
        if self.created:
            out.append(f"  created: {', '.join(self.created)}")
        if self.updated:
            out.append(f"  updated: {', '.join(self.updated)}")
        if self.removed_policies:
            out.append(f"  policies removed: {', '.join(self.removed_policies)}")
        return out


@transaction.atomic
def apply(config: NotificationConfig) -> ApplyReport:
    """Write a validated config: upsert contact points, replace the routing policies."""
    report = ApplyReport()
    points: dict[str, ContactPoint] = {cp.name: cp for cp in ContactPoint.objects.all()}
    for spec in config.contact_points:
        values = {
            "kind": spec.kind,
            "options": spec.options,
            "send_resolved": spec.send_resolved,
            "enabled": spec.enabled,
        }
        current = points.get(spec.name)
        if current is None:
            points[spec.name] = ContactPoint.objects.create(name=spec.name, **values)
            report.created.append(spec.name)
        elif any(getattr(current, k) != v for k, v in values.items()):
            for k, v in values.items():
                setattr(current, k, v)
            current.save()
            report.updated.append(spec.name)
        else:
            report.unchanged.append(spec.name)
    keep = [p.name for p in config.policies]
    stale = RoutingPolicy.objects.exclude(name__in=keep)
    report.removed_policies = sorted(stale.values_list("name", flat=True))
    stale.delete()
    # The default moves last; clear the flag first so the one-default constraint holds midway.
    RoutingPolicy.objects.filter(is_default=True).exclude(
        name__in=[p.name for p in config.policies if p.is_default]
    ).update(is_default=False)
    for position, spec in enumerate(config.policies):
        policy, _ = RoutingPolicy.objects.update_or_create(
            name=spec.name,
            defaults={
                "position": position,
                "is_default": spec.is_default,
                "matchers": spec.matchers,
                "continue_matching": spec.continue_matching,
                "group_by": spec.group_by,
                "group_wait_s": spec.group_wait_s,
                "group_interval_s": spec.group_interval_s,
                "repeat_interval_s": spec.repeat_interval_s,
                "escalate_after_s": spec.escalate_after_s,
            },
        )
        policy.contact_points.set([points[n] for n in spec.contact_points])
        policy.escalate_to.set([points[n] for n in spec.escalate_to])
        report.policies.append(spec.name)
    return report
