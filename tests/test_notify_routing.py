"""Routing, grouping, repeat, resolution and escalation of notifications, with frozen time.

Each test runs notification passes at chosen moments (seconds after the first
pass) and looks at the deliveries each pass queued; nothing is sent here (see
test_notifiers.py for that). The semantics are Alertmanager's.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
import time_machine
from django.conf import settings
from django.core.management import CommandError, call_command
from django.db import close_old_connections, connection
from django.test.utils import CaptureQueriesContext

from monitors.lifecycle import acknowledge
from monitors.models import (
    AlertState,
    ContactPoint,
    MaintenanceWindow,
    NotificationDelivery,
    NotificationGroup,
    RoutingPolicy,
    Silence,
)
from monitors.notify import run_pass
from monitors.scheduler import Scheduler
from monitors.tasks import evaluate_all
from tests.alerts_kit import T0, make_alert, make_rule
from tests.notify_kit import contact, notify, policy

DEMO_FILE = Path(settings.BASE_DIR) / "monitors" / "fixtures" / "demo_notifications.yaml"


def at(seconds: float):
    return T0 + timedelta(seconds=seconds)


def names(deliveries) -> list[str]:
    return [d.contact_point.name for d in deliveries]


def alert_keys(delivery) -> list[tuple[str, str]]:
    return [(a["key"], a["status"]) for a in delivery.body["alerts"]]


@pytest.fixture
def cps(db):
    """Contact points: the plant 1 team, the on-call default, the plant manager."""
    return {
        "p1": contact("p1-team", "email", to=["p1@plant.example"]),
        "oncall": contact("oncall", "email", to=["oncall@plant.example"]),
        "manager": contact("manager", "email", to=["manager@plant.example"]),
    }


@pytest.fixture
def wo_rule(landscape):
    return make_rule("wo-not-acknowledged", labels={"flow": "order-to-production"})


def resolve(alert, seconds: float) -> None:
    alert.state = AlertState.RESOLVED
    alert.resolved_at = at(seconds)
    alert.resolution = "late"
    alert.save()


# --- Routing ------------------------------------------------------------------------------


def test_an_alert_goes_to_the_policy_its_labels_match(cps, landscape, wo_rule):
    policy("plant1", [cps["p1"]], matchers={"plant": "p1"})
    policy("default", [cps["oncall"]], default=True)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])

    assert names(notify(at(0))) == ["p1-team"]


def test_an_alert_no_policy_matches_goes_to_the_default_route(cps, landscape, wo_rule):
    policy("plant1", [cps["p1"]], matchers={"plant": "p1"})
    policy("default", [cps["oncall"]], default=True)
    make_alert(wo_rule, "WO-2", plant=landscape["p2"])

    assert names(notify(at(0))) == ["oncall"]


def test_policies_match_rule_labels_and_regular_expressions(cps, landscape, wo_rule):
    routed = policy("orders", [cps["p1"]])
    routed.matchers = [
        {"name": "flow", "value": "order-to-production", "is_regex": False},
        {"name": "severity", "value": "critical|major", "is_regex": True},
    ]
    routed.save()
    policy("default", [cps["oncall"]], default=True)
    make_alert(wo_rule, "WO-1", plant=landscape["p2"])
    make_alert(make_rule("lab-result-failed", severity="minor"), "LOT-1", plant=landscape["p2"])

    deliveries = notify(at(0))

    assert sorted(zip(names(deliveries), [alert_keys(d) for d in deliveries], strict=True)) == [
        ("oncall", [("LOT-1", "firing")]),
        ("p1-team", [("WO-1", "firing")]),
    ]


def test_matching_stops_at_the_first_policy_unless_it_continues(cps, landscape, wo_rule):
    policy("orders", [cps["manager"]], matchers={"flow": "order-to-production"}, position=0)
    policy("plant1", [cps["p1"]], matchers={"plant": "p1"}, position=1)
    policy("default", [cps["oncall"]], default=True)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])

    assert names(notify(at(0))) == ["manager"]

    RoutingPolicy.objects.filter(name="orders").update(continue_matching=True)
    NotificationDelivery.objects.all().delete()
    make_alert(wo_rule, "WO-9", plant=landscape["p1"])
    assert sorted(names(notify(at(0)))) == ["p1-team"]  # manager's group was already notified


def test_without_a_default_route_an_unmatched_alert_is_not_notified(cps, landscape, wo_rule):
    policy("plant1", [cps["p1"]], matchers={"plant": "p1"})
    make_alert(wo_rule, "WO-2", plant=landscape["p2"])

    assert notify(at(0)) == []


def test_a_disabled_contact_point_gets_nothing(cps, landscape, wo_rule):
    ContactPoint.objects.filter(name="oncall").update(enabled=False)
    policy("default", [cps["oncall"], cps["manager"]], default=True)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])

    assert names(notify(at(0))) == ["manager"]


# --- Grouping -----------------------------------------------------------------------------


def test_alerts_with_the_same_group_labels_are_notified_together(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True, group_by=["rule", "plant"])
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    make_alert(wo_rule, "WO-2", plant=landscape["p1"])
    make_alert(wo_rule, "WO-3", plant=landscape["p2"])

    deliveries = notify(at(0))

    assert sorted(alert_keys(d) for d in deliveries) == [
        [("WO-1", "firing"), ("WO-2", "firing")],
        [("WO-3", "firing")],
    ]
    assert {d.group_key for d in deliveries} == {
        'default:{plant="p1",rule="wo-not-acknowledged"}',
        'default:{plant="p2",rule="wo-not-acknowledged"}',
    }


def test_grouping_by_all_labels_notifies_each_alert_alone(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True, group_by=["..."])
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    make_alert(wo_rule, "WO-2", plant=landscape["p1"])

    assert len(notify(at(0))) == 2


def test_a_new_group_waits_group_wait_before_its_first_notification(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True, wait=30)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])

    assert notify(at(0)) == []
    make_alert(wo_rule, "WO-2", plant=landscape["p1"])
    assert notify(at(29)) == []
    (delivery,) = notify(at(30))

    assert alert_keys(delivery) == [("WO-1", "firing"), ("WO-2", "firing")]
    assert delivery.reason == "firing"


def test_news_in_a_notified_group_waits_for_group_interval(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True, interval=300)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    notify(at(0))

    make_alert(wo_rule, "WO-2", plant=landscape["p1"])
    assert notify(at(60)) == []
    assert notify(at(299)) == []
    (delivery,) = notify(at(300))

    assert alert_keys(delivery) == [("WO-1", "firing"), ("WO-2", "firing")]
    assert delivery.reason == "firing"


def test_an_unchanged_group_is_notified_again_after_repeat_interval(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True, repeat=3600)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    notify(at(0))

    assert notify(at(1800)) == []
    (repeat,) = notify(at(3600))
    assert repeat.reason == "repeat"
    assert alert_keys(repeat) == [("WO-1", "firing")]
    assert notify(at(3700)) == []
    assert len(notify(at(7200))) == 1


def test_a_resolved_alert_is_notified_resolved_and_the_group_goes_idle(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True, interval=300)
    alert = make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    notify(at(0))
    resolve(alert, 120)

    assert notify(at(200)) == []  # group_interval holds news back
    (delivery,) = notify(at(300))

    assert delivery.reason == "resolved"
    assert delivery.body["status"] == "resolved"
    (item,) = delivery.body["alerts"]
    assert (item["status"], item["ends_at"]) == ("resolved", "2026-05-21T08:02:00Z")
    group = NotificationGroup.objects.get()
    assert (group.active_since, group.notified) == (None, {})
    assert notify(at(7200)) == []


def test_a_partial_resolution_lists_the_firing_and_the_resolved(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True)
    first = make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    make_alert(wo_rule, "WO-2", plant=landscape["p1"])
    notify(at(0))
    resolve(first, 60)

    (delivery,) = notify(at(300))

    assert delivery.body["status"] == "firing"
    assert alert_keys(delivery) == [("WO-2", "firing"), ("WO-1", "resolved")]


def test_contact_points_without_send_resolved_hear_nothing_of_a_resolution(cps, landscape, wo_rule):
    quiet = contact("quiet", "email", send_resolved=False, to=["quiet@plant.example"])
    policy("default", [cps["oncall"], quiet], default=True)
    alert = make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    assert sorted(names(notify(at(0)))) == ["oncall", "quiet"]
    resolve(alert, 60)

    assert names(notify(at(300))) == ["oncall"]


def test_an_alert_resolved_within_group_wait_is_never_notified(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True, wait=30)
    alert = make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    notify(at(0))
    resolve(alert, 10)

    assert notify(at(30)) == []
    assert notify(at(600)) == []
    assert NotificationGroup.objects.get().active_since is None


# --- What is not notified -----------------------------------------------------------------


def test_a_silenced_alert_is_not_notified(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    make_alert(wo_rule, "WO-2", plant=landscape["p1"])
    Silence.objects.create(
        matchers=[{"name": "key", "value": "WO-1", "is_regex": False}],
        starts_at=at(-60),
        ends_at=at(3600),
        comment="known",
        created_by="ada",
    )

    (delivery,) = notify(at(0))

    assert alert_keys(delivery) == [("WO-2", "firing")]


def test_an_alert_is_notified_once_its_silence_ends(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    Silence.objects.create(
        matchers=[{"name": "rule", "value": "wo-not-acknowledged", "is_regex": False}],
        starts_at=at(-60),
        ends_at=at(600),
        comment="deploying",
        created_by="ada",
    )

    assert notify(at(0)) == []
    assert len(notify(at(600))) == 1


def test_an_alert_in_a_maintenance_window_is_not_notified(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    MaintenanceWindow.objects.create(
        plant=landscape["p1"], name="shutdown", starts_at=at(-60), ends_at=at(3600)
    )

    assert notify(at(0)) == []


def test_a_suppressed_alert_is_not_notified(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True, group_by=["rule"])
    outage = make_alert(make_rule("mes-p1-silent", kind="heartbeat"), "mes-p1")
    make_alert(wo_rule, "WO-1", plant=landscape["p1"], suppressed_by=outage)

    (delivery,) = notify(at(0))

    assert alert_keys(delivery) == [("mes-p1", "firing")]


def test_pending_and_acknowledged_alerts_are_not_notified(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"], state=AlertState.PENDING)
    make_alert(wo_rule, "WO-2", plant=landscape["p1"], state=AlertState.ACKNOWLEDGED)

    assert notify(at(0)) == []


def test_an_acknowledged_alert_is_not_repeated(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True, repeat=3600)
    alert = make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    notify(at(0))
    acknowledge(alert.pk, "ada", now=at(60))

    assert notify(at(3600)) == []
    assert notify(at(7200)) == []


# --- Escalation ---------------------------------------------------------------------------


def escalating(cps, **kwargs):
    policy(
        "default",
        [cps["p1"]],
        default=True,
        escalate_after=900,
        escalate_to=[cps["manager"]],
        repeat=86400,
        **kwargs,
    )


def test_an_unacknowledged_alert_escalates_after_escalate_after(cps, landscape, wo_rule):
    escalating(cps)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])

    assert names(notify(at(0))) == ["p1-team"]
    assert notify(at(899)) == []
    (escalation,) = notify(at(900))

    assert escalation.contact_point.name == "manager"
    assert escalation.reason == "escalation"
    assert escalation.summary.startswith("[ESCALATED:1]")
    assert alert_keys(escalation) == [("WO-1", "firing")]
    assert notify(at(5000)) == []  # once


def test_the_escalation_clock_starts_at_the_first_notification(cps, landscape, wo_rule):
    escalating(cps, wait=60)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    notify(at(0))
    notify(at(60))  # the first notification

    assert notify(at(900)) == []
    assert names(notify(at(960))) == ["manager"]


def test_an_acknowledged_alert_does_not_escalate(cps, landscape, wo_rule):
    escalating(cps)
    alert = make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    notify(at(0))
    acknowledge(alert.pk, "ada", now=at(300))

    assert notify(at(900)) == []


def test_whoever_was_escalated_to_hears_of_the_resolution(cps, landscape, wo_rule):
    escalating(cps)
    alert = make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    notify(at(0))
    notify(at(900))
    resolve(alert, 1000)

    deliveries = notify(at(1200))

    assert sorted(names(deliveries)) == ["manager", "p1-team"]
    assert all(d.reason == "resolved" for d in deliveries)


# --- Several passes, and what a pass costs ------------------------------------------------


def test_a_second_pass_at_the_same_moment_notifies_nothing_more(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])

    assert len(notify(at(0))) == 1
    assert notify(at(0)) == []


def test_a_pass_with_nothing_firing_costs_two_queries(cps, django_assert_num_queries):
    policy("default", [cps["oncall"]], default=True)

    with django_assert_num_queries(2):
        run_pass(at(0))


def test_a_pass_with_nothing_due_writes_nothing(cps, landscape, wo_rule):
    policy("default", [cps["oncall"]], default=True, wait=30)
    make_alert(wo_rule, "WO-1", plant=landscape["p1"])
    notify(at(0))  # starts the group's wait

    with CaptureQueriesContext(connection) as queries:
        run_pass(at(10))

    writes = [q["sql"] for q in queries if not q["sql"].lstrip().upper().startswith("SELECT")]
    assert writes == []
    assert len(queries) <= 8


@pytest.mark.django_db(transaction=True)
def test_passes_running_at_once_notify_a_group_once(landscape):
    if connection.vendor != "postgresql":
        pytest.skip("row locks (SKIP LOCKED) need PostgreSQL")
    oncall = contact("oncall", "email", to=["oncall@plant.example"])
    policy("default", [oncall], default=True)
    rule = make_rule("wo-not-acknowledged")
    for n in range(20):
        make_alert(rule, f"WO-{n}", plant=landscape["p1" if n % 2 else "p2"])
    start = threading.Barrier(4)
    errors = []

    def one_pass() -> None:
        try:
            start.wait()
            run_pass(at(0))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=one_pass) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert NotificationDelivery.objects.count() == 2  # one per group (p1, p2)


# --- After every evaluation pass ----------------------------------------------------------


@pytest.fixture
def quiet_alert(cps, landscape):
    """A firing alert of a disabled rule (evaluation leaves it alone) and a default route."""
    policy("default", [cps["oncall"]], default=True)
    rule = make_rule("wo-not-acknowledged")
    rule.enabled = False
    rule.save()
    return make_alert(rule, "WO-1", plant=landscape["p1"])


@pytest.mark.django_db(transaction=True)  # the scheduler closes its connection after a pass
def test_the_embedded_scheduler_notifies_after_each_evaluation_pass(quiet_alert):
    Scheduler(clock=lambda: at(0)).run_pass()

    assert NotificationDelivery.objects.filter(alert_ids=[quiet_alert.pk]).count() == 1


def test_the_celery_evaluation_task_notifies_after_its_pass(quiet_alert):
    with time_machine.travel(at(0), tick=False):
        evaluate_all.apply()

    assert NotificationDelivery.objects.count() == 1


# --- The config file ----------------------------------------------------------------------


def test_loadnotifications_loads_the_demo_file_and_is_idempotent(db, capsys):
    call_command("loadnotifications", str(DEMO_FILE))

    policies = list(RoutingPolicy.objects.order_by("is_default", "position"))
    assert [p.name for p in policies] == ["quality", "plant1", "plant2", "default"]
    assert policies[-1].is_default
    assert policies[0].continue_matching
    plant1 = policies[1]
    assert plant1.matchers == [{"name": "plant", "value": "p1", "is_regex": False}]
    assert [cp.name for cp in plant1.escalate_to.all()] == ["plant-manager-email"]
    assert plant1.escalate_after_s == 600
    assert plant1.group_interval_s == 120  # the default route's timings are inherited
    assert ContactPoint.objects.count() == 6

    call_command("loadnotifications", str(DEMO_FILE))
    assert "6 unchanged" in capsys.readouterr().out


def test_an_invalid_notifications_file_is_refused_whole(db, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        """
contact_points:
  - {name: oncall, kind: email, to: [not-an-address]}
  - {name: hook, kind: pager}
routing:
  default: {contact_points: [oncall], group_wait: soon}
  policies:
    - {name: p1, matchers: {plant: p1}, contact_points: [nobody]}
"""
    )

    with pytest.raises(CommandError) as caught:
        call_command("loadnotifications", str(path))

    message = str(caught.value)
    assert "contact_points[oncall].to[0]: not an email address" in message
    assert "contact_points[hook].kind: must be one of email, slack, teams, webhook" in message
    assert "routing.default.group_wait: must be a duration" in message
    assert "routing.policies[0].contact_points: no contact point named 'nobody'" in message
    assert ContactPoint.objects.count() == 0
    assert RoutingPolicy.objects.count() == 0
