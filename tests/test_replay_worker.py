"""Replays run by real Celery workers on Redis: nothing lost, nothing sent twice, rate shared.

Each test starts ``celery -A console worker`` subprocesses on this test's database
and Redis db 2, and replays to a real loopback HTTP target that counts requests
per Idempotency-Key.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from console import outbox
from console.models import OutboxState, OutboxTask
from integrations.bench.harness import database_url
from integrations.models import ReplayItem, ReplayJob, ReplayState
from tests.conftest import bearer, require_service
from tests.replay_kit import Target, failed_message, point_at, wait_until

REDIS = "redis://127.0.0.1:6379/2"
# Nothing listens here: "Redis is down" for the request that starts a replay.
REDIS_DOWN = "redis://127.0.0.1:1/2"
LEASE_S = 3

pytestmark = [pytest.mark.services, pytest.mark.django_db(transaction=True)]


@contextlib.contextmanager
def broker(url: str) -> Iterator[None]:
    """Point this process's Celery app (and REDIS_URL) at ``url`` for the block."""
    from console.celery import app

    def switch(to: str) -> None:
        app.conf.broker_url = to
        # Forget the pools (kombu keeps one per URL, open, for when we switch back).
        app._pool = None
        app.amqp._producer_pool = None

    before_url, before_redis = app.conf.broker_url, django_settings.REDIS_URL
    switch(url)
    django_settings.REDIS_URL = url
    try:
        yield
    finally:
        switch(before_url)
        django_settings.REDIS_URL = before_redis


class Worker:
    """A ``celery -A console worker`` subprocess group on the test database."""

    def __init__(self, concurrency: int, **env: str) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="replay-worker-", suffix=".log", delete=False)
        environment = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "REDIS_URL": REDIS,
            "DJANGO_SETTINGS_MODULE": "console.settings",
            "ANDON_REPLAY_LEASE_S": str(LEASE_S),
            "ANDON_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "console", "worker",
                "--pool=prefork", f"--concurrency={concurrency}", "--loglevel=INFO",
                "--without-mingle", "--without-gossip", "--without-heartbeat",
                "-n", f"replay-test-{os.getpid()}-{time.monotonic_ns()}@%h",
            ],
            cwd=django_settings.BASE_DIR,
            env=environment,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        if not wait_until(lambda: "ready." in self.output() or self.process.poll() is not None):
            pytest.fail(f"the worker did not start:\n{self.output()[-3000:]}")
        if self.process.poll() is not None:
            pytest.fail(f"the worker exited:\n{self.output()[-3000:]}")

    def output(self) -> str:
        with open(self.log.name, encoding="utf-8", errors="replace") as log:
            return log.read()

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once (no shutdown, no acks)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture
def redis_db():
    """Redis db 2, emptied (queues and rate buckets of earlier runs)."""
    require_service("Redis", "127.0.0.1", 6379)
    import redis

    client = redis.Redis.from_url(REDIS)
    client.flushdb()
    yield client
    client.flushdb()


@pytest.fixture
def workers(redis_db):
    """Start workers on demand; every one is stopped at the end."""
    if connection.vendor != "postgresql":
        pytest.skip("worker processes share the test database: these tests need PostgreSQL")
    started: list[Worker] = []

    def start(concurrency: int = 1, **env: str) -> Worker:
        worker = Worker(concurrency, **env)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def replay_all(client, token: str, reason: str = "MES is back"):
    response = client.post(
        "/api/v1/replays",
        {"filter": {"connector": "erp-to-mes-orders"}, "reason": reason},
        content_type="application/json",
        **bearer(token),
    )
    assert response.status_code == 202, response.content
    return ReplayJob.objects.get(pk=response.json()["replay"])


def finished(job: ReplayJob) -> bool:
    job.refresh_from_db()
    return job.state in (ReplayState.DONE, ReplayState.CANCELLED, ReplayState.FAILED)


def test_a_replay_requested_while_redis_is_down_runs_once_redis_is_back(
    client, admin_token, landscape, workers
):
    workers(concurrency=2)
    with Target() as mes:
        connector = point_at(landscape["c1"], mes)
        messages = [failed_message(connector) for _ in range(20)]

        with broker(REDIS_DOWN):
            job = replay_all(client, admin_token)  # committed; its wake-up is lost

        (task,) = OutboxTask.objects.filter(name="replay.run_job")
        assert task.state == OutboxState.QUEUED and task.attempts == 0
        assert mes.count == 0

        with broker(REDIS):  # Redis is back: the periodic sweep wakes the worker
            later = timezone.now() + timedelta(seconds=outbox.REKICK_AFTER_S + 1)
            assert outbox.sweep(now=later) == 1
        assert wait_until(lambda: finished(job))

    assert (job.state, job.delivered) == ("done", 20)
    assert len(mes.keys()) == 20 and set(mes.keys().values()) == {1}
    assert {f"erp-to-mes-orders:{m.external_id}" for m in messages} == set(mes.keys())


def test_a_worker_killed_mid_job_resumes_without_sending_any_message_twice(
    client, admin_token, landscape, workers, settings
):
    settings.ANDON_REPLAY_BATCH, settings.ANDON_REPLAY_PARALLELISM = 10, 1  # one shard
    first = workers(concurrency=1, ANDON_REPLAY_BATCH="10", ANDON_REPLAY_PARALLELISM="1")
    with Target(hold_at=15) as mes:  # the second batch hangs on its fifth message
        connector = point_at(landscape["c1"], mes)
        for _ in range(30):
            failed_message(connector)

        with broker(REDIS):
            job = replay_all(client, admin_token)
        assert mes.held.wait(60), first.output()[-3000:]
        first.kill()
        mes.release.set()

        items = ReplayItem.objects.filter(job=job).order_by("id")
        assert [i.state for i in items] == ["delivered"] * 10 + ["sending"] * 10 + ["pending"] * 10

        workers(concurrency=1, ANDON_REPLAY_BATCH="10", ANDON_REPLAY_PARALLELISM="1")

        def resumed() -> bool:
            with broker(REDIS):
                outbox.sweep()  # what beat does every 5 s: re-wakes the task once its lease ran out
            return finished(job)

        assert wait_until(resumed, timeout=90, every=0.5)

    keys = mes.keys()
    assert max(keys.values()) == 1, keys.most_common(3)  # no message arrived twice
    assert len(keys) == 25  # 1-15 before the kill (15 in the hung request), 21-30 after
    states = [i.state for i in items.all()]
    assert states == ["delivered"] * 10 + ["uncertain"] * 10 + ["delivered"] * 10
    assert (job.state, job.delivered) == ("done", 20)


def test_the_rate_limit_holds_across_worker_processes(
    client, admin_token, landscape, workers, settings
):
    settings.ANDON_REPLAY_BATCH, settings.ANDON_REPLAY_PARALLELISM = 10, 2  # two shards
    workers(concurrency=2, ANDON_REPLAY_BATCH="10", ANDON_REPLAY_PARALLELISM="2")
    with Target() as mes:
        connector = point_at(landscape["c1"], mes, rate_per_s=10)
        for _ in range(30):
            failed_message(connector)

        with broker(REDIS):
            job = replay_all(client, admin_token)
        assert wait_until(lambda: finished(job))

    assert job.delivered == 30
    times = sorted(r.at for r in mes.received)
    # Two processes, one bucket: 10 at once, then 10 per second for the other 20.
    assert times[-1] - times[0] >= 2.0 - 0.05
    assert len({r.peer for r in mes.received}) >= 2  # both processes sent
