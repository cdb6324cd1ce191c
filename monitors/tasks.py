"""Celery tasks of the monitors app (with Redis): evaluation, periodic and at deadlines."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.utils import timezone

from monitors.evaluate import evaluate
from monitors.notify import after_evaluation
from monitors.scheduler import DEADLINE_MARGIN_S

DEDUP_KEY = "andon:evaluate:eta:{}"


@shared_task(name="monitors.tasks.evaluate_all", ignore_result=True)
def evaluate_all() -> dict[str, Any]:
    """Run one evaluation pass, then queue one more for its next deadline."""
    report = evaluate()
    eta = schedule_deadline(report.next_deadline)
    after_evaluation(report.at)  # the notification pass (logs, never raises, a failure)
    return {
        "fired": report.fired,
        "resolved": report.resolved,
        "late": report.late,
        "pending": report.pending,
        "errors": [f"{r.rule}: {r.error}" for r in report.errors],
        "next_pass": eta.isoformat() if eta else None,
    }


def schedule_deadline(
    deadline: datetime | None, now: datetime | None = None, connection: Any = None
) -> datetime | None:
    """Queue ``evaluate_all`` just after ``deadline``; return its eta, or None if not queued.

    Not queued when there is no deadline, or when it lies beyond the next two
    periodic passes (a later pass will see it again). Many passes find the same
    deadline, so the eta (to the second) is claimed in the cache first and only
    the pass that claims it queues the task. ``connection`` is a kombu
    connection to send on instead of the app's pool.
    """
    if deadline is None:
        return None
    now = now or timezone.now()
    horizon = timedelta(seconds=2 * settings.ANDON_EVALUATE_EVERY_S)
    if deadline > now + horizon:
        return None
    eta = deadline + timedelta(seconds=DEADLINE_MARGIN_S)
    lifetime = max(60, int((eta - now).total_seconds()) + 60)
    if not cache.add(DEDUP_KEY.format(int(eta.timestamp())), 1, timeout=lifetime):
        return None
    evaluate_all.apply_async(eta=eta, connection=connection)
    return eta
