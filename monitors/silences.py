"""What mutes an alert at a given moment: silences and maintenance windows.

Muting is decided at read time and never stored on the alert, so a silence that
starts, ends or is expired early changes what every page, API answer and
notification sees at once, without touching the alerts.

- A **silence** mutes an alert while it is active (``starts_at <= now < ends_at``
  and not expired) when ALL its matchers match the alert's labels. The labels are
  the rule's labels plus ``rule``, ``key``, ``severity``, ``kind`` and ``plant``
  (the plant's key). A matcher compares one label by equality or, with
  ``is_regex``, by a full-match regular expression; an absent label reads as the
  empty string (as in Alertmanager).
- A **maintenance window** mutes every alert of its plant while it is active:
  one-off (``starts_at <= now < ends_at``) or weekly recurring (``weekdays``,
  ``start_time`` in the plant's time zone, ``duration_minutes`` of elapsed time),
  so a window may cross midnight and keeps its local start time across DST.

:func:`active_mutes` loads both once (two queries); ``mutes.silenced(alert)``
then answers for any number of alerts without further queries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db.models import Q

from monitors.models import Alert, AlertState, MaintenanceWindow, Silence

# Labels every alert has besides its rule's own labels (the CONTRACT's matcher names).
BUILTIN_LABELS = ("rule", "key", "plant", "severity", "kind")
MAX_NAME_LENGTH = 128
MAX_VALUE_LENGTH = 1000
# A weekly window longer than a week would overlap itself.
MAX_WINDOW_MINUTES = 7 * 24 * 60


class MuteError(ValueError):
    """A silence or maintenance window is invalid or not allowed; names the field.

    ``status`` is what the API answers: 400 for bad input, 403 for a plant the
    caller may not act on.
    """

    def __init__(self, field_name: str, message: str, status: int = 400) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message
        self.status = status


# --- Matchers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelMatcher:
    """One condition of a silence on one label: equality, or a full-match regex."""

    name: str
    value: str
    is_regex: bool = False
    pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, raw: Any, where: str = "matchers[0]") -> LabelMatcher:
        """Validate one matcher object, raising MuteError naming ``where`` and the field."""
        if not isinstance(raw, Mapping):
            raise MuteError(where, "must be an object with name, value and is_regex")
        unknown = sorted(set(raw) - {"name", "value", "is_regex"})
        if unknown:
            raise MuteError(f"{where}.{unknown[0]}", "unknown field")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise MuteError(f"{where}.name", "must be a non-empty string")
        if len(name) > MAX_NAME_LENGTH:
            raise MuteError(f"{where}.name", f"at most {MAX_NAME_LENGTH} characters")
        value = raw.get("value", "")
        if not isinstance(value, str):
            raise MuteError(f"{where}.value", "must be a string")
        if len(value) > MAX_VALUE_LENGTH:
            raise MuteError(f"{where}.value", f"at most {MAX_VALUE_LENGTH} characters")
        is_regex = raw.get("is_regex", False)
        if not isinstance(is_regex, bool):
            raise MuteError(f"{where}.is_regex", "must be true or false")
        pattern = None
        if is_regex:
            try:
                pattern = re.compile(value)
            except re.error as exc:
                raise MuteError(f"{where}.value", f"invalid regular expression: {exc}") from None
        return cls(name=name.strip(), value=value, is_regex=is_regex, pattern=pattern)

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Return whether the label (empty when absent) satisfies this matcher."""
        actual = labels.get(self.name, "")
        if self.pattern is not None:
            return self.pattern.fullmatch(actual) is not None
        return actual == self.value

    def as_json(self) -> dict[str, Any]:
        """Return the stored form (``Silence.matchers`` items)."""
        return {"name": self.name, "value": self.value, "is_regex": self.is_regex}


def parse_matchers(raw: Any) -> list[LabelMatcher]:
    """Validate a silence's matcher list: at least one, each valid, named by index."""
    if not isinstance(raw, list) or not raw:
        raise MuteError("matchers", "at least one matcher is required")
    return [LabelMatcher.parse(item, f"matchers[{i}]") for i, item in enumerate(raw)]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def label_set(
    labels: Mapping[str, Any] | None,
    *,
    rule: str,
    key: str,
    severity: str,
    plant: str | None,
    kind: str | None = None,
) -> dict[str, str]:
    """Return the labels silences match on: the stored labels plus the built-in ones."""
    out = {str(name): _text(value) for name, value in (labels or {}).items()}
    out.update(rule=rule, key=key, severity=severity)
    if kind:
        out["kind"] = kind
    if plant:
        out["plant"] = plant
    else:
        out.pop("plant", None)
    return out


def alert_labels(alert: Alert) -> dict[str, str]:
    """Return an alert's labels for matching (load it with ``select_related("rule", "plant")``)."""
    return label_set(
        alert.labels,
        rule=alert.rule.name,
        key=alert.key,
        severity=alert.severity,
        plant=alert.plant.key if alert.plant_id else None,
        kind=alert.rule.kind,
    )


# --- Silences -------------------------------------------------------------------------


def silence_state(silence: Silence, now: datetime) -> str:
    """Return ``active``, ``pending`` (starts later) or ``expired`` (ended or expired early)."""
    if silence.expired_at is not None or silence.ends_at <= now:
        return "expired"
    if silence.starts_at > now:
        return "pending"
    return "active"


def create_silence(
    principal: Any,
    matchers: Any,
    *,
    ends_at: datetime | None,
    comment: str,
    now: datetime,
    starts_at: datetime | None = None,
) -> Silence:
    """Validate and store a silence created by ``principal``.

    A plant-scoped principal's silence must be limited to its plant: a ``plant``
    matcher for it is added when missing, a matcher for another plant is refused
    (403). A silence with an exact ``plant`` matcher records that plant, so that
    plant's operators see it.
    """
    from integrations.models import Plant

    parsed = parse_matchers(matchers)
    if not isinstance(comment, str) or not comment.strip():
        raise MuteError("comment", "a comment is required (why is this muted?)")
    starts_at = starts_at or now
    if ends_at is None:
        raise MuteError("ends_at", "is required")
    if ends_at <= starts_at:
        raise MuteError("ends_at", "must be after starts_at")
    if ends_at <= now:
        raise MuteError("ends_at", "must be in the future")

    plant_matchers = [m for m in parsed if m.name == "plant"]
    allowed: frozenset[str] | None = None
    if getattr(principal, "plant_ids", None) is not None:
        allowed = frozenset(principal.plant_keys)
        if not plant_matchers:
            if len(allowed) != 1:
                raise MuteError(
                    "matchers",
                    "a plant matcher is required (one of " + ", ".join(sorted(allowed)) + ")",
                )
            (only,) = allowed
            added = LabelMatcher(name="plant", value=only)
            parsed.append(added)
            plant_matchers = [added]
        for matcher in plant_matchers:
            if matcher.is_regex:
                raise MuteError("matchers", "a plant-scoped caller's plant matcher must be exact")
            if matcher.value not in allowed:
                raise MuteError(
                    "matchers", f"you may not silence alerts of plant {matcher.value!r}", 403
                )

    exact_plants = {m.value for m in plant_matchers if not m.is_regex}
    plant = None
    if len(exact_plants) == 1:
        plant = Plant.objects.filter(key=next(iter(exact_plants))).first()
    return Silence.objects.create(
        matchers=[m.as_json() for m in parsed],
        starts_at=starts_at,
        ends_at=ends_at,
        comment=comment.strip(),
        created_by=str(getattr(principal, "name", "") or "system")[:150],
        plant=plant,
    )


def visible_silences(principal: Any) -> Any:
    """Return the silences a principal may see: its plants' and the unscoped ones."""
    queryset = Silence.objects.select_related("plant")
    plant_ids = getattr(principal, "plant_ids", None)
    if plant_ids is None:
        return queryset
    return queryset.filter(Q(plant__in=plant_ids) | Q(plant__isnull=True))


def may_change_silence(principal: Any, silence: Silence) -> bool:
    """Return whether a principal may expire a silence (a scoped one: its plants' only)."""
    plant_ids = getattr(principal, "plant_ids", None)
    return plant_ids is None or silence.plant_id in plant_ids


def expire_silence(silence: Silence, now: datetime) -> Silence:
    """End a silence now (a pending one never starts); expiring twice keeps the first time."""
    if silence.expired_at is None:
        silence.expired_at = now
        silence.save(update_fields=["expired_at"])
    return silence


# --- Maintenance windows ----------------------------------------------------------------


def plant_zone(name: str | None) -> ZoneInfo:
    """Return a plant's time zone; an unknown name falls back to UTC rather than failing."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def is_weekly(window: MaintenanceWindow) -> bool:
    """Return whether a window recurs weekly (else it is one-off)."""
    return bool(window.weekdays) and window.start_time is not None


def window_occurrence(window: MaintenanceWindow, now: datetime) -> tuple[datetime, datetime] | None:
    """Return the (start, end) of the occurrence of ``window`` that contains ``now``, if any.

    Weekly windows start at ``start_time`` on the listed weekdays in the plant's
    time zone and last ``duration_minutes`` of elapsed time, so one that starts at
    22:00 for 6 hours also covers the small hours of the next day. Uses
    ``window.plant`` (load windows with ``select_related("plant")``).
    """
    if not window.enabled:
        return None
    if not is_weekly(window):
        if window.starts_at and window.ends_at and window.starts_at <= now < window.ends_at:
            return window.starts_at, window.ends_at
        return None
    if not window.duration_minutes:
        return None
    zone = plant_zone(window.plant.timezone)
    duration = timedelta(minutes=window.duration_minutes)
    today = now.astimezone(zone).date()
    weekdays = {int(day) for day in window.weekdays}
    # An occurrence that began up to duration.days + 1 local days ago may still run.
    for back in range(duration.days + 2):
        day: date = today - timedelta(days=back)
        if day.weekday() not in weekdays:
            continue
        # Localise the wall-clock start, then add elapsed time in UTC: aware arithmetic
        # within one zoneinfo zone is wall-clock arithmetic and would be off across DST.
        start = datetime.combine(day, window.start_time, tzinfo=zone).astimezone(UTC)
        end = start + duration
        if start <= now < end:
            return start, end
    return None


def window_is_active(window: MaintenanceWindow, now: datetime) -> bool:
    """Return whether a maintenance window mutes its plant at ``now``."""
    return window_occurrence(window, now) is not None


def describe_window(window: MaintenanceWindow) -> str:
    """Return a short human description: "Sun 22:00 for 6h (Europe/Berlin)" or the dates."""
    if is_weekly(window):
        names = "Mon Tue Wed Thu Fri Sat Sun".split()
        days = ", ".join(names[int(d)] for d in sorted(window.weekdays))
        minutes = window.duration_minutes or 0
        length = f"{minutes // 60}h{minutes % 60:02d}" if minutes % 60 else f"{minutes // 60}h"
        if minutes < 60:
            length = f"{minutes}min"
        start = window.start_time.strftime("%H:%M") if window.start_time else "?"
        return f"weekly {days} {start} for {length} ({window.plant.timezone})"
    if window.starts_at and window.ends_at:
        return f"{window.starts_at:%Y-%m-%d %H:%M} to {window.ends_at:%Y-%m-%d %H:%M} UTC"
    return "incomplete"


def create_window(
    plant: Any,
    name: str,
    *,
    actor: str,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    weekdays: Iterable[int] | None = None,
    start_time: time | None = None,
    duration_minutes: int | None = None,
) -> MaintenanceWindow:
    """Validate and store a one-off (``starts_at``/``ends_at``) or weekly maintenance window."""
    if plant is None:
        raise MuteError("plant", "is required")
    if not isinstance(name, str) or not name.strip():
        raise MuteError("name", "is required")
    if len(name) > 128:
        raise MuteError("name", "at most 128 characters")
    days = sorted(set(weekdays or ()))
    if days:
        if any(not isinstance(d, int) or not 0 <= d <= 6 for d in days):
            raise MuteError("weekdays", "must be numbers 0 (Monday) to 6 (Sunday)")
        if start_time is None:
            raise MuteError("start_time", "is required for a weekly window")
        if not duration_minutes or not 1 <= duration_minutes <= MAX_WINDOW_MINUTES:
            raise MuteError(
                "duration_minutes", f"must be between 1 and {MAX_WINDOW_MINUTES} (one week)"
            )
        return MaintenanceWindow.objects.create(
            plant=plant,
            name=name.strip(),
            weekdays=days,
            start_time=start_time,
            duration_minutes=duration_minutes,
            created_by=actor[:150],
        )
    if starts_at is None:
        raise MuteError("starts_at", "is required for a one-off window (or give weekdays)")
    if ends_at is None:
        raise MuteError("ends_at", "is required for a one-off window")
    if ends_at <= starts_at:
        raise MuteError("ends_at", "must be after starts_at")
    return MaintenanceWindow.objects.create(
        plant=plant, name=name.strip(), starts_at=starts_at, ends_at=ends_at, created_by=actor[:150]
    )


# --- Mutes at one moment ----------------------------------------------------------------


@dataclass(frozen=True)
class _ActiveSilence:
    silence: Silence
    matchers: tuple[LabelMatcher, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(matcher.matches(labels) for matcher in self.matchers)


@dataclass(frozen=True)
class Mutes:
    """The silences and maintenance windows active at ``now``, loaded once."""

    now: datetime
    silences: tuple[_ActiveSilence, ...] = ()
    windows: Mapping[int, tuple[MaintenanceWindow, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.silences or self.windows)

    def matching(
        self, labels: Mapping[str, str], plant_id: int | None
    ) -> Silence | MaintenanceWindow | None:
        """Return what mutes an item with these labels and plant: a silence first, then a window."""
        for active in self.silences:
            if active.matches(labels):
                return active.silence
        windows = self.windows.get(plant_id) if plant_id is not None else None
        return windows[0] if windows else None

    def silenced(self, alert: Alert) -> Silence | MaintenanceWindow | None:
        """Return the silence or maintenance window muting an open alert (None: not muted).

        A resolved alert is never silenced: there is nothing left to mute.
        """
        if alert.state == AlertState.RESOLVED:
            return None
        if not self:
            return None
        return self.matching(alert_labels(alert), alert.plant_id)

    def silenced_ids(self, rows: Iterable[Mapping[str, Any]]) -> set[int]:
        """Return the ids of the muted alerts among rows of :data:`LABEL_COLUMNS` values."""
        if not self:
            return set()
        muted = set()
        for row in rows:
            if row["state"] == AlertState.RESOLVED:
                continue
            labels = label_set(
                row["labels"],
                rule=row["rule__name"],
                key=row["key"],
                severity=row["severity"],
                plant=row["plant__key"],
                kind=row["rule__kind"],
            )
            if self.matching(labels, row["plant_id"]) is not None:
                muted.add(row["id"])
        return muted


# The columns ``Mutes.silenced_ids`` needs, for ``Alert.objects.values(*LABEL_COLUMNS)``.
LABEL_COLUMNS = (
    "id",
    "state",
    "labels",
    "key",
    "severity",
    "plant_id",
    "plant__key",
    "rule__name",
    "rule__kind",
)


def active_mutes(now: datetime, plant_ids: Iterable[int] | None = None) -> Mutes:
    """Load the silences and maintenance windows active at ``now`` (two queries).

    ``plant_ids`` limits the windows to those plants (a scoped reader's); silences
    are not limited, as an unscoped silence may mute any plant's alerts.
    """
    silences = []
    for silence in Silence.objects.filter(
        starts_at__lte=now, ends_at__gt=now, expired_at__isnull=True
    ).order_by("ends_at", "id"):
        try:
            matchers = tuple(parse_matchers(silence.matchers))
        except MuteError:
            continue  # a hand-edited, invalid silence mutes nothing rather than everything
        silences.append(_ActiveSilence(silence, matchers))

    windows_qs = MaintenanceWindow.objects.filter(enabled=True).select_related("plant")
    windows_qs = windows_qs.filter(
        Q(starts_at__lte=now, ends_at__gt=now) | Q(start_time__isnull=False)
    )
    if plant_ids is not None:
        windows_qs = windows_qs.filter(plant__in=list(plant_ids))
    windows: dict[int, list[MaintenanceWindow]] = {}
    for window in windows_qs.order_by("plant_id", "name", "id"):
        if window_is_active(window, now):
            windows.setdefault(window.plant_id, []).append(window)
    return Mutes(
        now=now,
        silences=tuple(silences),
        windows={plant: tuple(found) for plant, found in windows.items()},
    )


def is_silenced(alert: Alert, now: datetime) -> bool:
    """Return whether one alert is muted at ``now`` (loads the mutes: use Mutes for lists)."""
    return active_mutes(now, [alert.plant_id] if alert.plant_id else []).silenced(alert) is not None


def silenced_ids(alerts: Iterable[Alert], now: datetime) -> dict[int, Silence | MaintenanceWindow]:
    """Return, for the muted ones of ``alerts``, what mutes each (two queries in all)."""
    mutes = active_mutes(now)
    found: dict[int, Silence | MaintenanceWindow] = {}
    for alert in alerts:
        mute = mutes.silenced(alert)
        if mute is not None:
            found[alert.pk] = mute
    return found


def mute_kind(mute: Silence | MaintenanceWindow | None) -> str | None:
    """Return ``silence``, ``maintenance`` or None, for templates and the API."""
    if mute is None:
        return None
    return "silence" if isinstance(mute, Silence) else "maintenance"


def set_window_enabled(window: MaintenanceWindow, enabled: bool) -> MaintenanceWindow:
    """Enable or disable a maintenance window (disabled windows are kept, not deleted)."""
    if window.enabled != enabled:
        window.enabled = enabled
        window.save(update_fields=["enabled"])
    return window
