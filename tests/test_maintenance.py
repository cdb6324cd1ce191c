"""Maintenance windows: a plant's alerts are muted while one is open, one-off or weekly."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from monitors.models import Alert, MaintenanceWindow
from monitors.silences import (
    MuteError,
    active_mutes,
    create_window,
    describe_window,
    window_is_active,
    window_occurrence,
)
from tests.alerts_kit import make_alert, make_rule

MON, TUE, WED, THU, FRI, SAT, SUN = range(7)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def weekly(plant, days, start: str, minutes: int, **fields) -> MaintenanceWindow:  # type: ignore[no-untyped-def]
    return MaintenanceWindow.objects.create(
        plant=plant,
        name="weekly",
        weekdays=list(days),
        start_time=time.fromisoformat(start),
        duration_minutes=minutes,
        **fields,
    )


def with_zone(plant, zone: str):  # type: ignore[no-untyped-def]
    plant.timezone = zone
    plant.save()
    return plant


def test_a_one_off_window_is_open_from_its_start_until_just_before_its_end(landscape):
    window = MaintenanceWindow.objects.create(
        plant=landscape["p1"],
        name="press 4 overhaul",
        starts_at=utc(2026, 5, 21, 6),
        ends_at=utc(2026, 5, 21, 10),
    )

    assert not window_is_active(window, utc(2026, 5, 21, 5, 59))
    assert window_is_active(window, utc(2026, 5, 21, 6))
    assert window_is_active(window, utc(2026, 5, 21, 9, 59, 59))
    assert not window_is_active(window, utc(2026, 5, 21, 10))


def test_a_disabled_window_mutes_nothing(landscape):
    window = MaintenanceWindow.objects.create(
        plant=landscape["p1"],
        name="off",
        starts_at=utc(2026, 5, 21, 6),
        ends_at=utc(2026, 5, 21, 10),
        enabled=False,
    )

    assert not window_is_active(window, utc(2026, 5, 21, 7))
    assert not active_mutes(utc(2026, 5, 21, 7)).windows


def test_a_weekly_window_opens_on_its_weekdays_only(landscape):
    window = weekly(landscape["p1"], [MON, WED], "09:00", 60)

    assert window_is_active(window, utc(2026, 5, 18, 9, 30))  # Monday
    assert not window_is_active(window, utc(2026, 5, 19, 9, 30))  # Tuesday
    assert window_is_active(window, utc(2026, 5, 20, 9, 0))  # Wednesday, at the start
    assert not window_is_active(window, utc(2026, 5, 20, 10, 0))  # Wednesday, at the end
    assert not window_is_active(window, utc(2026, 5, 18, 8, 59))


def test_a_weekly_window_may_cross_midnight(landscape):
    window = weekly(landscape["p1"], [FRI], "22:00", 6 * 60)

    assert window_is_active(window, utc(2026, 5, 22, 23, 0))  # Friday night
    assert window_is_active(window, utc(2026, 5, 23, 3, 59))  # Saturday, small hours
    assert not window_is_active(window, utc(2026, 5, 23, 4, 0))
    assert not window_is_active(window, utc(2026, 5, 23, 23, 0))  # Saturday night


def test_a_window_crossing_the_week_boundary_still_closes(landscape):
    window = weekly(landscape["p1"], [SUN], "20:00", 12 * 60)

    assert window_is_active(window, utc(2026, 5, 18, 7, 59))  # Monday morning
    assert not window_is_active(window, utc(2026, 5, 18, 8, 0))


def test_a_weekly_window_keeps_its_local_start_in_the_plants_time_zone(landscape):
    plant = with_zone(landscape["p1"], "Europe/Berlin")
    window = weekly(plant, [MON], "06:00", 60)
    window.refresh_from_db()

    # Winter: CET is UTC+1, so 06:00 local is 05:00 UTC.
    assert window_is_active(window, utc(2026, 1, 5, 5, 30))
    assert not window_is_active(window, utc(2026, 1, 5, 6, 30))
    # Summer: CEST is UTC+2, so 06:00 local is 04:00 UTC.
    assert window_is_active(window, utc(2026, 7, 6, 4, 30))
    assert not window_is_active(window, utc(2026, 7, 6, 5, 30))


def test_the_local_weekday_counts_not_the_utc_one(landscape):
    plant = with_zone(landscape["p1"], "America/Chicago")
    window = weekly(plant, [SUN], "23:00", 120)

    # Sunday 23:00 CDT is Monday 04:00 UTC; it runs until Monday 06:00 UTC.
    assert not window_is_active(window, utc(2026, 5, 17, 23, 30))  # Sunday UTC, 18:30 local
    assert window_is_active(window, utc(2026, 5, 18, 4, 0))
    assert window_is_active(window, utc(2026, 5, 18, 5, 59))
    assert not window_is_active(window, utc(2026, 5, 18, 6, 0))


def test_a_window_over_the_spring_dst_change_lasts_its_elapsed_duration(landscape):
    plant = with_zone(landscape["p1"], "Europe/Berlin")
    window = weekly(plant, [SUN], "01:00", 180)

    # 29 March 2026: clocks jump from 02:00 CET to 03:00 CEST. 01:00 CET is 00:00 UTC.
    start, end = window_occurrence(window, utc(2026, 3, 29, 1, 0))
    assert start == utc(2026, 3, 29, 0, 0)
    assert end == utc(2026, 3, 29, 3, 0)
    assert not window_is_active(window, utc(2026, 3, 29, 3, 0))


def test_a_window_starting_in_the_skipped_hour_starts_after_the_jump(landscape):
    plant = with_zone(landscape["p1"], "Europe/Berlin")
    window = weekly(plant, [SUN], "02:30", 60)

    # 02:30 does not exist on 29 March 2026; the window opens at 03:30 CEST (01:30 UTC).
    assert not window_is_active(window, utc(2026, 3, 29, 1, 0))
    assert window_is_active(window, utc(2026, 3, 29, 1, 30))


def test_a_window_on_the_autumn_dst_change_opens_once(landscape):
    plant = with_zone(landscape["p1"], "Europe/Berlin")
    window = weekly(plant, [SUN], "02:30", 30)

    # 25 October 2026: 02:30 happens twice; the window opens at the first (00:30 UTC).
    assert window_is_active(window, utc(2026, 10, 25, 0, 45))
    assert not window_is_active(window, utc(2026, 10, 25, 1, 45))


def test_an_open_window_mutes_its_plants_alerts_only(landscape):
    rule = make_rule()
    p1_alert = make_alert(rule, "WO-1", plant=landscape["p1"])
    p2_alert = make_alert(rule, "WO-2", plant=landscape["p2"])
    plantless = make_alert(rule, "WO-3")
    window = MaintenanceWindow.objects.create(
        plant=landscape["p1"],
        name="shutdown",
        starts_at=utc(2026, 5, 21, 6),
        ends_at=utc(2026, 5, 21, 10),
    )
    mutes = active_mutes(utc(2026, 5, 21, 8))
    alerts = {a.key: a for a in Alert.objects.select_related("rule", "plant")}

    assert mutes.silenced(alerts[p1_alert.key]) == window
    assert mutes.silenced(alerts[p2_alert.key]) is None
    assert mutes.silenced(alerts[plantless.key]) is None
    assert active_mutes(utc(2026, 5, 21, 10)).silenced(alerts[p1_alert.key]) is None


def test_mutes_for_a_scoped_reader_load_only_its_plants_windows(landscape):
    MaintenanceWindow.objects.create(
        plant=landscape["p2"], name="p2", starts_at=utc(2026, 5, 21), ends_at=utc(2026, 5, 22)
    )

    assert active_mutes(utc(2026, 5, 21, 8)).windows
    assert not active_mutes(utc(2026, 5, 21, 8), [landscape["p1"].pk]).windows


# --- Creating ------------------------------------------------------------------------------


def test_it_creates_a_weekly_window(landscape):
    window = create_window(
        landscape["p1"],
        "Sunday night",
        actor="ada",
        weekdays=[SUN],
        start_time=time(22, 0),
        duration_minutes=6 * 60,
    )

    assert window.weekdays == [SUN]
    assert describe_window(window) == "weekly Sun 22:00 for 6h (UTC)"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"weekdays": [7], "start_time": time(1), "duration_minutes": 60}, "weekdays"),
        ({"weekdays": [MON], "duration_minutes": 60}, "start_time"),
        ({"weekdays": [MON], "start_time": time(1)}, "duration_minutes"),
        (
            {"weekdays": [MON], "start_time": time(1), "duration_minutes": 8 * 24 * 60},
            "duration_minutes",
        ),
        ({}, "starts_at"),
        ({"starts_at": utc(2026, 5, 21)}, "ends_at"),
        ({"starts_at": utc(2026, 5, 21), "ends_at": utc(2026, 5, 20)}, "ends_at"),
    ],
)
def test_it_refuses_an_incomplete_window_naming_the_field(landscape, fields, field):
    with pytest.raises(MuteError) as caught:
        create_window(landscape["p1"], "w", actor="ada", **fields)

    assert caught.value.field == field
    assert not MaintenanceWindow.objects.exists()
