"""Threshold rules: a connector health metric over a sliding window, held `for` a while."""

from __future__ import annotations

import pytest

from monitors.evaluate import evaluate, interpolated_percentile
from monitors.lifecycle import acknowledge
from tests.evaluation_helpers import alerts_of, at, firing, log_of, make_rule, store_message

FAILURES = {
    "name": "erp-mes-failures",
    "kind": "threshold",
    "connector": "erp-to-mes-orders",
    "metric": "failure_ratio",
    "window": "15m",
    "op": ">",
    "value": 0.05,
    "summary": "{{ rule }} at {{ value }}",
}


def traffic(connector, minute: float, delivered: int, failed: int = 0, dead: int = 0):
    for status, count in (("delivered", delivered), ("failed", failed), ("dead_lettered", dead)):
        for _ in range(count):
            store_message(connector, at(minute), status)


def test_it_fires_when_the_failure_ratio_crosses_the_threshold(landscape):
    rule = make_rule(FAILURES)
    traffic(landscape["c1"], 1, delivered=9, failed=1)
    report = evaluate(now=at(2))
    assert firing(rule) == ["erp-to-mes-orders"]
    (alert,) = alerts_of(rule)
    assert alert.value == pytest.approx(0.1)
    assert alert.summary == "erp-mes-failures at 0.1"
    assert alert.plant == landscape["p1"]
    assert (alert.started_at, alert.fired_at) == (at(2), at(2))
    assert report.fired == 1


def test_it_stays_quiet_at_or_below_the_threshold_and_without_traffic(landscape):
    rule = make_rule(FAILURES)
    evaluate(now=at(1))
    traffic(landscape["c1"], 1, delivered=19, failed=1)
    evaluate(now=at(2))
    assert alerts_of(rule) == []


def test_messages_of_other_connectors_do_not_count(landscape):
    rule = make_rule(FAILURES)
    traffic(landscape["c1"], 1, delivered=10)
    traffic(landscape["c2"], 1, delivered=0, failed=10)
    evaluate(now=at(2))
    assert alerts_of(rule) == []


def test_it_recovers_when_the_failures_leave_the_window(landscape):
    rule = make_rule(FAILURES)
    traffic(landscape["c1"], 1, delivered=9, failed=1)
    evaluate(now=at(2))
    traffic(landscape["c1"], 10, delivered=9)
    evaluate(now=at(15))
    assert firing(rule) == ["erp-to-mes-orders"]  # the failure at 1m is still in (0m, 15m]
    evaluate(now=at(16))
    (alert,) = alerts_of(rule)
    assert (alert.state, alert.resolution, alert.resolved_at) == ("resolved", "recovered", at(16))


def test_with_for_it_is_pending_until_the_condition_held_that_long(landscape):
    rule = make_rule({**FAILURES, "for": "5m"})
    traffic(landscape["c1"], 1, delivered=1, dead=1)
    report = evaluate(now=at(2))
    (alert,) = alerts_of(rule)
    assert alert.state == "pending"
    assert (report.pending, report.fired) == (1, 0)
    assert report.next_deadline == at(7)
    evaluate(now=at(6, 59))
    assert alerts_of(rule)[0].state == "pending"
    evaluate(now=at(7))
    alert.refresh_from_db()
    assert (alert.state, alert.started_at, alert.fired_at) == ("firing", at(2), at(7))
    traffic(landscape["c1"], 16, delivered=5)
    evaluate(now=at(17))
    alert.refresh_from_db()
    assert (alert.state, alert.resolution) == ("resolved", "recovered")
    assert log_of(alert) == [("pending", at(2)), ("firing", at(7)), ("resolved", at(17))]


def test_a_pending_alert_whose_condition_stops_holding_recovers_without_firing(landscape):
    rule = make_rule({**FAILURES, "for": "5m"})
    traffic(landscape["c1"], 1, delivered=1, failed=1)
    evaluate(now=at(2))
    traffic(landscape["c1"], 3, delivered=50)
    evaluate(now=at(4))
    (alert,) = alerts_of(rule)
    assert (alert.state, alert.resolution, alert.fired_at) == ("resolved", "recovered", None)
    assert [state for state, _ in log_of(alert)] == ["pending", "resolved"]


def test_an_acknowledged_alert_still_recovers(landscape):
    rule = make_rule(FAILURES)
    traffic(landscape["c1"], 1, delivered=1, failed=1)
    evaluate(now=at(2))
    acknowledge(alerts_of(rule)[0].id, "olga", now=at(3))
    evaluate(now=at(17))
    assert alerts_of(rule)[0].resolution == "recovered"


def test_the_value_follows_the_metric_while_it_fires(landscape):
    rule = make_rule(FAILURES)
    traffic(landscape["c1"], 1, delivered=1, failed=1)
    evaluate(now=at(2))
    traffic(landscape["c1"], 3, delivered=2)
    evaluate(now=at(4))
    (alert,) = alerts_of(rule)
    assert alert.value == pytest.approx(0.25)
    assert alert.summary == "erp-mes-failures at 0.25"


@pytest.mark.parametrize(
    ("metric", "op", "value", "fires"),
    [
        ("failed_count", ">=", 2, True),
        ("failed_count", ">=", 3, False),
        ("dead_lettered_count", "==", 1, True),
        ("throughput", ">", 0.6, True),  # 10 messages in 15 minutes
        ("throughput", ">", 0.7, False),
        ("p95_latency_ms", ">", 890, True),  # 8 latencies: 700 + 0.65 * (1000 - 700) = 895
        ("p95_latency_ms", ">", 900, False),
    ],
)
def test_each_metric_is_measured_over_the_window(landscape, metric, op, value, fires):
    rule = make_rule({**FAILURES, "metric": metric, "op": op, "value": value})
    connector = landscape["c1"]
    for latency in range(100, 800, 100):  # 7 delivered, 100..700 ms
        store_message(connector, at(1), "delivered", latency_ms=latency)
    store_message(connector, at(1), "failed", latency_ms=1000)
    store_message(connector, at(1), "failed")
    store_message(connector, at(1), "dead_lettered")
    store_message(connector, at(-30), "failed")  # outside the window
    evaluate(now=at(5))
    assert firing(rule) == (["erp-to-mes-orders"] if fires else [])


def test_throughput_below_a_floor_fires_when_traffic_stops(landscape):
    rule = make_rule({**FAILURES, "metric": "throughput", "op": "<", "value": 0.1})
    evaluate(now=at(1))
    assert firing(rule) == ["erp-to-mes-orders"]


def test_an_unknown_connector_is_reported_not_raised(landscape):
    make_rule({**FAILURES, "connector": "no-such-connector"})
    report = evaluate(now=at(1))
    assert "no-such-connector" in report.rules[0].error


def test_the_percentile_interpolates_like_percentile_cont():
    assert interpolated_percentile([], 0.95) is None
    assert interpolated_percentile([5.0], 0.95) == 5.0
    assert interpolated_percentile([100, 200, 300, 400, 500], 0.95) == pytest.approx(480)
