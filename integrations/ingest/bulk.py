"""Set-based inserts for the ingest path: one statement per batch, never a save per item.

On PostgreSQL rows are COPYed into a per-connection staging table and moved with
``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING``; elsewhere (SQLite) a
chunked multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` does the same.
Either way the caller learns exactly which rows were new.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import orjson
from django.db import connection, models

# SQLite's default limit on host parameters in one statement.
SQLITE_MAX_VARS = 32_000


def _qn(name: str) -> str:
    return connection.ops.quote_name(name)


def _columns(model: type[models.Model], fields: Sequence[str]) -> list[models.Field]:
    return [model._meta.get_field(name) for name in fields]


def _json_dump(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _adapters(columns: list[models.Field]) -> list[Any]:
    """Return one value adapter per column (None: pass the value through)."""
    is_pg = connection.vendor == "postgresql"
    adapters: list[Any] = []
    for field in columns:
        if isinstance(field, models.JSONField):
            adapters.append(_json_dump)
        elif isinstance(field, models.DateTimeField) and not is_pg:
            adapters.append(connection.ops.adapt_datetimefield_value)
        else:
            adapters.append(None)
    return adapters


def _adapt_rows(columns: list[models.Field], rows: Sequence[Sequence[Any]]) -> list[Any]:
    """Return the rows with JSON (and, off PostgreSQL, datetime) values made storable.

    Only the columns that need it are touched, so a 500-row batch costs microseconds.
    """
    todo = [(i, a) for i, a in enumerate(_adapters(columns)) if a is not None]
    if not todo:
        return list(rows)
    out = []
    for row in rows:
        values = list(row)
        for i, adapt in todo:
            if values[i] is not None:
                values[i] = adapt(values[i])
        out.append(values)
    return out


def _ensure_stage(cursor, table: str, column_names: list[str]) -> str:  # type: ignore[no-untyped-def]
    """Create, if this session lacks it, a temporary staging table for ``table``'s columns.

    Not cached in Python: a rolled-back transaction drops a table created in it, and
    ``IF NOT EXISTS`` costs one round trip.
    """
    stage = f"andon_stage_{table}_{zlib.crc32(','.join(column_names).encode()):08x}"
    cols = ", ".join(_qn(c) for c in column_names)
    cursor.execute(
        f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS "
        f"SELECT {cols} FROM {_qn(table)} WITH NO DATA"
    )
    return stage


def insert_ignore(
    model: type[models.Model],
    fields: Sequence[str],
    rows: Sequence[Sequence[Any]],
    conflict: Sequence[str],
    returning: Sequence[str] = ("id",),
) -> list[tuple]:
    """Insert ``rows`` (values in ``fields`` order), skipping conflicts on ``conflict``.

    Returns the ``returning`` columns of the rows actually inserted. JSON columns
    take Python values; datetimes must be timezone-aware. Must run inside a
    transaction (``transaction.atomic``) so the staging table empties on commit.
    """
    if not rows:
        return []
    columns = _columns(model, fields)
    column_names = [f.column for f in columns]
    table = model._meta.db_table
    conflict_cols = ", ".join(_qn(model._meta.get_field(n).column) for n in conflict)
    returning_cols = ", ".join(_qn(model._meta.get_field(n).column) for n in returning)
    cols = ", ".join(_qn(c) for c in column_names)
    data = _adapt_rows(columns, rows)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            stage = _ensure_stage(cursor, table, column_names)
            with cursor.cursor.copy(f"COPY {stage} ({cols}) FROM STDIN") as copy:
                for row in data:
                    copy.write_row(row)
            cursor.execute(
                f"INSERT INTO {_qn(table)} ({cols}) SELECT {cols} FROM {stage} "
                f"ON CONFLICT ({conflict_cols}) DO NOTHING RETURNING {returning_cols}"
            )
            result = cursor.fetchall()
            cursor.execute(f"TRUNCATE {stage}")
            return result
        result = []
        per_row = len(column_names)
        chunk = max(1, SQLITE_MAX_VARS // per_row)
        placeholder = "(" + ", ".join(["%s"] * per_row) + ")"
        for start in range(0, len(data), chunk):
            part = data[start : start + chunk]
            values = ", ".join([placeholder] * len(part))
            params = [v for row in part for v in row]
            cursor.execute(
                f"INSERT INTO {_qn(table)} ({cols}) VALUES {values} "
                f"ON CONFLICT ({conflict_cols}) DO NOTHING RETURNING {returning_cols}",
                params,
            )
            result.extend(cursor.fetchall())
        return result


def copy_rows(
    model: type[models.Model], fields: Sequence[str], rows: Sequence[Sequence[Any]]
) -> int:
    """COPY rows straight into the model's table (PostgreSQL only): the bench's baseline."""
    columns = _columns(model, fields)
    cols = ", ".join(_qn(f.column) for f in columns)
    data = _adapt_rows(columns, rows)
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {_qn(model._meta.db_table)} ({cols}) FROM STDIN") as copy:
            for row in data:
                copy.write_row(row)
    return len(data)
