"""When evaluation runs: periodically, and right after every deadline known in advance.

A pass reports the next moment a rule's outcome changes (a follow-up deadline,
a threshold's ``for``, the end of a heartbeat's allowed silence), so the next
pass can be timed for it instead of waiting for the periodic one, which stays
as the safety net for what cannot be known in advance (events still to come).

Production (Redis): Celery beat runs ``monitors.tasks.evaluate_all`` every
``ANDON_EVALUATE_EVERY_S`` seconds and each pass queues one more for its next
deadline. The embedded default (no Redis): :class:`Scheduler`, a daemon thread
in the web process. Either way several may run at once (two web processes, two
workers): evaluation's per-rule locks keep that correct.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from integrations.rollups import refresh_periodically
from monitors.evaluate import PassReport, evaluate
from monitors.notify import after_evaluation

logger = logging.getLogger(__name__)

# Evaluate this long after a deadline, so that an event stamped just before it
# (and still on its way through ingest) counts.
DEADLINE_MARGIN_S = 1.0


def next_wake(
    now: datetime,
    last_pass_at: datetime,
    every_s: float,
    next_deadline: datetime | None,
    margin_s: float = DEADLINE_MARGIN_S,
) -> datetime:
    """Return when the next pass should run: the periodic time or, if sooner, a deadline."""
    wake = last_pass_at + timedelta(seconds=every_s)
    if next_deadline is not None:
        wake = min(wake, next_deadline + timedelta(seconds=margin_s))
    return max(wake, now)


class Scheduler:
    """A daemon thread that evaluates, then sleeps until the next periodic time or deadline.

    ``wake()`` makes it evaluate at once (e.g. after a rule changed).
    """

    def __init__(
        self,
        every_s: float | None = None,
        margin_s: float = DEADLINE_MARGIN_S,
        clock: Callable[[], datetime] = timezone.now,
    ) -> None:
        self.every_s = float(every_s if every_s is not None else settings.ANDON_EVALUATE_EVERY_S)
        self.margin_s = margin_s
        self.clock = clock
        self.passes = 0
        self.last_report: PassReport | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Scheduler:
        """Start the thread (once)."""
        if not self.running:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="andon-evaluate", daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        """Ask for a pass now instead of at the planned time."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread after its current pass."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run_pass(self) -> PassReport | None:
        """Run one pass, logging (not raising) a failure; return its report."""
        try:
            report = evaluate(now=self.clock())
            after_evaluation(report.at)  # the notification pass (logs, never raises, a failure)
        except Exception:  # noqa: BLE001 - the loop must survive a bad pass (database down...)
            logger.exception("evaluation pass failed")
            return None
        finally:
            close_old_connections()
        self.passes += 1
        self.last_report = report  # a rule's failure was logged by evaluate()
        return report

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                started = self.clock()
                report = self.run_pass()
                refresh_periodically()  # the connector rollups of the dashboards; never raises
                deadline = report.next_deadline if report is not None else None
                wake_at = next_wake(self.clock(), started, self.every_s, deadline, self.margin_s)
                self._wake.wait(timeout=max(0.0, (wake_at - self.clock()).total_seconds()))
                self._wake.clear()
        finally:
            connection.close()  # this thread's own connection


_embedded: Scheduler | None = None
_embedded_lock = threading.Lock()


def start_embedded() -> Scheduler:
    """Start this process's embedded scheduler (once) and return it."""
    global _embedded
    with _embedded_lock:
        if _embedded is None or not _embedded.running:
            _embedded = Scheduler().start()
        return _embedded


def wake() -> None:
    """Wake this process's embedded scheduler, if it runs (a no-op under Celery)."""
    if _embedded is not None:
        _embedded.wake()
