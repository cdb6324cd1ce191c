"""Per-minute connector rollups: what the IT dashboard reads instead of millions of messages.

A :class:`~integrations.models.ConnectorRollup` row holds the messages of one
connector that *occurred* in one minute (``Message.occurred_at``, each with its
current status), the population the threshold rules and the connectors page
measure too:

- ``total``; ``delivered``, ``failed`` and ``dead_lettered`` by current status
  (``received`` is the rest);
- ``replayed``: the replay attempts (``MessageAttempt.replay_id`` set) made for
  those messages, whenever they were made;
- ``latency_sum_ms``, ``latency_count``, ``latency_max_ms`` and
  ``latency_buckets``: counts per bucket of :data:`BOUNDS_MS` (bucket ``i``
  holds latencies in ``(BOUNDS_MS[i-1], BOUNDS_MS[i]]``, the last one those
  above ``BOUNDS_MS[-1]``), so a percentile over any set of minutes is the sum
  of their buckets, interpolated within one bucket (:func:`bucket_percentile`).
  Changing the bounds needs a full refresh (``refresh_rollups`` over all time).

Refreshing is set-based and idempotent: :func:`refresh_rollups` recomputes
whole minutes with one ``INSERT ... SELECT ... GROUP BY connector, minute ...
ON CONFLICT DO UPDATE`` (rows that did not change are not rewritten) and
deletes the rows of those minutes that lost all their messages. A
transaction-scoped advisory lock serialises refreshes, so two at once are
safe: the second recomputes after the first from what is committed.

The periodic job (:func:`refresh_recent`: Celery beat in production, the
embedded scheduler otherwise, every ~15 s) finds the minutes that changed
since its last run from the rows *received* since then: attempts and messages
whose ids are above the last one received before the previous run's start
minus :data:`SETTLE_S` (ids follow receipt, so the primary keys answer it by a
short backward scan; the margin covers ingest transactions still in flight).
A message's minutes are those of all its attempts, so a late report that moves
``occurred_at`` refreshes the minute it left too.

Longer windows read per-block sums (15 minutes, 1 hour) from the cache: the
refresh writes the blocks it changed through, a page adds a block it misses;
see :func:`window_series`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import shared_task
from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from integrations.models import (
    Connector,
    ConnectorRollup,
    Message,
    MessageAttempt,
    MessageStatus,
)

logger = logging.getLogger(__name__)

# Upper bounds (ms) of the latency buckets; one more bucket holds what lies above the last.
# Roughly 1.5x apart: a percentile read from them is within half a bucket or so of the truth.
BOUNDS_MS: tuple[int, ...] = (
    5, 10, 25, 50, 75, 100, 150, 250, 400, 600, 1_000, 1_500, 2_000, 3_000, 5_000,
    7_500, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000, 1_800_000,
)  # fmt: skip
BUCKETS = len(BOUNDS_MS) + 1

# How often the periodic job runs (beat, embedded scheduler).
REFRESH_EVERY_S = 15.0
# Rows received this long before the previous run's start are looked at again: an
# ingest transaction that took its receipt time earlier but committed later is not missed.
SETTLE_S = 60.0
# High half of the advisory lock key ("ROLL"); the low half is 0.
LOCK_KEY = 0x524F4C4C << 32

# Block sizes cached for the longer windows, and how long a block stays useful.
CACHED_STEPS_S: dict[int, int] = {900: 26 * 3600, 3600: 8 * 86400}


@dataclass(frozen=True)
class Window:
    """A dashboard window: its length and the step of its series."""

    key: str
    seconds: int
    step_s: int

    @property
    def steps(self) -> int:
        return self.seconds // self.step_s


WINDOWS: dict[str, Window] = {
    "1h": Window("1h", 3600, 60),
    "24h": Window("24h", 86400, 900),
    "7d": Window("7d", 7 * 86400, 3600),
}
DEFAULT_WINDOW = "24h"


# --- Figures ---------------------------------------------------------------------------------


def bucket_index(latency_ms: int) -> int:
    """Return the bucket a latency falls in (what the refresh SQL computes)."""
    for index, bound in enumerate(BOUNDS_MS):
        if latency_ms <= bound:
            return index
    return len(BOUNDS_MS)


def bucket_percentile(buckets: Sequence[int], fraction: float, max_ms: int) -> float | None:
    """Return the ``fraction`` quantile of bucketed latencies (None: no latencies).

    The rank ``fraction * n`` falls in one bucket; the value is interpolated
    linearly between that bucket's bounds, the top one capped by ``max_ms`` (the
    largest latency seen, which also bounds the open last bucket).
    """
    n = sum(buckets)
    if n == 0:
        return None
    rank = fraction * n
    below = 0
    for index, count in enumerate(buckets):
        if count == 0:
            continue
        if below + count >= rank:
            low = float(BOUNDS_MS[index - 1]) if index > 0 else 0.0
            high = float(BOUNDS_MS[index]) if index < len(BOUNDS_MS) else float(max_ms)
            high = max(low, min(high, float(max_ms)))
            return low + (high - low) * max(0.0, rank - below) / count
        below += count
    return float(max_ms)


SCALARS = (
    "total",
    "delivered",
    "failed",
    "dead_lettered",
    "replayed",
    "latency_sum_ms",
    "latency_count",
    "latency_max_ms",
)
WIDTH = len(SCALARS) + BUCKETS
MAX_INDEX = SCALARS.index("latency_max_ms")


def _scalar(index: int) -> property:
    return property(lambda self: self.values[index], doc=f"``{SCALARS[index]}``")


class Figures:
    """Summed rollup figures of one connector over some minutes.

    One flat list ``[*SCALARS, *buckets]`` (the cached form, too): a window
    sums thousands of these per page, so adding them is one list comprehension.
    """

    __slots__ = ("values",)

    total = _scalar(0)
    delivered = _scalar(1)
    failed = _scalar(2)
    dead_lettered = _scalar(3)
    replayed = _scalar(4)
    latency_sum_ms = _scalar(5)
    latency_count = _scalar(6)
    latency_max_ms = _scalar(7)

    def __init__(self, values: list[int] | None = None, **named: int) -> None:
        self.values = values if values is not None else [0] * WIDTH
        for name, value in named.items():
            self.values[SCALARS.index(name)] = value

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Figures:
        """Build from ``[*SCALARS, *buckets]`` (a SQL row: None counts as 0, Decimals as ints)."""
        values = list(row[:WIDTH])
        if None in values or not all(type(v) is int for v in values):
            values = [int(v or 0) for v in values]
        values += [0] * (WIDTH - len(values))
        return cls(values)

    @classmethod
    def from_cached(cls, row: list[int]) -> Figures:
        """Build from a cached row (already whole numbers; another length: bounds changed)."""
        return cls(row) if len(row) == WIDTH else cls.from_row(row)

    def __repr__(self) -> str:
        return f"Figures(total={self.total}, failed={self.failed}, p95={self.p95_latency_ms})"

    @property
    def buckets(self) -> list[int]:
        return self.values[len(SCALARS) :]

    def as_row(self) -> list[int]:
        """Return ``[*SCALARS, *buckets]``, the cached form."""
        return self.values

    def add(self, other: Figures) -> Figures:
        """Add ``other`` into these figures (the largest latency stays the largest); return them."""
        mine, theirs = self.values, other.values
        largest = max(mine[MAX_INDEX], theirs[MAX_INDEX])
        self.values = [a + b for a, b in zip(mine, theirs, strict=True)]
        self.values[MAX_INDEX] = largest
        return self

    @property
    def failure_ratio(self) -> float | None:
        """Return failed plus dead-lettered over all messages (None: no messages)."""
        total = self.values[0]
        return (self.values[2] + self.values[3]) / total if total else None

    @property
    def mean_latency_ms(self) -> float | None:
        count = self.values[6]
        return self.values[5] / count if count else None

    def percentile(self, fraction: float = 0.95) -> float | None:
        """Return a latency percentile from the buckets (see :func:`bucket_percentile`)."""
        if not self.values[6]:
            return None
        return bucket_percentile(self.buckets, fraction, self.values[MAX_INDEX])

    @property
    def p95_latency_ms(self) -> float | None:
        return self.percentile(0.95)


# --- SQL helpers -----------------------------------------------------------------------------


def _qn(name: str) -> str:
    return connection.ops.quote_name(name)


def _tables() -> dict[str, str]:
    return {
        "rollup": _qn(ConnectorRollup._meta.db_table),
        "message": _qn(Message._meta.db_table),
        "attempt": _qn(MessageAttempt._meta.db_table),
        "connector": _qn(Connector._meta.db_table),
    }


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _param(moment: datetime) -> Any:
    """Return a datetime as a query parameter (SQLite compares naive UTC text)."""
    if _postgres():
        return moment
    return connection.ops.adapt_datetimefield_value(moment)


def _as_datetime(value: object) -> datetime:
    """Return a raw-cursor timestamp as an aware UTC datetime (SQLite answers text)."""
    moment = value if isinstance(value, datetime) else parse_datetime(str(value))
    if moment is None:
        raise ValueError(f"not a timestamp: {value!r}")
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _minute_sql(column: str) -> str:
    """Return SQL truncating a timestamp column to its minute."""
    if _postgres():
        return f"date_trunc('minute', {column})"
    return f"strftime('%%Y-%%m-%%d %%H:%%M:00', {column})"


def _ranges_join(column: str, ranges: Sequence[tuple[datetime, datetime]]) -> tuple[str, list]:
    """Return ``(sql, params)`` restricting ``column`` to ``[lo, hi)`` of any of ``ranges``.

    One range is two plain bounds (an index range scan); several are a joined
    list, one parameter however many they are.
    """
    if len(ranges) == 1:
        lo, hi = ranges[0]
        return f"WHERE {column} >= %s AND {column} < %s", [_param(lo), _param(hi)]
    if _postgres():
        return (
            "JOIN unnest(%s::timestamptz[], %s::timestamptz[]) AS d(lo, hi) "
            f"ON {column} >= d.lo AND {column} < d.hi WHERE TRUE",
            [[lo for lo, _ in ranges], [hi for _, hi in ranges]],
        )
    pairs = json.dumps([[_param(lo), _param(hi)] for lo, hi in ranges])
    return (
        f"JOIN json_each(%s) AS d ON {column} >= json_extract(d.value, '$[0]') "
        f"AND {column} < json_extract(d.value, '$[1]') WHERE TRUE",
        [pairs],
    )


def _bucket_counts() -> list[str]:
    """Return the SQL counting a minute's latencies into each bucket."""
    counts = []
    low: int | None = None
    for bound in (*BOUNDS_MS, None):
        parts = []
        if low is not None:
            parts.append(f"m.latency_ms > {low}")
        if bound is not None:
            parts.append(f"m.latency_ms <= {bound}")
        condition = " AND ".join(parts)
        if _postgres():
            counts.append(f"COUNT(*) FILTER (WHERE {condition})")
        else:
            counts.append(f"SUM(CASE WHEN {condition} THEN 1 ELSE 0 END)")
        low = bound
    return counts


def _bucket_sums(cast: str = "") -> list[str]:
    """Return the SQL summing each bucket of rollup rows ``r`` (then ``cast``)."""
    if _postgres():
        return [f"SUM((r.latency_buckets ->> {i})::bigint){cast}" for i in range(BUCKETS)]
    return [f"SUM(json_extract(r.latency_buckets, '$[{i}]'))" for i in range(BUCKETS)]


def minutes_to_ranges(minutes: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """Merge minutes into ``[lo, hi)`` ranges of consecutive minutes."""
    ranges: list[tuple[datetime, datetime]] = []
    step = timedelta(minutes=1)
    for minute in sorted(set(minutes)):
        if ranges and ranges[-1][1] == minute:
            ranges[-1] = (ranges[-1][0], minute + step)
        else:
            ranges.append((minute, minute + step))
    return ranges


def floor_to(moment: datetime, step_s: int) -> datetime:
    """Return the start of the ``step_s`` block (aligned to the epoch, UTC) holding ``moment``."""
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % step_s, UTC)


def _no_jit(cursor: Any) -> None:
    # Big row estimates make PostgreSQL compile the query, which costs more than running it.
    if _postgres():
        cursor.execute("SELECT set_config('jit', 'off', true)")


def _lock(cursor: Any, wait: bool) -> bool:
    """Take the refresh lock for this transaction; False when ``wait`` is off and it is held."""
    if not _postgres():
        return True  # SQLite: IMMEDIATE transactions serialise writers already
    if wait:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [LOCK_KEY])
        return True
    cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [LOCK_KEY])
    return bool(cursor.fetchone()[0])


# --- Refreshing ------------------------------------------------------------------------------


@dataclass
class RefreshReport:
    """What one refresh did."""

    minutes: int = 0
    ranges: int = 0
    upserted: int = 0
    deleted: int = 0
    seconds: float = 0.0
    skipped: bool = False
    full: bool = False

    def line(self) -> str:
        if self.skipped:
            return "rollups: skipped (another refresh holds the lock)"
        kind = "full refresh" if self.full else "refresh"
        return (
            f"rollups: {kind} of {self.minutes} minutes in {self.ranges} ranges: "
            f"{self.upserted} rows written, {self.deleted} deleted in {self.seconds * 1000:.0f} ms"
        )


def _upsert_sql(ranges: Sequence[tuple[datetime, datetime]]) -> tuple[str, list[Any]]:
    t = _tables()
    where, params = _ranges_join("m.occurred_at", ranges)
    minute = _minute_sql("m.occurred_at")
    status = {s: f"'{s}'" for s in MessageStatus.values}
    replays = (
        f"(SELECT COUNT(*) FROM {t['attempt']} a "
        f"WHERE a.message_id = m.id AND a.replay_id IS NOT NULL)"
    )
    if _postgres():
        delivered = f"COUNT(*) FILTER (WHERE m.status = {status['delivered']})"
        failed = f"COUNT(*) FILTER (WHERE m.status = {status['failed']})"
        dead = f"COUNT(*) FILTER (WHERE m.status = {status['dead_lettered']})"
        buckets = f"jsonb_build_array({', '.join(_bucket_counts())})"
        replayed = "COALESCE(SUM(rp.n), 0)"
        lateral = f"LEFT JOIN LATERAL {replays} AS rp(n) ON TRUE "
    else:
        delivered = f"SUM(CASE WHEN m.status = {status['delivered']} THEN 1 ELSE 0 END)"
        failed = f"SUM(CASE WHEN m.status = {status['failed']} THEN 1 ELSE 0 END)"
        dead = f"SUM(CASE WHEN m.status = {status['dead_lettered']} THEN 1 ELSE 0 END)"
        buckets = f"json_array({', '.join(_bucket_counts())})"
        replayed = f"COALESCE(SUM({replays}), 0)"
        lateral = ""
    columns = (
        "connector_id", "plant_id", "minute", "total", "delivered", "failed", "dead_lettered",
        "replayed", "latency_sum_ms", "latency_count", "latency_max_ms", "latency_buckets",
    )  # fmt: skip
    updated = columns[1:2] + columns[3:]
    assignments = ", ".join(f"{_qn(c)} = EXCLUDED.{_qn(c)}" for c in updated)
    unchanged = ""
    if _postgres():
        # Recent minutes are recomputed every run: leave the rows that did not change alone.
        mine = ", ".join(f"{t['rollup']}.{_qn(c)}" for c in updated)
        theirs = ", ".join(f"EXCLUDED.{_qn(c)}" for c in updated)
        unchanged = f" WHERE ({mine}) IS DISTINCT FROM ({theirs})"
    sql = (
        f"INSERT INTO {t['rollup']} ({', '.join(_qn(c) for c in columns)}) "
        f"SELECT m.connector_id, c.plant_id, {minute}, COUNT(*), {delivered}, {failed}, {dead}, "
        f"{replayed}, COALESCE(SUM(m.latency_ms), 0), COUNT(m.latency_ms), "
        f"COALESCE(MAX(m.latency_ms), 0), {buckets} "
        f"FROM {t['message']} m JOIN {t['connector']} c ON c.id = m.connector_id "
        f"{lateral}{where} "
        f"GROUP BY m.connector_id, c.plant_id, {minute} "
        f"ON CONFLICT (connector_id, minute) DO UPDATE SET {assignments}{unchanged}"
    )
    return sql, params


def _delete_emptied_sql(ranges: Sequence[tuple[datetime, datetime]]) -> tuple[str, list[Any]]:
    """Return the DELETE of rollup rows in ``ranges`` whose minute holds no message any more."""
    t = _tables()
    if _postgres():
        next_minute = "r.minute + interval '1 minute'"
    else:
        next_minute = "strftime('%%Y-%%m-%%d %%H:%%M:%%S', r.minute, '+1 minute')"
    where, params = _ranges_join("r.minute", ranges)
    return (
        f"DELETE FROM {t['rollup']} WHERE id IN (SELECT r.id FROM {t['rollup']} r {where} "
        f"AND NOT EXISTS (SELECT 1 FROM {t['message']} m WHERE m.connector_id = r.connector_id "
        f"AND m.occurred_at >= r.minute AND m.occurred_at < {next_minute}))"
    ), params


def _refresh_ranges(
    cursor: Any, ranges: Sequence[tuple[datetime, datetime]], report: RefreshReport
) -> None:
    sql, params = _upsert_sql(ranges)
    cursor.execute(sql, params)
    report.upserted += max(cursor.rowcount, 0)
    sql, params = _delete_emptied_sql(ranges)
    cursor.execute(sql, params)
    report.deleted += max(cursor.rowcount, 0)
    report.ranges += len(ranges)
    report.minutes += sum(int((hi - lo).total_seconds() // 60) for lo, hi in ranges)


def refresh_rollups(since: datetime, until: datetime) -> RefreshReport:
    """Recompute the rollups of every minute overlapping ``[since, until)``; return what it did.

    Idempotent; a second refresh at the same time waits for the first and then
    recomputes from what the first committed. Also writes the changed cached
    blocks through (see :func:`window_series`).
    """
    started = time.perf_counter()
    report = RefreshReport()
    lo = floor_to(since, 60)
    hi = floor_to(until, 60)
    if hi < until:
        hi += timedelta(minutes=1)
    if hi <= lo:
        return report
    with transaction.atomic(), connection.cursor() as cursor:
        _lock(cursor, wait=True)
        _no_jit(cursor)
        _refresh_ranges(cursor, [(lo, hi)], report)
        write_through(cursor, [(lo, hi)])
    report.seconds = time.perf_counter() - started
    return report


def message_span() -> tuple[datetime, datetime] | None:
    """Return the minute range ``[first, last + 1 min)`` that holds every message (None: none)."""
    times = Message.objects.order_by().values_list("occurred_at", flat=True)
    first = times.order_by("occurred_at").first()
    last = times.order_by("-occurred_at").first()
    if first is None or last is None:
        return None
    return floor_to(first, 60), floor_to(last, 60) + timedelta(minutes=1)


def refresh_all() -> RefreshReport:
    """Recompute every minute that holds messages (a backfill, or after the bounds changed)."""
    span = message_span()
    if span is None:
        return RefreshReport(full=True)
    report = refresh_rollups(*span)
    report.full = True
    return report


def changed_minutes(cursor: Any, received_after: datetime) -> list[datetime]:
    """Return the minutes of messages with an attempt or a first report received after a time.

    The attempts and messages received after ``received_after`` are those
    whose ids are above the last one received at or before it: first those two
    ids (each a short backward scan of the primary key from the newest row),
    then the rows above them, with the ids as plain values so that the
    planner sees how few they are.
    """
    t = _tables()
    after = _param(received_after)
    cursor.execute(
        f"SELECT (SELECT b.id FROM {t['attempt']} b WHERE b.received_at <= %s "
        f"ORDER BY b.id DESC LIMIT 1), (SELECT n.id FROM {t['message']} n "
        f"WHERE n.received_at <= %s ORDER BY n.id DESC LIMIT 1)",
        [after, after],
    )
    last_attempt, last_message = (int(value or 0) for value in cursor.fetchone())
    minute = _minute_sql("x.at")
    touched = (
        f"SELECT a.message_id FROM {t['attempt']} a WHERE a.id > %s "
        f"UNION SELECT m.id FROM {t['message']} m WHERE m.id > %s"
    )
    cursor.execute(
        f"SELECT DISTINCT {minute} FROM ("
        f"SELECT m.occurred_at AS at FROM {t['message']} m WHERE m.id IN ({touched}) "
        f"UNION ALL SELECT a.at AS at FROM {t['attempt']} a WHERE a.message_id IN ({touched})"
        f") x",
        [last_attempt, last_message, last_attempt, last_message],
    )
    return [_as_datetime(row[0]) for row in cursor.fetchall()]


def _watermark_key() -> str:
    return f"andon:rollups:{connection.settings_dict.get('NAME')}:watermark"


def last_refresh_started() -> datetime | None:
    """Return when the last periodic refresh started, as far as it is known.

    The cache remembers it; without it (restart of a cache-less process), the
    newest rollup minute stands in (no refresh can have run before it
    existed), and without rollups nothing has been refreshed yet.
    """
    remembered = cache.get(_watermark_key())
    if isinstance(remembered, datetime):
        return remembered
    newest = ConnectorRollup.objects.order_by("-minute").values_list("minute", flat=True).first()
    if newest is None:
        return None
    return min(newest, timezone.now())


def refresh_recent() -> RefreshReport:
    """Refresh the minutes whose messages changed since the last run (the periodic job).

    The first run (no rollups yet) backfills every minute. A run that finds
    another one holding the lock leaves the work to it.
    """
    started_at = timezone.now()
    started = time.perf_counter()
    report = RefreshReport()
    previous = last_refresh_started()
    with transaction.atomic(), connection.cursor() as cursor:
        if not _lock(cursor, wait=False):
            report.skipped = True
            return report
        _no_jit(cursor)
        if previous is None:
            span = message_span()
            ranges = [span] if span is not None else []
            report.full = True
        else:
            minutes = changed_minutes(cursor, previous - timedelta(seconds=SETTLE_S))
            ranges = minutes_to_ranges(minutes)
        if ranges:
            _refresh_ranges(cursor, ranges, report)
            write_through(cursor, ranges)
    cache.set(_watermark_key(), started_at, timeout=None)
    report.seconds = time.perf_counter() - started
    return report


def refresh_periodically() -> RefreshReport | None:
    """Run :func:`refresh_recent`, logging (not raising) a failure: the scheduler's hook."""
    try:
        return refresh_recent()
    except Exception:  # noqa: BLE001 - a failed refresh must not stop the scheduler
        logger.exception("refreshing the connector rollups failed")
        return None


@shared_task(name="integrations.rollups.refresh", ignore_result=True)
def refresh_task() -> str:
    """Celery beat's periodic refresh of the rollups (with Redis)."""
    report = refresh_recent()
    return report.line()


# --- Reading: aggregates and cached blocks ---------------------------------------------------


def aggregate(
    cursor: Any,
    step_s: int,
    ranges: Sequence[tuple[datetime, datetime]],
    connector_ids: Iterable[int] | None = None,
) -> dict[tuple[int, datetime], Figures]:
    """Return summed figures per ``(connector id, block start)`` of rollups in ``ranges``.

    Blocks are ``step_s`` long, aligned to the epoch; ``connector_ids`` (when
    given) restricts the connectors.
    """
    if not ranges:
        return {}
    t = _tables()
    where, params = _ranges_join("r.minute", ranges)
    if _postgres():
        block = f"(floor(extract(epoch FROM r.minute) / {int(step_s)}) * {int(step_s)})::bigint"
    else:
        block = f"(CAST(strftime('%%s', r.minute) AS INTEGER) / {int(step_s)}) * {int(step_s)}"
    if connector_ids is not None:
        ids = sorted(set(connector_ids))
        if not ids:
            return {}
        if _postgres():
            where += " AND r.connector_id = ANY(%s)"
            params.append(ids)
        else:
            where += f" AND r.connector_id IN ({', '.join(['%s'] * len(ids))})"
            params.extend(ids)
    # PostgreSQL sums integers as numeric: cast back, so that rows arrive as plain ints.
    whole = "::bigint" if _postgres() else ""
    sums = [
        f"SUM(r.{name}){whole}" if name != "latency_max_ms" else "MAX(r.latency_max_ms)"
        for name in SCALARS
    ]
    cursor.execute(
        f"SELECT r.connector_id, {block} AS block, {', '.join(sums)}, "
        f"{', '.join(_bucket_sums(whole))} "
        f"FROM {t['rollup']} r {where} GROUP BY r.connector_id, {block}",
        params,
    )
    return {
        (int(row[0]), datetime.fromtimestamp(int(row[1]), UTC)): Figures.from_row(row[2:])
        for row in cursor.fetchall()
    }


def _generation_key() -> str:
    return f"andon:rollups:{connection.settings_dict.get('NAME')}:generation"


def cache_namespace() -> str:
    """Return the prefix of cached figures: this database's, of the current generation."""
    generation = cache.get(_generation_key()) or 0
    return f"andon:rollups:{connection.settings_dict.get('NAME')}:{generation}"


def _block_keys(step_s: int, starts: Iterable[datetime]) -> dict[str, datetime]:
    prefix = f"{cache_namespace()}:{step_s}"
    return {f"{prefix}:{int(start.timestamp())}": start for start in starts}


def forget_cached_blocks() -> None:
    """Make every cached figure unreachable (the stores were rebuilt outside a refresh).

    Bumps the generation in :func:`cache_namespace`: rollup blocks and the
    dashboards' cached trigger counts alike.
    """
    key = _generation_key()
    cache.set(key, (cache.get(key) or 0) + 1, timeout=None)


Block = dict[int, list[int]]


def _blocks_of(
    figures: dict[tuple[int, datetime], Figures], starts: Iterable[datetime]
) -> dict[datetime, Block]:
    blocks: dict[datetime, Block] = {start: {} for start in starts}
    for (connector_id, start), values in figures.items():
        if start in blocks:
            blocks[start][connector_id] = values.as_row()
    return blocks


def _block_ranges(starts: Iterable[datetime], step_s: int) -> list[tuple[datetime, datetime]]:
    ranges: list[tuple[datetime, datetime]] = []
    step = timedelta(seconds=step_s)
    for start in sorted(set(starts)):
        if ranges and ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], start + step)
        else:
            ranges.append((start, start + step))
    return ranges


def write_through(cursor: Any, ranges: Sequence[tuple[datetime, datetime]]) -> None:
    """Recompute and cache the blocks that hold the refreshed minutes (while still locked).

    Blocks older than a window can reach are skipped. Pages only ever *add* a
    block they miss, so a page that computed a block from rows this refresh
    has since changed cannot overwrite what is written here.
    """
    now = timezone.now()
    for step_s, ttl in CACHED_STEPS_S.items():
        horizon = floor_to(now - timedelta(seconds=ttl), step_s)
        starts: set[datetime] = set()
        for lo, hi in ranges:
            start = max(floor_to(lo, step_s), horizon)
            while start < hi:
                starts.add(start)
                start += timedelta(seconds=step_s)
        if not starts:
            continue
        figures = aggregate(cursor, step_s, _block_ranges(starts, step_s))
        blocks = _blocks_of(figures, starts)
        keys = _block_keys(step_s, starts)
        cache.set_many({key: blocks[start] for key, start in keys.items()}, timeout=ttl)


def closed_blocks(cursor: Any, step_s: int, starts: Sequence[datetime]) -> dict[datetime, Block]:
    """Return the blocks starting at ``starts`` (all connectors): cached, else computed, added."""
    keys = _block_keys(step_s, starts)
    found = cache.get_many(list(keys))
    blocks = {keys[key]: value for key, value in found.items()}
    missing = [start for start in starts if start not in blocks]
    if missing:
        computed = _blocks_of(aggregate(cursor, step_s, _block_ranges(missing, step_s)), missing)
        ttl = CACHED_STEPS_S.get(step_s, 3600)
        missing_keys = _block_keys(step_s, missing)
        for key, start in missing_keys.items():
            cache.add(key, computed[start], timeout=ttl)
        blocks.update(computed)
    return blocks


@dataclass
class Series:
    """One window of figures for some connectors: per step, and summed over the window."""

    window: Window
    now: datetime
    starts: list[datetime]
    steps: dict[int, list[Figures | None]]
    totals: dict[int, Figures]

    def step_minutes(self, index: int) -> float:
        """Return the minutes a step covers (the current one: up to now)."""
        if index == len(self.starts) - 1:
            elapsed = (self.now - self.starts[index]).total_seconds() / 60
            return max(1.0, min(elapsed, self.window.step_s / 60))
        return self.window.step_s / 60

    @property
    def minutes(self) -> float:
        return sum(self.step_minutes(i) for i in range(len(self.starts)))


def window_series(
    window: Window, connector_ids: Iterable[int], now: datetime | None = None
) -> Series:
    """Return ``connector_ids``' figures over the window ending now, step by step.

    The window is ``window.steps`` blocks ending with the current one. Blocks
    of a cached step size that have ended come from the cache (one round trip;
    a missing one is computed for every connector and added); the rest from
    the rollups, restricted to ``connector_ids``.
    """
    now = now or timezone.now()
    ids = sorted(set(connector_ids))
    step = timedelta(seconds=window.step_s)
    current = floor_to(now, window.step_s)
    starts = [current - step * i for i in reversed(range(window.steps))]
    by_block: dict[tuple[int, datetime], Figures] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        _no_jit(cursor)
        if window.step_s in CACHED_STEPS_S and ids:
            blocks = closed_blocks(cursor, window.step_s, starts[:-1])
            wanted = set(ids)
            for start, block in blocks.items():
                for connector_id, row in block.items():
                    if int(connector_id) in wanted:
                        by_block[(int(connector_id), start)] = Figures.from_cached(row)
            by_block.update(aggregate(cursor, window.step_s, [(current, current + step)], ids))
        elif ids:
            by_block = aggregate(cursor, window.step_s, [(starts[0], current + step)], ids)
    index = {start: i for i, start in enumerate(starts)}
    steps: dict[int, list[Figures | None]] = {cid: [None] * len(starts) for cid in ids}
    totals: dict[int, Figures] = {cid: Figures() for cid in ids}
    for (connector_id, start), figures in by_block.items():
        position = index.get(start)
        if position is None or connector_id not in steps:
            continue
        steps[connector_id][position] = figures
        totals[connector_id].add(figures)
    return Series(window, now, starts, steps, totals)
