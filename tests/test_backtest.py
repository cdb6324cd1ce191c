"""Backtests: the alerts a rule would have raised over stored history, without writing any."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta

import pytest

from integrations.models import Event, Message
from monitors.backtest import backtest
from monitors.models import Alert, AlertTransition, Rule
from monitors.rules import validate_rule

NOW = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)

FOLLOWUP = validate_rule(
    {
        "name": "wo-not-acknowledged",
        "kind": "followup",
        "when": {"type": "erp.workorder.released"},
        "expect": {"type": "mes.workorder.acknowledged"},
        "key": "subject",
        "within": "10m",
    }
)


def _event(type_: str, at: datetime, subject: str = "", data=None, landscape=None, system="erp"):
    system_obj = landscape[system] if landscape else None
    return Event.objects.create(
        source=f"/{system}",
        event_id=f"e-{next(_ids)}",
        type=type_,
        subject=subject,
        time=at,
        occurred_at=at,
        received_at=at,
        data=data,
        system=system_obj,
        plant=system_obj.plant if system_obj else None,
    )


def _release(subject: str, at: datetime) -> None:
    _event("erp.workorder.released", at, subject)


def _ack(subject: str, at: datetime) -> None:
    _event("mes.workorder.acknowledged", at, subject)


def _message(connector, status: str, at: datetime, count: int = 1) -> None:
    for _ in range(count):
        Message.objects.create(
            connector=connector,
            external_id=f"m-{next(_ids)}",
            status=status,
            occurred_at=at,
            last_attempt_at=at,
            received_at=at,
            plant=connector.plant,
        )


def _nothing_written() -> bool:
    return not (Alert.objects.exists() or AlertTransition.objects.exists() or Rule.objects.exists())


# --- follow-up -------------------------------------------------------------------------------


@pytest.fixture
def work_orders(db):
    """Seven days of releases: on time, late, never, twice, not yet due, and too old to count."""
    day = timedelta(days=1)
    minute = timedelta(minutes=1)
    _release("WO-1", NOW - 2 * day)  # acknowledged in time
    _ack("WO-1", NOW - 2 * day + 5 * minute)
    _release("WO-2", NOW - 2 * day)  # acknowledged 15m late
    _ack("WO-2", NOW - 2 * day + 25 * minute)
    _release("WO-7", NOW - 3 * day)  # acknowledged 2m late
    _ack("WO-7", NOW - 3 * day + 12 * minute)
    _release("WO-3", NOW - day)  # never acknowledged
    _release("WO-4", NOW - day)  # released twice, never acknowledged: one alert
    _release("WO-4", NOW - day + 5 * minute)
    _release("WO-5", NOW - 5 * minute)  # not due yet
    _release("WO-6", NOW - 9 * day)  # before the period
    _ack("WO-8", NOW - day)  # an acknowledgement of nothing


def test_a_followup_backtest_counts_alerts_keys_and_lateness(work_orders):
    report = backtest(FOLLOWUP, days=7, now=NOW)

    assert report.alerts == 4
    assert sorted(key for key, _ in report.keys) == ["WO-2", "WO-3", "WO-4", "WO-7"]
    assert report.distinct_keys == 4
    assert report.resolved_late == 2
    assert report.open_at_end == 2
    assert report.late_by_s == [120.0, 900.0]
    assert report.examined == 7  # releases in the period, due or not
    assert dict(report.lateness_buckets()) == {
        "under 1m": 0,
        "1m to 5m": 1,
        "5m to 15m": 0,
        "15m to 1h": 1,
        "1h to 4h": 0,
        "4h or more": 0,
    }


def test_a_followup_backtest_counts_per_day_over_the_whole_period(work_orders):
    report = backtest(FOLLOWUP, days=7, now=NOW)
    per_day = dict(report.per_day)
    assert len(per_day) == 8  # the partial first and last days included
    assert per_day[date(2024, 3, 7)] == 1  # WO-7
    assert per_day[date(2024, 3, 8)] == 1  # WO-2
    assert per_day[date(2024, 3, 9)] == 2  # WO-3 and WO-4
    assert sum(per_day.values()) == report.alerts
    assert report.max_per_day == 2


def test_a_shorter_period_sees_fewer_alerts(work_orders):
    report = backtest(FOLLOWUP, days=2, now=NOW)
    assert sorted(key for key, _ in report.keys) == ["WO-2", "WO-3", "WO-4"]


def test_a_backtest_writes_nothing(work_orders):
    backtest(FOLLOWUP, days=7, now=NOW)
    assert _nothing_written()


def test_a_followup_backtest_is_a_fixed_number_of_queries(work_orders, django_assert_num_queries):
    with django_assert_num_queries(5):  # landscape (3), trigger count, overdue triggers
        small = backtest(FOLLOWUP, days=7, now=NOW)
    for n in range(40):
        _release(f"WO-X{n}", NOW - timedelta(hours=n + 1))
    with django_assert_num_queries(5):
        large = backtest(FOLLOWUP, days=7, now=NOW)
    assert large.alerts == small.alerts + 40


def test_a_followup_backtest_matches_data_paths_and_keys(db):
    spec = validate_rule(
        {
            "name": "hold-not-applied",
            "kind": "followup",
            "when": {"type": "qms.hold.placed", "data.plant": "p1"},
            "expect": {"type": "wms.hold.applied"},
            "key": "data.lot",
            "within": "15m",
        }
    )
    _event("qms.hold.placed", NOW - timedelta(hours=3), data={"lot": "L-1", "plant": "p1"})
    _event("qms.hold.placed", NOW - timedelta(hours=3), data={"lot": "L-2", "plant": "p2"})
    _event("qms.hold.placed", NOW - timedelta(hours=3), data={"plant": "p1"})  # no key
    _event("wms.hold.applied", NOW - timedelta(hours=2), data={"lot": "L-1"})
    report = backtest(spec, days=1, now=NOW)
    assert report.keys == [("L-1", 1)]
    assert report.late_by_s == [45 * 60.0]


def test_a_plant_scoped_backtest_sees_only_its_plant(landscape):
    spec = validate_rule(
        {
            "name": "wo-started",
            "kind": "followup",
            "when": {"type": "mes.workorder.started"},
            "expect": {"type": "mes.workorder.completed"},
            "key": "subject",
            "within": "1h",
        }
    )
    _event(
        "mes.workorder.started",
        NOW - timedelta(hours=5),
        "WO-1",
        landscape=landscape,
        system="mes1",
    )
    _event(
        "mes.workorder.started",
        NOW - timedelta(hours=5),
        "WO-2",
        landscape=landscape,
        system="mes2",
    )
    assert backtest(spec, 1, NOW).alerts == 2
    report = backtest(spec, 1, NOW, plant_ids={landscape["p1"].pk})
    assert report.keys == [("WO-1", 1)]


# --- match -----------------------------------------------------------------------------------


def test_a_match_backtest_opens_a_new_alert_after_resolve_after_of_quiet(db):
    spec = validate_rule(
        {
            "name": "lab-result-failed",
            "kind": "match",
            "when": {"type": "lims.result.failed"},
            "key": "data.lot",
            "resolve_after": "8h",
        }
    )
    hour = timedelta(hours=1)
    for at in (NOW - 72 * hour, NOW - 70 * hour, NOW - 24 * hour):  # two episodes of L-1
        _event("lims.result.failed", at, data={"lot": "L-1"})
    _event("lims.result.failed", NOW - 2 * hour, data={"lot": "L-2"})  # still open
    _event("lims.result.passed", NOW - 2 * hour, data={"lot": "L-3"})

    report = backtest(spec, days=7, now=NOW)
    assert report.alerts == 3
    assert report.keys == [("L-1", 2), ("L-2", 1)]
    assert report.open_at_end == 1
    assert report.durations_s == [8 * 3600.0, 10 * 3600.0]
    assert report.examined == 4


# --- heartbeat -------------------------------------------------------------------------------


def test_a_heartbeat_backtest_finds_every_gap_longer_than_within(landscape):
    spec = validate_rule(
        {"name": "mes-p1-silent", "kind": "heartbeat", "source": "mes-p1", "within": "5m"}
    )
    minute = timedelta(minutes=1)
    start = NOW - timedelta(days=1)
    _event("mes.workorder.started", start - 30 * minute, "WO-0", landscape=landscape, system="mes1")
    for offset in (2, 4, 6, 20, 23, 40):  # gaps: 30+2m from the seed, 14m, 17m; then silent
        _event(
            "mes.workorder.started",
            start + offset * minute,
            "WO-1",
            landscape=landscape,
            system="mes1",
        )
    # A message on a connector of mes-p1 is a signal too: it splits the 17m gap in two 8.5m-ish.
    _message(landscape["c1"], "delivered", start + 31 * minute)
    _event("other", start + 10 * minute, "x", landscape=landscape, system="mes2")  # not mes-p1

    report = backtest(spec, days=1, now=NOW)
    # Gaps over 5m: seed->2m (fired before the period: not counted), 6->20, 20->23 no,
    # 23->31, 31->40, and 40m->now (still open).
    assert report.alerts == 4
    assert report.open_at_end == 1
    assert report.keys == [("mes-p1", 4)]
    assert report.examined == 7
    assert report.durations_s == [180.0, 240.0, 540.0]


def test_a_heartbeat_backtest_of_a_silent_source_fires_once_from_the_start(landscape):
    spec = validate_rule(
        {"name": "wms-silent", "kind": "heartbeat", "source": "wms-p1", "within": "10m"}
    )
    report = backtest(spec, days=3, now=NOW)
    assert (report.alerts, report.open_at_end) == (1, 1)
    assert "no signal at all" in report.notes[0]


# --- threshold -------------------------------------------------------------------------------


def test_a_threshold_backtest_applies_for_along_a_grid(landscape):
    spec = validate_rule(
        {
            "name": "erp-mes-failures",
            "kind": "threshold",
            "connector": "erp-to-mes-orders",
            "metric": "failure_ratio",
            "window": "15m",
            "op": ">",
            "value": 0.05,
            "for": "5m",
        }
    )
    connector = landscape["c1"]
    burst = NOW - timedelta(days=2)  # a burst that holds for the window: fires after 5m
    _message(connector, "failed", burst, 10)
    _message(connector, "delivered", burst, 10)
    blip = NOW - timedelta(days=1)  # failures drowned 1m later: pending, never firing
    _message(connector, "failed", blip, 2)
    _message(connector, "delivered", blip + timedelta(minutes=1), 100)
    _message(landscape["c2"], "failed", blip, 50)  # another connector

    report = backtest(spec, days=7, now=NOW)
    assert report.alerts == 1
    assert report.pending_only == 1
    assert report.open_at_end == 0
    assert report.keys == [("erp-to-mes-orders", 1)]
    assert report.durations_s == [9 * 60.0]  # fired at +6m, recovered at +15m
    assert report.examined == 7 * 24 * 20  # every 3m (window / 5) for 7 days
    assert _nothing_written()


def test_a_threshold_on_an_unknown_connector_says_so(db):
    spec = validate_rule(
        {
            "name": "x",
            "kind": "threshold",
            "connector": "nowhere",
            "metric": "failed_count",
            "window": "15m",
            "op": ">",
            "value": 1,
        }
    )
    report = backtest(spec, days=1, now=NOW)
    assert report.alerts == 0
    assert report.notes == ["unknown connector 'nowhere'"]


def test_the_report_reads_as_text(work_orders):
    lines = backtest(FOLLOWUP, days=7, now=NOW).lines()
    assert lines[0].startswith("backtest of wo-not-acknowledged (followup) over 7 days")
    assert "4 alerts would have been raised on 4 keys" in lines[1]
    assert "2 resolved late, 2 still open" in lines[2]
    assert lines[3] == "  late by: median 8m, p90 14m, max 15m"
    assert lines[4].startswith("  top keys: ")
