"""Two evaluation passes at once (two workers, two web processes) yield one alert per episode."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import connection, transaction

from monitors.evaluate import evaluate, insert_alerts, try_rule_lock
from monitors.models import Alert, AlertTransition
from tests.evaluation_helpers import at, make_rule, store_event

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="passes in parallel need PostgreSQL"
)

WO_ACK = {
    "name": "wo-not-acknowledged",
    "kind": "followup",
    "when": {"type": "erp.workorder.released"},
    "expect": {"type": "mes.workorder.acknowledged"},
    "key": "subject",
    "within": "10m",
}


def in_threads(count: int, work: Callable[[], object]) -> list[object]:
    """Run ``work`` in ``count`` threads released at once, each on its own connection."""
    barrier = threading.Barrier(count)
    results: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            results.append(work())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if errors:
        raise errors[0]
    return results


@pytest.mark.django_db(transaction=True)
def test_two_passes_at_once_raise_one_alert_per_key_and_log_it_once():
    make_rule(WO_ACK)
    for n in range(40):
        store_event("erp.workorder.released", at(0), subject=f"WO-{n}")
    for _ in range(3):
        in_threads(2, lambda: evaluate(now=at(11)))
    assert Alert.objects.filter(state="firing").count() == 40
    assert AlertTransition.objects.filter(state="firing").count() == 40


@pytest.mark.django_db(transaction=True)
def test_two_passes_at_once_resolve_each_alert_once():
    make_rule(WO_ACK)
    for n in range(40):
        store_event("erp.workorder.released", at(0), subject=f"WO-{n}")
    evaluate(now=at(11))
    for n in range(40):
        store_event("mes.workorder.acknowledged", at(12), subject=f"WO-{n}", source="/mes/p1")
    in_threads(2, lambda: evaluate(now=at(13)))
    assert Alert.objects.filter(state="resolved", resolution="late").count() == 40
    assert AlertTransition.objects.filter(state="resolved").count() == 40


@pytest.mark.django_db(transaction=True)
def test_two_passes_at_once_record_a_breach_answered_late_once():
    make_rule(WO_ACK)
    for n in range(40):
        store_event("erp.workorder.released", at(0), subject=f"WO-{n}")
        store_event("mes.workorder.acknowledged", at(12), subject=f"WO-{n}", source="/mes/p1")
    for _ in range(3):
        in_threads(2, lambda: evaluate(now=at(13)))
    assert Alert.objects.filter(state="resolved", resolution="late").count() == 40
    assert AlertTransition.objects.count() == 80


@pytest.mark.django_db(transaction=True)
def test_a_pass_skips_a_rule_another_pass_is_evaluating():
    rule = make_rule(WO_ACK)
    store_event("erp.workorder.released", at(0), subject="WO-1")
    holding, done = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        try:
            with transaction.atomic():
                assert try_rule_lock(rule.id)
                holding.set()
                done.wait(timeout=30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert holding.wait(timeout=10)
        report = evaluate(now=at(11))
    finally:
        done.set()
        holder.join(timeout=30)
    assert report.rules[0].skipped
    assert Alert.objects.count() == 0
    assert not evaluate(now=at(11)).rules[0].skipped
    assert Alert.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_the_unique_index_refuses_a_second_open_alert_for_a_key():
    rule = make_rule(WO_ACK)

    def alert() -> Alert:
        return Alert(rule=rule, key="WO-1", state="firing", severity="major", started_at=at(0))

    with transaction.atomic():
        assert len(insert_alerts([alert()])) == 1
    with transaction.atomic():
        assert insert_alerts([alert()]) == []
    assert Alert.objects.count() == 1
