"""Live updates: the websocket consumer, against the real ASGI app, and what producers publish.

Each test opens ``/ws/live/`` on ``console.asgi.application`` with Channels'
``WebsocketCommunicator``, authenticated by the session cookie of a user logged
in with Django's test client. Events go through ``console.live.publish`` (or the
producers that call it) from another thread, as evaluation and workers do.
To show that an event was NOT delivered without waiting for a timeout, the
hidden event is published first and the next frame must be the visible one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.test import Client
from django.utils import timezone

from console import live
from console.asgi import application
from console.consumers import parse_streams
from monitors.evaluate import evaluate
from monitors.lifecycle import acknowledge
from tests import alerts_kit
from tests.conftest import make_user, require_service
from tests.evaluation_helpers import at, make_rule, store_event, store_message

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = (b"origin", b"http://testserver")
REDIS_DB5 = "redis://127.0.0.1:6379/5"


@pytest.fixture(autouse=True)
def in_memory_layer(settings):
    """The embedded default's channel layer (one process), fresh for every test."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    yield
    live.flush()  # nothing published here reaches the next test's pages
    # Without REDIS_URL a health subscriber starts this process's publisher thread.
    live.embedded_health().stop()


Cookie = tuple[bytes, bytes]


def login(user: User) -> Cookie:
    """Return a Cookie header carrying a logged-in session of ``user``."""
    client = Client()
    client.force_login(user)
    name = django_settings.SESSION_COOKIE_NAME
    return (b"cookie", f"{name}={client.cookies[name].value}".encode())


def in_thread(work):  # type: ignore[no-untyped-def]
    """Run ``work()`` in a thread of its own and return its result (or raise its error).

    Once a browser test has run, Playwright's sync API owns an event loop in the
    main thread, where ``async_to_sync`` refuses to run.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = exc
        finally:
            connection.close()

    worker = threading.Thread(target=target)
    worker.start()
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def run(scenario):  # type: ignore[no-untyped-def]
    """Run an async scenario to the end from this (synchronous) test."""
    return in_thread(async_to_sync(scenario))


async def open_socket(cookie: Cookie | None, streams: str = "alerts") -> WebsocketCommunicator:
    """Connect with a session cookie (None: anonymous); return the accepted communicator."""
    headers = [ORIGIN] + ([cookie] if cookie is not None else [])
    communicator = WebsocketCommunicator(application, f"/ws/live/?streams={streams}", headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def listen(cookie: Cookie, streams: str = "alerts") -> tuple[WebsocketCommunicator, dict]:
    """Connect with a session; return the communicator and its hello frame."""
    communicator = await open_socket(cookie, streams)
    hello = await communicator.receive_json_from()
    assert hello["type"] == "hello"
    return communicator, hello


async def refusal(communicator: WebsocketCommunicator) -> tuple[int, str]:
    """Return the close code and error message of a refused socket."""
    error = await communicator.receive_json_from()
    closed = await communicator.receive_output()
    assert error["type"] == "error"
    assert closed["type"] == "websocket.close"
    assert closed["code"] == error["code"]
    return closed["code"], error["message"]


async def next_event(communicator: WebsocketCommunicator) -> dict:
    frame = await communicator.receive_json_from(timeout=5)
    assert frame["type"] == "event"
    return frame


publish = sync_to_async(live.publish)
publish_alerts = sync_to_async(live.publish_alerts)


@pytest.fixture
def people(landscape):
    """An operator of plant 1, an unscoped operator and an admin, logged in."""
    return {
        "op_p1": login(make_user("op-p1", "operator", [landscape["p1"]])),
        "op_all": login(make_user("op-all", "operator")),
        "admin": login(make_user("boss", "admin")),
    }


@pytest.fixture
def alerts(landscape):
    rule = alerts_kit.make_rule()
    return {
        "p1": alerts_kit.make_alert(rule, "WO-P1", plant=landscape["p1"]),
        "p2": alerts_kit.make_alert(rule, "WO-P2", plant=landscape["p2"]),
        "none": alerts_kit.make_alert(rule, "WO-CLOUD"),
    }


# --- Who may connect ---------------------------------------------------------------------


def test_it_closes_an_anonymous_connection_with_4401():
    async def scenario():
        return await refusal(await open_socket(None))

    code, message = run(scenario)
    assert code == 4401
    assert "log in" in message


def test_it_closes_a_connection_of_a_user_without_an_andon_role_with_4403():
    nobody = login(User.objects.create_user("nobody", password="pw-nobody"))

    async def scenario():
        return await refusal(await open_socket(nobody))

    code, message = run(scenario)
    assert code == 4403
    assert "no Andon role" in message


def test_it_refuses_an_unknown_stream_with_4400_naming_it(people):
    async def scenario():
        return await refusal(await open_socket(people["op_all"], "alerts,bogus"))

    code, message = run(scenario)
    assert code == 4400
    assert "'bogus'" in message and "alerts, replays, health" in message


def test_it_refuses_a_socket_opened_from_another_site(people):
    async def scenario():
        headers = [(b"origin", b"https://evil.example"), people["admin"]]
        communicator = WebsocketCommunicator(application, "/ws/live/", headers)
        connected, _ = await communicator.connect()
        return connected

    assert run(scenario) is False


def test_it_greets_with_the_streams_role_and_plants(people):
    async def scenario():
        communicator, hello = await listen(people["op_p1"], "alerts,health")
        await communicator.send_json_to({"type": "ping"})
        pong = await communicator.receive_json_from()
        await communicator.disconnect()
        return hello, pong

    hello, pong = run(scenario)
    assert hello == {
        "type": "hello",
        "streams": ["alerts", "health"],
        "role": "operator",
        "plants": ["p1"],
    }
    assert pong == {"type": "pong"}


def test_no_streams_named_means_every_stream():
    assert parse_streams(b"") == ("alerts", "replays", "health")
    assert parse_streams(b"streams=health,alerts,health") == ("health", "alerts")


# --- What each principal receives --------------------------------------------------------


def test_a_plant_1_operator_receives_plant_1_alerts_and_not_plant_2_ones(people, alerts):
    async def scenario():
        communicator, _ = await listen(people["op_p1"])
        await publish_alerts([alerts["p2"]])
        await publish_alerts([alerts["p1"]])
        frame = await next_event(communicator)
        await communicator.disconnect()
        return frame

    frame = run(scenario)
    assert frame["stream"] == "alerts"
    event = frame["event"]
    assert (event["id"], event["key"], event["plant"]) == (alerts["p1"].pk, "WO-P1", "p1")
    assert event["rule"] == "wo-not-acknowledged"
    assert event["state"] == "firing"
    assert event["url"] == f"/alerts/{alerts['p1'].pk}/"


def test_an_unscoped_operator_receives_alerts_of_both_plants(people, alerts):
    async def scenario():
        communicator, _ = await listen(people["op_all"])
        await publish_alerts([alerts["p2"], alerts["p1"]])
        frames = [await next_event(communicator), await next_event(communicator)]
        await communicator.disconnect()
        return frames

    keys = [frame["event"]["key"] for frame in run(scenario)]
    assert keys == ["WO-P2", "WO-P1"]


def test_an_alert_of_no_plant_reaches_only_unscoped_principals(people, alerts):
    async def scenario():
        scoped, _ = await listen(people["op_p1"])
        unscoped, _ = await listen(people["op_all"])
        await publish_alerts([alerts["none"], alerts["p1"]])
        seen = (await next_event(scoped), await next_event(unscoped))
        await scoped.disconnect()
        await unscoped.disconnect()
        return seen

    scoped, unscoped = run(scenario)
    assert scoped["event"]["key"] == "WO-P1"
    assert unscoped["event"]["key"] == "WO-CLOUD"


def test_admin_only_details_and_other_plants_rows_are_stripped_for_operators(people, landscape):
    event = {
        "kind": "health",
        "connectors": [
            {"key": "erp-to-mes-orders", "plant_id": landscape["p1"].pk, "admin": {"x": 1}},
            {"key": "erp-to-mes-p2-orders", "plant_id": landscape["p2"].pk},
        ],
        "ingest": [{"endpoint": "events", "requests_per_s": 2.0}],
        "admin": {"requests_per_s_by_status": {"events": {"202": 2.0}}},
    }

    async def scenario():
        operator, _ = await listen(people["op_p1"], "health")
        admin, _ = await listen(people["admin"], "health")
        await publish("health", event)
        seen = (await next_event(operator), await next_event(admin))
        await operator.disconnect()
        await admin.disconnect()
        return seen

    operator, admin = run(scenario)
    assert operator["event"] == {
        "kind": "health",
        "connectors": [{"key": "erp-to-mes-orders", "plant_id": landscape["p1"].pk}],
        "ingest": [{"endpoint": "events", "requests_per_s": 2.0}],
    }
    assert admin["event"] == event


def test_a_page_receives_only_the_streams_it_asked_for(people):
    async def scenario():
        communicator, _ = await listen(people["op_all"], "alerts")
        await publish("health", {"kind": "health", "ingest": []})
        await publish("replays", {"job_id": 7, "state": "running"})
        await publish("alerts", {"kind": "alert", "key": "WO-1"})
        frame = await next_event(communicator)
        await communicator.disconnect()
        return frame

    assert run(scenario) == {
        "type": "event",
        "stream": "alerts",
        "event": {"kind": "alert", "key": "WO-1"},
    }


def test_replay_progress_of_a_plant_goes_to_that_plants_readers(people, landscape):
    async def scenario():
        communicator, _ = await listen(people["op_p1"], "replays")
        await publish("replays", {"job_id": 8, "delivered": 3}, plant_id=landscape["p2"].pk)
        await publish("replays", {"job_id": 9, "delivered": 5}, plant_id=landscape["p1"].pk)
        frame = await next_event(communicator)
        await communicator.disconnect()
        return frame

    assert run(scenario)["event"] == {"job_id": 9, "delivered": 5}


# --- Producers ---------------------------------------------------------------------------

LAB_FAILED = {
    "name": "lab-result-failed",
    "kind": "match",
    "when": {"type": "lims.result.failed"},
    "key": "data.lot",
    "resolve_after": "1h",
    "severity": "critical",
    "summary": "Lab result failed for lot {{ key }}",
}


def test_an_evaluation_pass_publishes_the_alerts_it_fired(people, landscape):
    rule = make_rule(LAB_FAILED)
    store_event(
        "lims.result.failed", at(0), data={"lot": "L-2"}, system=landscape["mes2"], source="/mes/p2"
    )
    store_event(
        "lims.result.failed", at(0), data={"lot": "L-1"}, system=landscape["mes1"], source="/mes/p1"
    )

    async def scenario():
        communicator, _ = await listen(people["op_p1"])
        report = await database_sync_to_async(evaluate)(now=at(1))
        frame = await next_event(communicator)
        await communicator.disconnect()
        return report, frame

    report, frame = run(scenario)
    assert report.fired == 2
    event = frame["event"]
    assert (event["rule"], event["key"], event["state"]) == (rule.name, "L-1", "firing")
    assert event["summary"] == "Lab result failed for lot L-1"


def test_an_evaluation_pass_that_changes_nothing_publishes_nothing(people, landscape):
    make_rule(LAB_FAILED)
    store_event("lims.result.failed", at(0), data={"lot": "L-1"}, system=landscape["mes1"])
    assert in_thread(lambda: evaluate(now=at(1))).fired == 1
    live.flush()  # that pass's own update is out before a page listens

    async def scenario():
        communicator, _ = await listen(people["op_all"])
        await database_sync_to_async(evaluate)(now=at(2))
        await publish("alerts", {"kind": "marker"})
        frame = await next_event(communicator)
        await communicator.disconnect()
        return frame

    assert run(scenario)["event"] == {"kind": "marker"}


def test_an_acknowledgement_reaches_open_pages(people, alerts):
    async def scenario():
        communicator, _ = await listen(people["op_p1"])
        await database_sync_to_async(acknowledge)(alerts["p1"].pk, "op-p1", "on it")
        frame = await next_event(communicator)
        await communicator.disconnect()
        return frame

    event = run(scenario)["event"]
    assert (event["key"], event["state"], event["acknowledged_by"]) == (
        "WO-P1",
        "acknowledged",
        "op-p1",
    )


class Rollback(Exception):
    pass


def test_an_update_published_in_a_transaction_goes_out_on_commit_only(people):
    def publish_in_transactions() -> None:
        with contextlib.suppress(Rollback), transaction.atomic():
            live.publish("alerts", {"key": "rolled-back"})
            raise Rollback
        with transaction.atomic():
            live.publish("alerts", {"key": "committed"})

    async def scenario():
        communicator, _ = await listen(people["op_all"])
        await database_sync_to_async(publish_in_transactions)()
        frame = await next_event(communicator)
        await communicator.disconnect()
        return frame

    assert run(scenario)["event"] == {"key": "committed"}


def test_publishing_never_raises_when_the_channel_layer_is_down(settings, caplog):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:1/0"]},
        }
    }
    with caplog.at_level(logging.WARNING, logger="console.live"):
        assert in_thread(lambda: live.publish("alerts", {"key": "lost"})) is None
        assert live.flush()
    assert "could not publish a live update" in caplog.text


def test_an_unknown_stream_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown live stream 'alarms'"):
        live.publish("alarms", {})


# --- Over Redis (production) ---------------------------------------------------------------


@pytest.mark.services
def test_plant_scoping_holds_over_channels_redis(settings, people, alerts):
    require_service("Redis", "127.0.0.1", 6379)
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_DB5]},
        }
    }

    p1, p2 = alerts["p1"], alerts["p2"]
    events = {alert.key: live.alert_event(alert) for alert in (p1, p2)}

    async def scenario():
        scoped, _ = await listen(people["op_p1"])
        unscoped, _ = await listen(people["op_all"])
        await publish("alerts", events["WO-P2"], p2.plant_id, plant_scoped=True)
        await publish("alerts", events["WO-P1"], p1.plant_id, plant_scoped=True)
        seen = (
            await next_event(scoped),
            await next_event(unscoped),
            await next_event(unscoped),
        )
        await scoped.disconnect()
        await unscoped.disconnect()
        return seen

    scoped, first, second = run(scenario)
    assert scoped["event"]["key"] == "WO-P1"
    assert [first["event"]["key"], second["event"]["key"]] == ["WO-P2", "WO-P1"]


# --- Health ------------------------------------------------------------------------------


def sample(at_s: float, requests: int, accepted: int, rejected: int = 0) -> live.IngestSample:
    """Return counters as console.metrics stores them after that many event requests."""
    values = {
        'andon_ingest_requests_total{endpoint="events",status="202"}': float(requests),
        'andon_ingest_items_total{endpoint="events",outcome="accepted"}': float(accepted),
        'andon_request_duration_seconds_sum{endpoint="events"}': requests * 0.02,
        'andon_request_duration_seconds_count{endpoint="events"}': float(requests),
    }
    if rejected:
        values['andon_ingest_items_total{endpoint="events",outcome="rejected"}'] = float(rejected)
        values['andon_ingest_requests_total{endpoint="events",status="400"}'] = 1.0
    return live.IngestSample(at_s, values)


def test_ingest_rates_are_counter_deltas_over_the_time_between_samples():
    rows, detail = live.ingest_rates(sample(100.0, 10, 100), sample(105.0, 20, 150, rejected=5))
    assert rows == [
        {
            "endpoint": "events",
            "requests_per_s": 2.2,
            "items_per_s": 10.0,
            "duplicates_per_s": 0.0,
            "rejected_per_s": 1.0,
            "mean_latency_ms": 20.0,
        }
    ]
    assert detail == {"requests_per_s_by_status": {"events": {"202": 2.0, "400": 0.2}}}


def test_the_first_sample_has_no_rates_and_a_reset_counter_counts_from_zero():
    (first,), _ = live.ingest_rates(None, sample(100.0, 10, 100))
    assert first["requests_per_s"] is None
    (reset,), _ = live.ingest_rates(sample(100.0, 50, 500), sample(110.0, 10, 40))
    assert (reset["requests_per_s"], reset["items_per_s"]) == (1.0, 4.0)


def test_the_health_event_carries_connector_health_scoped_per_plant(settings, people, landscape):
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    now = timezone.now()
    for status in ("delivered", "delivered", "failed"):
        store_message(landscape["c1"], now - timedelta(minutes=1), status=status, latency_ms=40)

    async def scenario():
        operator, _ = await listen(people["op_p1"], "health")
        event = await database_sync_to_async(live.publish_health)(now)
        frame = await next_event(operator)
        await operator.disconnect()
        return event, frame

    event, frame = run(scenario)
    assert [c["key"] for c in event["connectors"]] == ["erp-to-mes-orders", "erp-to-mes-p2-orders"]
    (mine,) = frame["event"]["connectors"]
    assert mine["key"] == "erp-to-mes-orders"
    assert (mine["total"], mine["state"], mine["plant"]) == (3, "failing", "p1")
    assert "admin" not in frame["event"]


def test_without_redis_the_first_health_page_starts_this_processs_publisher(settings, people):
    settings.REDIS_URL = ""  # the embedded default: no beat

    async def scenario():
        communicator, _ = await listen(people["op_all"], "health")
        frame = await next_event(communicator)
        await communicator.disconnect()
        return frame

    frame = run(scenario)
    assert frame["stream"] == "health"
    assert frame["event"]["kind"] == "health"
    assert live.embedded_health().running


def test_beat_runs_a_registered_health_task_every_few_seconds():
    from console.celery import app, beat_schedule

    entry = beat_schedule()["live-health"]
    app.loader.import_default_modules()
    assert entry["task"] in app.tasks
    assert entry["schedule"] <= 10
