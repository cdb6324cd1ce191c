"""Match rules: every matching event raises an alert for its key until resolved or quiet."""

from __future__ import annotations

from monitors.evaluate import evaluate
from monitors.lifecycle import acknowledge, resolve_manually
from tests.evaluation_helpers import alerts_of, at, firing, log_of, make_rule, store_event

FAILED = "lims.result.failed"
LAB_FAILED = {
    "name": "lab-result-failed",
    "kind": "match",
    "when": {"type": FAILED},
    "key": "data.lot",
    "resolve_after": "1h",
    "severity": "critical",
    "summary": "Lab result failed for lot {{ key }}",
}


def failed(minutes: float, lot: str = "L-7731", source: str = "/lims", **kwargs):
    return store_event(FAILED, at(minutes), source=source, data={"lot": lot}, **kwargs)


def test_a_matching_event_raises_an_alert_for_its_key(landscape):
    rule = make_rule(LAB_FAILED)
    failed(0, system=landscape["wms1"])
    report = evaluate(now=at(1))
    assert firing(rule) == ["L-7731"]
    (alert,) = alerts_of(rule)
    assert (alert.started_at, alert.fired_at) == (at(0), at(0))
    assert alert.summary == "Lab result failed for lot L-7731"
    assert alert.labels["plant"] == "p1"
    assert report.fired == 1


def test_non_matching_and_keyless_events_raise_nothing(landscape):
    rule = make_rule(LAB_FAILED)
    store_event("lims.result.passed", at(0), data={"lot": "L-1"})
    store_event(FAILED, at(0), data={"lot": ""})
    store_event(FAILED, at(0), data={"other": "x"})
    store_event(FAILED, at(0))
    evaluate(now=at(1))
    assert alerts_of(rule) == []


def test_more_events_of_the_key_keep_one_alert(landscape):
    rule = make_rule(LAB_FAILED)
    failed(0)
    evaluate(now=at(1))
    failed(5)
    failed(5, source="/lims-retry")  # the same result reported twice
    evaluate(now=at(6))
    assert len(alerts_of(rule)) == 1


def test_each_key_has_its_own_alert(landscape):
    rule = make_rule(LAB_FAILED)
    failed(0, "L-1")
    failed(0, "L-2")
    evaluate(now=at(1))
    assert firing(rule) == ["L-1", "L-2"]


def test_it_recovers_resolve_after_the_last_matching_event(landscape):
    rule = make_rule(LAB_FAILED)
    failed(0)
    evaluate(now=at(1))
    failed(30)
    report = evaluate(now=at(60))
    assert report.next_deadline == at(90)
    assert firing(rule) == ["L-7731"]
    evaluate(now=at(90))
    (alert,) = alerts_of(rule)
    assert (alert.state, alert.resolution, alert.resolved_at) == ("resolved", "recovered", at(90))
    assert log_of(alert) == [("firing", at(0)), ("resolved", at(90))]


def test_resolve_after_defaults_to_a_day(landscape):
    rule = make_rule({k: v for k, v in LAB_FAILED.items() if k != "resolve_after"})
    failed(0)
    evaluate(now=at(1))
    evaluate(now=at(24 * 60 - 1))
    assert firing(rule) == ["L-7731"]
    evaluate(now=at(24 * 60))
    assert firing(rule) == []


def test_a_manually_resolved_alert_is_not_raised_again_for_the_same_events(landscape):
    rule = make_rule(LAB_FAILED)
    failed(0)
    evaluate(now=at(1))
    resolve_manually(alerts_of(rule)[0].id, "olga", "lot scrapped", now=at(2))
    evaluate(now=at(3))
    (alert,) = alerts_of(rule)
    assert (alert.state, alert.resolution) == ("resolved", "manual")


def test_a_new_failure_after_manual_resolution_raises_a_new_alert(landscape):
    rule = make_rule(LAB_FAILED)
    failed(0)
    evaluate(now=at(1))
    resolve_manually(alerts_of(rule)[0].id, "olga", now=at(2))
    failed(3)
    evaluate(now=at(4))
    assert [(a.started_at, a.state) for a in alerts_of(rule)] == [
        (at(0), "resolved"),
        (at(3), "firing"),
    ]


def test_an_episode_over_before_the_first_pass_is_recorded_resolved(landscape):
    rule = make_rule(LAB_FAILED)
    failed(0)
    failed(10)
    failed(200)
    evaluate(now=at(230))
    assert [(a.started_at, a.state, a.resolved_at) for a in alerts_of(rule)] == [
        (at(0), "resolved", at(70)),
        (at(200), "firing", None),
    ]


def test_an_event_stored_late_within_an_open_episode_extends_it(landscape):
    rule = make_rule(LAB_FAILED)
    failed(0)
    evaluate(now=at(50))
    failed(40, received=at(70))
    evaluate(now=at(70))
    assert firing(rule) == ["L-7731"]


def test_an_acknowledged_match_alert_still_recovers(landscape):
    rule = make_rule(LAB_FAILED)
    failed(0)
    evaluate(now=at(1))
    acknowledge(alerts_of(rule)[0].id, "olga", now=at(2))
    evaluate(now=at(61))
    assert alerts_of(rule)[0].resolution == "recovered"


def test_it_matches_on_subject_and_data_values_as_text(landscape):
    rule = make_rule(
        {
            "name": "scrap",
            "kind": "match",
            "when": {"type": "mes.scrap.reported", "subject": "LINE-4", "data.qty": 5},
            "key": "subject",
        }
    )
    store_event("mes.scrap.reported", at(0), subject="LINE-4", data={"qty": 5})
    store_event("mes.scrap.reported", at(0), subject="LINE-3", data={"qty": 5})
    store_event("mes.scrap.reported", at(0), subject="LINE-4", data={"qty": 6})
    evaluate(now=at(1))
    assert firing(rule) == ["LINE-4"]
