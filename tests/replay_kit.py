"""Helpers for the replay tests: a real loopback HTTP target, failed messages, running jobs.

:class:`Target` is a threaded HTTP/1.1 server (keep-alive) on 127.0.0.1 that records
every request byte for byte, can fail the first N requests, answer a fixed status,
hold one request until released (a slow target), or react to each request.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from django.utils import timezone

from console import outbox
from console.auth import Principal
from console.models import OutboxState, OutboxTask
from integrations.models import Connector, Message, MessageAttempt, ReplayJob

_ids = itertools.count(1)

ADMIN = Principal(name="alice", role="admin")
SECOND_ADMIN = Principal(name="bob", role="admin")
OPERATOR = Principal(name="olga", role="operator")


@dataclass
class Received:
    """One request as the target saw it."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    at: float
    peer: tuple[str, int]

    def header(self, name: str) -> str | None:
        """Return the value of header ``name`` (case-insensitive), None when absent."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Target:
    """A loopback HTTP target; see the module docstring. Use as a context manager."""

    fail_first: int = 0
    fail_status: int = 503
    status: int = 200
    hold_at: int | None = None
    on_receive: Callable[[Received], None] | None = None
    received: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.held = threading.Event()
        self.release = threading.Event()
        target = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out as two writes: without this, delayed ACKs cost 40 ms each.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                got = Received(
                    method=self.command,
                    path=self.path,
                    headers=list(self.headers.items()),
                    body=body,
                    at=time.monotonic(),
                    peer=self.client_address,
                )
                status = target.record(got)
                if target.on_receive is not None:
                    target.on_receive(got)
                if target.hold_at is not None and target.count == target.hold_at:
                    target.held.set()
                    target.release.wait(60)
                answer = b'{"ok": true}' if status < 300 else b'{"error": "unavailable"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            do_POST = do_PUT = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def record(self, got: Received) -> int:
        """Store a request; return the status to answer."""
        with self._lock:
            self.received.append(got)
            number = len(self.received)
        return self.fail_status if number <= self.fail_first else self.status

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.received)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/orders"

    def keys(self) -> Counter[str]:
        """Return how many requests arrived per Idempotency-Key."""
        return Counter(r.header("Idempotency-Key") or "" for r in list(self.received))

    def adapter(self, **extra: Any) -> dict[str, Any]:
        """Return an http adapter config pointing at this target."""
        return {"kind": "http", "url": self.url, "method": "POST", "timeout_s": 5, **extra}

    def wait_for(self, count: int, timeout: float = 30) -> bool:
        """Wait until ``count`` requests arrived; return whether they did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count >= count:
                return True
            time.sleep(0.02)
        return False

    def __enter__(self) -> Target:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def point_at(connector: Connector, target: Target, **policy: Any) -> Connector:
    """Give ``connector`` an http adapter to ``target`` and a replay policy (fast by default)."""
    connector.adapter = target.adapter()
    connector.replay_policy = {"max_attempts": 3, "backoff_s": 0, "rate_per_s": 1000, **policy}
    connector.save()
    return connector


def failed_message(
    connector: Connector,
    *,
    external_id: str | None = None,
    payload: bytes | None = b'{"order": "WO-1001", "qty": 40}',
    content_type: str = "application/json",
    status: str = "failed",
    error: str = "MES answered 503",
    correlation_id: str = "",
    headers: dict[str, str] | None = None,
    at: datetime | None = None,
) -> Message:
    """Store a captured message whose last attempt failed, with its attempt row."""
    when = at or timezone.now() - timedelta(minutes=5)
    message = Message.objects.create(
        connector=connector,
        external_id=external_id or f"m-{next(_ids)}",
        status=status,
        occurred_at=when,
        last_attempt_at=when,
        received_at=when,
        correlation_id=correlation_id,
        error=error,
        headers=headers or {"content-type": content_type},
        content_type=content_type,
        payload=payload,
        plant_id=connector.plant_id,
    )
    MessageAttempt.objects.create(
        message=message, at=when, status=status, error=error, received_at=when
    )
    return message


def drain(limit: int = 100) -> int:
    """Run every due outbox task in this process until none is due; return how many ran."""
    ran = 0
    for _ in range(limit):
        due = outbox.due()
        if not due:
            return ran
        for task_id in due:
            outbox.run(task_id)
            ran += 1
    return ran


def job_tasks(job: ReplayJob) -> list[OutboxTask]:
    """Return the outbox tasks of a replay job."""
    return [
        t for t in OutboxTask.objects.filter(name="replay.run_job") if t.payload["job"] == job.pk
    ]


def queued_tasks() -> int:
    """Return how many outbox tasks wait to run."""
    return OutboxTask.objects.filter(state=OutboxState.QUEUED).count()


def wait_until(check: Callable[[], bool], timeout: float = 60, every: float = 0.2) -> bool:
    """Poll ``check`` until it holds or ``timeout`` passes; return whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(every)
    return check()
