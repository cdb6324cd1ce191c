"""What every bench needs: a bench database, the console under a real server, senders, COPY.

A bench runs on PostgreSQL only, in a database named for benches (its stores
are truncated), against the console served by uvicorn in a subprocess that is
always stopped, with load sent from forked processes over keep-alive
connections so that the client does not share the server's interpreter.
"""

from __future__ import annotations

import http.client
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
from django.conf import settings
from django.db import connection, connections, models, transaction

from integrations.ingest.bulk import copy_rows

BENCH_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/andon_bench"
SERVER_READY_TIMEOUT_S = 60.0


class BenchError(Exception):
    """The bench cannot run (wrong database, server did not start...); the message says why."""


def usage(bench: str) -> str:
    """Return how to run ``bench``, for error messages."""
    return f"DATABASE_URL={BENCH_DATABASE_URL} python manage.py bench {bench}"


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """Split ``items`` into consecutive slices of at most ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- The database -------------------------------------------------------------------------


def require_bench_database(bench: str) -> None:
    """Refuse anything but a PostgreSQL database whose name says it is for benches.

    Benches truncate the stores, so a database not named ``*bench*`` is refused.
    """
    if connection.vendor != "postgresql":
        raise BenchError(
            "bench needs DATABASE_URL=postgres://... (it measures PostgreSQL and a real "
            f"server); run it as: {usage(bench)}"
        )
    name = str(connection.settings_dict.get("NAME") or "")
    if "bench" not in name:
        raise BenchError(
            f"bench truncates the stores of its database and {name!r} is not named for "
            f"benches (the name must contain 'bench'); run it as: {usage(bench)}"
        )


def ensure_database() -> bool:
    """Create the configured PostgreSQL database when it does not exist; return whether it did."""
    import psycopg
    from psycopg import sql

    params = connection.get_connection_params()
    name = params.pop("dbname", None) or connection.settings_dict["NAME"]
    for key in ("cursor_factory", "context", "prepare_threshold", "server_side_binding"):
        params.pop(key, None)
    with psycopg.connect(dbname="postgres", autocommit=True, **params) as admin:
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists is None:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            return True
    return False


def database_url() -> str:
    """Return a ``postgres://`` URL of the current connection, for the server subprocess."""
    conf = connection.settings_dict
    user = quote(str(conf.get("USER") or ""), safe="")
    password = quote(str(conf.get("PASSWORD") or ""), safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = conf.get("HOST") or "127.0.0.1"
    port = conf.get("PORT") or 5432
    return f"postgres://{auth}{host}:{port}/{quote(str(conf['NAME']), safe='')}"


def store_models() -> list[type[models.Model]]:
    """Return the models whose tables hold ingested items."""
    from integrations.models import Event, KeyRef, Message, MessageAttempt, Span

    return [Event, Span, KeyRef, MessageAttempt, Message]


def truncate_stores() -> None:
    """Empty the stores (and restart their ids), leaving landscape and tokens alone."""
    tables = ", ".join(connection.ops.quote_name(m._meta.db_table) for m in store_models())
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables} RESTART IDENTITY CASCADE")


def row_count(model: type[models.Model]) -> int:
    """Return the exact number of rows in ``model``'s table."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {connection.ops.quote_name(model._meta.db_table)}")
        return int(cursor.fetchone()[0])


def copy_baseline(
    model: type[models.Model],
    fields: Sequence[str],
    rows: Sequence[Sequence[Any]],
    batch: int,
) -> float:
    """COPY ``rows`` into ``model``'s table, one transaction per ``batch``; return the seconds.

    One transaction per batch is what the ingest endpoints do, so the gap to
    them is HTTP, parsing, checking and de-duplication, not commit frequency.
    """
    parts = chunks(rows, batch)
    started = time.perf_counter()
    for part in parts:
        with transaction.atomic():
            copy_rows(model, fields, part)
    return time.perf_counter() - started


# --- The server ---------------------------------------------------------------------------


# --- Seeding with COPY (text format) -----------------------------------------------------------

COPY_NULL = "\\N"
COPY_CHUNK = 20_000


def copy_json(value: object) -> str:
    """Return JSON for a COPY text line (backslashes doubled; the seeds hold no tab or newline)."""
    return orjson.dumps(value).decode().replace("\\", "\\\\")


def copy_line(values: tuple[Any, ...]) -> str:
    """Return one COPY text line; None becomes NULL."""
    return "\t".join(COPY_NULL if v is None else str(v) for v in values) + "\n"


def copy_lines(table: str, columns: Sequence[str], lines: list[str]) -> None:
    """COPY prepared text lines into ``table`` in chunks."""
    qn = connection.ops.quote_name
    cols = ", ".join(qn(c) for c in columns)
    with connection.cursor() as cursor:
        with cursor.cursor.copy(f"COPY {qn(table)} ({cols}) FROM STDIN") as copy:
            for start in range(0, len(lines), COPY_CHUNK):
                copy.write("".join(lines[start : start + COPY_CHUNK]))


def seed_label(table: str) -> str | None:
    """Return the label a bench left on ``table`` (its comment), telling which seed is there."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT obj_description(%s::regclass, 'pg_class')", [table])
        return cursor.fetchone()[0]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Server:
    """The console under uvicorn in a subprocess; a context manager that always stops it."""

    def __init__(self, port: int, workers: int, database: str) -> None:
        self.port = port
        self.workers = workers
        self.database = database
        self.process: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def command(self) -> list[str]:
        """Return the uvicorn command line."""
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "console.asgi:application",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--log-level",
            "warning",
            "--no-access-log",
            "--timeout-keep-alive",
            "60",
        ]

    def start(self) -> None:
        """Start the server and wait until ``/readyz`` answers 200."""
        env = {
            **os.environ,
            "DATABASE_URL": self.database,
            "ANDON_LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "PYTHONUNBUFFERED": "1",
        }
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            self.command(),
            cwd=settings.BASE_DIR,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = SERVER_READY_TIMEOUT_S) -> None:
        """Poll ``/readyz`` until it answers 200; raise BenchError with the server's log if not."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BenchError(
                    f"the server exited with code {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=3)
                conn.request("GET", "/readyz")
                response = conn.getresponse()
                body = response.read()
                conn.close()
                if response.status == 200:
                    return
                last = f"{response.status} {body[:300]!r}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise BenchError(
            f"the server was not ready within {timeout:g}s ({last}):\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        """Return the last lines the server wrote."""
        if self._log is None:
            return ""
        self._log.seek(0)
        return "\n".join(self._log.read().decode(errors="replace").splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL of its process group after 15 s."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Server:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- The senders ----------------------------------------------------------------------------

RejectionCounter = Callable[[bytes], int]
MAX_ATTEMPTS = 10


@dataclass
class SendReport:
    """What the senders saw: wall time, statuses and items the server turned away."""

    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    rejected: int = 0
    retries: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(200 <= status < 300 for status in self.statuses) and not self.errors


def _sender(
    port: int,
    path: str,
    headers: dict[str, str],
    bodies: Sequence[bytes],
    count_rejected: RejectionCounter,
    barrier: Any,
    results: Any,
) -> None:
    """Post ``bodies`` one after another over one keep-alive connection (a child process).

    A 429/503 is retried after its Retry-After, a dropped connection at once.
    """
    report: dict[str, Any] = {"statuses": {}, "rejected": 0, "retries": 0, "errors": []}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.connect()
        barrier.wait(timeout=120)
        for body in bodies:
            for attempt in range(1, MAX_ATTEMPTS + 1):
                try:
                    conn.request("POST", path, body=body, headers=headers)
                    response = conn.getresponse()
                    payload = response.read()
                except (http.client.HTTPException, OSError) as exc:
                    conn.close()  # http.client reconnects on the next request
                    report["retries"] += 1
                    if attempt == MAX_ATTEMPTS:
                        report["errors"].append(f"gave up on a batch: {exc}")
                    continue
                if response.status in (429, 503) and attempt < MAX_ATTEMPTS:
                    report["retries"] += 1
                    time.sleep(min(float(response.getheader("Retry-After") or 1), 2.0))
                    continue
                statuses = report["statuses"]
                statuses[response.status] = statuses.get(response.status, 0) + 1
                if 200 <= response.status < 300:
                    report["rejected"] += count_rejected(payload)
                elif len(report["errors"]) < 3:
                    report["errors"].append(f"{response.status}: {payload[:300]!r}")
                break
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the bench
        report["errors"].append(f"sender failed: {type(exc).__name__}: {exc}")
    finally:
        conn.close()
        results.put(report)


def send_all(
    port: int,
    path: str,
    headers: dict[str, str],
    bodies: Sequence[bytes],
    senders: int,
    count_rejected: RejectionCounter,
) -> SendReport:
    """POST every body from ``senders`` forked processes; time from all-connected to all-done.

    Forking hands each child its share of the pre-serialised bodies without
    pickling them, and the clock starts only once every child has connected.
    """
    senders = max(1, min(senders, len(bodies)))
    connections.close_all()  # a forked child must not share the parent's database socket
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(senders + 1)
    results = context.Queue()
    children = [
        context.Process(
            target=_sender,
            args=(port, path, headers, bodies[i::senders], count_rejected, barrier, results),
            daemon=True,
        )
        for i in range(senders)
    ]
    for child in children:
        child.start()
    report = SendReport()
    try:
        barrier.wait(timeout=120)
    except threading.BrokenBarrierError:
        report.errors.append("a sender could not connect to the server")
    started = time.perf_counter()
    try:
        for _ in children:
            part = results.get(timeout=3600)
            report.statuses.update({int(k): v for k, v in part["statuses"].items()})
            report.rejected += part["rejected"]
            report.retries += part["retries"]
            report.errors.extend(part["errors"])
        report.seconds = time.perf_counter() - started
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
    return report
