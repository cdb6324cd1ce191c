"""A transactional outbox: background work that survives a broker or worker outage.

Code that wants work done later calls :func:`enqueue` inside its own database
transaction, so the work exists exactly when the request's changes do. After
commit, a wake-up is sent: to Celery when ``REDIS_URL`` is set (``console.tasks``),
else to the embedded worker thread of this process. If the wake-up is lost (Redis
down, worker killed), :func:`sweep` finds the work again: beat runs it every few
seconds in production, the embedded worker loops on it.

A task is claimed with a lease (``locked_until``); a worker that dies leaves the
lease to expire and the task is claimed again, so handlers must be resumable:
they record progress in their own tables and skip what is already done.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import close_old_connections, transaction
from django.db.models import F, Q
from django.utils import timezone

from console.models import OutboxState, OutboxTask

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], OutboxTask], None]
_handlers: dict[str, Handler] = {}

LEASE_S = 60
# A queued task whose wake-up has not run it within this long is woken again by the sweep.
REKICK_AFTER_S = 5


class Retry(Exception):
    """Raised by a handler to be run again after ``after_s`` seconds (not an error)."""

    def __init__(self, after_s: float, reason: str = "") -> None:
        super().__init__(reason or f"retry in {after_s}s")
        self.after_s = after_s


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register ``fn(payload, task)`` as the handler of tasks called ``name``."""

    def register(fn: Handler) -> Handler:
        _handlers[name] = fn
        return fn

    return register


def enqueue(
    name: str,
    payload: dict[str, Any],
    *,
    delay_s: float = 0,
    dedup_key: str | None = None,
    max_attempts: int = 8,
) -> OutboxTask:
    """Record work to do and wake a worker once the surrounding transaction commits.

    With ``dedup_key``, enqueuing the same key again returns the existing task.
    """
    if name not in _handlers:
        raise KeyError(f"no outbox handler named {name!r}")
    now = timezone.now()
    fields = {
        "name": name,
        "payload": payload,
        "available_at": now + timedelta(seconds=delay_s),
        "max_attempts": max_attempts,
    }
    if dedup_key is not None:
        task, _ = OutboxTask.objects.get_or_create(dedup_key=dedup_key, defaults=fields)
    else:
        task = OutboxTask.objects.create(**fields)
    if delay_s <= 0:
        task_id = task.pk
        transaction.on_commit(lambda: kick(task_id))
    return task


def kick(task_id: int) -> None:
    """Wake a worker for one task; a lost wake-up is recovered by :func:`sweep`."""
    if settings.REDIS_URL:
        try:
            from console.tasks import run_outbox_task

            run_outbox_task.apply_async(args=[task_id], retry=False)
        except Exception:  # noqa: BLE001 - broker down: the sweep will run it later
            log.warning("could not queue outbox task %s; the sweep will", task_id, exc_info=True)
    else:
        embedded_worker().wake()


def claim(task_id: int, now: datetime | None = None, lease_s: float = LEASE_S) -> OutboxTask | None:
    """Take a task for this worker: queued and due, or running with an expired lease."""
    now = now or timezone.now()
    claimable = Q(state=OutboxState.QUEUED, available_at__lte=now) | Q(
        state=OutboxState.RUNNING, locked_until__lt=now
    )
    updated = OutboxTask.objects.filter(claimable, pk=task_id).update(
        state=OutboxState.RUNNING,
        locked_until=now + timedelta(seconds=lease_s),
        attempts=F("attempts") + 1,
    )
    return OutboxTask.objects.get(pk=task_id) if updated else None


def extend_lease(task: OutboxTask, lease_s: float = LEASE_S) -> None:
    """Keep a long-running task claimed (call between batches)."""
    OutboxTask.objects.filter(pk=task.pk).update(
        locked_until=timezone.now() + timedelta(seconds=lease_s)
    )


def run(task_id: int) -> str:
    """Claim and run one task; return ``done``, ``retry``, ``failed`` or ``skipped``."""
    task = claim(task_id)
    if task is None:
        return "skipped"
    fn = _handlers.get(task.name)
    try:
        if fn is None:
            raise LookupError(f"no outbox handler named {task.name!r}")
        fn(task.payload, task)
    except Retry as retry:
        _requeue(task, retry.after_s, str(retry), count_attempt=False)
        return "retry"
    except Exception as exc:  # noqa: BLE001 - recorded on the task, retried with backoff
        log.warning("outbox task %s (%s) failed", task.pk, task.name, exc_info=True)
        error = "".join(traceback.format_exception_only(exc)).strip()
        if task.attempts >= task.max_attempts:
            OutboxTask.objects.filter(pk=task.pk).update(
                state=OutboxState.FAILED,
                last_error=error,
                finished_at=timezone.now(),
                locked_until=None,
            )
            return "failed"
        _requeue(task, min(300.0, 2.0**task.attempts), error)
        return "retry"
    OutboxTask.objects.filter(pk=task.pk).update(
        state=OutboxState.DONE, finished_at=timezone.now(), locked_until=None
    )
    return "done"


def _requeue(task: OutboxTask, after_s: float, error: str, count_attempt: bool = True) -> None:
    updates: dict[str, Any] = {
        "state": OutboxState.QUEUED,
        "available_at": timezone.now() + timedelta(seconds=after_s),
        "locked_until": None,
        "last_error": error,
    }
    if not count_attempt:
        updates["attempts"] = F("attempts") - 1
    OutboxTask.objects.filter(pk=task.pk).update(**updates)


def due(now: datetime | None = None, limit: int = 200) -> list[int]:
    """Return ids of tasks a worker should run now (due, or abandoned by a dead worker)."""
    now = now or timezone.now()
    return list(
        OutboxTask.objects.filter(
            Q(state=OutboxState.QUEUED, available_at__lte=now)
            | Q(state=OutboxState.RUNNING, locked_until__lt=now)
        )
        .order_by("available_at", "id")
        .values_list("id", flat=True)[:limit]
    )


def sweep(now: datetime | None = None) -> int:
    """Wake a worker for every due task whose wake-up may have been lost; return how many.

    A queued task is re-kicked only once it has waited ``REKICK_AFTER_S``, so a
    healthy queue is not flooded with duplicate wake-ups (duplicates are harmless:
    only one claim succeeds).
    """
    now = now or timezone.now()
    stale = now - timedelta(seconds=REKICK_AFTER_S)
    ids = list(
        OutboxTask.objects.filter(
            Q(state=OutboxState.QUEUED, available_at__lte=stale)
            | Q(state=OutboxState.QUEUED, available_at__lte=now, attempts__gt=0)
            | Q(state=OutboxState.RUNNING, locked_until__lt=now)
        ).values_list("id", flat=True)[:500]
    )
    for task_id in ids:
        kick(task_id)
    return len(ids)


class EmbeddedWorker:
    """The embedded default's worker: a daemon thread that runs due outbox tasks.

    It polls every ``interval_s`` and is woken at once by :meth:`wake` (``kick``
    after a commit), so a request returns before its work runs, without Redis.
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        self.interval_s = interval_s
        self._event = threading.Event()
        self._thread: threading.Thread | None = None
        self._stop = False

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="andon-outbox", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._event.set()

    def wake(self) -> None:
        self._event.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run_due(self) -> int:
        """Run every due task once; return how many ran."""
        ran = 0
        for task_id in due():
            if run(task_id) != "skipped":
                ran += 1
        return ran

    def _loop(self) -> None:
        while not self._stop:
            self._event.wait(self.interval_s)
            self._event.clear()
            try:
                close_old_connections()
                self.run_due()
            except Exception:  # noqa: BLE001 - keep the worker alive; the task records errors
                log.exception("embedded outbox worker pass failed")
            finally:
                close_old_connections()


_embedded = EmbeddedWorker()


def embedded_worker() -> EmbeddedWorker:
    """Return this process's embedded worker (started by the demo's ``serve``)."""
    return _embedded
