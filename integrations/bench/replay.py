"""Replay throughput: one bulk job through two Celery worker processes vs a plain keep-alive client.

Run it against a PostgreSQL database of its own and Redis::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/andon_bench \\
        REDIS_URL=redis://127.0.0.1:6379/0 python manage.py bench replay

It seeds 10,000 failed messages of a connector whose http adapter points at a
loopback target: a small asyncio HTTP/1.1 server with keep-alive in a process of
its own, answering 200 at once and counting requests per ``Idempotency-Key``.
First the baseline: a plain Python client (``requests.Session``, the HTTP stack the
http adapter uses, on one keep-alive connection) sends the same 10,000 requests,
bodies and headers; bare ``http.client`` does the same for reference. Then two
``celery -A console worker`` processes (prefork ``-c 2``) run ONE bulk replay job
of all 10,000 messages, measured from the request that starts it to the moment
the job is done; the target must have received each message exactly once.
"""

from __future__ import annotations

import asyncio
import http.client
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TextIO

import orjson
from django.conf import settings
from django.core.management import call_command
from django.db import connection, connections
from django.test import override_settings
from django.utils import timezone

from integrations.bench.harness import (
    BenchError,
    database_url,
    ensure_database,
    require_bench_database,
)

RATE_TARGET = 1000.0
RATIO_TARGET = 0.5
CONNECTOR = "bench-replay-erp-to-mes"
JOB_TIMEOUT_S = 600.0
WORKER_READY_TIMEOUT_S = 60.0


@dataclass
class ReplayOptions:
    """What ``bench replay`` seeds and runs."""

    messages: int = 10_000
    concurrency: int = 2


# --- The loopback target --------------------------------------------------------------------


def _serve(ready: Any) -> None:
    """Run the asyncio target in this (child) process until terminated."""
    keys: dict[bytes, int] = {}
    stats = {"requests": 0}
    ok = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
    ok += b'{"ok":true}'

    class Target(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while True:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buffer[:end].split(b"\r\n")
                length, key = 0, b""
                for line in head[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"idempotency-key":
                        key = value.strip()
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length :]
                self.answer(head[0], key)

        def answer(self, request_line: bytes, key: bytes) -> None:
            method, path = request_line.split(b" ")[:2]
            if method == b"GET" and path == b"/stats":
                body = orjson.dumps(
                    {
                        "requests": stats["requests"],
                        "keys": len(keys),
                        "repeated": sum(1 for n in keys.values() if n > 1),
                    }
                )
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
                return
            if method == b"DELETE" and path == b"/stats":
                keys.clear()
                stats["requests"] = 0
            else:
                stats["requests"] += 1
                keys[key] = keys.get(key, 0) + 1
            self.transport.write(ok)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Target, "127.0.0.1", 0)
        ready.send(server.sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


class LoopbackTarget:
    """The asyncio target in a child process; a context manager that always stops it."""

    def __init__(self) -> None:
        connections.close_all()  # the forked child must not share the parent's database socket
        context = multiprocessing.get_context("fork")
        receive, send = context.Pipe(duplex=False)
        self.process = context.Process(target=_serve, args=(send,), daemon=True)
        self.process.start()
        if not receive.poll(30):
            self.process.kill()
            raise BenchError("the loopback target did not start")
        self.port = int(receive.recv())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/orders"

    def _call(self, method: str) -> dict[str, int]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, "/stats")
            return orjson.loads(conn.getresponse().read())
        finally:
            conn.close()

    def stats(self) -> dict[str, int]:
        """Return ``requests``, distinct ``keys`` and keys ``repeated`` since the last reset."""
        return self._call("GET")

    def reset(self) -> None:
        """Zero the target's counters."""
        self._call("DELETE")

    def __enter__(self) -> LoopbackTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.join(10)


# --- The workers --------------------------------------------------------------------------


class Workers:
    """``celery -A console worker --pool=prefork -c N`` on the bench database and Redis."""

    def __init__(self, concurrency: int) -> None:
        self.log = tempfile.TemporaryFile()
        env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "ANDON_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "console", "worker",
                "--pool=prefork", f"--concurrency={concurrency}", "--loglevel=INFO",
                "--without-mingle", "--without-gossip",
                "-n", f"bench-replay-{os.getpid()}@%h",
            ],
            cwd=settings.BASE_DIR,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
        while "ready." not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"the Celery worker did not start:\n{self.output()[-3000:]}")
            time.sleep(0.1)

    def output(self) -> str:
        """Return what the workers logged so far."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        """Stop the workers: SIGTERM (a warm shutdown), SIGKILL after 30 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log.close()


# --- Seeding ----------------------------------------------------------------------------------


def require_redis() -> None:
    """Refuse to run without a reachable Redis (the workers' broker)."""
    if not settings.REDIS_URL:
        raise BenchError(
            "bench replay runs Celery workers and needs Redis: set "
            "REDIS_URL=redis://127.0.0.1:6379/0 (and DATABASE_URL=postgres://...bench...)"
        )
    import redis

    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        raise BenchError(f"Redis at {settings.REDIS_URL} is not reachable: {exc}") from None


def seed(count: int, url: str) -> Any:
    """Create the bench connector (pointing at ``url``) and ``count`` failed messages of it."""
    from integrations.models import Connector, Message, MessageAttempt, Plant, ReplayJob, System

    plant = Plant.objects.update_or_create(key="bench-p1", defaults={"name": "Bench Plant"})[0]
    erp = System.objects.update_or_create(key="bench-erp", defaults={"name": "Bench ERP"})[0]
    mes = System.objects.update_or_create(
        key="bench-mes", defaults={"name": "Bench MES", "kind": "MES", "plant": plant}
    )[0]
    connector = Connector.objects.filter(key=CONNECTOR).first() or Connector(key=CONNECTOR)
    connector.source, connector.target = erp, mes
    connector.adapter = {"kind": "http", "url": url, "method": "POST", "timeout_s": 10}
    # Fast enough not to be the limit; large jobs are the point, so no approval step.
    connector.replay_policy = {
        "max_attempts": 3,
        "backoff_s": 1,
        "rate_per_s": 1_000_000,
        "approval_above": 1_000_000,
    }
    connector.save()
    ReplayJob.objects.filter(filter__connector=CONNECTOR).delete()
    MessageAttempt.objects.filter(message__connector=connector).delete()
    Message.objects.filter(connector=connector).delete()
    now = timezone.now()
    rows = []
    for n in range(count):
        at = now - timedelta(minutes=30, seconds=count - n)
        order = f"WO-{500_000 + n}"
        payload = {"order": order, "plant": "bench-p1", "material": f"MAT-{n % 97}", "qty": 40}
        rows.append(
            Message(
                connector=connector,
                external_id=f"ORD-{order}",
                status="failed",
                occurred_at=at,
                last_attempt_at=at,
                received_at=at,
                correlation_id=order,
                error="MES answered 503",
                headers={"content-type": "application/json"},
                content_type="application/json",
                payload=orjson.dumps(payload),
                plant=plant,
            )
        )
    Message.objects.bulk_create(rows, batch_size=2000)
    return connector


# --- Measuring --------------------------------------------------------------------------------


def baseline_requests(connector: Any) -> list[tuple[bytes, dict[str, str]]]:
    """Return the request each message's replay sends (body and Andon's headers)."""
    from integrations.models import Message
    from integrations.replay import replay_headers

    messages = Message.objects.filter(connector=connector).order_by("occurred_at", "id")
    return [
        (bytes(m.payload), replay_headers(m, connector.key, 0, m.content_type)) for m in messages
    ]


def send_with_requests(
    target: LoopbackTarget, requests: list[tuple[bytes, dict[str, str]]]
) -> float:
    """Send every request with ``requests.Session`` (one keep-alive connection); return seconds."""
    import requests as http

    session = http.Session()
    started = time.perf_counter()
    for body, headers in requests:
        response = session.post(target.url, data=body, headers=headers, timeout=30)
        if response.status_code != 200:
            raise BenchError(f"the target answered {response.status_code} to the baseline")
    elapsed = time.perf_counter() - started
    session.close()
    return elapsed


def send_with_http_client(
    target: LoopbackTarget, requests: list[tuple[bytes, dict[str, str]]]
) -> float:
    """Send every request with bare ``http.client`` (one keep-alive connection); return seconds."""
    conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
    started = time.perf_counter()
    for body, headers in requests:
        conn.request("POST", "/orders", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise BenchError(f"the target answered {response.status} to the baseline")
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


@dataclass
class Figures:
    """What the bench measured."""

    messages: int
    baseline_s: float
    raw_s: float
    replay_s: float
    job_s: float
    delivered: int
    received: dict[str, int]
    errors: list[str]

    @property
    def baseline_rate(self) -> float:
        return self.messages / self.baseline_s if self.baseline_s else 0.0

    @property
    def raw_rate(self) -> float:
        return self.messages / self.raw_s if self.raw_s else 0.0

    @property
    def rate(self) -> float:
        return self.messages / self.replay_s if self.replay_s else 0.0

    @property
    def ratio(self) -> float:
        return self.rate / self.baseline_rate if self.baseline_rate else 0.0

    @property
    def complete(self) -> bool:
        got = self.received
        return (
            not self.errors
            and self.delivered == self.messages
            and got.get("requests") == self.messages
            and got.get("keys") == self.messages
            and got.get("repeated") == 0
        )

    @property
    def rate_ok(self) -> bool:
        return self.complete and self.rate >= RATE_TARGET

    @property
    def ratio_ok(self) -> bool:
        return self.complete and self.ratio >= RATIO_TARGET

    @property
    def passed(self) -> bool:
        return self.rate_ok and self.ratio_ok

    def lines(self) -> list[str]:
        """Return the figures and verdict lines."""
        verdict = {True: "PASS", False: "FAIL"}
        got = self.received
        out = [
            f"replay: baseline (a plain client: requests.Session, one keep-alive connection): "
            f"{self.messages:,} requests in {self.baseline_s:.2f}s = "
            f"{self.baseline_rate:,.0f} requests/s",
            f"replay: for reference, bare http.client on one keep-alive connection: "
            f"{self.raw_rate:,.0f} requests/s (replay reaches {self.rate / self.raw_rate:.2f} "
            "of it; the adapter's HTTP stack is requests)"
            if self.raw_rate
            else "replay: no http.client reference",
            f"replay: one bulk job through Celery workers: {self.delivered:,} delivered in "
            f"{self.replay_s:.2f}s from the request (job start to finish in the database: "
            f"{self.job_s:.2f}s); the target received {got.get('requests', 0):,} requests, "
            f"{got.get('keys', 0):,} distinct Idempotency-Keys, {got.get('repeated', 0)} repeated",
            f"replay: {self.rate:,.0f} messages/s (target >= {RATE_TARGET:,.0f}) "
            f"{verdict[self.rate_ok]}",
            f"replay: {self.ratio:.2f} of the baseline (target >= {RATIO_TARGET:.2f}) "
            f"{verdict[self.ratio_ok]}",
        ]
        out.extend(f"replay: ERROR {error}" for error in self.errors)
        return out


def replay_job(connector: Any, messages: int) -> tuple[float, float, int, list[str]]:
    """Start one bulk job, wait for it; return (wall s, job s, delivered, errors)."""
    from console.auth import Principal
    from integrations.models import ReplayJob, ReplayState
    from integrations.replay import start_replay

    admin = Principal(name="bench", role="admin")
    started = time.perf_counter()
    job = start_replay(admin, filter={"connector": CONNECTOR}, reason="bench replay")
    errors: list[str] = []
    if job.state != ReplayState.QUEUED:
        errors.append(f"the job is {job.state}, not queued")
        return 0.0, 0.0, 0, errors
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        state = ReplayJob.objects.filter(pk=job.pk).values_list("state", flat=True).get()
        if state in (ReplayState.DONE, ReplayState.CANCELLED, ReplayState.FAILED):
            break
        if time.monotonic() > deadline:
            errors.append(f"the job was not done within {JOB_TIMEOUT_S:.0f}s")
            break
        time.sleep(0.02)
    wall = time.perf_counter() - started
    job.refresh_from_db()
    job_s = (
        (job.finished_at - job.created_at).total_seconds()
        if job.finished_at and job.created_at
        else 0.0
    )
    if job.state != ReplayState.DONE:
        errors.append(f"the job ended {job.state}")
    if job.total != messages:
        errors.append(f"the job selected {job.total} messages, not {messages}")
    return wall, job_s, job.delivered, errors


def run(options: ReplayOptions, out: TextIO) -> Figures:
    """Run the replay bench end to end; print progress and verdicts; return the figures."""
    require_bench_database("replay")
    require_redis()
    if ensure_database():
        out.write(f"created database {connection.settings_dict['NAME']}\n")
    call_command("migrate", verbosity=0, interactive=False)
    connections.close_all()
    with LoopbackTarget() as target:
        connector = seed(options.messages, target.url)
        out.write(f"seeded {options.messages:,} failed messages; target at {target.url}\n")
        planned = baseline_requests(connector)
        raw_s = send_with_http_client(target, planned)
        target.reset()
        baseline_s = send_with_requests(target, planned)
        target.reset()
        out.write(f"baselines done ({baseline_s:.2f}s, {raw_s:.2f}s); starting the workers\n")
        # One shard per worker process, so that both work on the one job.
        with (
            override_settings(ANDON_REPLAY_PARALLELISM=options.concurrency),
            Workers(options.concurrency) as workers,
        ):
            wall, job_s, delivered, errors = replay_job(connector, options.messages)
            received = target.stats()
            if errors:
                errors.append("worker log tail:\n" + workers.output()[-2000:])
    figures = Figures(
        messages=options.messages,
        baseline_s=baseline_s,
        raw_s=raw_s,
        replay_s=wall,
        job_s=job_s,
        delivered=delivered,
        received=received,
        errors=errors,
    )
    out.write("\n" + "\n".join(figures.lines()) + "\n")
    return figures


# --- The command -------------------------------------------------------------------------------


def add_parser(benches: Any) -> None:
    """Add ``replay`` and its options to the bench command's subparsers."""
    defaults = ReplayOptions()
    sub = benches.add_parser(
        "replay", help="one bulk replay job through two Celery workers vs a keep-alive client"
    )
    sub.add_argument("--messages", type=int, default=defaults.messages, help="messages to replay")
    sub.add_argument(
        "--concurrency", type=int, default=defaults.concurrency, help="worker processes"
    )


def command(options: dict[str, Any], out: TextIO) -> None:
    """Run ``bench replay`` from the command's options; raise CommandError on a miss."""
    from django.core.management.base import CommandError

    if options["messages"] < 1 or options["concurrency"] < 1:
        raise CommandError("--messages and --concurrency must be at least 1")
    try:
        figures = run(
            ReplayOptions(messages=options["messages"], concurrency=options["concurrency"]), out
        )
    except BenchError as exc:
        raise CommandError(str(exc)) from None
    if not figures.passed:
        raise CommandError("the replay bench missed a target (see above)")
