"""Liveness, readiness and Prometheus metrics for orchestrators and scrapers.

All three are unauthenticated (probes and Prometheus carry no token), expose
nothing but aggregate figures, and are CSRF-exempt so that a stray POST is told
405 rather than a CSRF 403 (nothing here changes state).
"""

from __future__ import annotations

import threading

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_safe

from console import exposition

# A probe must answer well inside an orchestrator's own timeout (often 1-5 s).
CHECK_TIMEOUT_S = 2.0

_database_probe_lock = threading.Lock()


@csrf_exempt
@require_safe
@never_cache
def healthz(request: HttpRequest) -> HttpResponse:
    """Answer that the process is alive, without touching the database."""
    return JsonResponse({"status": "ok"})


@csrf_exempt
@require_safe
@never_cache
def readyz(request: HttpRequest) -> HttpResponse:
    """Answer 200 when the database (and Redis, where configured) answer, else 503."""
    checks = {"database": check_database(), "redis": check_redis()}
    ready = all(result in ("ok", "not configured") for result in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return JsonResponse(body, status=200 if ready else 503)


@csrf_exempt
@require_safe
@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Serve the Prometheus text exposition of Andon's counters and gauges."""
    return HttpResponse(exposition.render(), content_type=exposition.CONTENT_TYPE)


def _describe(exc: BaseException) -> str:
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"error: {type(exc).__name__}: {first_line}"[:300].rstrip(": ")


def check_database(timeout: float = CHECK_TIMEOUT_S, alias: str = "default") -> str:
    """Return ``"ok"`` when the database answers ``SELECT 1`` within ``timeout`` seconds.

    The query runs on its own thread, hence its own fresh connection, so that a
    black-holed database host cannot hang the probe (Django sets no connect
    timeout) and a stale pooled connection cannot hide an outage. While one probe
    is still stuck, later ones fail at once instead of piling up threads.
    """
    if not _database_probe_lock.acquire(blocking=False):
        return "error: an earlier check is still waiting for the database"
    outcome: list[str] = []

    def probe() -> None:
        try:
            with connections[alias].cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchone()
            outcome.append("ok")
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            outcome.append(_describe(exc))
        finally:
            connections.close_all()
            _database_probe_lock.release()

    thread = threading.Thread(target=probe, name="andon-readyz-db", daemon=True)
    try:
        thread.start()
    except RuntimeError as exc:
        _database_probe_lock.release()
        return _describe(exc)
    thread.join(timeout)
    if not outcome:
        return f"error: no answer within {timeout:g}s"
    return outcome[0]


def check_redis(timeout: float = CHECK_TIMEOUT_S) -> str:
    """Return ``"ok"`` when Redis answers PING, ``"not configured"`` without ``REDIS_URL``."""
    url = settings.REDIS_URL
    if not url:
        return "not configured"
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
        return _describe(exc)
    finally:
        client.close()
    return "ok"
