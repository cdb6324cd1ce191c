"""The replay workflow: what a replay sends, records, retries, limits, and refuses.

Every test replays to a real loopback HTTP target (``tests.replay_kit.Target``) and
runs the job through the outbox in this process, as the embedded worker would.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta

import pytest
import requests
from django.db import connection
from django.utils import timezone

from console import outbox
from console.auth import Principal
from console.models import ApiToken, OutboxTask
from integrations import replay
from integrations.models import (
    Message,
    MessageAttempt,
    ReplayItem,
    ReplayItemState,
    ReplayJob,
    ReplayState,
)
from integrations.replay import (
    RateLimiter,
    ReplayFilterError,
    ReplayForbidden,
    Shard,
    approve,
    cancel,
    job_items,
    job_progress,
    preview,
    selection,
    start_replay,
)
from monitors.evaluate import evaluate
from monitors.models import Alert
from tests.evaluation_helpers import make_rule, store_event
from tests.replay_kit import (
    ADMIN,
    OPERATOR,
    SECOND_ADMIN,
    Target,
    drain,
    failed_message,
    job_tasks,
    point_at,
    wait_until,
)

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


@pytest.fixture
def target():
    with Target() as running:
        yield running


@pytest.fixture
def orders(landscape, target):
    """The p1 order connector, replaying to the loopback target."""
    return point_at(landscape["c1"], target)


def run(job: ReplayJob) -> ReplayJob:
    drain()
    job.refresh_from_db()
    return job


# --- What the target receives -----------------------------------------------------------------


def test_the_target_receives_the_original_body_and_content_type_byte_for_byte(orders, target):
    binary = bytes(range(256)) * 3
    first = failed_message(
        orders, external_id="m-bin", payload=binary, content_type="application/x-edi"
    )
    second = failed_message(orders, external_id="m-json", payload=b'{"qty":40,  "order":"WO-1"}')

    job = run(start_replay(ADMIN, message_ids=[first.pk, second.pk], reason="MES was down"))

    assert job.state == ReplayState.DONE and job.delivered == 2
    by_key = {r.header("Idempotency-Key"): r for r in target.received}
    assert by_key["erp-to-mes-orders:m-bin"].body == binary
    assert by_key["erp-to-mes-orders:m-bin"].header("Content-Type") == "application/x-edi"
    assert by_key["erp-to-mes-orders:m-json"].body == b'{"qty":40,  "order":"WO-1"}'
    assert by_key["erp-to-mes-orders:m-json"].header("Content-Type") == "application/json"
    for received in target.received:
        assert received.method == "POST" and received.path == "/orders"
        assert received.header("X-Andon-Replay") == str(job.pk)
        assert TRACEPARENT.match(received.header("traceparent") or "")


def test_the_connector_s_configured_headers_travel_too(landscape, target):
    connector = landscape["c1"]
    connector.adapter = target.adapter(headers={"X-Api-Key": "k-123"})
    connector.save()
    message = failed_message(connector)

    run(start_replay(ADMIN, message_ids=[message.pk], reason="retry"))

    assert target.received[0].header("X-Api-Key") == "k-123"


def test_the_idempotency_key_is_the_same_on_every_replay_of_a_message(orders, target):
    message = failed_message(orders, external_id="ORD-77")

    first = run(start_replay(ADMIN, message_ids=[message.pk], reason="first"))
    second = run(start_replay(ADMIN, message_ids=[message.pk], reason="again"))

    keys = [r.header("Idempotency-Key") for r in target.received]
    assert keys == ["erp-to-mes-orders:ORD-77", "erp-to-mes-orders:ORD-77"]
    assert [r.header("X-Andon-Replay") for r in target.received] == [str(first.pk), str(second.pk)]


def test_a_replay_continues_the_trace_the_message_carried(orders, target):
    original = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    message = failed_message(orders, headers={"traceparent": original})

    run(start_replay(ADMIN, message_ids=[message.pk], reason="trace"))

    sent = target.received[0].header("traceparent")
    assert sent.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert sent != original  # a new parent: the replay is its own span of that trace


# --- What a replay records --------------------------------------------------------------------


def test_each_delivery_is_a_new_attempt_of_the_message_linked_to_its_replay(orders):
    message = failed_message(orders)

    job = run(start_replay(ADMIN, message_ids=[message.pk], reason="MES back"))

    message.refresh_from_db()
    assert message.status == "delivered" and message.error == ""
    assert message.attempt_count == 2
    attempts = list(MessageAttempt.objects.filter(message=message).order_by("at"))
    assert [(a.status, a.replay_id) for a in attempts] == [("failed", None), ("delivered", job.pk)]
    assert attempts[1].latency_ms is not None
    item = ReplayItem.objects.get(job=job, message=message)
    assert (item.state, item.attempts, item.response_status) == ("delivered", 1, 200)
    assert (job.created_by, job.reason) == ("alice", "MES back")


def test_a_transient_error_is_retried_with_backoff_until_delivered(landscape):
    with Target(fail_first=2, fail_status=503) as flaky:
        connector = point_at(landscape["c1"], flaky, max_attempts=5, backoff_s=0)
        message = failed_message(connector)

        job = run(start_replay(ADMIN, message_ids=[message.pk], reason="retry"))

    assert job.state == ReplayState.DONE and job.delivered == 1
    item = ReplayItem.objects.get(job=job)
    assert (item.state, item.attempts) == ("delivered", 3)
    statuses = list(
        MessageAttempt.objects.filter(message=message, replay_id=job.pk)
        .order_by("at")
        .values_list("status", flat=True)
    )
    assert statuses == ["failed", "failed", "delivered"]
    assert len(flaky.keys()) == 1 and flaky.keys()[f"{connector.key}:{message.external_id}"] == 3


def test_a_retry_waits_for_its_backoff(landscape):
    with Target(fail_first=1, fail_status=503) as flaky:
        connector = point_at(landscape["c1"], flaky, max_attempts=3, backoff_s=60)
        message = failed_message(connector)
        job = start_replay(ADMIN, message_ids=[message.pk], reason="retry")

        (task,) = job_tasks(job)
        assert outbox.run(task.pk) == "retry"  # frees the worker until the backoff ends

    item = ReplayItem.objects.get(job=job)
    assert item.state == ReplayItemState.RETRYING
    assert item.next_attempt_at >= timezone.now() + timedelta(seconds=55)
    task.refresh_from_db()
    assert task.state == "queued" and task.available_at >= timezone.now() + timedelta(seconds=55)


def test_it_dead_letters_a_message_after_the_last_attempt(landscape):
    with Target(status=503) as down:
        connector = point_at(landscape["c1"], down, max_attempts=3, backoff_s=0)
        message = failed_message(connector)

        job = run(start_replay(ADMIN, message_ids=[message.pk], reason="retry"))

    assert (job.state, job.dead_lettered, job.delivered) == ("done", 1, 0)
    item = ReplayItem.objects.get(job=job)
    assert (item.state, item.attempts, item.response_status) == ("dead_lettered", 3, 503)
    assert "503" in item.error
    message.refresh_from_db()
    assert message.status == "dead_lettered"
    assert down.count == 3


def test_a_permanent_error_fails_at_once(landscape):
    with Target(status=422) as strict:
        connector = point_at(landscape["c1"], strict, max_attempts=5, backoff_s=0)
        message = failed_message(connector)

        job = run(start_replay(ADMIN, message_ids=[message.pk], reason="retry"))

    item = ReplayItem.objects.get(job=job)
    assert (item.state, item.attempts) == ("failed", 1)
    assert strict.count == 1 and job.failed == 1


def test_messages_without_an_adapter_or_a_payload_are_skipped_with_the_reason(landscape, orders):
    silent = landscape["c2"]  # no adapter
    no_adapter = failed_message(silent)
    no_payload = failed_message(orders, payload=None)
    good = failed_message(orders)

    job = run(
        start_replay(ADMIN, message_ids=[no_adapter.pk, no_payload.pk, good.pk], reason="mix")
    )

    states = dict(ReplayItem.objects.filter(job=job).values_list("message_id", "state"))
    assert states == {no_adapter.pk: "skipped", no_payload.pk: "skipped", good.pk: "delivered"}
    errors = dict(ReplayItem.objects.filter(job=job).values_list("message_id", "error"))
    assert "no adapter" in errors[no_adapter.pk] and "no payload" in errors[no_payload.pk]
    assert (job.total, job.skipped, job.delivered) == (3, 2, 1)


# --- Rate limit -------------------------------------------------------------------------------


def test_a_job_honours_its_connector_s_rate_limit(landscape, target):
    connector = point_at(landscape["c1"], target, rate_per_s=10)
    ids = [failed_message(connector).pk for _ in range(25)]

    run(start_replay(ADMIN, message_ids=ids, reason="rate"))

    times = sorted(r.at for r in target.received)
    assert len(times) == 25
    # A bucket of one second's tokens: 10 at once, then 10 per second for the other 15.
    assert times[-1] - times[0] >= 1.5 - 0.05
    for start in times:
        in_window = [t for t in times if start <= t < start + 1.0]
        assert len(in_window) <= 2 * 10


def test_limiters_in_different_processes_share_one_bucket_through_redis(settings):
    settings.REDIS_URL = "redis://127.0.0.1:6379/2"
    from tests.conftest import require_service

    require_service("Redis", "127.0.0.1", 6379)
    first, second = RateLimiter(), RateLimiter()  # two workers' limiters: no shared memory
    connector_id = 10_000 + int(time.time())
    granted: list[float] = []
    lock = threading.Lock()

    def take(limiter: RateLimiter) -> None:
        for _ in range(10):
            limiter.acquire(connector_id, 10, 1)
            with lock:
                granted.append(time.monotonic())

    threads = [threading.Thread(target=take, args=(limiter,)) for limiter in (first, second)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(granted) == 20
    # 20 tokens at 10/s with a burst of 10: the last cannot come before one second.
    assert max(granted) - started >= 1.0 - 0.05


# --- Dry run and preview ----------------------------------------------------------------------


def test_a_dry_run_changes_nothing_and_sends_nothing(orders, target):
    messages = [failed_message(orders) for _ in range(3)]
    before = list(Message.objects.order_by("id").values())
    attempts = MessageAttempt.objects.count()

    job = start_replay(
        ADMIN, filter={"connector": "erp-to-mes-orders"}, reason="look", dry_run=True
    )
    drain()

    assert (job.state, job.dry_run, job.total) == ("dry_run", True, 3)
    assert not ReplayItem.objects.exists()
    assert not OutboxTask.objects.exists()
    assert list(Message.objects.order_by("id").values()) == before
    assert MessageAttempt.objects.count() == attempts
    assert target.count == 0
    assert len(messages) == 3


def test_a_preview_shows_the_count_a_sample_and_the_exact_requests(orders, target):
    message = failed_message(orders, external_id="ORD-1", payload=b'{"qty": 1}')
    for _ in range(6):
        failed_message(orders)

    shown = preview({"connector": ["erp-to-mes-orders"], "status": "failed"}, ADMIN, sample=2)

    assert shown.count == 7 and shown.replayable == 7
    assert [m.pk for m in shown.sample][0] == message.pk  # oldest first
    request = shown.requests[0]
    assert (request.method, request.url, request.body) == ("POST", target.url, b'{"qty": 1}')
    assert request.headers["Idempotency-Key"] == "erp-to-mes-orders:ORD-1"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-Andon-Replay"] == "<replay id>"
    assert target.count == 0

    # What the preview showed is what the replay then sends.
    run(start_replay(ADMIN, message_ids=[message.pk], reason="as previewed"))
    sent = target.received[0]
    assert sent.body == request.body
    assert sent.header("Idempotency-Key") == request.headers["Idempotency-Key"]
    assert sent.header("traceparent").split("-")[1] == request.headers["traceparent"].split("-")[1]


# --- Cancel -----------------------------------------------------------------------------------


def test_cancel_stops_a_running_job_while_the_batch_in_flight_finishes(orders, target, settings):
    settings.ANDON_REPLAY_BATCH = 5
    ids = [failed_message(orders).pk for _ in range(12)]
    job = start_replay(ADMIN, message_ids=ids, reason="cancel me")
    ReplayJob.objects.filter(pk=job.pk).update(state=ReplayState.RUNNING)
    shard = Shard(job.pk, 0, 1)

    in_flight = shard.claim()  # marked sending, about to go out
    cancel(job.pk, SECOND_ADMIN)
    shard.send(in_flight)
    assert shard.run() == "stopped"

    job.refresh_from_db()
    counts = job_progress(job.pk, ADMIN)["counts"]
    assert job.state == ReplayState.CANCELLED and job.cancelled_by == "bob"
    assert (counts["delivered"], counts["cancelled"], counts["pending"]) == (5, 7, 0)
    assert target.count == 5
    with pytest.raises(replay.ReplayConflict):
        cancel(job.pk, ADMIN)


# --- Approval ---------------------------------------------------------------------------------


def test_a_large_bulk_job_waits_for_a_second_admin(orders, target, settings):
    settings.ANDON_REPLAY_APPROVAL_ABOVE = 3
    ids = [failed_message(orders).pk for _ in range(4)]

    job = start_replay(ADMIN, message_ids=ids, reason="bulk")
    drain()

    assert (job.state, job.needs_approval) == ("pending_approval", True)
    assert target.count == 0 and not job_tasks(job)
    with pytest.raises(ReplayForbidden, match="second admin"):
        approve(job.pk, ADMIN)

    approved = approve(job.pk, SECOND_ADMIN)
    assert (approved.state, approved.approved_by) == ("queued", "bob")
    assert run(job).delivered == 4 and target.count == 4


def test_a_connector_s_approval_size_overrides_the_global_one(landscape, target):
    connector = point_at(landscape["c1"], target, approval_above=1)
    ids = [failed_message(connector).pk for _ in range(2)]

    job = start_replay(ADMIN, message_ids=ids, reason="two")

    assert job.state == ReplayState.PENDING_APPROVAL


def test_a_job_at_the_approval_size_runs_without_approval(orders, settings):
    settings.ANDON_REPLAY_APPROVAL_ABOVE = 3
    ids = [failed_message(orders).pk for _ in range(3)]

    assert start_replay(ADMIN, message_ids=ids, reason="three").state == ReplayState.QUEUED


# --- Edit and replay --------------------------------------------------------------------------


def test_an_edited_copy_is_sent_once_and_the_original_stays_untouched(orders, target):
    message = failed_message(orders, payload=b'{"qty": -1}')

    job = run(
        start_replay(
            ADMIN,
            message_ids=[message.pk],
            reason="fix the quantity",
            edited_payload=b'{"qty": 40}',
            edited_content_type="application/json; charset=utf-8",
        )
    )

    assert [r.body for r in target.received] == [b'{"qty": 40}']
    assert target.received[0].header("Content-Type") == "application/json; charset=utf-8"
    message.refresh_from_db()
    assert bytes(message.payload) == b'{"qty": -1}' and message.status == "delivered"
    (item,) = job_items(job.pk, ADMIN)
    assert item["edited"] is True
    assert item["edit"]["original"]["payload"] == '{"qty": -1}'
    assert item["edit"]["edited"]["payload"] == '{"qty": 40}'
    assert (job.edited, job.created_by, job.reason) == (True, "alice", "fix the quantity")
    assert "edit" not in job_items(job.pk, OPERATOR)[0]


def test_an_edited_copy_is_not_retried(landscape):
    with Target(status=503) as down:
        connector = point_at(landscape["c1"], down, max_attempts=5)
        message = failed_message(connector)
        job = run(start_replay(ADMIN, message_ids=[message.pk], reason="fix", edited_payload="{}"))

    assert down.count == 1 and ReplayItem.objects.get(job=job).state == "dead_lettered"


def test_an_edit_waits_for_approval_when_the_connector_s_policy_asks(landscape, target):
    connector = point_at(landscape["c1"], target, approval_above=50)
    message = failed_message(connector)

    job = start_replay(ADMIN, message_ids=[message.pk], reason="fix", edited_payload=b"{}")

    assert job.state == ReplayState.PENDING_APPROVAL
    approve(job.pk, SECOND_ADMIN)
    run(job)
    assert [r.body for r in target.received] == [b"{}"]


def test_an_edit_takes_exactly_one_message(orders):
    ids = [failed_message(orders).pk for _ in range(2)]

    with pytest.raises(replay.ReplayError, match="edited_payload"):
        start_replay(ADMIN, message_ids=ids, reason="fix", edited_payload=b"{}")
    assert not ReplayJob.objects.exists()


# --- Who may ----------------------------------------------------------------------------------


def test_only_admins_replay(orders):
    message = failed_message(orders)

    with pytest.raises(ReplayForbidden):
        start_replay(OPERATOR, message_ids=[message.pk], reason="nope")
    with pytest.raises(ReplayForbidden):
        preview({"connector": "erp-to-mes-orders"}, OPERATOR)
    assert not ReplayJob.objects.exists()


def test_a_plant_scoped_admin_replays_only_its_plant_s_messages(landscape, target):
    p1_connector = point_at(landscape["c1"], target)
    p2_connector = point_at(landscape["c2"], target)
    mine = failed_message(p1_connector)
    theirs = failed_message(p2_connector)
    p1 = landscape["p1"]
    scoped = Principal(
        name="p1-admin", role="admin", plant_ids=frozenset({p1.pk}), plant_keys=frozenset({"p1"})
    )

    job = run(start_replay(scoped, message_ids=[mine.pk, theirs.pk], reason="mine"))

    assert list(ReplayItem.objects.filter(job=job).values_list("message_id", flat=True)) == [
        mine.pk
    ]
    assert job.plant_id == p1.pk and target.count == 1
    with pytest.raises(ReplayForbidden, match="plant"):
        selection({"plant": "p2"}, scoped)
    with pytest.raises(ReplayFilterError, match="no messages"):
        start_replay(scoped, message_ids=[theirs.pk], reason="theirs")
    other = Principal(
        name="p2-admin",
        role="admin",
        plant_ids=frozenset({landscape["p2"].pk}),
        plant_keys=frozenset({"p2"}),
    )
    with pytest.raises(replay.ReplayNotFound):
        job_progress(job.pk, other)


# --- Filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"connector": "no-such-connector"}, "connector"),
        ({"status": "lost"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"since": "2026-05-21T09:00:00Z", "until": "2026-05-21T08:00:00Z"}, "until"),
        ({"plant": "p9"}, "plant"),
        ({"message_ids": ["a"]}, "message_ids"),
        ({"colour": "red"}, "colour"),
        ({"alert": 999_999}, "alert"),
        ({"key": 7}, "key"),
    ],
)
def test_a_bad_filter_is_refused_naming_its_field(landscape, bad, field):
    with pytest.raises(ReplayFilterError) as error:
        selection(bad, ADMIN)
    assert error.value.field == field


def test_an_empty_filter_is_refused(landscape):
    with pytest.raises(ReplayFilterError, match="empty"):
        selection({}, ADMIN)


def test_the_filter_narrows_by_connector_status_time_error_and_key(landscape, target):
    c1, c2 = point_at(landscape["c1"], target), point_at(landscape["c2"], target)
    now = timezone.now()
    old = failed_message(c1, at=now - timedelta(hours=3), error="MES answered 503")
    new = failed_message(c1, at=now - timedelta(minutes=5), error="timeout", correlation_id="WO-9")
    dead = failed_message(c1, status="dead_lettered", at=now - timedelta(minutes=4))
    failed_message(c2)

    def ids(**spec):
        return set(selection(spec, ADMIN).values_list("id", flat=True))

    assert ids(connector="erp-to-mes-orders") == {old.pk, new.pk, dead.pk}
    assert ids(connector="erp-to-mes-orders", status="dead_lettered") == {dead.pk}
    assert ids(connector="erp-to-mes-orders", since=(now - timedelta(hours=1)).isoformat()) == {
        new.pk,
        dead.pk,
    }
    assert ids(error="TIMEOUT") == {new.pk}
    assert ids(key="WO-9") == {new.pk}
    assert ids(plant="p1", status=["failed"]) == {old.pk, new.pk}


# --- Resuming after a worker died -------------------------------------------------------------


def test_items_left_sending_by_a_dead_worker_become_uncertain_and_are_not_sent_again(
    orders, target
):
    ids = [failed_message(orders).pk for _ in range(4)]
    job = start_replay(ADMIN, message_ids=ids, reason="resume")
    first, second = ReplayItem.objects.filter(job=job).order_by("id")[:2]
    # A worker marked these two sending and died before recording what happened.
    ReplayItem.objects.filter(pk__in=[first.pk, second.pk]).update(
        state=ReplayItemState.SENDING, attempts=1, sent_at=timezone.now()
    )
    ReplayJob.objects.filter(pk=job.pk).update(state=ReplayState.RUNNING)

    job = run(job)

    states = dict(ReplayItem.objects.filter(job=job).values_list("id", "state"))
    assert (states[first.pk], states[second.pk]) == ("uncertain", "uncertain")
    assert sorted(states.values()) == ["delivered", "delivered", "uncertain", "uncertain"]
    assert target.count == 2
    assert job.state == ReplayState.DONE
    assert "not sent again" in ReplayItem.objects.get(pk=first.pk).error
    assert job_progress(job.pk, ADMIN)["uncertain"] == 2


def test_a_job_cancelled_while_a_dead_worker_had_a_batch_in_flight_marks_it_uncertain(orders):
    ids = [failed_message(orders).pk for _ in range(3)]
    job = start_replay(ADMIN, message_ids=ids, reason="resume after cancel")
    first = ReplayItem.objects.filter(job=job).order_by("id").first()
    ReplayItem.objects.filter(pk=first.pk).update(state=ReplayItemState.SENDING, attempts=1)
    ReplayJob.objects.filter(pk=job.pk).update(state=ReplayState.RUNNING)
    cancel(job.pk, ADMIN)

    job = run(job)

    states = sorted(ReplayItem.objects.filter(job=job).values_list("state", flat=True))
    assert states == ["cancelled", "cancelled", "uncertain"]
    assert job.state == ReplayState.CANCELLED


def test_a_large_job_is_split_into_shards_that_each_run_their_own_items(orders, target, settings):
    settings.ANDON_REPLAY_BATCH = 10
    settings.ANDON_REPLAY_PARALLELISM = 3
    ids = [failed_message(orders).pk for _ in range(45)]

    job = start_replay(ADMIN, message_ids=ids, reason="shards")
    assert sorted(t.payload["shard"] for t in job_tasks(job)) == [0, 1, 2]
    job = run(job)

    assert (job.state, job.delivered) == ("done", 45)
    assert set(target.keys().values()) == {1} and len(target.keys()) == 45


# --- Closing the loop -------------------------------------------------------------------------

WO_ACK = {
    "name": "wo-not-acknowledged",
    "kind": "followup",
    "when": {"type": "erp.workorder.released"},
    "expect": {"type": "mes.workorder.acknowledged"},
    "key": "subject",
    "within": "10m",
    "severity": "critical",
    "labels": {"flow": "order-to-production"},
}


def test_an_alert_s_replay_selects_the_failed_messages_behind_it(landscape, target):
    connector = point_at(landscape["c1"], target)
    rule = make_rule(WO_ACK, created_at=timezone.now() - timedelta(hours=1))
    released = timezone.now() - timedelta(minutes=20)
    store_event("erp.workorder.released", released, subject="WO-7", system=landscape["erp"])
    behind = failed_message(connector, correlation_id="WO-7", at=released)
    failed_message(connector, correlation_id="WO-8", at=released)
    failed_message(connector, correlation_id="WO-7", status="delivered", error="", at=released)
    evaluate(now=timezone.now())
    alert = Alert.objects.get(rule=rule, key="WO-7")

    chosen = selection({"alert": alert.pk}, ADMIN)

    assert list(chosen.values_list("id", flat=True)) == [behind.pk]


@pytest.mark.django_db(transaction=True)
def test_replaying_an_alert_s_messages_resolves_it_late_once_the_target_answers(
    landscape, live_server, settings
):
    """Release, failed delivery, alert fires; the replay delivers, MES acknowledges, resolved."""
    settings.REDIS_URL = ""  # the embedded default: this process runs the outbox
    _, ingest = ApiToken.issue("mes-sim", "ingest")

    def acknowledge(received) -> None:
        order = received.header("Idempotency-Key").rsplit(":", 1)[1]
        subject = {"ORD-WO-7": "WO-7"}[order]
        event = {
            "specversion": "1.0",
            "id": f"ack-{subject}",
            "source": "/mes/p1",
            "type": "mes.workorder.acknowledged",
            "subject": subject,
            "time": timezone.now().isoformat(),
        }
        answer = requests.post(
            f"{live_server.url}/api/v1/events",
            json=event,
            headers={
                "Authorization": f"Bearer {ingest}",
                "Content-Type": "application/cloudevents+json",
            },
            timeout=10,
        )
        assert answer.status_code == 202, answer.text

    with Target(on_receive=acknowledge) as mes:
        connector = point_at(landscape["c1"], mes)
        rule = make_rule(WO_ACK, created_at=timezone.now() - timedelta(hours=1))
        released = timezone.now() - timedelta(minutes=20)
        store_event("erp.workorder.released", released, subject="WO-7", system=landscape["erp"])
        failed_message(connector, external_id="ORD-WO-7", correlation_id="WO-7", at=released)
        evaluate(now=timezone.now())
        alert = Alert.objects.get(rule=rule, key="WO-7")
        assert alert.state == "firing"

        job = start_replay(ADMIN, alert_id=alert.pk, reason="MES is back")
        job = run(job)
        assert (job.delivered, job.alert_id) == (1, alert.pk)

    evaluate(now=timezone.now())
    alert.refresh_from_db()
    assert (alert.state, alert.resolution) == ("resolved", "late")
    assert Message.objects.get(external_id="ORD-WO-7").status == "delivered"


# --- The embedded default --------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_the_embedded_worker_runs_a_replay_without_redis(landscape, settings, monkeypatch):
    settings.REDIS_URL = ""
    # The worker thread closes its connection after each pass, not at the end of the test.
    monkeypatch.setitem(connection.settings_dict, "CONN_MAX_AGE", 0)
    worker = outbox.EmbeddedWorker(interval_s=0.05)
    worker.start()
    try:
        with Target() as mes:
            connector = point_at(landscape["c1"], mes)
            ids = [failed_message(connector).pk for _ in range(3)]

            job = start_replay(ADMIN, message_ids=ids, reason="embedded")

            assert wait_until(lambda: ReplayJob.objects.get(pk=job.pk).state == "done", 30)
    finally:
        worker.stop()
    assert mes.count == 3 and ReplayJob.objects.get(pk=job.pk).delivered == 3
