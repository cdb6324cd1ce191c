"""Failure groups: failed messages grouped by connector and normalised error text.

"MES answered 503 for WO-1001 at 2026-05-21T08:00:00Z" and "MES answered 502 for
WO-1002 at 2026-05-21T08:00:03Z" are one failure: :func:`normalise_error` strips
what varies (quoted values, timestamps, UUIDs, hex strings, and every token
holding a digit: numbers, ids, versions) so both read "MES answered # for # at
<time>". :class:`ErrorGroup` computes the same normalisation in SQL
(``regexp_replace`` on PostgreSQL, a registered Python function on SQLite), so
grouping is one ``GROUP BY`` over the failed messages, and a group converts to a
replay filter (``error_group``) that selects exactly its messages again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db.backends.signals import connection_created
from django.db.models import Count, F, Func, Max, Min, QuerySet, TextField, Window
from django.db.models.functions import RowNumber
from django.dispatch import receiver

from console.auth import Principal
from integrations.models import Connector, Message, MessageStatus

FAILED_STATUSES = (MessageStatus.FAILED.value, MessageStatus.DEAD_LETTERED.value)
# A group's pattern is cut here (what varies has been stripped; the rest is the message).
MAX_PATTERN = 300
DEFAULT_LIMIT = 100
SAMPLE_SIZE = 5
SQLITE_FUNCTION = "andon_error_group"

# (Python pattern, PostgreSQL ARE pattern, replacement), applied in order. The two
# dialects say the same thing; they differ only where the syntax does (\b vs \y).
_TIME = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
    r"(Z|[+-][0-9]{2}:?[0-9]{2})?)?|[0-9]{1,2}:[0-9]{2}:[0-9]{2}([.,][0-9]+)?"
)
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
STEPS: tuple[tuple[str, str, str], ...] = (
    (r"'[^']*'|\"[^\"]*\"", r"'[^']*'|\"[^\"]*\"", '"…"'),
    (_TIME, _TIME, "<time>"),
    (_UUID, _UUID, "<uuid>"),
    (r"\b(0x)?[0-9a-fA-F]{8,}\b", r"\y(0x)?[0-9a-fA-F]{8,}\y", "<hex>"),
    (r"[A-Za-z0-9_.-]*[0-9][A-Za-z0-9_.-]*", r"[A-Za-z0-9_.-]*[0-9][A-Za-z0-9_.-]*", "#"),
    (r"\s+", r"\s+", " "),
)
_COMPILED = tuple((re.compile(python), replacement) for python, _, replacement in STEPS)


def normalise_error(error: str | None) -> str:
    """Return the error text with what varies between occurrences stripped (see module doc)."""
    text = error or ""
    for pattern, replacement in _COMPILED:
        text = pattern.sub(replacement, text)
    return text.strip()[:MAX_PATTERN]


class ErrorGroup(Func):
    """SQL of :func:`normalise_error` over a text expression (the same result in the database)."""

    output_field = TextField()
    arity = 1

    def as_postgresql(self, compiler, connection, **extra):  # type: ignore[no-untyped-def]
        """Compile to nested ``regexp_replace`` calls (one per step)."""
        sql, params = compiler.compile(self.source_expressions[0])
        params = list(params)
        for _, pattern, replacement in STEPS:
            sql = f"regexp_replace({sql}, %s, %s, 'g')"
            params += [pattern, replacement]
        return f"left(btrim(COALESCE({sql}, '')), {MAX_PATTERN})", params

    def as_sqlite(self, compiler, connection, **extra):  # type: ignore[no-untyped-def]
        """Compile to the Python function registered on every SQLite connection."""
        sql, params = compiler.compile(self.source_expressions[0])
        return f"{SQLITE_FUNCTION}({sql})", params

    def as_sql(self, compiler, connection, **extra):  # type: ignore[no-untyped-def]
        """Refuse other databases (Andon runs on PostgreSQL or SQLite)."""
        raise NotImplementedError(
            f"error groups need PostgreSQL or SQLite, not {connection.vendor}"
        )


@receiver(connection_created)
def register_sqlite_function(sender: Any, connection: Any, **kwargs: Any) -> None:
    """Give every new SQLite connection the normalisation as a SQL function."""
    if connection.vendor == "sqlite":
        connection.connection.create_function(
            SQLITE_FUNCTION, 1, normalise_error, deterministic=True
        )


def with_error_group(messages: QuerySet[Message]) -> QuerySet[Message]:
    """Return ``messages`` annotated with ``error_group`` (their normalised error)."""
    return messages.annotate(error_group=ErrorGroup("error"))


@dataclass
class FailureGroup:
    """Failed messages of one connector sharing one normalised error.

    ``pattern`` is the normalised error ("" when the messages carry no error
    text); ``filter`` is the replay filter that selects the group's messages
    (``integrations.replay.selection`` and ``start_replay`` take it as is).
    """

    connector: str
    connector_id: int
    pattern: str
    count: int
    first_seen: datetime
    last_seen: datetime
    sample_message_ids: list[int] = field(default_factory=list)
    filter: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Return the pattern, or a stand-in for messages that carry no error text."""
        return self.pattern or "(no error text)"

    def as_json(self) -> dict[str, Any]:
        """Return the group as the API shows it."""
        return {
            "connector": self.connector,
            "pattern": self.pattern,
            "count": self.count,
            "first_seen": self.first_seen,
            "last_seen": self.last_seen,
            "sample_message_ids": self.sample_message_ids,
            "filter": self.filter,
        }


def failed_messages(principal: Principal, since: datetime | None = None) -> QuerySet[Message]:
    """Return the failed and dead-lettered messages the principal sees (since ``since``)."""
    messages = principal.scope(Message.objects.filter(status__in=FAILED_STATUSES), "plant")
    if since is not None:
        messages = messages.filter(occurred_at__gte=since)
    return messages


def failure_groups(
    principal: Principal,
    since: datetime | None = None,
    *,
    connector: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[FailureGroup]:
    """Return the failure groups in the principal's plants, largest first.

    Messages count when their current status is failed or dead-lettered and
    they occurred at or after ``since`` (every one when None); ``connector``
    (a key) narrows to one connector. Two queries whatever the volume: the
    grouped figures, then up to five newest sample ids per group (a window).
    """
    messages = failed_messages(principal, since)
    if connector is not None:
        messages = messages.filter(connector__key=connector)
    grouped = list(
        with_error_group(messages)
        .values("connector_id", "error_group")
        .annotate(
            count=Count("id"),
            first_seen=Min("occurred_at"),
            last_seen=Max("last_attempt_at"),
        )
        .order_by("-count", "connector_id", "error_group")[:limit]
    )
    if not grouped:
        return []
    connector_ids = {row["connector_id"] for row in grouped}
    keys = dict(Connector.objects.filter(pk__in=connector_ids).values_list("id", "key"))
    ranked = (
        with_error_group(messages.filter(connector_id__in=connector_ids))
        .annotate(
            rank=Window(
                RowNumber(),
                partition_by=[F("connector_id"), F("error_group")],
                order_by=[F("last_attempt_at").desc(), F("id").desc()],
            )
        )
        .filter(rank__lte=SAMPLE_SIZE)
        .values_list("connector_id", "error_group", "id")
    )
    samples: dict[tuple[int, str], list[int]] = {}
    for connector_id, pattern, message_id in ranked:
        samples.setdefault((connector_id, pattern), []).append(message_id)
    groups = []
    for row in grouped:
        key = keys[row["connector_id"]]
        pattern = row["error_group"] or ""
        group_filter: dict[str, Any] = {
            "connector": key,
            "status": list(FAILED_STATUSES),
            "error_group": pattern,
        }
        if since is not None:
            group_filter["since"] = since.isoformat()
        groups.append(
            FailureGroup(
                connector=key,
                connector_id=row["connector_id"],
                pattern=pattern,
                count=row["count"],
                first_seen=row["first_seen"],
                last_seen=row["last_seen"],
                sample_message_ids=samples.get((row["connector_id"], row["error_group"]), []),
                filter=group_filter,
            )
        )
    return groups
