"""Alarm-load figures after ISA-18.2, from the alarm log: rate, flood, stale and chattering."""

from __future__ import annotations

from datetime import timedelta

import pytest

from monitors.alarmload import alarm_load
from monitors.models import AlertTransition
from tests.alerts_kit import T0, fire, make_alert, make_rule

NOW = T0 + timedelta(days=2)


def minutes_ago(n: float):  # type: ignore[no-untyped-def]
    return NOW - timedelta(minutes=n)


def firings(rule, key: str, plant, *at) -> None:  # type: ignore[no-untyped-def]
    """Record episodes of (rule, key) fired at the given times; all but the last resolved."""
    for n, moment in enumerate(at):
        last = n == len(at) - 1
        make_alert(
            rule,
            key,
            plant=plant,
            started_at=moment,
            state="firing" if last else "resolved",
        )


@pytest.fixture
def rule(db):  # type: ignore[no-untyped-def]
    return make_rule("wo-not-acknowledged")


def test_it_counts_transitions_into_firing_in_the_last_ten_minutes(landscape, rule):
    p1 = landscape["p1"]
    firings(rule, "WO-1", p1, minutes_ago(11))
    firings(rule, "WO-2", p1, minutes_ago(10))  # exactly 10 minutes ago: outside (t > now - 10m)
    firings(rule, "WO-3", p1, minutes_ago(9))
    firings(rule, "WO-4", p1, NOW)
    alert = make_alert(rule, "WO-5", plant=p1, started_at=minutes_ago(30))
    AlertTransition.objects.create(
        alert=alert, rule=rule, plant=p1, at=minutes_ago(1), state="acknowledged"
    )

    load = alarm_load(NOW).for_plant("p1")

    assert load.last_10m == 2
    assert not load.flood


def test_eleven_alerts_in_ten_minutes_are_a_flood_ten_are_not(landscape, rule):
    for n in range(10):
        firings(rule, f"WO-{n}", landscape["p1"], minutes_ago(n))
    assert not alarm_load(NOW).for_plant("p1").flood

    firings(rule, "WO-10", landscape["p1"], minutes_ago(0.5))

    load = alarm_load(NOW).for_plant("p1")
    assert load.last_10m == 11
    assert load.flood


def test_figures_are_per_plant_and_overall(landscape, rule):
    for n in range(11):
        firings(rule, f"WO-{n}", landscape["p1"], minutes_ago(n * 0.5))
    firings(rule, "WO-P2", landscape["p2"], minutes_ago(2))
    firings(rule, "WO-NONE", None, minutes_ago(2))

    report = alarm_load(NOW)

    assert report.for_plant("p1").flood
    assert report.for_plant("p2").last_10m == 1
    assert not report.for_plant("p2").flood
    assert report.for_plant(None).last_10m == 1
    assert report.overall.last_10m == 13
    assert report.overall.flood


def test_it_averages_alerts_per_hour_over_24_hours(landscape, rule):
    for n in range(48):
        firings(rule, f"WO-{n}", landscape["p1"], minutes_ago(n * 30))  # 0 .. 23.5 h ago
    firings(rule, "WO-old", landscape["p1"], minutes_ago(24 * 60 + 1))

    load = alarm_load(NOW).for_plant("p1")

    assert load.last_24h == 48
    assert load.per_hour == 2.0
    assert load.rate_level == "acceptable"


def test_an_hourly_rate_above_twelve_is_overloaded(landscape, rule):
    for n in range(24 * 13):
        fire(make_alert(rule, f"WO-{n}", plant=landscape["p1"], started_at=T0), NOW)
    AlertTransition.objects.filter(at=T0).delete()

    load = alarm_load(NOW).for_plant("p1")

    assert load.per_hour == 13.0
    assert load.rate_level == "overloaded"


def test_alerts_open_for_over_24_hours_are_stale(landscape, rule):
    p1 = landscape["p1"]
    day = 24 * 60
    make_alert(rule, "firing-old", plant=p1, started_at=minutes_ago(day + 1))
    make_alert(rule, "acked-old", plant=p1, started_at=minutes_ago(day + 5), state="acknowledged")
    make_alert(rule, "firing-young", plant=p1, started_at=minutes_ago(day - 1))
    make_alert(rule, "resolved-old", plant=p1, started_at=minutes_ago(3 * day), state="resolved")
    make_alert(rule, "pending-old", plant=p1, started_at=minutes_ago(3 * day), state="pending")
    # Began long ago but only fired (its deadline passed) an hour ago: not stale yet.
    make_alert(
        rule, "due-late", plant=p1, started_at=minutes_ago(3 * day), fired_at=minutes_ago(60)
    )

    assert alarm_load(NOW).for_plant("p1").stale == 2


def test_a_rule_firing_three_times_for_one_key_within_an_hour_chatters(landscape, rule):
    p1 = landscape["p1"]
    firings(rule, "WO-1", p1, minutes_ago(50), minutes_ago(30), minutes_ago(5))
    calm = make_rule("lab-result-failed", kind="match")
    firings(calm, "L-1", p1, minutes_ago(50), minutes_ago(5))
    firings(calm, "L-2", p1, minutes_ago(40))
    firings(calm, "L-3", p1, minutes_ago(30))
    slow = make_rule("mes-p1-silent", kind="heartbeat")
    firings(slow, "mes-p1", p1, minutes_ago(61), minutes_ago(30), minutes_ago(5))

    chattering = alarm_load(NOW).for_plant("p1").chattering

    assert [(c.rule, c.fired, c.keys) for c in chattering] == [
        ("wo-not-acknowledged", 3, ("WO-1",))
    ]


def test_chattering_rules_appear_overall_too(landscape, rule):
    firings(rule, "WO-1", landscape["p2"], minutes_ago(50), minutes_ago(30), minutes_ago(5))
    firings(rule, "WO-2", landscape["p1"], *(minutes_ago(n) for n in (1, 2, 3, 4)))

    overall = alarm_load(NOW).overall.chattering

    assert [(c.rule, c.fired, c.keys) for c in overall] == [
        ("wo-not-acknowledged", 4, ("WO-1", "WO-2"))
    ]


def test_a_scoped_reader_gets_its_plants_figures_only(landscape, rule):
    firings(rule, "WO-1", landscape["p1"], minutes_ago(1))
    firings(rule, "WO-2", landscape["p2"], minutes_ago(1))

    report = alarm_load(NOW, [landscape["p1"].pk])

    assert report.overall.last_10m == 1
    assert set(report.plants) == {"p1"}


def test_a_quiet_plant_reads_zero(landscape):
    load = alarm_load(NOW).for_plant("p2")

    assert (load.last_10m, load.stale, load.chattering, load.per_hour) == (0, 0, (), 0.0)
    assert load.as_json()["flood"] is False


def test_the_figures_cost_three_queries(landscape, rule, django_assert_num_queries):
    for n in range(5):
        plant = landscape["p1" if n % 2 else "p2"]
        firings(rule, f"WO-{n}", plant, *(minutes_ago(m) for m in range(n, 60, 10)))

    with django_assert_num_queries(3):
        alarm_load(NOW)
