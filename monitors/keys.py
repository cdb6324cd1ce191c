"""Which events a rule's ``when``/``expect`` selects, and the key each one carries, in SQL.

Both are expressions the database evaluates (``subject``, ``correlation_id`` or
the JSON value at a ``data`` path as text), so that rule evaluation stays one
set-based query on PostgreSQL and on SQLite alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db.models import BooleanField, Expression, F, Q, QuerySet, TextField
from django.db.models.fields.json import compile_json_path

from integrations.models import Connector, Event, Plant, System
from monitors.rules import KeySpec, Matcher


class JsonText(Expression):
    """The JSON value at ``path`` of a JSON column, as text: what rules compare and key on.

    Strings come out unquoted, booleans as ``true``/``false``, numbers as written,
    JSON null or a missing path as SQL NULL; the same on PostgreSQL and SQLite
    (whose ``json_extract`` alone would turn ``true`` into ``1``).
    """

    output_field = TextField()

    def __init__(self, column: str, path: Iterable[str]) -> None:
        super().__init__()
        self.column = F(column)
        self.path = tuple(path)

    def get_source_expressions(self) -> list[Any]:
        return [self.column]

    def set_source_expressions(self, exprs: list[Any]) -> None:
        (self.column,) = exprs

    def resolve_expression(self, *args: Any, **kwargs: Any) -> JsonText:
        clone = self.copy()
        clone.is_summary = kwargs.get("summarize", False)
        clone.column = self.column.resolve_expression(*args, **kwargs)
        return clone

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, tuple]:
        column, params = compiler.compile(self.column)
        if connection.vendor == "postgresql":
            if len(self.path) == 1:
                return f"({column} ->> %s)", (*params, self.path[0])
            return f"({column} #>> %s)", (*params, list(self.path))
        json_path = compile_json_path(self.path)
        sql = (
            f"(CASE json_type({column}, %s) WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' "
            f"ELSE CAST(json_extract({column}, %s) AS TEXT) END)"
        )
        return sql, (*params, json_path, *params, json_path)


class OneOf(Expression):
    """``expression IN (values)`` with the values as one parameter, however many they are.

    PostgreSQL: ``= ANY(array)``; SQLite: ``IN (SELECT value FROM json_each(...))``,
    which also escapes SQLite's limit on parameters per statement.
    """

    output_field = BooleanField()
    conditional = True

    def __init__(self, expression: Any, values: Iterable[str]) -> None:
        super().__init__()
        self.expression = expression
        self.values = list(values)

    def get_source_expressions(self) -> list[Any]:
        return [self.expression]

    def set_source_expressions(self, exprs: list[Any]) -> None:
        (self.expression,) = exprs

    def as_sql(self, compiler: Any, connection: Any, **extra: Any) -> tuple[str, tuple]:
        sql, params = compiler.compile(self.expression)
        if connection.vendor == "postgresql":
            return f"{sql} = ANY(%s)", (*params, self.values)
        return f"{sql} IN (SELECT value FROM json_each(%s))", (*params, json.dumps(self.values))


def as_text(value: Any) -> str | None:
    """Return how a rules-file value compares against JSON text (``true``, ``5``, ``L-1``)."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def key_expression(key: KeySpec) -> Any:
    """Return the SQL expression of an event's key under ``key``."""
    if key.source == "subject":
        return F("subject")
    if key.source == "correlationid":
        return F("correlation_id")
    return JsonText("data", key.path.split("."))


@dataclass
class Landscape:
    """The landscape as the evaluator needs it: keys to ids and back (a few small queries)."""

    plant_ids: dict[str, int] = field(default_factory=dict)
    plant_keys: dict[int, str] = field(default_factory=dict)
    systems: dict[str, System] = field(default_factory=dict)
    connectors: dict[str, Connector] = field(default_factory=dict)

    @classmethod
    def load(cls) -> Landscape:
        """Read plants, systems and connectors."""
        landscape = cls()
        for plant_id, key in Plant.objects.values_list("id", "key"):
            landscape.plant_ids[key] = plant_id
            landscape.plant_keys[plant_id] = key
        landscape.systems = {s.key: s for s in System.objects.all()}
        landscape.connectors = {c.key: c for c in Connector.objects.all()}
        return landscape

    def plant_key(self, plant_id: int | None) -> str | None:
        return self.plant_keys.get(plant_id) if plant_id is not None else None


def matching_events(matcher: Matcher, landscape: Landscape) -> QuerySet[Event]:
    """Return the events ``matcher`` selects (no time bounds: callers add the window).

    ``source`` matches the event's source string or its system's key; ``plant``
    the key of its plant; each ``data.<path>`` the JSON value there, as text.
    """
    events = Event.objects.filter(type=matcher.type)
    if matcher.source is not None:
        system = landscape.systems.get(matcher.source)
        by_source = Q(source=matcher.source)
        events = events.filter(by_source | Q(system_id=system.id) if system else by_source)
    if matcher.plant is not None:
        events = events.filter(plant_id=landscape.plant_ids.get(matcher.plant, -1))
    if matcher.subject is not None:
        events = events.filter(subject=matcher.subject)
    for index, (path, value) in enumerate(sorted(matcher.data.items())):
        name = f"_data_{index}"
        events = events.annotate(**{name: JsonText("data", path.split("."))})
        text = as_text(value)
        events = events.filter(**{f"{name}__isnull": True} if text is None else {name: text})
    return events


def keyed_events(matcher: Matcher, key: KeySpec, landscape: Landscape) -> QuerySet[Event]:
    """Return the events ``matcher`` selects that carry a non-empty key, annotated ``k``."""
    events = matching_events(matcher, landscape).annotate(k=key_expression(key))
    # The partial indexes on subject and correlation_id exclude '' in these same words.
    return events.filter(k__isnull=False).exclude(k="")
