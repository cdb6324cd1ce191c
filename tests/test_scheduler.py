"""Scheduling: periodic passes, a pass right after each known deadline, and `evaluate --at`."""

from __future__ import annotations

import time
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone
from kombu import Connection

from console.celery import app as celery_app
from monitors.scheduler import Scheduler, next_wake
from monitors.tasks import evaluate_all, schedule_deadline
from tests.evaluation_helpers import alerts_of, at, firing, make_rule, store_event

WO_ACK = {
    "name": "wo-not-acknowledged",
    "kind": "followup",
    "when": {"type": "erp.workorder.released"},
    "expect": {"type": "mes.workorder.acknowledged"},
    "key": "subject",
    "within": "10m",
}


# --- When to wake ---------------------------------------------------------------------------


def test_without_a_deadline_it_wakes_at_the_next_periodic_time():
    assert next_wake(now=at(0, 3), last_pass_at=at(0), every_s=15, next_deadline=None) == at(0, 15)


def test_a_deadline_before_the_periodic_time_wakes_it_just_after_the_deadline():
    wake = next_wake(now=at(0, 3), last_pass_at=at(0), every_s=15, next_deadline=at(0, 7))
    assert wake == at(0, 8)


def test_a_deadline_after_the_periodic_time_leaves_the_periodic_pass():
    wake = next_wake(now=at(0, 3), last_pass_at=at(0), every_s=15, next_deadline=at(5))
    assert wake == at(0, 15)


def test_a_pass_that_overran_its_period_is_followed_at_once():
    wake = next_wake(now=at(0, 20), last_pass_at=at(0), every_s=15, next_deadline=None)
    assert wake == at(0, 20)


# --- The embedded scheduler -------------------------------------------------------------------


def wait_for(condition, timeout: float = 20.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` passes (no timing is asserted)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the thread needs a shared database")
@pytest.mark.django_db(transaction=True)
def test_the_embedded_scheduler_wakes_for_a_deadline_not_the_periodic_pass():
    rule = make_rule(WO_ACK, created_at=timezone.now() - timedelta(hours=1))
    # Released so that its deadline falls two seconds from now; the periodic pass is an hour off.
    released = timezone.now() - timedelta(minutes=10) + timedelta(seconds=2)
    store_event("erp.workorder.released", released, subject="WO-1")
    scheduler = Scheduler(every_s=3600, margin_s=0.1).start()
    try:
        assert wait_for(lambda: scheduler.passes >= 1)
        first = scheduler.last_report
        assert first is not None and first.fired == 0 and first.next_deadline is not None
        # The pass commits (alert visible) a moment before it counts itself done.
        assert wait_for(lambda: scheduler.passes >= 2)
        assert firing(rule) == ["WO-1"]
        assert scheduler.passes == 2
    finally:
        scheduler.stop()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the thread needs a shared database")
@pytest.mark.django_db(transaction=True)
def test_waking_the_embedded_scheduler_runs_a_pass_at_once():
    scheduler = Scheduler(every_s=3600).start()
    try:
        assert wait_for(lambda: scheduler.passes == 1)
        rule = make_rule(WO_ACK, created_at=timezone.now() - timedelta(hours=1))
        released = timezone.now() - timedelta(minutes=11)
        store_event("erp.workorder.released", released, subject="WO-1")
        scheduler.wake()
        assert wait_for(lambda: firing(rule) == ["WO-1"])
    finally:
        scheduler.stop()
    assert not scheduler.running


# --- Celery ---------------------------------------------------------------------------------


def test_beat_runs_the_evaluation_pass_every_configured_period(settings):
    entry = celery_app.conf.beat_schedule["evaluate-rules"]
    assert entry["task"] == "monitors.tasks.evaluate_all" == evaluate_all.name
    assert entry["schedule"] == float(settings.ANDON_EVALUATE_EVERY_S)


def test_a_deadline_is_queued_once_as_an_eta_task():
    now = timezone.now()
    deadline = now + timedelta(seconds=5)
    with Connection("memory://") as broker:
        queue = broker.SimpleQueue("celery")
        try:
            eta = schedule_deadline(deadline, now=now, connection=broker)
            assert eta == deadline + timedelta(seconds=1)
            assert schedule_deadline(deadline, now=now, connection=broker) is None
            message = queue.get(timeout=1)
            assert message.headers["task"] == "monitors.tasks.evaluate_all"
            assert message.headers["eta"] == eta.isoformat()
            message.ack()
            assert queue.qsize() == 0
        finally:
            queue.close()


def test_a_deadline_beyond_the_next_periodic_passes_is_left_to_them(settings):
    now = timezone.now()
    far = now + timedelta(seconds=2 * settings.ANDON_EVALUATE_EVERY_S + 1)
    assert schedule_deadline(far, now=now) is None
    assert schedule_deadline(None, now=now) is None


@pytest.mark.django_db
def test_the_evaluation_task_runs_a_pass(landscape):
    rule = make_rule(WO_ACK, created_at=timezone.now() - timedelta(hours=1))
    store_event("erp.workorder.released", timezone.now() - timedelta(minutes=11), subject="WO-1")
    result = evaluate_all.apply().get()
    assert result["fired"] == 1
    assert firing(rule) == ["WO-1"]


# --- `evaluate` ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_evaluate_at_runs_one_pass_as_of_that_time_and_prints_the_report(landscape):
    rule = make_rule(WO_ACK)
    store_event("erp.workorder.released", at(0), subject="WO-1")
    out = StringIO()
    call_command("evaluate", "--at", at(10).isoformat(), stdout=out)
    assert firing(rule) == ["WO-1"]
    text = out.getvalue()
    assert "1 fired" in text
    assert "wo-not-acknowledged (followup): 1 fired" in text


@pytest.mark.django_db
def test_evaluate_at_without_an_offset_means_utc(landscape):
    rule = make_rule(WO_ACK)
    store_event("erp.workorder.released", at(0), subject="WO-1")
    call_command("evaluate", "--at", "2026-05-04T08:09:59", stdout=StringIO())
    assert alerts_of(rule) == []
    call_command("evaluate", "--at", "2026-05-04T08:10:00", stdout=StringIO())
    assert firing(rule) == ["WO-1"]


@pytest.mark.django_db
def test_evaluate_refuses_a_bad_at_naming_it():
    with pytest.raises(CommandError, match=r"--at: 'yesterday' is not an ISO-8601 time"):
        call_command("evaluate", "--at", "yesterday", stdout=StringIO())


@pytest.mark.django_db
def test_evaluate_fails_naming_a_rule_it_could_not_evaluate(landscape):
    make_rule(
        {
            "name": "ghost-failures",
            "kind": "threshold",
            "connector": "ghost",
            "metric": "failed_count",
            "window": "5m",
            "op": ">",
            "value": 0,
        }
    )
    out = StringIO()
    with pytest.raises(CommandError, match="ghost-failures"):
        call_command("evaluate", stdout=out)
    assert "connector 'ghost' is not in the landscape" in out.getvalue()
