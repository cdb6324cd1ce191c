"""Heartbeat rules: a system or connector silent for longer than `within` raises an alert."""

from __future__ import annotations

from monitors.evaluate import evaluate
from monitors.lifecycle import acknowledge
from monitors.models import Alert
from tests.evaluation_helpers import (
    alerts_of,
    at,
    firing,
    log_of,
    make_rule,
    store_event,
    store_message,
    store_span,
)


def heartbeat(source: str, within: str = "5m"):
    name = source.strip("/").replace("/", "-") + "-silent"
    return make_rule({"name": name, "kind": "heartbeat", "source": source, "within": within})


def test_a_system_that_keeps_talking_does_not_fire(landscape):
    rule = heartbeat("mes-p1")
    store_event("mes.workorder.started", at(0), source="/mes/p1", system=landscape["mes1"])
    store_event("mes.workorder.started", at(4), source="/mes/p1", system=landscape["mes1"])
    evaluate(now=at(9))
    assert firing(rule) == []


def test_a_system_fires_once_silent_for_longer_than_within(landscape):
    rule = heartbeat("mes-p1")
    store_event("mes.workorder.started", at(0), source="/mes/p1", system=landscape["mes1"])
    evaluate(now=at(5))
    assert firing(rule) == []  # exactly `within` of silence is not yet too long
    evaluate(now=at(5, 1))
    assert firing(rule) == ["mes-p1"]
    (alert,) = alerts_of(rule)
    assert (alert.started_at, alert.fired_at) == (at(0), at(5))
    assert alert.plant == landscape["p1"]
    assert alert.labels["plant"] == "p1"


def test_a_signal_recovers_it(landscape):
    rule = heartbeat("mes-p1")
    store_event("mes.workorder.started", at(0), source="/mes/p1", system=landscape["mes1"])
    evaluate(now=at(6))
    store_event("mes.workorder.started", at(7), source="/mes/p1", system=landscape["mes1"])
    report = evaluate(now=at(8))
    (alert,) = alerts_of(rule)
    assert (alert.state, alert.resolution, alert.resolved_at) == ("resolved", "recovered", at(7))
    assert report.resolved == 1
    assert log_of(alert) == [("firing", at(5)), ("resolved", at(7))]


def test_silence_after_recovery_is_a_new_alert(landscape):
    rule = heartbeat("mes-p1")
    store_event("mes.workorder.started", at(0), source="/mes/p1", system=landscape["mes1"])
    evaluate(now=at(6))
    store_event("mes.workorder.started", at(7), source="/mes/p1", system=landscape["mes1"])
    evaluate(now=at(20))
    assert [(a.started_at, a.state) for a in alerts_of(rule)] == [
        (at(0), "resolved"),
        (at(7), "firing"),
    ]


def test_spans_and_the_messages_of_its_connectors_are_signals_of_a_system(landscape):
    rule = heartbeat("mes-p1")
    store_span(landscape["mes1"], at(0))
    evaluate(now=at(4))
    store_message(landscape["c1"], at(8))  # erp-to-mes-orders targets mes-p1
    evaluate(now=at(12))
    assert firing(rule) == []
    evaluate(now=at(13, 1))
    assert firing(rule) == ["mes-p1"]


def test_a_connector_is_watched_by_its_messages(landscape):
    rule = heartbeat("erp-to-mes-orders", within="10m")
    store_message(landscape["c1"], at(0))
    store_message(landscape["c2"], at(9))  # another connector: not a signal of this one
    store_event("erp.workorder.released", at(9), system=landscape["erp"])
    evaluate(now=at(11))
    assert firing(rule) == ["erp-to-mes-orders"]
    assert alerts_of(rule)[0].plant == landscape["p1"]
    store_message(landscape["c1"], at(12))
    evaluate(now=at(13))
    assert firing(rule) == []


def test_a_source_never_seen_is_counted_from_the_rules_creation(landscape):
    rule = heartbeat("wms-p1")
    evaluate(now=at(4))
    assert firing(rule) == []
    report = evaluate(now=at(6))
    assert firing(rule) == ["wms-p1"]
    assert report.rules[0].error == ""
    assert alerts_of(rule)[0].started_at == at(0)


def test_a_source_outside_the_landscape_is_matched_by_source_string(db):
    rule = heartbeat("/scada/line4")
    store_event("scada.tick", at(0), source="/scada/line4")
    evaluate(now=at(4))
    assert firing(rule) == []
    evaluate(now=at(6))
    assert firing(rule) == ["/scada/line4"]


def test_signals_from_the_future_of_now_do_not_count(landscape):
    rule = heartbeat("mes-p1")
    store_event("mes.workorder.started", at(0), source="/mes/p1", system=landscape["mes1"])
    store_event("mes.workorder.started", at(30), source="/mes/p1", system=landscape["mes1"])
    evaluate(now=at(10))
    assert firing(rule) == ["mes-p1"]


def test_an_acknowledged_heartbeat_alert_still_recovers(landscape):
    rule = heartbeat("mes-p1")
    store_event("mes.workorder.started", at(0), source="/mes/p1", system=landscape["mes1"])
    evaluate(now=at(6))
    acknowledge(alerts_of(rule)[0].id, "olga", now=at(7))
    store_event("mes.workorder.started", at(8), source="/mes/p1", system=landscape["mes1"])
    evaluate(now=at(9))
    assert alerts_of(rule)[0].resolution == "recovered"


def test_the_next_deadline_is_the_end_of_the_allowed_silence(landscape):
    heartbeat("mes-p1")
    store_event("mes.workorder.started", at(2), source="/mes/p1", system=landscape["mes1"])
    report = evaluate(now=at(3))
    assert report.next_deadline == at(7)


# --- Dependency suppression ---------------------------------------------------------------


WO_ACK = {
    "name": "wo-not-acknowledged",
    "kind": "followup",
    "when": {"type": "erp.workorder.released"},
    "expect": {"type": "mes.workorder.acknowledged"},
    "key": "subject",
    "within": "10m",
    "depends_on": ["mes-p1"],
}


def test_a_business_alert_is_suppressed_while_its_dependency_is_silent(landscape):
    silent = heartbeat("mes-p1")
    business = make_rule(WO_ACK)
    store_event("mes.workorder.started", at(0), source="/mes/p1", system=landscape["mes1"])
    store_event("erp.workorder.released", at(1), subject="WO-1")
    evaluate(now=at(12))
    (outage,) = alerts_of(silent)
    (alert,) = alerts_of(business)
    assert alert.state == "firing"
    assert alert.suppressed_by == outage


def test_suppression_clears_when_the_dependency_recovers(landscape):
    heartbeat("mes-p1")
    business = make_rule(WO_ACK)
    store_event("erp.workorder.released", at(1), subject="WO-1")
    evaluate(now=at(12))
    assert alerts_of(business)[0].suppressed_by is not None
    store_event("mes.workorder.started", at(13), source="/mes/p1", system=landscape["mes1"])
    evaluate(now=at(14))
    (alert,) = alerts_of(business)
    assert alert.state == "firing"
    assert alert.suppressed_by is None


def test_an_alert_that_does_not_depend_on_the_silent_source_is_not_suppressed(landscape):
    heartbeat("mes-p2")
    business = make_rule(WO_ACK)
    store_event("erp.workorder.released", at(1), subject="WO-1")
    evaluate(now=at(12))
    assert alerts_of(business)[0].suppressed_by is None


def test_a_resolved_business_alert_keeps_its_suppression_for_the_record(landscape):
    heartbeat("mes-p1")
    business = make_rule(WO_ACK)
    store_event("erp.workorder.released", at(1), subject="WO-1")
    evaluate(now=at(12))
    store_event("mes.workorder.acknowledged", at(13), subject="WO-1", source="/mes/p1")
    evaluate(now=at(14))
    (alert,) = alerts_of(business)
    assert alert.resolution == "late"
    assert Alert.objects.get(pk=alert.pk).suppressed_by is not None
