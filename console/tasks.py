"""Celery tasks that carry outbox wake-ups (with Redis); see ``console.outbox``."""

from __future__ import annotations

from celery import shared_task

from console import outbox


@shared_task(name="console.tasks.run_outbox_task", ignore_result=True, acks_late=True)
def run_outbox_task(task_id: int) -> str:
    """Claim and run one outbox task (a duplicate wake-up finds it claimed and skips)."""
    return outbox.run(task_id)


@shared_task(name="console.tasks.outbox_sweep", ignore_result=True)
def outbox_sweep() -> int:
    """Re-wake due tasks whose wake-up was lost (broker was down, worker was killed)."""
    return outbox.sweep()
