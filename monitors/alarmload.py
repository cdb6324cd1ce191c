"""Alarm-load figures after ISA-18.2 (and EEMUA 191), per plant and overall.

An operator can handle about one alarm per 10 minutes; these figures tell a
plant whether its alerting is usable:

- **alerts per 10 minutes**: transitions into ``firing`` in the last 10 minutes
  (from the alarm log, AlertTransition), and a **flood** when there are more
  than :data:`FLOOD_THRESHOLD` of them;
- **average alerts per hour** over the last 24 hours (ISA-18.2: about 6 is
  acceptable, 12 is the most manageable);
- **stale alerts**: open alerts (firing or acknowledged) that began firing more
  than 24 hours ago;
- **chattering rules**: a rule that fired for the same key
  :data:`CHATTER_COUNT` or more times within :data:`CHATTER_WINDOW` (ISA-18.2
  counts 3 in a minute for a process alarm; business alerts re-fire on the
  scale of evaluation passes, hence one hour).

Each figure is one grouped query over all plants (three queries in all).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import Count, Q
from django.db.models.functions import Coalesce

from monitors.models import Alert, AlertState, AlertTransition

FLOOD_WINDOW = timedelta(minutes=10)
FLOOD_THRESHOLD = 10
RATE_WINDOW = timedelta(hours=24)
ACCEPTABLE_PER_HOUR = 6.0
MANAGEABLE_PER_HOUR = 12.0
STALE_AFTER = timedelta(hours=24)
CHATTER_WINDOW = timedelta(hours=1)
CHATTER_COUNT = 3


@dataclass(frozen=True)
class ChatteringRule:
    """A rule that keeps firing for the same keys: a candidate for a deadband or a fix."""

    rule_id: int
    rule: str
    fired: int  # the most times one key fired within CHATTER_WINDOW
    keys: tuple[str, ...]


@dataclass(frozen=True)
class AlarmLoad:
    """The alarm-load figures of one plant (``plant`` None: unattributed or overall)."""

    plant: str | None
    last_10m: int = 0
    last_24h: int = 0
    stale: int = 0
    chattering: tuple[ChatteringRule, ...] = ()

    @property
    def flood(self) -> bool:
        """Return whether the plant is in an alarm flood (more than 10 in 10 minutes)."""
        return self.last_10m > FLOOD_THRESHOLD

    @property
    def per_hour(self) -> float:
        """Return the average number of alerts per hour over the last 24 hours."""
        return round(self.last_24h / (RATE_WINDOW.total_seconds() / 3600), 2)

    @property
    def rate_level(self) -> str:
        """Return ``acceptable``, ``manageable`` or ``overloaded`` for the hourly average."""
        if self.per_hour <= ACCEPTABLE_PER_HOUR:
            return "acceptable"
        if self.per_hour <= MANAGEABLE_PER_HOUR:
            return "manageable"
        return "overloaded"

    def as_json(self) -> dict[str, object]:
        """Return the figures as plain JSON-ready data."""
        return {
            "plant": self.plant,
            "alerts_last_10m": self.last_10m,
            "flood": self.flood,
            "alerts_last_24h": self.last_24h,
            "alerts_per_hour": self.per_hour,
            "rate_level": self.rate_level,
            "stale": self.stale,
            "chattering": [
                {"rule": c.rule, "fired": c.fired, "keys": list(c.keys)} for c in self.chattering
            ],
        }


@dataclass(frozen=True)
class LoadReport:
    """Alarm load overall and per plant key (None: alerts without a plant)."""

    overall: AlarmLoad
    plants: dict[str | None, AlarmLoad] = field(default_factory=dict)

    def for_plant(self, key: str | None) -> AlarmLoad:
        """Return one plant's figures, zeros when it had no alerts."""
        return self.plants.get(key) or AlarmLoad(plant=key)


def _merge_chattering(rows: list[dict]) -> tuple[ChatteringRule, ...]:
    by_rule: dict[int, tuple[str, int, list[str]]] = {}
    for row in rows:
        name, fired, keys = by_rule.get(row["rule_id"], (row["rule__name"], 0, []))
        keys.append(row["alert__key"])
        by_rule[row["rule_id"]] = (name, max(fired, row["n"]), keys)
    found = [
        ChatteringRule(rule_id=rule_id, rule=name, fired=fired, keys=tuple(sorted(set(keys))))
        for rule_id, (name, fired, keys) in by_rule.items()
    ]
    return tuple(sorted(found, key=lambda c: (-c.fired, c.rule)))


def alarm_load(now: datetime, plant_ids: Iterable[int] | None = None) -> LoadReport:
    """Compute the alarm-load figures at ``now``, limited to ``plant_ids`` when given."""
    transitions = AlertTransition.objects.filter(state=AlertState.FIRING, at__lte=now)
    alerts = Alert.objects.all()
    if plant_ids is not None:
        ids = list(plant_ids)
        transitions = transitions.filter(plant__in=ids)
        alerts = alerts.filter(plant__in=ids)

    counts = (
        transitions.filter(at__gt=now - RATE_WINDOW)
        .values("plant__key")
        .annotate(
            last_10m=Count("id", filter=Q(at__gt=now - FLOOD_WINDOW)),
            last_24h=Count("id"),
        )
        .order_by()
    )
    stale = (
        alerts.filter(state__in=(AlertState.FIRING, AlertState.ACKNOWLEDGED))
        .annotate(since=Coalesce("fired_at", "started_at"))
        .filter(since__lte=now - STALE_AFTER)
        .values("plant__key")
        .annotate(n=Count("id"))
        .order_by()
    )
    chatter = (
        transitions.filter(at__gt=now - CHATTER_WINDOW)
        .values("plant__key", "rule_id", "rule__name", "alert__key")
        .annotate(n=Count("id"))
        .filter(n__gte=CHATTER_COUNT)
        .order_by()
    )

    figures: dict[str | None, dict] = {}

    def entry(key: str | None) -> dict:
        return figures.setdefault(key, {"last_10m": 0, "last_24h": 0, "stale": 0, "chatter": []})

    for row in counts:
        entry(row["plant__key"]).update(last_10m=row["last_10m"], last_24h=row["last_24h"])
    for row in stale:
        entry(row["plant__key"])["stale"] = row["n"]
    chatter_rows = list(chatter)
    for row in chatter_rows:
        entry(row["plant__key"])["chatter"].append(row)

    plants = {
        key: AlarmLoad(
            plant=key,
            last_10m=f["last_10m"],
            last_24h=f["last_24h"],
            stale=f["stale"],
            chattering=_merge_chattering(f["chatter"]),
        )
        for key, f in figures.items()
    }
    overall = AlarmLoad(
        plant=None,
        last_10m=sum(p.last_10m for p in plants.values()),
        last_24h=sum(p.last_24h for p in plants.values()),
        stale=sum(p.stale for p in plants.values()),
        chattering=_merge_chattering(chatter_rows),
    )
    return LoadReport(overall=overall, plants=plants)
