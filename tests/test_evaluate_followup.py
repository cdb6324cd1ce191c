"""Follow-up rules: a `when` event must be followed by an `expect` event of the same key in time."""

from __future__ import annotations

import pytest

from monitors.evaluate import evaluate
from monitors.lifecycle import acknowledge
from monitors.models import Alert, AlertTransition
from tests.evaluation_helpers import alerts_of, at, firing, log_of, make_rule, store_event

RELEASED = "erp.workorder.released"
ACKNOWLEDGED = "mes.workorder.acknowledged"

WO_ACK = {
    "name": "wo-not-acknowledged",
    "kind": "followup",
    "when": {"type": RELEASED},
    "expect": {"type": ACKNOWLEDGED},
    "key": "subject",
    "within": "10m",
    "severity": "critical",
    "labels": {"flow": "order-to-production"},
    "summary": "Work order {{ key }} not acknowledged ({{ labels.flow }}, {{ labels.plant }})",
}


@pytest.fixture
def rule(landscape):
    return make_rule(WO_ACK)


def release(minutes: float, subject: str = "WO-1", landscape=None, **kwargs):
    return store_event(RELEASED, at(minutes), subject=subject, **kwargs)


def ack(minutes: float, subject: str = "WO-1", **kwargs):
    return store_event(ACKNOWLEDGED, at(minutes), subject=subject, source="/mes/p1", **kwargs)


def test_it_does_not_fire_before_the_deadline(rule):
    release(0)
    report = evaluate(now=at(9, 59))
    assert firing(rule) == []
    assert report.fired == 0


def test_it_fires_at_the_deadline(rule):
    release(0)
    report = evaluate(now=at(10))
    assert firing(rule) == ["WO-1"]
    assert report.fired == 1
    (alert,) = alerts_of(rule)
    assert (alert.started_at, alert.due_at, alert.fired_at) == (at(0), at(10), at(10))
    assert log_of(alert) == [("firing", at(10))]


def test_it_fires_once_however_many_passes_run(rule):
    release(0)
    for minute in (10, 11, 12, 30):
        evaluate(now=at(minute))
    assert len(alerts_of(rule)) == 1
    assert AlertTransition.objects.count() == 1


def test_an_acknowledgement_in_time_means_no_alert(rule):
    release(0)
    ack(9)
    evaluate(now=at(10))
    evaluate(now=at(60))
    assert alerts_of(rule) == []


def test_an_acknowledgement_exactly_at_the_deadline_is_in_time(rule):
    release(0)
    ack(10)
    evaluate(now=at(10))
    assert alerts_of(rule) == []


def test_an_acknowledgement_of_another_work_order_does_not_count(rule):
    release(0, "WO-1")
    ack(5, "WO-2")
    evaluate(now=at(11))
    assert firing(rule) == ["WO-1"]


def test_a_late_acknowledgement_resolves_the_alert_late_with_how_late(rule):
    release(0)
    evaluate(now=at(11))
    ack(14)
    report = evaluate(now=at(15))
    (alert,) = alerts_of(rule)
    assert alert.state == "resolved"
    assert alert.resolution == "late"
    assert alert.resolved_at == at(14)
    assert alert.late_by_s == 240
    assert (report.resolved, report.late) == (1, 1)
    assert log_of(alert) == [("firing", at(10)), ("resolved", at(14))]


def test_a_breach_answered_late_before_any_pass_is_recorded_resolved_late(rule):
    release(0)
    ack(14)
    report = evaluate(now=at(15))
    (alert,) = alerts_of(rule)
    assert (alert.state, alert.resolution, alert.late_by_s) == ("resolved", "late", 240)
    assert log_of(alert) == [("firing", at(10)), ("resolved", at(14))]
    assert (report.fired, report.late) == (1, 1)
    evaluate(now=at(16))
    assert len(alerts_of(rule)) == 1


def test_an_acknowledgement_stored_before_its_release_still_counts(rule):
    ack(5)  # the MES event overtook the ERP event on the way to Andon
    release(0)
    evaluate(now=at(20))
    assert alerts_of(rule) == []


def test_an_acknowledgement_stamped_in_time_but_stored_after_the_alert_recovers_it(rule):
    release(0)
    evaluate(now=at(10))
    ack(8, received=at(12))
    evaluate(now=at(13))
    (alert,) = alerts_of(rule)
    assert (alert.state, alert.resolution, alert.late_by_s) == ("resolved", "recovered", None)


def test_a_release_sent_twice_raises_one_alert(rule):
    release(0)
    release(0, source="/erp-retry")
    release(2)
    evaluate(now=at(15))
    assert len(alerts_of(rule)) == 1


def test_a_second_acknowledgement_changes_nothing(rule):
    release(0)
    evaluate(now=at(11))
    ack(14)
    evaluate(now=at(15))
    ack(16)
    evaluate(now=at(17))
    (alert,) = alerts_of(rule)
    assert (alert.resolved_at, alert.late_by_s) == (at(14), 240)
    assert AlertTransition.objects.filter(state="resolved").count() == 1


def test_a_release_after_the_episode_raises_a_new_alert(rule):
    release(0)
    ack(14)
    release(30)
    evaluate(now=at(45))
    alerts = alerts_of(rule)
    assert [(a.started_at, a.state) for a in alerts] == [(at(0), "resolved"), (at(30), "firing")]


def test_two_episodes_of_one_key_found_in_one_pass_are_both_recorded(rule):
    release(0)
    ack(14)
    release(20)
    ack(35)
    report = evaluate(now=at(60))
    alerts = alerts_of(rule)
    assert [(a.started_at, a.resolution, a.late_by_s) for a in alerts] == [
        (at(0), "late", 240),
        (at(20), "late", 300),
    ]
    assert report.late == 2


def test_an_acknowledged_alert_still_resolves_late(rule):
    release(0)
    evaluate(now=at(11))
    (alert,) = alerts_of(rule)
    acknowledge(alert.id, "olga", "calling MES support", now=at(12))
    ack(14)
    evaluate(now=at(15))
    alert.refresh_from_db()
    assert (alert.state, alert.resolution, alert.acknowledged_by) == ("resolved", "late", "olga")


def test_triggers_older_than_the_lookback_are_ignored(landscape):
    rule = make_rule({**WO_ACK, "lookback": "1h"})
    release(0)
    evaluate(now=at(61))
    assert alerts_of(rule) == []


def test_events_after_now_are_not_seen_yet(rule):
    release(0)
    ack(30)
    evaluate(now=at(20))
    assert firing(rule) == ["WO-1"]


def test_the_alert_carries_labels_summary_and_the_plant_of_its_trigger(rule, landscape):
    store_event(RELEASED, at(0), subject="WO-7", system=landscape["mes1"])
    evaluate(now=at(10))
    (alert,) = alerts_of(rule)
    assert alert.labels == {
        "flow": "order-to-production",
        "rule": "wo-not-acknowledged",
        "key": "WO-7",
        "severity": "critical",
        "kind": "followup",
        "plant": "p1",
    }
    assert alert.plant == landscape["p1"]
    assert alert.severity == "critical"
    assert alert.summary == "Work order WO-7 not acknowledged (order-to-production, p1)"


def test_a_trigger_from_a_shared_system_takes_the_plant_the_rule_names(landscape):
    # The cloud ERP has no plant; a rule written for plant 2 scopes its alerts to plant 2.
    rule = make_rule({**WO_ACK, "name": "wo-p2", "when": {"type": RELEASED, "data.plant": "p2"}})
    make_rule({**WO_ACK, "name": "wo-labelled", "labels": {"plant": "p1"}})
    release(0, data={"plant": "p2"})
    evaluate(now=at(10))
    (alert,) = alerts_of(rule)
    assert alert.plant == landscape["p2"]
    assert alert.labels["plant"] == "p2"
    labelled = Alert.objects.get(rule__name="wo-labelled")
    assert labelled.plant == landscape["p1"]


def test_the_default_summary_names_rule_and_key(landscape):
    rule = make_rule({k: v for k, v in WO_ACK.items() if k != "summary"})
    release(0)
    evaluate(now=at(10))
    assert alerts_of(rule)[0].summary == "wo-not-acknowledged: WO-1"


def test_it_keys_on_a_data_path_and_matches_data_values(landscape):
    rule = make_rule(
        {
            "name": "hold-not-applied",
            "kind": "followup",
            "when": {"type": "qms.hold.placed", "data.scope": "lot", "data.blocking": True},
            "expect": {"type": "wms.hold.applied"},
            "key": "data.lot.id",
            "within": "15m",
        }
    )
    for lot, scope, blocking in (
        ("L-1", "lot", True),
        ("L-2", "lot", True),
        ("L-3", "lot", False),
        ("L-4", "order", True),
    ):
        data = {"scope": scope, "blocking": blocking, "lot": {"id": lot}}
        store_event("qms.hold.placed", at(0), data=data)
    store_event("qms.hold.placed", at(0), data={"scope": "lot", "blocking": True})  # no key
    store_event("wms.hold.applied", at(3), data={"lot": {"id": "L-2"}})
    evaluate(now=at(15))
    assert firing(rule) == ["L-1"]


def test_it_keys_on_the_correlation_id_and_filters_by_source_and_plant(landscape):
    rule = make_rule(
        {
            "name": "p1-orders",
            "kind": "followup",
            "when": {"type": RELEASED, "source": "erp", "plant": "p1"},
            "expect": {"type": ACKNOWLEDGED, "source": "/mes/p1"},
            "key": "correlationid",
            "within": "10m",
        }
    )
    erp, p1, p2 = landscape["erp"], landscape["p1"], landscape["p2"]
    for corr, plant in (("c-1", p1), ("c-2", p1), ("c-3", p2)):
        # The ERP is plant-less; a release names its plant (attributed at ingest).
        event = store_event(RELEASED, at(0), correlation_id=corr, system=erp, source="/erp")
        event.plant = plant
        event.save()
    store_event(ACKNOWLEDGED, at(5), correlation_id="c-1", source="/mes/p1")
    store_event(ACKNOWLEDGED, at(5), correlation_id="c-2", source="/mes/p2")
    evaluate(now=at(10))
    assert firing(rule) == ["c-2"]


def test_the_report_names_the_next_deadline(rule):
    release(0, "WO-1")
    release(3, "WO-2")
    ack(4, "WO-1")
    report = evaluate(now=at(5))
    assert report.next_deadline == at(13)


def test_a_covered_trigger_sets_no_deadline(rule):
    release(0)
    evaluate(now=at(10))
    release(12)  # re-released while its alert is open: the same episode
    report = evaluate(now=at(13))
    assert report.next_deadline is None


def test_a_disabled_rule_is_not_evaluated(rule):
    rule.enabled = False
    rule.save()
    release(0)
    report = evaluate(now=at(30))
    assert report.rules == []
    assert Alert.objects.count() == 0


def test_it_evaluates_the_rules_it_is_given(rule, landscape):
    other = make_rule({**WO_ACK, "name": "other"})
    release(0)
    evaluate(now=at(10), rules=[other])
    assert (firing(rule), firing(other)) == ([], ["WO-1"])


def test_thousands_of_work_orders_are_raised_and_resolved_in_one_pass_each(rule):
    for n in range(1500):
        release(0, f"WO-{n}")
    assert evaluate(now=at(11)).fired == 1500
    for n in range(1500):
        ack(12, f"WO-{n}")
    report = evaluate(now=at(13))
    assert (report.resolved, report.late) == (1500, 1500)
    assert Alert.objects.filter(state="resolved", late_by_s=120).count() == 1500
    assert AlertTransition.objects.count() == 3000
