"""Live updates to open pages: the one helper every producer publishes through.

Producers (evaluation, acknowledgements, replay progress, the health publisher)
call :func:`publish`; the websocket consumer (``console.consumers``) forwards to
each browser only what its user's role and plants allow. Publishing is best
effort: a page that misses an update catches up on its next load (``live.js``
also refreshes after a reconnect), so it never raises once the stream is known.

Streams: ``alerts`` (an alert was created or changed), ``replays`` (replay job
progress; events should carry ``job_id``) and ``health`` (every few seconds:
ingest rates per endpoint and connector health).

What the consumer filters, so producers shape their events for it:

- ``plant_id`` given: the event reaches only principals that see that plant.
  ``plant_scoped=True`` with ``plant_id=None`` marks plant data without a plant
  (an alert of the cloud ERP): only unscoped principals see it. Otherwise an
  event without a plant reaches every principal that may read;
- a top-level list of dicts that carry ``plant_id`` (the health event's
  connectors) is cut down to the rows of the principal's plants;
- the key ``admin`` (at the top level or in such a row) holds admin-only
  details and is removed for everyone else.

Events are plain JSON types (times as ISO strings): channels-redis packs them
with msgpack and the consumer sends them as JSON.

Publishing inside a transaction waits for its commit (a rollback drops the
update), so a page never hears of a change it cannot yet read. Then one thread
per process does the sending (and the evaluation pass's query of what changed),
so a producer never waits for Redis; :func:`flush` waits for it (it also runs
at exit, so a short command delivers what it published).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import shared_task
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.db import connection, transaction
from django.utils import timezone

from console import metrics

log = logging.getLogger(__name__)

STREAMS = ("alerts", "replays", "health")
ADMIN_KEY = "admin"
MESSAGE_TYPE = "andon.update"
# Events per channel-layer message: a burst stays a few messages (channels-redis
# drops what exceeds a channel's capacity of 100 messages).
CHUNK = 50
# An evaluation pass publishes at most this many alerts, then one "overflow" event.
MAX_ALERTS_PER_PASS = 200
SEND_TIMEOUT_S = 5.0
# Jobs the sender thread may hold before new updates are dropped (a channel layer outage).
MAX_PENDING = 1000
EXIT_FLUSH_S = 2.0
HEALTH_EVERY_S = 5.0
HEALTH_WINDOW_S = 300
HEALTH_SAMPLE_KEY = "andon:live:ingest-sample"


def group_name(stream: str) -> str:
    """Return the channel-layer group of a stream."""
    return f"andon.{stream}"


# --- Publishing --------------------------------------------------------------------------------


def publish(
    stream: str,
    event: dict[str, Any],
    plant_id: int | None = None,
    *,
    plant_scoped: bool = False,
) -> None:
    """Send ``event`` to every open page subscribed to ``stream`` (``plant_id`` scopes it).

    Raises ValueError for an unknown stream (a programming error); anything
    else (the channel layer or Redis being down) is logged, never raised.
    """
    publish_many(stream, [(event, plant_id)], plant_scoped=plant_scoped)


def publish_many(
    stream: str,
    items: Iterable[tuple[dict[str, Any], int | None]],
    *,
    plant_scoped: bool = False,
) -> None:
    """Send several ``(event, plant_id)`` of one stream in as few layer messages as possible."""
    if stream not in STREAMS:
        raise ValueError(f"unknown live stream {stream!r}; choose from {', '.join(STREAMS)}")
    entries = [
        {"event": event, "plant_id": plant_id, "scoped": plant_scoped or plant_id is not None}
        for event, plant_id in items
    ]
    if not entries:
        return
    messages = [
        {"type": MESSAGE_TYPE, "stream": stream, "items": entries[start : start + CHUNK]}
        for start in range(0, len(entries), CHUNK)
    ]
    group = group_name(stream)
    after_commit(lambda: _dispatch(group, messages))


def after_commit(job: Callable[[], None]) -> None:
    """Run ``job`` once the current transaction commits (now when there is none)."""
    if _in_transaction():
        transaction.on_commit(job, robust=True)
    else:
        job()


def _in_transaction() -> bool:
    try:
        return bool(transaction.get_connection().in_atomic_block)
    except Exception:  # noqa: BLE001 - no database configured: nothing to wait for
        return False


# The event loop the consumers of this process run on (set when one connects): the
# in-memory layer's queues belong to it, so the sender thread sends through it.
_consumer_loop: asyncio.AbstractEventLoop | None = None


def attach_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Remember the loop this process's consumers run on (called by the consumer)."""
    global _consumer_loop
    _consumer_loop = loop


def _dispatch(group: str, messages: list[dict[str, Any]]) -> None:
    """Hand layer messages to the sender thread (from sync or async code alike)."""
    _sender.submit(lambda: _send(group, messages))


async def _send_all(group: str, messages: list[dict[str, Any]]) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    for message in messages:
        await layer.group_send(group, message)


def _send(group: str, messages: list[dict[str, Any]]) -> None:
    """Send layer messages to a group (in the sender thread); log, never raise."""
    try:
        home = _consumer_loop
        if (
            isinstance(get_channel_layer(), InMemoryChannelLayer)
            and home is not None
            and home.is_running()
            and not home.is_closed()
        ):
            future = asyncio.run_coroutine_threadsafe(_send_all(group, messages), home)
            future.result(timeout=SEND_TIMEOUT_S)
        else:
            _sender.run(_send_all(group, messages))
    except Exception:  # noqa: BLE001 - live updates are best effort
        log.warning("could not publish a live update to %s", group, exc_info=True)


class _Sender:
    """This process's live-update thread: producers hand it work and go on at once.

    Evaluation passes, requests and workers never wait for Redis (nor hang on
    it when it is down); one thread keeps the order of what was published and
    one event loop, so channels-redis reuses its connections. Bounded: when
    Redis is down long enough for work to pile up, new updates are dropped.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue[Callable[[], None]] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dropping = False

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` for the thread (started on first use in each process)."""
        with self._lock:
            if self._pid != os.getpid() or self._thread is None or not self._thread.is_alive():
                first = self._pid is None
                self._pid = os.getpid()
                self._loop = None  # a forked worker must not reuse its parent's loop
                self._queue = queue.Queue(maxsize=MAX_PENDING)
                self._thread = threading.Thread(
                    target=self._work, args=(self._queue,), name="andon-live", daemon=True
                )
                self._thread.start()
                if first:
                    # A short-lived command (``manage.py evaluate``) still delivers.
                    atexit.register(self.flush, EXIT_FLUSH_S)
            pending = self._queue
        assert pending is not None
        try:
            pending.put_nowait(job)
            self._dropping = False
        except queue.Full:
            if not self._dropping:
                log.warning("live updates are piling up (channel layer down?); dropping new ones")
            self._dropping = True

    def run(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a coroutine on the thread's own loop, within SEND_TIMEOUT_S (sender thread only)."""
        if self._loop is None or self._loop.is_closed():
            self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(asyncio.wait_for(coroutine, SEND_TIMEOUT_S))

    def flush(self, timeout: float = SEND_TIMEOUT_S) -> bool:
        """Wait until every queued job ran; return False if ``timeout`` passed first."""
        pending = self._queue
        if pending is None or self._pid != os.getpid():
            return True
        deadline = time.monotonic() + timeout
        with pending.all_tasks_done:
            while pending.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                pending.all_tasks_done.wait(remaining)
        return True

    def _work(self, pending: queue.Queue[Callable[[], None]]) -> None:
        while True:
            job = pending.get()
            try:
                job()
            except Exception:  # noqa: BLE001 - one bad job must not stop live updates
                log.warning("a live-update job failed", exc_info=True)
            finally:
                pending.task_done()


_sender = _Sender()


def flush(timeout: float = SEND_TIMEOUT_S) -> bool:
    """Wait until this process's published updates were handed to the channel layer."""
    return _sender.flush(timeout)


# --- Listeners in this process (the embedded health publisher runs only while pages listen) ---

_listeners: Counter[str] = Counter()
_listeners_lock = threading.Lock()


def listening(streams: Iterable[str], delta: int) -> None:
    """Count pages of this process that (stop to) listen to ``streams``."""
    with _listeners_lock:
        for stream in streams:
            _listeners[stream] = max(0, _listeners[stream] + delta)


def listeners(stream: str) -> int:
    """Return how many pages of this process listen to ``stream``."""
    with _listeners_lock:
        return _listeners[stream]


# --- Alerts ------------------------------------------------------------------------------------


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def alert_event(alert: Any) -> dict[str, Any]:
    """Return the live event of an alert (read from the row and its labels: no extra query)."""
    from django.urls import reverse

    labels = alert.labels or {}
    rule = labels.get("rule") or alert.rule.name
    return {
        "kind": "alert",
        "id": alert.pk,
        "rule": rule,
        "key": alert.key,
        "state": alert.state,
        "severity": alert.severity,
        "summary": alert.summary,
        "plant": labels.get("plant"),
        "plant_id": alert.plant_id,
        "started_at": _iso(alert.started_at),
        "fired_at": _iso(alert.fired_at),
        "resolved_at": _iso(alert.resolved_at),
        "resolution": alert.resolution,
        "late_by_s": alert.late_by_s,
        "acknowledged_by": alert.acknowledged_by,
        "value": alert.value,
        "updated_at": _iso(alert.updated_at),
        "url": reverse("alert", args=[alert.pk]),
        ADMIN_KEY: {"context": alert.context or {}},
    }


def publish_alerts(alerts: Iterable[Any]) -> None:
    """Publish created or changed alerts, each to the principals that see its plant."""
    publish_many(
        "alerts", [(alert_event(alert), alert.plant_id) for alert in alerts], plant_scoped=True
    )


def publish_pass(report: Any, rules: Iterable[Any]) -> None:
    """Publish the alerts an evaluation pass changed; never raises, never delays the pass.

    Only rules that fired, resolved or pended something are looked at, plus
    threshold rules (their open alert's value moves without a transition); an
    alert changed in this pass has ``updated_at`` within the pass's duration.
    The query and the sending run in the sender thread once the pass commits.
    """
    if _in_memory_database():
        return  # testrules' private world: no other thread (or page) can see it
    try:
        from monitors.models import RuleKind

        by_name = {rule.name: rule for rule in rules}
        rule_ids = [
            by_name[result.rule].pk
            for result in report.rules
            if result.rule in by_name
            and not result.skipped
            and not result.error
            and (
                result.fired
                or result.resolved
                or result.pending
                or by_name[result.rule].kind == RuleKind.THRESHOLD
            )
        ]
        if not rule_ids:
            return
        since = timezone.now() - timedelta(seconds=report.seconds + 1)
        after_commit(lambda: _sender.submit(lambda: _publish_changed(rule_ids, since)))
    except Exception:  # noqa: BLE001 - a live update must never fail a pass
        log.warning("could not publish the alerts of an evaluation pass", exc_info=True)


def _in_memory_database() -> bool:
    check = getattr(connection, "is_in_memory_db", None)
    return bool(check and check())


def _publish_changed(rule_ids: list[int], since: datetime) -> None:
    """Publish the alerts of ``rule_ids`` changed since ``since`` (in the sender thread)."""
    from monitors.models import Alert

    try:
        changed = list(
            Alert.objects.filter(rule_id__in=rule_ids, updated_at__gte=since).order_by(
                "-updated_at", "-id"
            )[: MAX_ALERTS_PER_PASS + 1]
        )
        publish_alerts(changed[:MAX_ALERTS_PER_PASS])
        if len(changed) > MAX_ALERTS_PER_PASS:
            # Too many to send one by one: pages reload their lists instead.
            publish("alerts", {"kind": "overflow", "at": _iso(timezone.now())})
    finally:
        connection.close()  # the sender thread holds no connection between jobs


# --- Health ------------------------------------------------------------------------------------

_FIELD = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?:\{(?P<labels>.*)\})?$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_field(field: str) -> tuple[str, dict[str, str]]:
    """Split a metrics field ``name{a="1",b="2"}`` into its name and labels."""
    match = _FIELD.match(field)
    if match is None:
        return field, {}
    labels = {
        key: value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
        for key, value in _LABEL.findall(match.group("labels") or "")
    }
    return match.group("name"), labels


@dataclass(frozen=True)
class IngestSample:
    """The ingest counters at one moment (epoch seconds)."""

    at: float
    values: dict[str, float]


def ingest_rates(
    previous: IngestSample | None, current: IngestSample
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Return per-endpoint rates between two samples, and the per-status detail for admins.

    Rates are None on the first sample (or when the previous one is older than
    a minute or out of order); a counter that went down was reset and counts
    from zero.
    """
    elapsed = current.at - previous.at if previous is not None else 0.0
    usable = previous is not None and 0 < elapsed <= 60
    endpoints: dict[str, dict[str, float]] = {}
    statuses: dict[str, dict[str, float]] = {}
    for field, value in current.values.items():
        name, labels = parse_field(field)
        endpoint = labels.get("endpoint")
        if endpoint is None or not name.startswith("andon_"):
            continue
        before = previous.values.get(field, 0.0) if previous is not None else 0.0
        delta = value - before if value >= before else value
        figures = endpoints.setdefault(endpoint, {})
        if name == "andon_ingest_requests_total":
            figures["requests"] = figures.get("requests", 0.0) + delta
            by_status = statuses.setdefault(endpoint, {})
            status = labels.get("status", "?")
            by_status[status] = by_status.get(status, 0.0) + delta
        elif name == "andon_ingest_items_total":
            outcome = labels.get("outcome", "?")
            figures[outcome] = figures.get(outcome, 0.0) + delta
        elif name in ("andon_request_duration_seconds_sum", "andon_request_duration_seconds_count"):
            figures[name] = delta

    def rate(amount: float) -> float | None:
        return round(amount / elapsed, 3) if usable else None

    rows = []
    for endpoint in sorted(endpoints):
        figures = endpoints[endpoint]
        count = figures.get("andon_request_duration_seconds_count", 0.0)
        total = figures.get("andon_request_duration_seconds_sum", 0.0)
        rows.append(
            {
                "endpoint": endpoint,
                "requests_per_s": rate(figures.get("requests", 0.0)),
                "items_per_s": rate(figures.get("accepted", 0.0)),
                "duplicates_per_s": rate(figures.get("duplicate", 0.0)),
                "rejected_per_s": rate(figures.get("rejected", 0.0)),
                "mean_latency_ms": round(total / count * 1000, 1) if usable and count else None,
            }
        )
    detail = {
        "requests_per_s_by_status": {
            endpoint: {status: rate(amount) for status, amount in sorted(by.items())}
            for endpoint, by in sorted(statuses.items())
        }
    }
    return rows, detail


def connector_rows(until: datetime, window_s: int = HEALTH_WINDOW_S) -> list[dict[str, Any]]:
    """Return every connector's health over the last ``window_s`` (with ``plant_id`` per row)."""
    from integrations.models import Connector
    from integrations.queries import ConnectorHealth, classify, connector_health, with_last_seen

    window = timedelta(seconds=window_s)
    figures = connector_health(until - window, until)
    connectors = with_last_seen(Connector.objects.select_related("plant")).order_by("key")
    rows = []
    for connector in connectors:
        health = figures.get(connector.pk) or ConnectorHealth(connector.pk)
        last_seen = connector.last_seen  # type: ignore[attr-defined]
        state = classify(connector, health, last_seen)
        rows.append(
            {
                "id": connector.pk,
                "key": connector.key,
                "plant_id": connector.plant_id,
                "plant": connector.plant.key if connector.plant_id else None,
                "flow": connector.flow,
                "state": state.value,
                "colour": state.colour,
                "total": health.total,
                "per_minute": round(health.per_minute(window), 2),
                "failure_ratio": round(health.failure_ratio, 4),
                "p95_latency_ms": health.p95_latency_ms,
                "latency_slo_ms": connector.latency_slo_ms,
                "last_seen": _iso(last_seen),
            }
        )
    return rows


def health_event(now: datetime | None = None) -> dict[str, Any]:
    """Return the health event: ingest rates since the last sample, connector health.

    The previous sample of the counters is kept in the cache (Redis in
    production, so whichever worker runs the next beat tick finds it).
    """
    from django.core.cache import cache

    now = now or timezone.now()
    current = IngestSample(now.timestamp(), metrics.snapshot())
    stored = cache.get(HEALTH_SAMPLE_KEY)
    previous = IngestSample(stored["at"], stored["values"]) if isinstance(stored, dict) else None
    cache.set(HEALTH_SAMPLE_KEY, {"at": current.at, "values": current.values}, timeout=300)
    ingest, detail = ingest_rates(previous, current)
    return {
        "kind": "health",
        "at": _iso(now),
        "window_s": HEALTH_WINDOW_S,
        "ingest": ingest,
        "connectors": connector_rows(now),
        ADMIN_KEY: detail,
    }


def publish_health(now: datetime | None = None) -> dict[str, Any] | None:
    """Compute and publish one health event; return it (None when it could not be computed)."""
    try:
        event = health_event(now)
    except Exception:  # noqa: BLE001 - the next tick tries again
        log.warning("could not compute the live health event", exc_info=True)
        return None
    publish("health", event)
    return event


@shared_task(name="console.live.publish_health", ignore_result=True)
def publish_health_task() -> int:
    """Celery beat's health tick (with Redis); return how many connectors it reported."""
    event = publish_health()
    return len(event["connectors"]) if event else 0


class HealthPublisher:
    """The embedded default's health tick: a daemon thread that publishes while pages listen.

    Without Redis there is no beat, and the in-memory channel layer reaches
    only this process's pages anyway; the first page that subscribes to
    ``health`` starts it (see ``console.consumers``).
    """

    def __init__(self, every_s: float = HEALTH_EVERY_S) -> None:
        self.every_s = every_s
        self.ticks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> HealthPublisher:
        """Start the thread (once)."""
        with self._lock:
            if not self.running:
                self._stop.clear()
                self._thread = threading.Thread(
                    target=self._loop, name="andon-live-health", daemon=True
                )
                self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread after its current tick."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                if listeners("health"):
                    try:
                        publish_health()
                        self.ticks += 1
                    finally:
                        # Ticks are seconds apart: hold no connection in between.
                        connection.close()
                self._stop.wait(max(0.0, self.every_s - (time.monotonic() - started)))
        finally:
            connection.close()


_health_publisher = HealthPublisher()


def embedded_health() -> HealthPublisher:
    """Return this process's embedded health publisher (started by the first health page)."""
    return _health_publisher
