"""Per-minute connector rollups: what they count, how the refresh keeps them right, the blocks."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import orjson
import pytest
import time_machine
from django.core.cache import cache
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from integrations import rollups
from integrations.models import ConnectorRollup, Message, MessageAttempt
from integrations.rollups import (
    BOUNDS_MS,
    WINDOWS,
    Figures,
    bucket_index,
    bucket_percentile,
    refresh_recent,
    refresh_rollups,
    window_series,
)
from monitors.evaluate import interpolated_percentile
from monitors.scheduler import Scheduler
from tests.conftest import bearer

NOW = datetime(2026, 5, 21, 12, 0, 30, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


@pytest.fixture(autouse=True)
def fresh_cache(db):
    """Start from no cached blocks and no remembered refresh (the cache outlives tests)."""
    rollups.forget_cached_blocks()
    cache.delete(rollups._watermark_key())
    yield


def minute(minutes_ago: int) -> datetime:
    """Return the start of the minute ``minutes_ago`` before NOW's minute."""
    return NOW.replace(second=0) - timedelta(minutes=minutes_ago)


def capture(token: str, reports: list[dict[str, object]]) -> None:
    """Record message reports through the ingest endpoint, as connectors do."""
    response = Client().post(
        "/api/v1/messages",
        data=orjson.dumps(reports),
        content_type="application/json",
        **bearer(token),
    )
    assert response.status_code == 202, response.content
    assert response.json()["rejected"] == []


def report(
    external_id: str,
    at: datetime,
    status: str = "delivered",
    latency_ms: int | None = 100,
    connector: str = "erp-to-mes-orders",
) -> dict[str, object]:
    item: dict[str, object] = {
        "id": external_id,
        "connector": connector,
        "status": status,
        "occurred_at": at.isoformat().replace("+00:00", "Z"),
    }
    if latency_ms is not None:
        item["latency_ms"] = latency_ms
    return item


def row(connector, at: datetime) -> ConnectorRollup:  # type: ignore[no-untyped-def]
    return ConnectorRollup.objects.get(connector=connector, minute=at)


def refresh_window() -> None:
    refresh_rollups(NOW - timedelta(hours=6), NOW + MINUTE)


# --- What a minute holds ------------------------------------------------------------------------


def test_it_counts_each_minutes_messages_by_connector_and_current_status(landscape, ingest_token):
    c1, c2 = landscape["c1"], landscape["c2"]
    with time_machine.travel(NOW, tick=False):
        capture(
            ingest_token,
            [
                report("a", minute(3) + timedelta(seconds=1)),
                report("b", minute(3) + timedelta(seconds=59), status="failed"),
                report("c", minute(3) + timedelta(seconds=30), status="dead_lettered"),
                report("d", minute(3) + timedelta(seconds=40), status="received"),
                report("e", minute(2), connector="erp-to-mes-p2-orders"),
                report("f", minute(1), status="failed"),
            ],
        )
        refresh_window()

    first = row(c1, minute(3))
    assert (first.total, first.delivered, first.failed, first.dead_lettered) == (4, 1, 1, 1)
    assert first.plant_id == landscape["p1"].id
    assert row(c2, minute(2)).total == 1
    assert row(c2, minute(2)).plant_id == landscape["p2"].id
    assert (row(c1, minute(1)).total, row(c1, minute(1)).failed) == (1, 1)
    assert ConnectorRollup.objects.count() == 3


def test_a_message_counts_with_its_latest_status_after_a_second_report(landscape, ingest_token):
    with time_machine.travel(NOW, tick=False):
        capture(ingest_token, [report("a", minute(5), status="failed")])
        refresh_window()
        capture(ingest_token, [report("a", minute(5) + timedelta(seconds=20))])
        refresh_window()

    figures = row(landscape["c1"], minute(5))
    assert (figures.total, figures.delivered, figures.failed) == (1, 1, 0)


def test_it_sums_latencies_and_keeps_the_largest(landscape, ingest_token):
    with time_machine.travel(NOW, tick=False):
        capture(
            ingest_token,
            [
                report("a", minute(2), latency_ms=120),
                report("b", minute(2), latency_ms=2_400),
                report("c", minute(2), latency_ms=None),
            ],
        )
        refresh_window()

    figures = row(landscape["c1"], minute(2))
    assert (figures.latency_sum_ms, figures.latency_count, figures.latency_max_ms) == (
        2_520,
        2,
        2_400,
    )
    expected = [0] * (len(BOUNDS_MS) + 1)
    expected[bucket_index(120)] += 1
    expected[bucket_index(2_400)] += 1
    assert figures.latency_buckets == expected


def test_replay_attempts_count_as_replayed_in_the_minute_of_their_message(landscape, ingest_token):
    with time_machine.travel(NOW, tick=False):
        capture(ingest_token, [report("a", minute(30), status="failed"), report("b", minute(30))])
        message = Message.objects.get(external_id="a")
        for n, status in enumerate(("failed", "delivered")):
            # As the replay worker records them: new attempts carrying the job's id.
            MessageAttempt.objects.create(
                message=message,
                at=minute(1) + timedelta(seconds=n),
                status=status,
                received_at=NOW,
                replay_id=7,
            )
        refresh_window()

    assert row(landscape["c1"], minute(30)).replayed == 2
    assert not ConnectorRollup.objects.filter(minute=minute(1)).exists()


def test_the_failure_ratio_counts_failed_and_dead_lettered_messages():
    figures = Figures(total=40, delivered=36, failed=3, dead_lettered=1)
    assert figures.failure_ratio == pytest.approx(0.1)
    assert Figures().failure_ratio is None


# --- Percentiles from buckets --------------------------------------------------------------------


def bucket_bounds(latency: float) -> tuple[float, float]:
    index = bucket_index(int(latency))
    return (BOUNDS_MS[index - 1] if index else 0, BOUNDS_MS[index])


@pytest.mark.parametrize(
    "latencies",
    [
        [i * 37 % 2_900 + 20 for i in range(1, 400)],
        [180] * 90 + [4_200] * 10,
        [60 + i for i in range(20)],
    ],
    ids=["spread", "bimodal", "narrow"],
)
def test_the_p95_from_buckets_lies_within_the_bucket_of_the_exact_p95(latencies):
    buckets = [0] * (len(BOUNDS_MS) + 1)
    for latency in latencies:
        buckets[bucket_index(latency)] += 1

    estimate = bucket_percentile(buckets, 0.95, max(latencies))
    exact = interpolated_percentile([float(v) for v in latencies], 0.95)

    low, high = bucket_bounds(exact)
    assert low <= estimate <= high, (estimate, exact)


def test_the_p95_of_the_open_top_bucket_is_capped_by_the_largest_latency():
    buckets = [0] * (len(BOUNDS_MS) + 1)
    buckets[-1] = 10
    assert bucket_percentile(buckets, 0.95, 2_000_000) <= 2_000_000
    assert bucket_percentile(buckets, 0.95, 2_000_000) >= BOUNDS_MS[-1]
    assert bucket_percentile([0] * len(buckets), 0.95, 0) is None


def test_the_p95_of_summed_minutes_comes_from_their_summed_buckets(landscape, ingest_token):
    latencies = [50 + (i * 7919) % 3000 for i in range(120)]
    with time_machine.travel(NOW, tick=False):
        capture(
            ingest_token,
            [report(f"m{i}", minute(i % 6), latency_ms=v) for i, v in enumerate(latencies)],
        )
        refresh_window()
        series = window_series(WINDOWS["1h"], [landscape["c1"].id])

    total = series.totals[landscape["c1"].id]
    assert total.total == 120
    exact = interpolated_percentile([float(v) for v in latencies], 0.95)
    low, high = bucket_bounds(exact)
    assert low <= total.p95_latency_ms <= high


# --- Keeping them right -------------------------------------------------------------------------


def test_refreshing_twice_changes_nothing(landscape, ingest_token):
    with time_machine.travel(NOW, tick=False):
        capture(
            ingest_token, [report(f"m{i}", minute(i % 4), latency_ms=i * 10) for i in range(12)]
        )
        refresh_window()
        before = list(ConnectorRollup.objects.order_by("id").values())
        again = refresh_rollups(NOW - timedelta(hours=6), NOW + MINUTE)

    assert list(ConnectorRollup.objects.order_by("id").values()) == before
    if connection.vendor == "postgresql":
        assert again.upserted == 0  # unchanged rows are not rewritten


def test_a_late_arriving_message_updates_its_minute_on_the_next_periodic_run(
    landscape, ingest_token
):
    c1 = landscape["c1"]
    with time_machine.travel(NOW, tick=False) as clock:
        capture(ingest_token, [report("a", minute(180)), report("b", minute(1))])
        first = refresh_recent()
        assert first.full
        clock.move_to(NOW + timedelta(minutes=5))
        assert refresh_recent().upserted == 0  # nothing changed since the last run
        clock.move_to(NOW + timedelta(minutes=10))
        capture(ingest_token, [report("late", minute(180) + timedelta(seconds=5), "failed")])
        late = refresh_recent()

    assert late.minutes == 1
    figures = row(c1, minute(180))
    assert (figures.total, figures.failed) == (2, 1)
    assert row(c1, minute(1)).total == 1


def test_a_report_that_moves_a_message_earlier_refreshes_the_minute_it_left(
    landscape, ingest_token
):
    c1 = landscape["c1"]
    with time_machine.travel(NOW, tick=False) as clock:
        capture(ingest_token, [report("a", minute(10), status="failed")])
        refresh_recent()
        clock.move_to(NOW + timedelta(minutes=5))
        # An earlier attempt reported afterwards: the message now occurred a minute sooner.
        capture(ingest_token, [report("a", minute(11), status="received")])
        refresh_recent()

    assert Message.objects.get().occurred_at == minute(11)
    assert row(c1, minute(11)).total == 1
    assert not ConnectorRollup.objects.filter(minute=minute(10)).exists()


def test_the_periodic_job_leaves_the_work_to_a_refresh_holding_the_lock(landscape, ingest_token):
    if connection.vendor != "postgresql":
        pytest.skip("the refresh lock is PostgreSQL's advisory lock")
    with time_machine.travel(NOW, tick=False):
        capture(ingest_token, [report("a", minute(1))])
    holding, done = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                rollups._lock(cursor, wait=True)
                holding.set()
                done.wait(timeout=30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert holding.wait(timeout=10)
        skipped = refresh_recent()
    finally:
        done.set()
        holder.join(timeout=30)
    assert skipped.skipped
    assert not ConnectorRollup.objects.exists()
    assert refresh_recent().upserted == 1


def in_threads(count: int, work: Callable[[], object]) -> None:
    """Run ``work`` in ``count`` threads released at once, each on its own connection."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]


@pytest.mark.django_db(transaction=True)
def test_two_refreshes_at_once_both_succeed_and_agree(landscape, ingest_token):
    rollups.forget_cached_blocks()
    with time_machine.travel(NOW, tick=False):
        capture(
            ingest_token,
            [
                report(f"m{i}", minute(i % 30), status="failed" if i % 7 else "delivered")
                for i in range(300)
            ],
        )
        for _ in range(3):
            in_threads(2, refresh_window)

    assert ConnectorRollup.objects.count() == 30
    assert sum(ConnectorRollup.objects.values_list("total", flat=True)) == 300


# --- Windows and cached blocks ------------------------------------------------------------------


def test_a_window_sums_its_steps_per_connector(landscape, ingest_token):
    c1, c2 = landscape["c1"], landscape["c2"]
    with time_machine.travel(NOW, tick=False):
        capture(
            ingest_token,
            [report(f"a{i}", NOW - timedelta(minutes=20 * i)) for i in range(60)]
            + [report("b", NOW - timedelta(hours=2), connector="erp-to-mes-p2-orders")],
        )
        refresh_recent()
        day = window_series(WINDOWS["24h"], [c1.id, c2.id])
        hour = window_series(WINDOWS["1h"], [c1.id])

    assert len(day.starts) == 96
    assert day.totals[c1.id].total == 60
    assert day.totals[c2.id].total == 1
    assert sum(f.total for f in day.steps[c1.id] if f is not None) == 60
    assert len(hour.starts) == 60
    assert hour.totals[c1.id].total == 3  # 0, 20 and 40 minutes ago


def test_a_refresh_writes_a_changed_old_block_through_to_the_cache(landscape, ingest_token):
    c1 = landscape["c1"]
    with time_machine.travel(NOW, tick=False) as clock:
        capture(ingest_token, [report("a", NOW - timedelta(hours=5))])
        refresh_recent()
        assert window_series(WINDOWS["7d"], [c1.id]).totals[c1.id].total == 1  # now cached
        clock.move_to(NOW + timedelta(minutes=2))
        capture(ingest_token, [report("b", NOW - timedelta(hours=5), status="dead_lettered")])
        refresh_recent()
        week = window_series(WINDOWS["7d"], [c1.id])

    assert (week.totals[c1.id].total, week.totals[c1.id].dead_lettered) == (2, 1)


def test_a_window_sees_only_the_connectors_asked_for(landscape, ingest_token):
    c1, c2 = landscape["c1"], landscape["c2"]
    with time_machine.travel(NOW, tick=False):
        capture(
            ingest_token,
            [
                report("a", NOW - timedelta(hours=3)),
                report("b", NOW - timedelta(hours=3), connector="erp-to-mes-p2-orders"),
            ],
        )
        refresh_recent()
        window_series(WINDOWS["7d"], [c1.id, c2.id])  # caches blocks of both
        only_p2 = window_series(WINDOWS["7d"], [c2.id])

    assert set(only_p2.totals) == {c2.id}
    assert only_p2.totals[c2.id].total == 1


@pytest.mark.django_db(transaction=True)
def test_the_embedded_scheduler_refreshes_the_rollups_after_each_pass(landscape, ingest_token):
    rollups.forget_cached_blocks()
    cache.delete(rollups._watermark_key())
    capture(ingest_token, [report("a", timezone.now() - timedelta(minutes=2))])

    scheduler = Scheduler(every_s=3600).start()
    try:
        deadline = time.monotonic() + 30
        while not ConnectorRollup.objects.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        scheduler.stop()

    assert ConnectorRollup.objects.get().total == 1
