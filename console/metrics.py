"""Andon's own health counters, shared by every process.

With ``REDIS_URL`` the counters live in one Redis hash, so every web process on
every machine adds to the same figures; on the embedded default (one process)
they live in memory. Recording never raises: a metrics outage must not cost an
ingested item.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Iterable

from django.conf import settings

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REDIS_HASH = "andon:metrics"

HELP = {
    "andon_ingest_requests_total": ("counter", "Ingest requests by endpoint and HTTP status."),
    "andon_ingest_items_total": (
        "counter",
        "Ingested items by endpoint and outcome (accepted, duplicate, rejected).",
    ),
    "andon_request_duration_seconds": ("histogram", "Ingest request latency by endpoint."),
}


def _field(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}" if inner else name


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _LocalStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, float] = defaultdict(float)

    def add(self, items: Iterable[tuple[str, float]]) -> None:
        with self._lock:
            for field, amount in items:
                self._values[field] += amount

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._values)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()


class _RedisStore:
    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)

    def add(self, items: Iterable[tuple[str, float]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for field, amount in items:
            pipe.hincrbyfloat(REDIS_HASH, field, amount)
        pipe.execute()

    def snapshot(self) -> dict[str, float]:
        raw = self._client.hgetall(REDIS_HASH)
        return {k.decode(): float(v) for k, v in raw.items()}

    def clear(self) -> None:
        self._client.delete(REDIS_HASH)


_store: _LocalStore | _RedisStore | None = None
_store_url: str | None = None


def store() -> _LocalStore | _RedisStore:
    """Return the counter store for the current settings."""
    global _store, _store_url
    url = settings.REDIS_URL
    if _store is None or _store_url != url:
        _store = _RedisStore(url) if url else _LocalStore()
        _store_url = url
    return _store


def record(items: Iterable[tuple[str, dict[str, str], float]]) -> None:
    """Add ``amount`` to each ``(name, labels)`` counter; never raises."""
    try:
        store().add([(_field(name, labels), amount) for name, labels, amount in items])
    except Exception:  # noqa: BLE001 - metrics must never break the caller
        log.warning("could not record metrics", exc_info=True)


def record_ingest(
    endpoint: str, status: int, seconds: float, accepted: int, duplicates: int, rejected: int
) -> None:
    """Record one ingest request: its status, item outcomes and latency."""
    items: list[tuple[str, dict[str, str], float]] = [
        ("andon_ingest_requests_total", {"endpoint": endpoint, "status": str(status)}, 1),
        ("andon_request_duration_seconds_sum", {"endpoint": endpoint}, seconds),
        ("andon_request_duration_seconds_count", {"endpoint": endpoint}, 1),
    ]
    for outcome, count in (
        ("accepted", accepted),
        ("duplicate", duplicates),
        ("rejected", rejected),
    ):
        if count:
            items.append(
                ("andon_ingest_items_total", {"endpoint": endpoint, "outcome": outcome}, count)
            )
    for bound in LATENCY_BUCKETS:
        if seconds <= bound:
            items.append(
                (
                    "andon_request_duration_seconds_bucket",
                    {"endpoint": endpoint, "le": str(bound)},
                    1,
                )
            )
    items.append(("andon_request_duration_seconds_bucket", {"endpoint": endpoint, "le": "+Inf"}, 1))
    record(items)


def snapshot() -> dict[str, float]:
    """Return every counter as ``{'name{labels}': value}``; empty when the store is down."""
    try:
        return store().snapshot()
    except Exception:  # noqa: BLE001
        log.warning("could not read metrics", exc_info=True)
        return {}


def reset() -> None:
    """Forget every counter (tests and benches)."""
    store().clear()
