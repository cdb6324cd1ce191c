"""The demo's traffic simulator and receiving systems, against the real ingest endpoints.

Every test runs Andon for real (``live_server``): the simulator posts over HTTP
with an ingest token, the targets listen on a free local port (the connectors'
adapters moved there) and report their reactions to the same server.
"""

from __future__ import annotations

import json
import time
from io import StringIO
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from django.conf import settings
from django.core.management import call_command

from console import outbox
from console.models import ApiToken
from integrations.models import Connector, Event, Message, Span
from integrations.simulator import AndonClient, Fault, Plan, Simulator, links_from_db
from integrations.targets import Targets, retarget_adapters
from monitors.evaluate import evaluate
from monitors.models import Alert
from tests.conftest import require_service

DEMO_LANDSCAPE = Path(settings.BASE_DIR) / "integrations" / "fixtures" / "demo_landscape.yaml"
DEMO_RULES = Path(settings.BASE_DIR) / "monitors" / "fixtures" / "demo_rules.yaml"


@pytest.fixture
def plant(live_server, transactional_db):
    """The demo landscape and rules, an ingest client, and the targets on a free port."""
    call_command("loadlandscape", str(DEMO_LANDSCAPE), stdout=StringIO())
    call_command("loadrules", str(DEMO_RULES), stdout=StringIO())
    _, token = ApiToken.issue("demo-simulator", "ingest")
    client = AndonClient(live_server.url, token)
    targets = Targets(client, port=0, speed=0).start()
    retarget_adapters(targets.port)
    world = SimpleNamespace(client=client, targets=targets, url=live_server.url, simulators=[])
    yield world
    for sim in world.simulators:
        sim.close()
    targets.stop()
    client.close()


def simulator(plant, **options) -> Simulator:  # type: ignore[no-untyped-def]
    """Return a simulator of the demo plant whose deliveries carry on through the targets."""
    sim = Simulator(plant.client, links_from_db(), plant.targets, seed=11, **options)
    plant.targets.listener = sim.on_delivery
    plant.simulators.append(sim)
    return sim


def firing_rules() -> set[str]:
    return set(Alert.objects.filter(state="firing").values_list("rule__name", flat=True))


# --- Well-formed traffic ------------------------------------------------------------------------


def test_its_history_and_live_traffic_are_accepted_without_a_rejection(plant):
    sim = simulator(plant)
    sim.backfill()
    for _ in range(8):
        sim.advance(60)
        assert plant.targets.drain(30)
    sim.flush()

    assert sim.stats.rejected == []
    assert plant.targets.rejections == []
    assert sim.stats.step_errors == 0
    assert sim.stats.accepted == sim.stats.sent
    # Each id is new: nothing the simulator or a target sent was taken for a duplicate.
    assert Event.objects.count() == sim.stats.sent["events"] + plant.targets.reactions_posted
    assert Message.objects.count() == sim.stats.sent["messages"]
    assert Span.objects.count() == sim.stats.sent["spans"]
    assert not Connector.objects.filter(status="discovered").exists()


def test_its_traffic_walks_every_critical_path_end_to_end(plant):
    sim = simulator(plant)
    sim.backfill()
    sim.advance(60)
    assert plant.targets.drain(30)
    sim.flush()

    types = set(Event.objects.values_list("type", flat=True))
    assert {
        "erp.workorder.released",
        "mes.workorder.acknowledged",
        "mes.workorder.completed",
        "mes.lot.produced",
        "erp.goodsreceipt.posted",
        "wms.goods.received",
        "wms.shipment.confirmed",
        "erp.goodsissue.posted",
        "tms.shipment.dispatched",
        "lims.result.passed",
        "lims.result.failed",
        "qms.hold.placed",
        "wms.hold.applied",
        "iot.asset.alert",
        "eam.case.opened",
    } <= types
    released = Event.objects.filter(type="erp.workorder.released").first()
    assert released.data["plant"] in ("p1", "p2")
    assert released.plant.key == released.data["plant"]
    assert Message.objects.exclude(latency_ms=None).count() == Message.objects.count()
    silent = set(Connector.objects.filter(messages=None).values_list("key", flat=True))
    assert silent == set()


# --- Faults -------------------------------------------------------------------------------------


def test_the_history_leaves_the_alerts_a_newcomer_sees_first(plant):
    sim = simulator(plant)
    sim.backfill()
    evaluate()
    assert firing_rules() == {
        "wo-not-acknowledged-p1",
        "hold-not-applied-p1",
        "machine-alert-without-case",
        "lab-result-failed",
        "machine-states-p1-silent",
    }
    pending = Alert.objects.get(state="pending")
    assert (pending.rule.name, pending.key) == ("erp-mes-p1-failures", "erp-to-mes-orders")


def test_a_mes_outage_fails_the_releases_which_wait_for_a_replay(plant):
    sim = simulator(plant, history_s=0, plan=Plan([]), traffic=False)
    sim.go_live()
    plant.targets.set_down("mes-p1-orders")
    order = sim.release_order("p1")
    sim.advance(5)
    assert plant.targets.drain(30)

    message = Message.objects.get(connector__key="erp-to-mes-orders")
    assert message.status == "failed"
    assert message.correlation_id == order.number
    assert (
        message.error
        == "mes-p1 answered 503 Service Unavailable: maintenance mode, try again later"
    )
    assert json.loads(bytes(message.payload))["order"] == order.number
    assert not Event.objects.filter(type="mes.workorder.acknowledged").exists()


def test_an_outage_in_the_plan_takes_the_order_endpoint_down_and_up_again(plant):
    plan = Plan([Fault("mes-outage", "p2", 10, 100)])
    sim = simulator(plant, history_s=0, plan=plan, traffic=False)
    sim.go_live()
    sim.advance(50)  # the outage began, and ERP released an order into it
    assert "mes-p2-orders" in plant.targets.down
    assert Message.objects.get(connector__key="erp-to-mes-p2-orders").status == "failed"
    sim.advance(60)
    assert "mes-p2-orders" not in plant.targets.down


def test_replaying_the_messages_behind_the_alert_resolves_it_late(plant):
    plan = Plan([Fault("mes-outage", "p1", -12 * 60, 0)])
    sim = simulator(plant, history_s=12 * 60, plan=plan, traffic=False)
    sim.backfill()
    sim.go_live()  # the plan's outage is over: MES answers again
    evaluate()
    alert = Alert.objects.get(rule__name="wo-not-acknowledged-p1", state="firing")

    _, admin = ApiToken.issue("admin", "admin")
    answer = requests.post(
        f"{plant.url}/api/v1/replays",
        json={"filter": {"alert": alert.pk}, "reason": "MES Plant 1 is back"},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    )
    assert answer.status_code == 202, answer.text
    for _ in range(20):
        if not outbox.due():
            break
        outbox.embedded_worker().run_due()
    assert plant.targets.drain(30)
    evaluate()

    alert.refresh_from_db()
    assert (alert.state, alert.resolution) == ("resolved", "late")
    (receipt,) = plant.targets.receipts("mes-p1-orders")
    assert receipt.headers["idempotency-key"].startswith("erp-to-mes-orders:")
    assert json.loads(receipt.body)["order"] == alert.key


# --- The targets --------------------------------------------------------------------------------


def test_the_mes_target_acknowledges_an_order_once_however_often_it_arrives(plant):
    url = f"{plant.targets.url}/mes/p1/orders"
    headers = {"Idempotency-Key": "erp-to-mes-orders:msg-1", "X-Andon-Replay": "7"}
    for _ in range(2):
        answer = requests.post(
            url, json={"order": "WO-7001", "qty": 40}, headers=headers, timeout=5
        )
        assert answer.status_code == 202
    assert plant.targets.drain(30)

    ack = Event.objects.get(type="mes.workorder.acknowledged")
    assert (ack.subject, ack.source, ack.plant.key) == ("WO-7001", "/mes/p1", "p1")
    assert plant.targets.rejections == []


def test_a_target_answers_503_while_its_system_is_down_and_422_to_a_payload_it_cannot_use(plant):
    url = f"{plant.targets.url}/mes/p2/orders"
    plant.targets.set_down("mes-p2-orders")
    down = requests.post(url, json={"order": "WO-7002"}, timeout=5)
    assert (down.status_code, down.headers["Retry-After"]) == (503, "30")
    plant.targets.set_down("mes-p2-orders", False)
    unusable = requests.post(url, json={"qty": 4}, timeout=5)
    assert unusable.status_code == 422
    assert unusable.json() == {"error": "missing field(s): order"}
    assert requests.post(f"{plant.targets.url}/nowhere", json={}, timeout=5).status_code == 404
    assert plant.targets.drain(30)
    assert not Event.objects.exists()


@pytest.mark.services
def test_an_asset_alert_published_over_mqtt_reaches_the_eam_subscriber(plant):
    require_service("Mosquitto", "127.0.0.1", 1883)
    assert plant.targets.start_mqtt("127.0.0.1", 1883)
    sim = simulator(plant, history_s=0, plan=Plan([]), traffic=False, mqtt=("127.0.0.1", 1883))
    sim.go_live()
    sim.asset_alert("p1", "PRESS-9")
    sim.advance(5)
    deadline = time.monotonic() + 10
    while not plant.targets.receipts("eam-asset-alerts") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert plant.targets.drain(30)

    message = Message.objects.get(connector__key="iot-to-eam-asset-alerts")
    assert message.status == "delivered"
    case = Event.objects.get(type="eam.case.opened")
    assert (case.source, case.data["asset"]) == ("/eam", "PRESS-9")
