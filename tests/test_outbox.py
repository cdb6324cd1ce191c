"""The transactional outbox: work committed with its request, run once, recovered after outages."""

from __future__ import annotations

from datetime import timedelta

import pytest
import time_machine
from django.db import transaction
from django.utils import timezone

from console import outbox
from console.models import OutboxState, OutboxTask

calls: list[dict] = []


@outbox.handler("test.record")
def _record(payload, task):
    calls.append(payload)


@outbox.handler("test.fail")
def _fail(payload, task):
    raise RuntimeError("target answered 503")


@outbox.handler("test.later")
def _later(payload, task):
    raise outbox.Retry(30, "rate limited")


@pytest.fixture(autouse=True)
def _clear():
    calls.clear()


@pytest.mark.django_db
def test_a_task_rolled_back_with_its_request_never_exists():
    with pytest.raises(RuntimeError), transaction.atomic():
        outbox.enqueue("test.record", {"n": 1})
        raise RuntimeError("the request failed")
    assert not OutboxTask.objects.exists()


@pytest.mark.django_db
def test_a_task_runs_once_even_when_woken_twice():
    task = outbox.enqueue("test.record", {"n": 1})
    assert outbox.run(task.pk) == "done"
    assert outbox.run(task.pk) == "skipped"
    assert calls == [{"n": 1}]
    task.refresh_from_db()
    assert task.state == OutboxState.DONE and task.finished_at is not None


@pytest.mark.django_db
def test_a_failing_task_is_retried_with_backoff_then_marked_failed():
    task = outbox.enqueue("test.fail", {}, max_attempts=2)
    assert outbox.run(task.pk) == "retry"
    task.refresh_from_db()
    assert task.state == OutboxState.QUEUED
    assert "target answered 503" in task.last_error
    assert task.available_at > timezone.now()
    assert outbox.run(task.pk) == "skipped"  # not due yet
    with time_machine.travel(task.available_at + timedelta(seconds=1)):
        assert outbox.run(task.pk) == "failed"
    task.refresh_from_db()
    assert task.state == OutboxState.FAILED and task.attempts == 2


@pytest.mark.django_db
def test_a_retry_request_does_not_count_as_a_failed_attempt():
    task = outbox.enqueue("test.later", {}, max_attempts=1)
    assert outbox.run(task.pk) == "retry"
    task.refresh_from_db()
    assert task.state == OutboxState.QUEUED and task.attempts == 0


@pytest.mark.django_db
def test_a_task_abandoned_by_a_dead_worker_is_claimed_again_after_its_lease():
    task = outbox.enqueue("test.record", {"n": 2})
    assert outbox.claim(task.pk) is not None  # a worker took it, then died
    assert outbox.run(task.pk) == "skipped"
    with time_machine.travel(timezone.now() + timedelta(seconds=outbox.LEASE_S + 1)):
        assert task.pk in outbox.due()
        assert outbox.run(task.pk) == "done"
    assert calls == [{"n": 2}]


@pytest.mark.django_db
def test_the_same_dedup_key_enqueues_once():
    first = outbox.enqueue("test.record", {"n": 1}, dedup_key="job-7")
    second = outbox.enqueue("test.record", {"n": 2}, dedup_key="job-7")
    assert first.pk == second.pk
    assert OutboxTask.objects.count() == 1


@pytest.mark.django_db
def test_an_unknown_handler_is_refused_at_enqueue():
    with pytest.raises(KeyError):
        outbox.enqueue("no.such.task", {})


@pytest.mark.django_db
def test_a_lost_wake_up_is_recovered_by_the_sweep(settings):
    # Redis configured but down: the wake-up is lost, the task is not.
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    task = outbox.enqueue("test.record", {"n": 3})
    outbox.kick(task.pk)
    assert OutboxTask.objects.get(pk=task.pk).state == OutboxState.QUEUED
    settings.REDIS_URL = ""
    woken = []
    worker = outbox.embedded_worker()
    original = worker.wake
    worker.wake = lambda: woken.append(True)  # type: ignore[method-assign]
    try:
        assert outbox.sweep() == 0  # too fresh: its own wake-up may still arrive
        with time_machine.travel(timezone.now() + timedelta(seconds=outbox.REKICK_AFTER_S + 1)):
            assert outbox.sweep() == 1
    finally:
        worker.wake = original  # type: ignore[method-assign]
    assert woken == [True]


@pytest.mark.django_db(transaction=True)
def test_the_embedded_worker_is_woken_only_once_the_request_commits(settings):
    settings.REDIS_URL = ""
    woken = []
    shared = outbox.embedded_worker()
    original = shared.wake
    shared.wake = lambda: woken.append(True)  # type: ignore[method-assign]
    try:
        with transaction.atomic():
            task = outbox.enqueue("test.record", {"n": 4})
            assert woken == []
        assert woken == [True]
    finally:
        shared.wake = original  # type: ignore[method-assign]
    worker = outbox.EmbeddedWorker(interval_s=0.05)
    assert worker.run_due() == 1
    assert calls == [{"n": 4}]
    assert OutboxTask.objects.get(pk=task.pk).state == OutboxState.DONE
