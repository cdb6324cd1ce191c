"""The plant operations and IT dashboards: their figures on crafted data, and plant scoping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
import time_machine
from django.core.cache import cache
from django.test import Client

from console.auth import principal_for_user
from console.pages.dashboards import (
    FLOWS,
    alert_timeline,
    enabled_rules,
    load_it_dashboard,
    load_plant_dashboard,
    open_alerts_by_severity,
    trigger_count,
)
from integrations import rollups
from integrations.models import Connector, Event, Message, MessageAttempt, Plant, System
from integrations.queries import connector_health
from integrations.rollups import refresh_rollups
from monitors.evaluate import evaluate
from monitors.keys import Landscape
from monitors.models import Alert
from tests.conftest import make_user
from tests.evaluation_helpers import make_rule, store_event

NOW = datetime(2026, 5, 21, 12, 0, 30, tzinfo=UTC)


def ago(minutes: float) -> datetime:
    return NOW - timedelta(minutes=minutes)


@pytest.fixture(autouse=True)
def frozen(db):
    """Freeze the clock at NOW; start from no cached rollup blocks (the cache outlives tests)."""
    rollups.forget_cached_blocks()
    cache.delete(rollups._watermark_key())
    with time_machine.travel(NOW, tick=False):
        yield


WO_ACK_P1 = {
    "name": "wo-not-acknowledged-p1",
    "kind": "followup",
    "when": {"type": "erp.workorder.released", "data.plant": "p1"},
    "expect": {"type": "mes.workorder.acknowledged", "source": "mes-p1"},
    "key": "subject",
    "within": "10m",
    "severity": "critical",
    "labels": {"flow": "order-to-production", "plant": "p1"},
}
WO_ACK_P2 = {
    **WO_ACK_P1,
    "name": "wo-not-acknowledged-p2",
    "when": {"type": "erp.workorder.released", "data.plant": "p2"},
    "expect": {"type": "mes.workorder.acknowledged", "source": "mes-p2"},
    "labels": {"flow": "order-to-production", "plant": "p2"},
}
HOLD_P1 = {
    "name": "hold-not-applied-p1",
    "kind": "followup",
    "when": {"type": "qms.hold.placed"},
    "expect": {"type": "wms.hold.applied"},
    "key": "data.lot",
    "within": "15m",
    "severity": "critical",
    "labels": {"flow": "quality-to-corrective-action", "plant": "p1"},
}
MACHINE = {
    "name": "machine-alert-without-case",
    "kind": "followup",
    "when": {"type": "iot.asset.alert"},
    "expect": {"type": "eam.case.opened"},
    "key": "data.asset",
    "within": "30m",
    "severity": "major",
    "labels": {"flow": "maintenance-trigger"},
}
MES_SILENT = {"name": "mes-p1-silent", "kind": "heartbeat", "source": "mes-p1", "within": "5m"}


def release(wo: str, at: datetime, plant: str = "p1") -> None:
    store_event("erp.workorder.released", at, subject=wo, data={"plant": plant})


def acknowledge(wo: str, at: datetime, plant: str = "p1") -> None:
    system = System.objects.get(key=f"mes-{plant}")
    store_event("mes.workorder.acknowledged", at, subject=wo, source=f"/mes/{plant}", system=system)


def figures_of(plant: Plant):  # type: ignore[no-untyped-def]
    return load_plant_dashboard(plant, NOW)


def backlog(plant: Plant, key: str):  # type: ignore[no-untyped-def]
    return next(b for b in figures_of(plant).backlogs if b.backlog.key == key)


def flow(plant: Plant, key: str):  # type: ignore[no-untyped-def]
    return next(f for f in figures_of(plant).flows if f.flow.key == key)


def user_client(username: str, role: str = "operator", plants=()) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(make_user(username, role, plants))
    return client


# --- Plant operations: alerts ------------------------------------------------------------------


def test_it_counts_the_plants_open_business_alerts_by_severity_and_state(landscape):
    p1, p2 = landscape["p1"], landscape["p2"]
    make_rule(WO_ACK_P1)
    make_rule(WO_ACK_P2)
    make_rule({**MES_SILENT, "within": "5m"}, created_at=ago(60))
    for n in range(3):
        release(f"WO-{n}", ago(40 + n))
    release("WO-9", ago(40), plant="p2")
    evaluate(now=NOW)
    Alert.objects.filter(key="WO-0").update(state="acknowledged")

    counts = open_alerts_by_severity(p1)

    assert counts.firing["critical"] == 2
    assert counts.acknowledged["critical"] == 1
    assert counts.business == 3
    assert counts.technical["major"] == 1  # MES plant 1 silent: a heartbeat, not business
    assert open_alerts_by_severity(p2).business == 1


def test_resolved_alerts_are_not_open(landscape):
    make_rule(WO_ACK_P1)
    release("WO-1", ago(40))
    acknowledge("WO-1", ago(20))  # late: resolves the alert
    evaluate(now=NOW)
    assert Alert.objects.get().state == "resolved"

    assert open_alerts_by_severity(landscape["p1"]).business == 0


def test_the_timeline_counts_alerts_by_the_hour_they_fired(landscape):
    make_rule(WO_ACK_P1)
    release("WO-1", ago(200))  # fires at 08:50:30
    release("WO-2", ago(195))  # fires at 08:55:30
    release("WO-3", ago(30))  # fires at 11:40:30
    evaluate(now=NOW)

    timeline = alert_timeline(landscape["p1"], NOW)

    assert len(timeline.hours) == 24
    assert timeline.hours[-1] == datetime(2026, 5, 21, 12, 0, tzinfo=UTC)
    by_hour = {h.hour: n for h, n in zip(timeline.hours, timeline.counts["critical"], strict=True)}
    assert (by_hour[8], by_hour[11], by_hour[12]) == (2, 1, 0)
    assert timeline.total == 3


# --- Plant operations: backlogs -----------------------------------------------------------------


def test_work_orders_awaiting_acknowledgement_are_overdue_alerts_plus_releases_still_waiting(
    landscape,
):
    make_rule(WO_ACK_P1)
    make_rule(WO_ACK_P2)
    release("WO-1", ago(30))  # overdue: an alert
    release("WO-2", ago(25))
    acknowledge("WO-2", ago(24))  # answered in time
    release("WO-3", ago(4))  # waiting, within the 10 minutes
    release("WO-4", ago(3))
    acknowledge("WO-4", ago(2))  # answered
    release("WO-5", ago(2), plant="p2")  # another plant's
    evaluate(now=NOW)

    figures = backlog(landscape["p1"], "workorders")

    assert (figures.overdue, figures.waiting, figures.total) == (1, 1, 2)
    assert [item["key"] for item in figures.oldest] == ["WO-1"]
    assert figures.rules == ["wo-not-acknowledged-p1"]
    other = backlog(landscape["p2"], "workorders")
    assert (other.overdue, other.waiting) == (0, 1)


def test_a_release_covered_by_its_keys_open_alert_is_not_counted_twice(landscape):
    make_rule(WO_ACK_P1)
    release("WO-1", ago(30))
    evaluate(now=NOW)
    release("WO-1", ago(3))  # released again while its alert is open

    figures = backlog(landscape["p1"], "workorders")
    assert (figures.overdue, figures.waiting) == (1, 0)


def test_holds_and_machine_alerts_come_from_the_rules_that_watch_them(landscape):
    make_rule(HOLD_P1)
    make_rule(MACHINE)
    qms = System.objects.create(key="qms", name="QMS", kind="QMS")
    iot = System.objects.create(
        key="iot-p1", name="IoT", kind="IOT", plant=landscape["p1"], sources=["/iot/p1"]
    )
    store_event("qms.hold.placed", ago(40), source="/qms", data={"lot": "L-1"}, system=qms)
    store_event("qms.hold.placed", ago(5), source="/qms", data={"lot": "L-2"}, system=qms)
    store_event("iot.asset.alert", ago(45), source="/iot/p1", data={"asset": "PRESS-1"}, system=iot)
    store_event("iot.asset.alert", ago(5), source="/iot/p1", data={"asset": "PRESS-2"}, system=iot)
    evaluate(now=NOW)

    holds = backlog(landscape["p1"], "holds")
    machines = backlog(landscape["p1"], "machines")
    assert (holds.overdue, holds.waiting) == (1, 1)
    assert (machines.overdue, machines.waiting) == (1, 1)
    assert backlog(landscape["p2"], "machines").total == 0  # the asset alerts are plant 1's


def test_a_backlog_no_rule_watches_says_so(landscape):
    figures = backlog(landscape["p1"], "workorders")
    assert figures.rules == []
    assert figures.total == 0


# --- Plant operations: flow completion ---------------------------------------------------------


def test_flow_completion_is_the_share_of_decided_triggers_without_a_breach(landscape):
    make_rule(WO_ACK_P1)
    for n in range(8):  # acknowledged in time
        release(f"WO-{n}", ago(600 + n))
        acknowledge(f"WO-{n}", ago(599 + n))
    release("WO-late", ago(300))
    acknowledge("WO-late", ago(280))  # a breach, resolved late
    release("WO-open", ago(120))  # a breach, still open
    release("WO-new", ago(5))  # its deadline has not passed: undecided
    release("WO-old", NOW - timedelta(hours=30))  # before the window
    evaluate(now=NOW)

    figures = flow(landscape["p1"], "order-to-production")

    assert (figures.triggers, figures.breaches) == (10, 2)
    assert figures.completion == pytest.approx(0.8)
    assert figures.in_time == 8


def test_a_late_answer_stored_before_the_pass_counts_as_a_breach_but_recovered_does_not(
    landscape,
):
    rule = make_rule(WO_ACK_P1)
    release("WO-1", ago(60))
    release("WO-2", ago(60))
    evaluate(now=NOW)
    # An alert resolved "recovered" means the answer came in time but was stored late.
    Alert.objects.filter(rule=rule, key="WO-2").update(
        state="resolved", resolution="recovered", resolved_at=ago(30)
    )

    assert flow(landscape["p1"], "order-to-production").breaches == 1


def test_trigger_counts_from_cached_hours_equal_a_live_count(landscape):
    make_rule(WO_ACK_P1)
    for n in range(40):
        release(f"WO-{n}", NOW - timedelta(minutes=17 * n + 3))
    view = next(v for v in enabled_rules() if v.rule.name == "wo-not-acknowledged-p1")
    landscape_ = Landscape.load()
    plant = landscape["p1"]
    since, until = NOW - timedelta(hours=9, minutes=7), NOW - timedelta(minutes=10)
    live = Event.objects.filter(
        type="erp.workorder.released", occurred_at__gte=since, occurred_at__lt=until
    ).count()

    assert trigger_count(view, plant, landscape_, since, until) == live  # fills the cache
    assert trigger_count(view, plant, landscape_, since, until) == live  # reads it back
    later = since + timedelta(minutes=30)
    assert (
        trigger_count(view, plant, landscape_, later, until)
        == Event.objects.filter(
            type="erp.workorder.released", occurred_at__gte=later, occurred_at__lt=until
        ).count()
    )


def test_a_flow_with_no_labelled_rule_or_no_trigger_has_no_figure(landscape):
    make_rule(WO_ACK_P1)
    figures = figures_of(landscape["p1"])
    by_key = {f.flow.key: f for f in figures.flows}
    assert [f.key for f in FLOWS] == list(by_key)
    assert by_key["order-to-production"].completion is None  # labelled, nothing released
    assert by_key["production-to-inventory"].rules == []
    assert by_key["production-to-inventory"].completion is None


def test_a_rule_named_for_another_plant_does_not_count_for_this_one(landscape):
    make_rule(WO_ACK_P2)
    release("WO-1", ago(60), plant="p2")
    evaluate(now=NOW)
    assert flow(landscape["p1"], "order-to-production").rules == []
    assert flow(landscape["p2"], "order-to-production").breaches == 1


# --- Plant operations: the pages --------------------------------------------------------------


def test_dashboards_opens_the_first_plant_the_user_may_see(landscape):
    client = user_client("olga", plants=[landscape["p2"]])
    response = client.get("/dashboards/")
    assert response.status_code == 302
    assert response["Location"] == "/dashboards/plant/p2/"


def test_the_plant_dashboard_shows_its_tiles_and_embeds_its_charts(landscape):
    make_rule(WO_ACK_P1)
    release("WO-1", ago(30))
    evaluate(now=NOW)
    client = user_client("olga")

    response = client.get("/dashboards/plant/p1/")

    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-tile="workorders"' in html
    assert "WO-1" in html
    for chart in ("severity", "flows", "timeline"):
        assert f'id="chart-{chart}"' in html
    assert 'id="dashboard-payload"' in html
    assert "/dashboards/plant/p1/data" in html


def test_the_plant_data_endpoint_answers_figures_and_fragments(landscape):
    make_rule(WO_ACK_P1)
    release("WO-1", ago(30))
    evaluate(now=NOW)
    client = user_client("olga")

    response = client.get("/dashboards/plant/p1/data")

    assert response.status_code == 200
    payload = orjson.loads(response.content)
    assert set(payload["figures"]) == {"severity", "flows", "timeline"}
    severity = payload["figures"]["severity"]["data"][0]
    assert dict(zip(severity["x"], severity["y"], strict=True))["critical"] == 1
    assert "WO-1" in payload["fragments"]["tiles"]


def test_a_plant_scoped_operator_may_not_open_another_plants_dashboard(landscape):
    client = user_client("pierre", plants=[landscape["p2"]])
    assert client.get("/dashboards/plant/p1/").status_code == 403
    assert client.get("/dashboards/plant/p1/data").status_code == 403
    assert client.get("/dashboards/plant/p2/").status_code == 200


def test_an_unknown_plant_is_not_found(landscape):
    assert user_client("olga").get("/dashboards/plant/nowhere/").status_code == 404


def test_a_scoped_user_picks_among_their_plants_only(landscape):
    html = user_client("pierre", plants=[landscape["p2"]]).get("/dashboards/plant/p2/")
    content = html.content.decode()
    assert 'data-plant="p2"' in content
    assert 'href="/dashboards/plant/p1/"' not in content


def test_the_dashboards_need_a_login(landscape):
    response = Client().get("/dashboards/plant/p1/")
    assert response.status_code == 302
    assert "/login/" in response["Location"]


# --- IT -----------------------------------------------------------------------------------------


def store(
    connector: Connector,
    external_id: str,
    at: datetime,
    status: str = "delivered",
    latency_ms: int | None = 200,
    replays: int = 0,
) -> Message:
    """Store a message with its attempt (and replay attempts) as ingest and replay leave them."""
    message = Message.objects.create(
        connector=connector,
        external_id=external_id,
        status=status,
        occurred_at=at,
        last_attempt_at=at,
        received_at=at,
        latency_ms=latency_ms,
        plant_id=connector.plant_id,
    )
    MessageAttempt.objects.create(
        message=message, at=at, status=status, latency_ms=latency_ms, received_at=at
    )
    for n in range(replays):
        MessageAttempt.objects.create(
            message=message,
            at=at + timedelta(minutes=5, seconds=n),
            status="failed",
            received_at=NOW,
            replay_id=1,
        )
    return message


@pytest.fixture
def traffic(landscape) -> None:
    """Plant 1's orders: 40 messages in the last hour, 3 failed (one replayed twice), 1 dead;
    plant 2's orders: 10 messages two hours ago, over their SLO."""
    c1, c2 = landscape["c1"], landscape["c2"]
    for i in range(40):
        status = {5: "failed", 6: "failed", 7: "failed", 9: "dead_lettered"}.get(i, "delivered")
        store(c1, f"a{i}", ago(50 - i), status, latency_ms=100 + 40 * i, replays=2 if i == 5 else 0)
    Connector.objects.filter(pk=c2.pk).update(latency_slo_ms=500)
    for i in range(10):
        store(c2, f"b{i}", ago(120 + i), latency_ms=900)
    refresh_rollups(NOW - timedelta(days=1), NOW + timedelta(minutes=1))


def it_data(client: Client, window: str = "24h") -> dict:
    response = client.get("/dashboards/it/data", {"window": window})
    assert response.status_code == 200, response.content
    return orjson.loads(response.content)


def test_the_it_dashboard_shows_each_connectors_figures_from_the_rollups(landscape, traffic):
    client = user_client("ivan")
    response = client.get("/dashboards/it/", {"window": "24h"})
    assert response.status_code == 200
    html = response.content.decode()
    for chart in ("throughput", "failures", "latency", "slo", "dead", "replays"):
        assert f'id="chart-{chart}"' in html

    payload = it_data(client)
    figures = payload["figures"]
    dead = {trace["name"]: sum(trace["y"]) for trace in figures["dead"]["data"]}
    replays = {trace["name"]: sum(trace["y"]) for trace in figures["replays"]["data"]}
    assert dead == {"erp-to-mes-orders": 1}
    assert replays == {"erp-to-mes-orders": 2}
    table = payload["fragments"]["table"]
    assert "10.0 %" in table  # 4 of 40 failed or dead-lettered


def test_the_rollup_figures_agree_with_the_messages_table(landscape, traffic):
    principal = principal_for_user(make_user("ivan", "operator"))
    dashboard = load_it_dashboard(principal, rollups.WINDOWS["24h"], NOW)
    direct = connector_health(NOW - timedelta(days=1), NOW + timedelta(seconds=1))

    for row in dashboard.rows:
        truth = direct[row.connector.id]
        assert row.figures.total == truth.total
        assert row.figures.failed == truth.failed
        assert row.figures.dead_lettered == truth.dead_lettered
        low = max(b for b in (0, *rollups.BOUNDS_MS) if b < truth.p95_latency_ms)
        high = min(b for b in rollups.BOUNDS_MS if b >= truth.p95_latency_ms)
        assert low <= row.p95_latency_ms <= high


def test_the_it_dashboard_marks_a_connector_over_its_slo(landscape, traffic):
    payload = it_data(user_client("ivan"))
    bars = payload["figures"]["slo"]["data"][0]
    colours = dict(zip(bars["y"], bars["marker"]["color"], strict=True))
    assert colours["erp-to-mes-p2-orders"] == "#c62828"  # p95 900 ms over a 500 ms SLO
    assert colours["erp-to-mes-orders"] == "#2e7d32"  # p95 about 1.6 s under its 2 s SLO


def test_the_one_hour_window_leaves_out_older_traffic(landscape, traffic):
    payload = it_data(user_client("ivan"), "1h")
    throughput = {t["name"]: t for t in payload["figures"]["throughput"]["data"]}
    assert len(throughput["erp-to-mes-orders"]["x"]) == 60
    assert sum(throughput["erp-to-mes-p2-orders"]["y"]) == 0


def test_a_plant_scoped_user_sees_only_their_plants_connectors(landscape, traffic):
    client = user_client("pierre", plants=[landscape["p2"]])
    html = client.get("/dashboards/it/").content.decode()
    assert "erp-to-mes-p2-orders" in html
    assert "erp-to-mes-orders" not in html
    payload = it_data(client, "7d")
    names = {t["name"] for t in payload["figures"]["throughput"]["data"]}
    assert names == {"erp-to-mes-p2-orders"}
    assert "erp-to-mes-orders" not in payload["fragments"]["table"]


def test_an_unknown_window_is_refused_naming_the_choices(landscape):
    client = user_client("ivan")
    response = client.get("/dashboards/it/", {"window": "2y"})
    assert response.status_code == 400
    assert "choose one of 1h, 24h, 7d" in response.content.decode()
    data = client.get("/dashboards/it/data", {"window": "2y"})
    assert data.status_code == 400
    assert "1h, 24h, 7d" in orjson.loads(data.content)["error"]
