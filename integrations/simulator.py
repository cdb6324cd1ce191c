"""The demo's traffic simulator: two plants' integration traffic, compressed, with faults.

The simulator plays the senders of the demo landscape (ERP and its integration
middleware, MES, WMS, QMS, LIMS, the IoT platform, the edge gateway) and posts
what they do through Andon's own ingest endpoints over HTTP, with an ingest
token, exactly as real connectors would: CloudEvents (batched), captured
integration messages and OTLP/JSON spans. Deliveries really go to the demo's
targets (``integrations.targets``), whose systems react (MES acknowledges an
order...) and report back to Andon themselves; the simulator carries the flow on
from what a target received (an acknowledged order goes into production), so a
work order that a REPLAY delivers late is produced, received and shipped too.

The critical paths of DOMAIN.md, compressed so that each step takes seconds to a
minute or two (``speed`` divides the live delays):

order released (ERP) -> acknowledged (MES) -> started -> completed, lot produced
-> goods receipt (ERP) and goods received (WMS) -> shipment confirmed (WMS) ->
goods issue (ERP) -> dispatched (TMS); lab results (LIMS, plant 2) and quality
holds (QMS -> WMS, ERP shipment block); asset alerts (IoT) -> maintenance cases
(EAM) -> delay risk (ERP); machine states from the press line's edge gateway.

The business rules wait minutes to tens of minutes (``within: 10m`` for an order
acknowledgement), so the simulator starts by posting the last ``history_s``
seconds of plant history with their original times, including the onset of the
faults the rules exist for; the first alerts then fire as soon as the rules are
evaluated, and the live traffic carries on from there. Faults (:class:`Plan`):
a MES outage (its order endpoint answers 503; the releases' messages fail and
wait for a replay), holds that never reach WMS, a machine alert whose message
never reaches EAM, a shipment ERP refused, a failed lab result and the edge
gateway's connector falling silent.

The simulator never raises into its host: a failing step is logged and skipped,
a batch Andon could not take is kept and sent again.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
import secrets
import textwrap
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests

from integrations.targets import (
    OUTAGE,
    Route,
    Targets,
    reachable,
    reactions,
    route_for_adapter,
    stamp,
)

log = logging.getLogger(__name__)

HISTORY_S = 35 * 60
BATCH = 500
# Items kept for Andon while it cannot take them; beyond this the oldest are dropped.
MAX_BUFFER = 50_000
KEEP_ORDERS = 5_000

KIND_CLIENT, KIND_SERVER, KIND_PRODUCER, KIND_CONSUMER = 3, 2, 4, 5
STATUS_ERROR = 2
# CloudEvents extensions that carry business keys (ANDON_BUSINESS_KEY_ATTRIBUTES' defaults).
KEY_ATTRIBUTES = {
    "workorder": "workorder.id",
    "lot": "lot.id",
    "asset": "asset.id",
    "shipment": "shipment.id",
}


@dataclass(frozen=True)
class PlantSetup:
    """The connectors and things of one plant the simulator drives."""

    key: str
    orders: str
    confirmations: str
    goods_receipt: str
    holds: str
    shipments: str
    materials: tuple[tuple[str, str], ...]  # (material, line)
    assets: tuple[str, ...]
    fault_asset: str
    carriers: tuple[str, ...]


PLANTS: dict[str, PlantSetup] = {
    "p1": PlantSetup(
        key="p1",
        orders="erp-to-mes-orders",
        confirmations="mes-p1-to-erp-confirmations",
        goods_receipt="mes-p1-to-wms-goods-receipt",
        holds="qms-to-wms-p1-holds",
        shipments="wms-p1-to-erp-shipments",
        materials=(
            ("BRKT-220 bracket", "PRESS-LINE-1"),
            ("HSG-310 housing", "PRESS-LINE-2"),
            ("PNL-115 door panel", "ASSEMBLY-1"),
        ),
        assets=("PRESS-1", "PRESS-2", "PRESS-3", "PRESS-5", "ROBOT-1", "ROBOT-2"),
        fault_asset="PRESS-4",
        carriers=("DHL Freight", "Schenker"),
    ),
    "p2": PlantSetup(
        key="p2",
        orders="erp-to-mes-p2-orders",
        confirmations="mes-p2-to-erp-confirmations",
        goods_receipt="mes-p2-to-wms-goods-receipt",
        holds="qms-to-wms-p2-holds",
        shipments="wms-p2-to-erp-shipments",
        materials=(
            ("RES-40 resin", "REACTOR-LINE-A"),
            ("ADH-7 adhesive", "MIXING-LINE-B"),
            ("CTG-12 coating", "REACTOR-LINE-A"),
        ),
        assets=("REACTOR-1", "PUMP-1", "PUMP-2", "MIXER-1", "CHILLER-1"),
        fault_asset="REACTOR-2",
        carriers=("Geodis", "Kuehne+Nagel"),
    ),
}
ORDER_ROUTES = {"mes-p1-orders": "p1", "mes-p2-orders": "p2"}
SHIPMENT_BLOCK = "qms-to-erp-shipment-block"
LAB_RESULTS = "lims-p2-to-qms-results"
ASSET_ALERTS = "iot-to-eam-asset-alerts"
MACHINE_STATES = "scada-p1-to-iot-machine-states"
DELAY_RISK = "eam-to-erp-delay-risk"
TRANSPORT = "erp-to-tms-shipments"
CONSUMPTION = "historian-p2-to-mes-p2-consumption"
PLANS = "aps-to-erp-plan"
PURCHASE_ORDERS = "erp-to-supplier-portal-orders"


def iso(moment: datetime) -> str:
    """Return an RFC 3339 UTC timestamp with a ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def human(seconds: float) -> str:
    """Return a short duration such as ``45 s``, ``1.5 min`` or ``12 min``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 10 and minutes % 1 else f"{minutes:.0f} min"


# --- Talking to Andon -------------------------------------------------------------------------


class AndonUnavailable(Exception):
    """Andon could not take a request now (down, restarting, overloaded): send it again later."""


@dataclass
class Outcome:
    """What an ingest endpoint did with one batch."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, Any]] = field(default_factory=list)


class AndonClient:
    """Posts to Andon's three ingest endpoints with a bearer token (one session per thread)."""

    def __init__(self, base_url: str, token: str, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["Authorization"] = f"Bearer {self.token}"
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        """Close every thread's keep-alive connection (a server thread may hold one open)."""
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def _post(self, path: str, body: bytes, content_type: str) -> requests.Response:
        try:
            response = self._session().post(
                self.base_url + path,
                data=body,
                headers={"Content-Type": content_type},
                timeout=self.timeout_s,
            )
        except requests.RequestException as exc:
            raise AndonUnavailable(f"{path}: {exc}") from exc
        if response.status_code == 429 or response.status_code >= 500:
            raise AndonUnavailable(f"{path} answered {response.status_code}")
        return response

    @staticmethod
    def _batch_outcome(response: requests.Response) -> Outcome:
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict) or "accepted" not in body:
            error = f"answered {response.status_code}: {response.text[:200]}"
            return Outcome(rejected=[{"index": -1, "id": "", "error": error}])
        return Outcome(body["accepted"], body.get("duplicates", 0), list(body.get("rejected", [])))

    def post_events(self, events: list[dict[str, Any]]) -> Outcome:
        """Post CloudEvents as one batch (``application/cloudevents-batch+json``)."""
        response = self._post(
            "/api/v1/events", orjson.dumps(events), "application/cloudevents-batch+json"
        )
        return self._batch_outcome(response)

    def post_messages(self, messages: list[dict[str, Any]]) -> Outcome:
        """Post captured integration messages as one JSON array."""
        response = self._post("/api/v1/messages", orjson.dumps(messages), "application/json")
        return self._batch_outcome(response)

    def post_spans(self, spans: list[tuple[str, dict[str, Any]]]) -> Outcome:
        """Post ``(service.name, OTLP/JSON span)`` pairs as one OTLP/HTTP JSON export."""
        by_service: dict[str, list[dict[str, Any]]] = {}
        for service, span in spans:
            by_service.setdefault(service, []).append(span)
        request = {
            "resourceSpans": [
                {
                    "resource": {"attributes": [_attribute("service.name", service)]},
                    "scopeSpans": [{"scope": {"name": "andon.demo"}, "spans": items}],
                }
                for service, items in by_service.items()
            ]
        }
        response = self._post("/v1/traces", orjson.dumps(request), "application/json")
        if response.status_code != 200:
            error = f"answered {response.status_code}: {response.text[:200]}"
            return Outcome(rejected=[{"index": -1, "id": "", "error": error}])
        partial = (response.json() or {}).get("partialSuccess") or {}
        rejected = int(partial.get("rejectedSpans") or 0)
        problems = [{"index": -1, "id": "", "error": partial.get("errorMessage", "")}]
        return Outcome(len(spans) - rejected, 0, problems if rejected else [])

    def ready(self) -> bool:
        """Return whether Andon answers ``/readyz`` with 200."""
        try:
            return self._session().get(self.base_url + "/readyz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout_s: float, stop: threading.Event | None = None) -> bool:
        """Wait until Andon is ready (False when ``timeout_s`` passed or ``stop`` was set)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                return False
            if self.ready():
                return True
            time.sleep(0.3)
        return False


def _attribute(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": str(value)}}


# --- The landscape as the middleware sees it ----------------------------------------------------


@dataclass(frozen=True)
class Link:
    """A connector as the middleware delivers over it."""

    key: str
    source: str
    target: str
    adapter: Mapping[str, Any]
    source_service: str
    target_service: str
    latency_slo_ms: int | None = None

    @property
    def route(self) -> Route | None:
        return route_for_adapter(self.adapter)


def _service_name(key: str, sources: Iterable[str]) -> str:
    """Return the OTel service.name a system reports under (its first non-path source)."""
    return next((s for s in sources if not str(s).startswith("/")), key)


def links_from_db() -> dict[str, Link]:
    """Return the active connectors of the loaded landscape, keyed by connector key."""
    from integrations.models import Connector, ConnectorStatus

    links = {}
    connectors = Connector.objects.filter(status=ConnectorStatus.ACTIVE).select_related(
        "source", "target"
    )
    for c in connectors:
        if c.source is None or c.target is None:
            continue
        links[c.key] = Link(
            key=c.key,
            source=c.source.key,
            target=c.target.key,
            adapter=dict(c.adapter or {}),
            source_service=_service_name(c.source.key, c.source.sources or []),
            target_service=_service_name(c.target.key, c.target.sources or []),
            latency_slo_ms=c.latency_slo_ms,
        )
    return links


# --- The fault plan ---------------------------------------------------------------------------

WINDOW_FAULTS = ("mes-outage", "edge-silent")


@dataclass(frozen=True)
class Fault:
    """One fault: at ``start_s`` (seconds from going live; negative: in the history).

    Window faults (a MES outage, the edge gateway falling silent) last until
    ``end_s``; the others happen once.
    """

    kind: str
    plant: str
    start_s: float
    end_s: float | None = None

    def active(self, t: float) -> bool:
        return self.end_s is not None and self.start_s <= t < self.end_s


CYCLE_S = 30 * 60


@dataclass
class Plan:
    """When each fault happens. History offsets are real; live ones are divided by ``speed``."""

    faults: list[Fault]
    speed: float = 1.0

    @classmethod
    def default(cls, speed: float = 1.0, hours: float = 24.0) -> Plan:
        """Return the demo's faults: the history's, then a 30-minute cycle (at speed 1)."""
        s = float(speed)
        faults = [
            # Already going on when the demo starts: the first alerts.
            Fault("asset-alert-lost", "p1", -32 * 60),
            Fault("hold-lost", "p1", -17 * 60),
            Fault("mes-outage", "p1", -12.5 * 60, 90 / s),
            Fault("edge-silent", "p1", -6 * 60, 120 / s),
            Fault("lab-failed", "p2", -4 * 60),
        ]
        for cycle in range(int(hours * 3600 * s / CYCLE_S) + 1):
            c = cycle * CYCLE_S
            even = cycle % 2 == 0
            faults += [
                Fault("hold-lost", "p2" if even else "p1", (c + 180) / s),
                Fault("goods-issue-failed", "p1" if even else "p2", (c + 420) / s),
                Fault("asset-alert-lost", "p2" if even else "p1", (c + 600) / s),
                Fault("mes-outage", "p2" if even else "p1", (c + 900) / s, (c + 1050) / s),
                Fault("lab-failed", "p2", (c + 1200) / s),
                Fault("edge-silent", "p1", (c + 1500) / s, (c + 1920) / s),
            ]
        return cls(sorted(faults, key=lambda f: f.start_s), s)

    def active(self, kind: str, plant: str, t: float) -> bool:
        """Return whether a window fault of ``kind`` holds ``plant`` at ``t``."""
        return any(f.kind == kind and f.plant == plant and f.active(t) for f in self.faults)

    def tour(self, base_url: str) -> list[str]:
        """Return what a newcomer should look at, and when (the first half hour)."""

        def at(seconds: float) -> str:
            return "now" if seconds <= 0 else f"+{human(seconds / self.speed)}"

        b = base_url.rstrip("/")
        steps = [
            (
                "now",
                f"{b}/alerts/ : a failed lab result in Lyon; work orders MES Plant 1 never "
                "acknowledged (its order API has answered 503 for 12 minutes); a quality hold "
                "that never reached WMS Plant 1; a press alert with no maintenance case; the "
                "press line's machine-state feed gone silent. More work orders fire as their "
                "10 minutes run out.",
            ),
            (
                "now",
                "Open a wo-not-acknowledged-p1 alert and follow its correlation timeline: ERP "
                "released the order, the message to MES failed with 503.",
            ),
            (
                at(90),
                "MES Plant 1 is back. Replay the messages behind the alert (its replay button, "
                f"or the failure group on {b}/replays/failures/) and watch the job on "
                f"{b}/replays/ : MES acknowledges each replayed order a few seconds later, the "
                "alert resolves as late and the order goes on to production and shipping. The "
                "lost hold and the press alert resolve the same way when theirs are replayed.",
            ),
            (at(120), "The edge gateway speaks again: its heartbeat alert recovers by itself."),
            ("+5 min", "erp-mes-p1-failures fires (over 5% failed for 5 min) unless replayed."),
            (
                at(900),
                f"MES Plant 2 goes down for {human(150 / self.speed)}: its releases fail and "
                "their alerts fire 10 minutes later. The faults repeat every "
                f"{human(CYCLE_S / self.speed)}.",
            ),
            (
                "any time",
                f"{b}/dashboards/ (plant operations, IT) and {b}/notifications/ (the webhook, "
                "Slack and Teams channels post to the local targets; email is printed here).",
            ),
        ]
        lines = [
            "What to look at (the simulator first posts the last 35 minutes of plant history,",
            "so the rules that wait 10 to 30 minutes have something to say at once):",
        ]
        for when, text in steps:
            first, *rest = textwrap.wrap(text, 80)
            lines.append(f"  {when:>8}  {first}")
            lines += [" " * 12 + line for line in rest]
        return lines


# --- The world ------------------------------------------------------------------------------


@dataclass
class WorkOrder:
    number: str
    plant: str
    material: str
    line: str
    qty: int
    lot: str
    state: str = "released"  # released -> received -> started -> completed


@dataclass
class Stats:
    """What the simulator sent and what Andon answered."""

    sent: dict[str, int] = field(default_factory=lambda: {"events": 0, "messages": 0, "spans": 0})
    accepted: dict[str, int] = field(
        default_factory=lambda: {"events": 0, "messages": 0, "spans": 0}
    )
    rejected: list[str] = field(default_factory=list)
    delivered: int = 0
    failed: int = 0
    step_errors: int = 0

    def record(self, kind: str, sent: int, outcome: Outcome) -> None:
        self.sent[kind] += sent
        self.accepted[kind] += outcome.accepted + outcome.duplicates
        for problem in outcome.rejected[:20]:
            self.rejected.append(f"{kind}[{problem.get('index')}] {problem.get('error')}")


@dataclass(order=True)
class _Action:
    t: float
    seq: int
    fn: Callable[..., None] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False, default=())
    kwargs: dict[str, Any] = field(compare=False, default_factory=dict)


@dataclass
class _Recurring:
    name: str
    fn: Callable[[], None]
    history: tuple[float, float]
    live: tuple[float, float]
    generation: int = 0


class _MqttPublisher:
    """Publishes deliveries over MQTT adapters to the broker (QoS 1, waits for the PUBACK)."""

    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"andon-demo-middleware-{secrets.token_hex(4)}",
        )
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()

    def publish(self, topic: str, body: bytes, qos: int) -> None:
        info = self.client.publish(topic, body, qos=qos)
        info.wait_for_publish(timeout=5)
        if not info.is_published():
            raise OSError(f"MQTT publish to {topic} was not acknowledged within 5 s")

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


# --- The simulator ----------------------------------------------------------------------------


class Simulator:
    """Drives the demo plant's traffic into Andon; see the module docstring.

    ``client`` posts to Andon; ``links`` are the connectors (``links_from_db()``);
    ``targets``, when given, are the receiving systems: live deliveries go to
    them (HTTP, or in-process for AMQP and for MQTT without a broker) and they
    call :meth:`on_delivery`. ``speed`` divides live delays and the live fault
    schedule; ``seed`` makes the choices (materials, latencies...) repeatable;
    ``id_base`` is where work order and other business numbers start;
    ``traffic=False`` leaves out the recurring traffic, so only the plan's faults
    and what a caller schedules (``at``, ``release_order``...) happen.
    """

    def __init__(
        self,
        client: AndonClient,
        links: Mapping[str, Link],
        targets: Targets | None = None,
        *,
        speed: float = 1.0,
        seed: int | None = None,
        id_base: int | None = None,
        history_s: float = HISTORY_S,
        plan: Plan | None = None,
        mqtt: tuple[str, int] | None = None,
        on_backfilled: Callable[[], None] | None = None,
        traffic: bool = True,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be above zero")
        self.client = client
        self.links = dict(links)
        self.targets = targets
        self.speed = float(speed)
        self.rng = random.Random(seed)
        self.history_s = float(history_s)
        self.plan = plan if plan is not None else Plan.default(speed)
        self.on_backfilled = on_backfilled
        self.stats = Stats()
        self.run_id = secrets.token_hex(4)
        base = id_base if id_base is not None else 100_000 + int(time.time()) % 800_000
        self._numbers: dict[str, itertools.count] = {}
        self._base = base
        self._ids = itertools.count(1)
        self.orders: OrderedDict[str, WorkOrder] = OrderedDict()
        self.lots: dict[str, WorkOrder] = {}
        self.held: set[str] = set()
        self.recent_lots: dict[str, list[str]] = {plant: [] for plant in PLANTS}
        self._fail_next_goods_issue: set[str] = set()
        self._events: list[dict[str, Any]] = []
        self._messages: list[dict[str, Any]] = []
        self._spans: list[tuple[str, dict[str, Any]]] = []
        self._queue: list[_Action] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._recurring: list[_Recurring] = []
        self._http = requests.Session()
        self._mqtt_target = mqtt
        self._mqtt: _MqttPublisher | None = None
        self.t = -self.history_s if self.history_s > 0 else 0.0
        self.live = False
        self._wall0 = datetime.now(UTC)
        self._live_start = time.monotonic()
        self._started_generators = not traffic
        self._scheduled_faults = False

    # --- Lifecycle ----------------------------------------------------------------------------

    def start(self) -> Simulator:
        """Run in a daemon thread: wait for Andon, post the history, then play live."""
        self._thread = threading.Thread(target=self._run, name="andon-demo-simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop after the current step and send what is buffered."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        try:
            if not self.client.wait_ready(120, self._stop):
                if not self._stop.is_set():
                    log.warning(
                        "the simulator gave up: Andon at %s is not ready", self.client.base_url
                    )
                return
            if self.history_s > 0:
                self.backfill()
            self.go_live()
            while not self._stop.is_set():
                self._tick()
        except Exception:  # noqa: BLE001 - never take the server down with the simulator
            log.exception("the demo simulator stopped")
        finally:
            self._safe_flush()
            self.close()

    def close(self) -> None:
        """Release the simulator's connections."""
        if self._mqtt is not None:
            try:
                self._mqtt.close()
            except Exception:  # noqa: BLE001 - closing anyway
                log.debug("MQTT close failed", exc_info=True)
            self._mqtt = None
        self._http.close()

    def _tick(self) -> None:
        try:
            self.run_due(self._elapsed())
            self.flush()
        except Exception:  # noqa: BLE001 - log and carry on with the next step
            self.stats.step_errors += 1
            log.exception("a simulator step failed; continuing")
        with self._cond:
            wait = 1.0
            if self._queue:
                wait = min(wait, max(0.0, self._queue[0].t - self._elapsed()))
            if not self._stop.is_set():
                self._cond.wait(max(wait, 0.02))

    # --- Time ---------------------------------------------------------------------------------

    def _elapsed(self) -> float:
        return time.monotonic() - self._live_start

    def now(self) -> datetime:
        """Return the time stamped on what happens now (in the history: its original time)."""
        if self.live and self.t >= 0:
            return datetime.now(UTC)
        return self._wall0 + timedelta(seconds=self.t)

    def at(self, t: float, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` at simulated time ``t``."""
        with self._cond:
            heapq.heappush(self._queue, _Action(t, next(self._seq), fn, args, kwargs))
            self._cond.notify_all()

    def after(self, delay_s: float, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` ``delay_s`` from now (divided by the speed once live)."""
        scale = self.speed if self.live and self.t >= 0 else 1.0
        self.at(self.t + delay_s / scale, fn, *args, **kwargs)

    def _soon(self, lo: float, hi: float, fn: Callable[..., None], *args: Any) -> None:
        self.after(self.rng.uniform(lo, hi), fn, *args)

    def run_due(self, until: float) -> int:
        """Run every action due at or before ``until``; return how many ran."""
        ran = 0
        while not self._stop.is_set():
            with self._cond:
                if not self._queue or self._queue[0].t > until:
                    break
                action = heapq.heappop(self._queue)
            self.t = action.t
            try:
                action.fn(*action.args, **action.kwargs)
            except Exception:  # noqa: BLE001 - one bad step must not stop the plant
                self.stats.step_errors += 1
                log.exception("simulator step %s failed", getattr(action.fn, "__name__", "?"))
            ran += 1
            if not self.live and self._buffered() >= BATCH:
                self._safe_flush()
        return ran

    def backfill(self) -> None:
        """Post the last ``history_s`` seconds of plant history with their original times."""
        self._wall0 = datetime.now(UTC)
        self.t = -self.history_s
        if not self._started_generators:
            self._start_generators(self.t)
        self._schedule_faults()
        self.run_due(0.0)
        self.flush()
        log.info("demo history posted: %s", self.stats.sent)
        if self.on_backfilled is not None:
            try:
                self.on_backfilled()
            except Exception:  # noqa: BLE001 - a hook must not stop the traffic
                log.exception("on_backfilled failed")

    def go_live(self) -> None:
        """Switch to real time: from now on delays are waited for (divided by the speed)."""
        if not self._started_generators:
            self._start_generators(0.0)
        if not self._scheduled_faults:
            self._schedule_faults()
        self._live_start = time.monotonic()
        self.t = 0.0
        self.live = True
        if self._mqtt_target is not None and reachable(*self._mqtt_target):
            try:
                self._mqtt = _MqttPublisher(*self._mqtt_target)
            except Exception:  # noqa: BLE001 - MQTT deliveries are then played in-process
                log.warning("could not connect to MQTT %s", self._mqtt_target, exc_info=True)
        # Live cadences start now rather than where the history's slower ones left off.
        for recurring in self._recurring:
            recurring.generation += 1
            self._schedule_recurring(recurring, self.rng.uniform(0, recurring.live[0]) / self.speed)
        self._sync_outages()

    def advance(self, seconds: float) -> int:
        """Run the next ``seconds`` of live traffic at once (tests; stamps stay real time)."""
        if not self.live:
            self.go_live()
        self._live_start -= seconds
        ran = self.run_due(self._elapsed())
        self.flush()
        return ran

    # --- Posting ------------------------------------------------------------------------------

    def _buffered(self) -> int:
        return len(self._events) + len(self._messages) + len(self._spans)

    def _safe_flush(self) -> None:
        try:
            self.flush()
        except Exception:  # noqa: BLE001 - kept for the next flush
            log.exception("could not send the simulator's traffic")

    def flush(self) -> None:
        """Send what is buffered; keep what Andon could not take now for the next flush."""
        senders: tuple[tuple[str, list[Any], Callable[[list[Any]], Outcome]], ...] = (
            ("events", self._events, self.client.post_events),
            ("messages", self._messages, self.client.post_messages),
            ("spans", self._spans, self.client.post_spans),
        )
        for kind, buffer, post in senders:
            while buffer:
                batch = buffer[:BATCH]
                try:
                    outcome = post(batch)
                except AndonUnavailable as exc:
                    log.info("Andon cannot take %s now (%s); will send them again", kind, exc)
                    break
                del buffer[: len(batch)]
                self.stats.record(kind, len(batch), outcome)
                if outcome.rejected:
                    log.warning("Andon rejected %s: %s", kind, outcome.rejected[:3])
            if len(buffer) > MAX_BUFFER:
                dropped = len(buffer) - MAX_BUFFER
                del buffer[:dropped]
                log.warning("dropped %d %s Andon could not take", dropped, kind)

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{self.run_id}-{next(self._ids)}"

    def number(self, kind: str) -> int:
        """Return the next business number of ``kind`` (work orders, lots, holds...)."""
        counter = self._numbers.setdefault(kind, itertools.count(self._base + 1))
        return next(counter)

    def emit(
        self,
        event_type: str,
        source: str,
        *,
        subject: str = "",
        data: Mapping[str, Any] | None = None,
        plant: str = "",
        correlation: str = "",
        **business_keys: str,
    ) -> dict[str, Any]:
        """Buffer one CloudEvent happening now."""
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": self._id("ev"),
            "source": source,
            "type": event_type,
            "time": iso(self.now()),
            "datacontenttype": "application/json",
            "data": dict(data or {}),
        }
        if subject:
            event["subject"] = subject
        if plant:
            event["plant"] = plant
        if correlation:
            event["correlationid"] = correlation
        event.update({name: value for name, value in business_keys.items() if value})
        self._events.append(event)
        return event

    def _queue_reactions(self, route: Route, payload: Mapping[str, Any]) -> None:
        """Stamp the reactions of a system the history delivered to (live targets post theirs)."""
        events = reactions(route, payload)
        if not events:
            return
        delay = self.rng.uniform(*route.delay_s)
        if self.t + delay <= 0:
            self._events.extend(stamp(events, self._wall0 + timedelta(seconds=self.t + delay)))
        else:
            self.at(self.t + delay, self._post_reactions, events)

    def _post_reactions(self, events: list[dict[str, Any]]) -> None:
        self._events.extend(stamp(events, self.now()))

    # --- Delivering (the middleware) ----------------------------------------------------------

    def deliver(
        self,
        connector: str,
        payload: Mapping[str, Any],
        *,
        keys: Mapping[str, str],
        correlation: str = "",
        fail: str = "",
    ) -> bool:
        """Send ``payload`` over ``connector`` as the middleware would and report the message.

        ``fail`` injects a failure with that error: nothing reaches the target.
        Returns whether the target accepted it.
        """
        link = self.links.get(connector)
        if link is None:
            log.debug("connector %s is not in the landscape; skipped", connector)
            return False
        route = link.route
        at = self.now()
        body = json.dumps(payload).encode()
        wan_ms = self._wan_latency_ms(link)
        if fail:
            ok, error, local_ms = False, fail, 0.0
        elif not self.live or self.t < 0:
            ok, error, local_ms = self._deliver_in_history(link, route, payload)
        else:
            ok, error, local_ms = self._deliver_live(link, route, body)
        latency_ms = int(wan_ms + local_ms)
        if ok:
            self.stats.delivered += 1
        else:
            self.stats.failed += 1
            timeout_s = float(link.adapter.get("timeout_s", 15))
            latency_ms = int(timeout_s * 1000) if "timeout" in error else latency_ms // 5
        message = {
            "id": self._id("msg"),
            "connector": connector,
            "status": "delivered" if ok else "failed",
            "occurred_at": iso(at),
            "correlation_id": correlation,
            "business_keys": dict(keys),
            "latency_ms": latency_ms,
            "headers": {"content-type": "application/json"},
            "payload": dict(payload),
        }
        if error:
            message["error"] = error
        self._messages.append(message)
        self._trace(link, at, latency_ms, ok, error, keys, correlation)
        return ok

    def _wan_latency_ms(self, link: Link) -> float:
        slo = float(link.latency_slo_ms or 2000)
        if self.rng.random() < 0.02:
            return slo * self.rng.uniform(1.1, 1.8)  # a slow hop now and then
        typical = min(slo * 0.1, 600.0)
        return max(5.0, self.rng.lognormvariate(0, 0.5) * typical)

    def _deliver_in_history(
        self, link: Link, route: Route | None, payload: Mapping[str, Any]
    ) -> tuple[bool, str, float]:
        if route is not None and route.name in ORDER_ROUTES:
            if self.plan.active("mes-outage", ORDER_ROUTES[route.name], self.t):
                return False, f"{link.target} answered 503 Service Unavailable: {OUTAGE}", 0.0
        if route is not None:
            self._queue_reactions(route, payload)
            self.continue_flow(route.name, payload)
        return True, "", 0.0

    def _deliver_live(
        self, link: Link, route: Route | None, body: bytes
    ) -> tuple[bool, str, float]:
        adapter = link.adapter
        kind = adapter.get("kind")
        started = time.perf_counter()
        try:
            if kind == "http":
                headers = {"Content-Type": "application/json", **dict(adapter.get("headers") or {})}
                response = self._http.request(
                    str(adapter.get("method", "POST")),
                    str(adapter["url"]),
                    data=body,
                    headers=headers,
                    timeout=float(adapter.get("timeout_s", 10)),
                    allow_redirects=False,
                )
                ms = (time.perf_counter() - started) * 1000
                if 200 <= response.status_code < 300:
                    return True, "", ms
                return False, _refusal(link.target, response), ms
            if kind == "mqtt" and self._mqtt is not None:
                self._mqtt.publish(str(adapter["topic"]), body, int(adapter.get("qos", 1)))
                return True, "", (time.perf_counter() - started) * 1000
            # AMQP, MQTT without a broker, no adapter: the target plays it in-process.
            if route is not None and self.targets is not None:
                status, answer = self.targets.receive(
                    route.name, body, {"content-type": "application/json"}
                )
                ms = (time.perf_counter() - started) * 1000
                if 200 <= status < 300:
                    return True, "", ms
                return False, f"{link.target} answered {status}: {answer.get('error', '')}", ms
            return True, "", (time.perf_counter() - started) * 1000
        except requests.Timeout:
            return (
                False,
                f"timeout waiting for {link.target}",
                (time.perf_counter() - started) * 1000,
            )
        except (requests.RequestException, OSError) as exc:
            ms = (time.perf_counter() - started) * 1000
            return False, f"could not reach {link.target}: {type(exc).__name__}: {exc}"[:300], ms

    def _trace(
        self,
        link: Link,
        at: datetime,
        latency_ms: int,
        ok: bool,
        error: str,
        keys: Mapping[str, str],
        correlation: str,
    ) -> None:
        """Buffer the hop's spans: the sender's client span and, when delivered, the receiver's."""
        kind = link.adapter.get("kind")
        if kind not in ("http", "mqtt", "amqp"):
            return
        trace_id, client_id = secrets.token_hex(16), secrets.token_hex(8)
        start = int(at.timestamp() * 1e9)
        end = start + max(1, latency_ms) * 1_000_000
        attributes = [_attribute("andon.connector", link.key)]
        if correlation:
            attributes.append(_attribute("andon.correlation_id", correlation))
        attributes += [
            _attribute(KEY_ATTRIBUTES[name], value)
            for name, value in keys.items()
            if name in KEY_ATTRIBUTES
        ]
        if kind == "http":
            path = urlsplit(str(link.adapter.get("url", ""))).path
            name = f"{link.adapter.get('method', 'POST')} {path}"
            span_kinds = (KIND_CLIENT, KIND_SERVER)
        else:
            name = f"publish {link.adapter.get('topic') or link.adapter.get('routing_key')}"
            span_kinds = (KIND_PRODUCER, KIND_CONSUMER)
        client = {
            "traceId": trace_id,
            "spanId": client_id,
            "name": name,
            "kind": span_kinds[0],
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(end),
            "attributes": attributes,
        }
        if not ok:
            client["status"] = {"code": STATUS_ERROR, "message": error[:200]}
        self._spans.append((link.source_service, client))
        if ok:
            server_start = start + (end - start) // 3
            self._spans.append(
                (
                    link.target_service,
                    {
                        "traceId": trace_id,
                        "spanId": secrets.token_hex(8),
                        "parentSpanId": client_id,
                        "name": f"receive {link.key}",
                        "kind": span_kinds[1],
                        "startTimeUnixNano": str(server_start),
                        "endTimeUnixNano": str(end - (end - start) // 10),
                        "attributes": attributes,
                    },
                )
            )

    # --- What the receiving systems' answers set off -------------------------------------------

    def on_delivery(
        self, route: str, payload: Mapping[str, Any], headers: Mapping[str, str]
    ) -> None:
        """Carry the flow on from what a target received (the targets' listener; any thread)."""
        if not self.live:
            return
        self.at(max(self.t, self._elapsed()), self.continue_flow, route, dict(payload))

    def continue_flow(self, route: str, payload: Mapping[str, Any]) -> None:
        """Do what follows a system's receipt of ``payload`` on ``route``."""
        if route.startswith("mes-") and route.endswith("-orders"):
            order = self.orders.get(str(payload.get("order")))
            if order is not None and order.state == "released":
                order.state = "received"
                self._soon(10, 25, self.start_order, order.number)
        elif route.endswith("-goods-receipts"):
            lot = str(payload.get("lot"))
            if lot in self.lots:
                self._soon(40, 90, self.confirm_shipment, self.lots[lot].plant, lot)
        elif route == "qms-lab-results" and payload.get("result") == "failed":
            self._soon(5, 15, self.place_hold, "p2", str(payload["lot"]), "lab result failed")
        elif route == "erp-goods-issues":
            self._soon(3, 8, self.transport_order, dict(payload))
        elif route == "eam-asset-alerts" and payload.get("severity") == "high":
            self._soon(20, 40, self.delay_risk, dict(payload))

    # --- The plant's doings --------------------------------------------------------------------

    def release_order(self, plant: str) -> WorkOrder:
        """Release a work order to a plant's MES, as ERP does."""
        setup = PLANTS[plant]
        n = self.number("wo")
        material, line = self.rng.choice(setup.materials)
        order = WorkOrder(f"WO-{n}", plant, material, line, self.rng.choice((20, 40, 60, 80)), "")
        order.lot = f"L-{n}"
        self.orders[order.number] = order
        self.lots[order.lot] = order
        while len(self.orders) > KEEP_ORDERS:
            _, old = self.orders.popitem(last=False)
            self.lots.pop(old.lot, None)
            self.held.discard(old.lot)
        due = self.now() + timedelta(hours=self.rng.choice((4, 8, 12)))
        data = {
            "order": order.number,
            "plant": plant,
            "material": material,
            "qty": order.qty,
            "line": line,
            "due": iso(due),
        }
        self.emit(
            "erp.workorder.released",
            "/erp",
            subject=order.number,
            data=data,
            plant=plant,
            correlation=order.number,
            workorder=order.number,
        )
        self.after(0.5, self._send_order, order.number)
        return order

    def _send_order(self, number: str) -> None:
        order = self.orders.get(number)
        if order is None:
            return
        payload = {
            "order": order.number,
            "plant": order.plant,
            "material": order.material,
            "qty": order.qty,
            "line": order.line,
        }
        self.deliver(
            PLANTS[order.plant].orders,
            payload,
            keys={"workorder": order.number},
            correlation=order.number,
        )

    def start_order(self, number: str) -> None:
        order = self.orders.get(number)
        if order is None or order.state != "received":
            return
        order.state = "started"
        self.emit(
            "mes.workorder.started",
            f"/mes/{order.plant}",
            subject=number,
            data={"order": number, "line": order.line},
            correlation=number,
            workorder=number,
        )
        self._soon(45, 90, self.complete_order, number)

    def complete_order(self, number: str) -> None:
        """Complete the order in MES: lot produced, confirmation to ERP, goods receipt to WMS."""
        order = self.orders.get(number)
        if order is None or order.state != "started":
            return
        order.state = "completed"
        scrap = self.rng.choice((0, 0, 0, 1, 2))
        source = f"/mes/{order.plant}"
        self.emit(
            "mes.workorder.completed",
            source,
            subject=number,
            data={"order": number, "qty_good": order.qty - scrap, "qty_scrap": scrap},
            correlation=number,
            workorder=number,
            lot=order.lot,
        )
        self.emit(
            "mes.lot.produced",
            source,
            subject=order.lot,
            data={"lot": order.lot, "order": number, "material": order.material, "qty": order.qty},
            correlation=number,
            workorder=number,
            lot=order.lot,
        )
        recent = self.recent_lots[order.plant]
        recent.append(order.lot)
        del recent[:-50]
        self._soon(1, 3, self._confirm, number, order.qty - scrap, scrap)
        if order.plant == "p2":
            self._soon(1, 3, self._consumption, number)
            self._soon(15, 30, self.lab_result, order.lot)
        elif self.rng.random() < 0.06:
            self._soon(20, 40, self.place_hold, "p1", order.lot, "visual inspection: burr on edge")

    def _confirm(self, number: str, good: int, scrap: int) -> None:
        order = self.orders[number]
        setup = PLANTS[order.plant]
        keys = {"workorder": number, "lot": order.lot}
        confirmation = {
            "order": number,
            "lot": order.lot,
            "qty_good": good,
            "qty_scrap": scrap,
            "plant": order.plant,
        }
        self.deliver(setup.confirmations, confirmation, keys=keys, correlation=number)
        receipt = {
            "handling_unit": f"HU-{self.number('hu')}",
            "order": number,
            "lot": order.lot,
            "qty": good,
            "plant": order.plant,
        }
        self.deliver(setup.goods_receipt, receipt, keys=keys, correlation=number)

    def _consumption(self, number: str) -> None:
        order = self.orders[number]
        payload = {
            "batch": order.lot,
            "order": number,
            "materials": [
                {"material": "BASE-OIL-2", "kg": self.rng.randint(400, 900)},
                {"material": "CATALYST-9", "kg": round(self.rng.uniform(2, 9), 1)},
            ],
        }
        self.deliver(CONSUMPTION, payload, keys={"lot": order.lot}, correlation=number)

    def lab_result(self, lot: str, force_fail: bool = False) -> None:
        """Report a lot's lab result from LIMS to QMS; a failed one leads QMS to place a hold."""
        failed = force_fail or self.rng.random() < 0.03
        test = self.rng.choice(("viscosity", "ph", "density"))
        value = round(self.rng.uniform(3.9, 4.6) if failed else self.rng.uniform(4.9, 5.4), 2)
        result = "failed" if failed else "passed"
        self.emit(
            f"lims.result.{result}",
            "/lims/p2",
            subject=lot,
            data={"lot": lot, "test": test, "value": value, "spec": "4.8-5.6", "plant": "p2"},
            plant="p2",
            lot=lot,
        )
        payload = {
            "lot": lot,
            "test": test,
            "result": result,
            "value": value,
            "analyst": {"name": "Camille Martin", "email": "c.martin@lyon.example"},
        }
        self.deliver(LAB_RESULTS, payload, keys={"lot": lot})

    def place_hold(self, plant: str, lot: str, reason: str, lose: bool = False) -> None:
        """Place a QMS hold on a lot: WMS must block it, ERP must block its shipment."""
        hold = f"QH-{self.number('hold')}"
        self.held.add(lot)
        self.emit(
            "qms.hold.placed",
            "/qms",
            subject=lot,
            data={"lot": lot, "plant": plant, "hold": hold, "reason": reason},
            plant=plant,
            lot=lot,
        )
        payload = {"lot": lot, "plant": plant, "hold": hold, "reason": reason}
        fail = (
            f"timeout after 15 s waiting for wms-{plant}; the hold was not retried" if lose else ""
        )
        self.after(1, self.deliver, PLANTS[plant].holds, payload, keys={"lot": lot}, fail=fail)
        block = {"lot": lot, "plant": plant, "hold": hold, "block": True}
        self.after(2, self.deliver, SHIPMENT_BLOCK, block, keys={"lot": lot})

    def confirm_shipment(self, plant: str, lot: str) -> None:
        """Ship a received lot from WMS (unless it is held) and confirm it to ERP."""
        if lot in self.held:
            return
        shipment = f"SH-{self.number('shipment')}"
        carrier = self.rng.choice(PLANTS[plant].carriers)
        self.emit(
            "wms.shipment.confirmed",
            f"/wms/{plant}",
            subject=shipment,
            data={"shipment": shipment, "lots": [lot], "plant": plant, "carrier": carrier},
            shipment=shipment,
            lot=lot,
        )
        payload = {"shipment": shipment, "lots": [lot], "plant": plant, "carrier": carrier}
        fail = ""
        if plant in self._fail_next_goods_issue:
            self._fail_next_goods_issue.discard(plant)
            fail = "erp answered 500 posting period 2026/05 is closed for goods issues"
        keys = {"shipment": shipment, "lot": lot}
        self.after(1, self.deliver, PLANTS[plant].shipments, payload, keys=keys, fail=fail)

    def transport_order(self, goods_issue: Mapping[str, Any]) -> None:
        shipment = str(goods_issue["shipment"])
        payload = {
            "shipment": shipment,
            "plant": goods_issue.get("plant"),
            "carrier": goods_issue.get("carrier") or "DHL Freight",
            "consignee": {
                "name": "Nordwerk Automotive GmbH",
                "contact_name": "Jonas Weber",
                "phone": "+49 711 555 0142",
            },
        }
        self.deliver(TRANSPORT, payload, keys={"shipment": shipment})

    def asset_alert(self, plant: str, asset: str | None = None, lose: bool = False) -> None:
        """Raise an IoT asset alert; EAM must open a maintenance case for it."""
        setup = PLANTS[plant]
        asset = asset or self.rng.choice(setup.assets)
        alert = self.rng.choice(("vibration", "temperature"))
        value = round(self.rng.uniform(7.1, 14.0), 1) if alert == "vibration" else 92
        severity = "high" if lose or self.rng.random() < 0.4 else "medium"
        alert_id = f"IA-{self.number('alert')}"
        running = [o for o in self.orders.values() if o.plant == plant and o.state == "started"]
        workorder = running[-1].number if running else ""
        data = {
            "alert_id": alert_id,
            "asset": asset,
            "alert": alert,
            "severity": severity,
            "value": value,
            "unit": "mm/s" if alert == "vibration" else "degC",
            "plant": plant,
        }
        if workorder:
            data["workorder"] = workorder
        self.emit(
            "iot.asset.alert",
            "/iot",
            subject=asset,
            data=data,
            plant=plant,
            asset=asset,
            workorder=workorder,
        )
        payload = {k: v for k, v in data.items() if k != "unit"}
        fail = "EAM bridge: connection lost before PUBACK from the MQTT broker" if lose else ""
        self.after(1, self.deliver, ASSET_ALERTS, payload, keys={"asset": asset}, fail=fail)

    def delay_risk(self, alert: Mapping[str, Any]) -> None:
        case = "MC-" + "".join(ch for ch in str(alert["alert_id"]) if ch.isdigit())
        payload = {
            "asset": alert["asset"],
            "case": case,
            "risk_minutes": self.rng.choice((30, 60, 120)),
            "plant": alert.get("plant"),
        }
        self.deliver(DELAY_RISK, payload, keys={"asset": str(alert["asset"])})

    def machine_state(self) -> None:
        """Report a press line machine state from the edge gateway (unless it is silent)."""
        if self.plan.active("edge-silent", "p1", self.t):
            return
        asset = self.rng.choice(PLANTS["p1"].assets + ("PRESS-4",))
        state = self.rng.choices(("running", "idle", "setup", "down"), (6, 2, 1, 1))[0]
        payload = {"asset": asset, "state": state, "at": iso(self.now())}
        self.deliver(MACHINE_STATES, payload, keys={"asset": asset})

    def warehouse_activity(self, plant: str) -> None:
        """Confirm WMS picks for outbound orders (its own heartbeat, whatever production does)."""
        unit = f"HU-{self.number('hu')}"
        self.emit(
            "wms.pick.confirmed",
            f"/wms/{plant}",
            subject=unit,
            data={"handling_unit": unit, "plant": plant, "picks": self.rng.randint(1, 12)},
        )

    def purchase_order(self) -> None:
        po = f"PO-{self.number('po')}"
        payload = {
            "po": po,
            "supplier": {
                "id": "SUP-0042",
                "name": "Acme Steel",
                "bank_account": "DE89370400440532013000",
            },
            "lines": [{"material": "STEEL-COIL-2MM", "qty_t": self.rng.randint(5, 40)}],
        }
        self.deliver(PURCHASE_ORDERS, payload, keys={}, correlation=po)

    def production_plan(self) -> None:
        plan = f"PLAN-{self.number('plan')}"
        payload = {"plan": plan, "horizon_days": 14, "orders": self.rng.randint(40, 120)}
        self.deliver(PLANS, payload, keys={}, correlation=plan)

    # --- Schedules --------------------------------------------------------------------------

    def _start_generators(self, t0: float) -> None:
        self._started_generators = True
        recurring = [
            _Recurring("release-p1", lambda: self.release_order("p1"), (120, 180), (30, 50)),
            _Recurring("release-p2", lambda: self.release_order("p2"), (120, 180), (30, 50)),
            _Recurring("asset-alerts", self._random_asset_alert, (180, 300), (120, 200)),
            _Recurring("machine-states", self.machine_state, (45, 75), (15, 30)),
            _Recurring("wms-p1", lambda: self.warehouse_activity("p1"), (90, 150), (60, 120)),
            _Recurring("wms-p2", lambda: self.warehouse_activity("p2"), (90, 150), (60, 120)),
            _Recurring("purchase-orders", self.purchase_order, (400, 700), (240, 420)),
            _Recurring("plans", self.production_plan, (900, 1500), (600, 900)),
        ]
        for item in recurring:
            self._recurring.append(item)
            self.at(t0 + self.rng.uniform(0, item.history[0]), self._recur, item, item.generation)

    def _schedule_recurring(self, item: _Recurring, delay_s: float) -> None:
        self.at(self.t + delay_s, self._recur, item, item.generation)

    def _recur(self, item: _Recurring, generation: int) -> None:
        if generation != item.generation:
            return  # superseded when the simulator went live
        try:
            item.fn()
        finally:
            lo, hi = item.history if self.t < 0 else item.live
            self._schedule_recurring(
                item, self.rng.uniform(lo, hi) / (self.speed if self.t >= 0 else 1.0)
            )

    def _random_asset_alert(self) -> None:
        self.asset_alert(self.rng.choice(tuple(PLANTS)))

    def _schedule_faults(self) -> None:
        self._scheduled_faults = True
        for fault in self.plan.faults:
            if fault.start_s < self.t:
                continue
            self.at(fault.start_s, self._inject, fault)
            if fault.end_s is not None:
                self.at(fault.end_s, self._sync_outages)

    def _inject(self, fault: Fault) -> None:
        if fault.kind in WINDOW_FAULTS:
            log.info("fault: %s at %s begins", fault.kind, fault.plant)
            self._sync_outages()
            if fault.kind == "mes-outage":
                # ERP releases into the outage at once, so every outage fails an order.
                self.after(20, self.release_order, fault.plant)
        elif fault.kind == "hold-lost":
            lots = [lot for lot in self.recent_lots[fault.plant] if lot not in self.held]
            lot = lots[-1] if lots else f"L-{self.number('wo')}"
            self.place_hold(fault.plant, lot, "dimension out of tolerance", lose=True)
        elif fault.kind == "asset-alert-lost":
            self.asset_alert(fault.plant, PLANTS[fault.plant].fault_asset, lose=True)
        elif fault.kind == "goods-issue-failed":
            self._fail_next_goods_issue.add(fault.plant)
        elif fault.kind == "lab-failed":
            lots = self.recent_lots["p2"]
            self.lab_result(lots[-1] if lots else f"L-{self.number('wo')}", force_fail=True)

    def _sync_outages(self) -> None:
        """Make the live targets answer as the plan says (a MES outage: 503)."""
        if self.targets is None or not self.live:
            return
        for plant in PLANTS:
            down = self.plan.active("mes-outage", plant, self.t)
            route = f"mes-{plant}-orders"
            if down != (route in self.targets.down):
                log.info("MES %s order endpoint %s", plant, "down" if down else "back")
                self.targets.set_down(route, down)


def _refusal(target: str, response: requests.Response) -> str:
    """Return the error a middleware logs for a refused delivery (the target's own words)."""
    try:
        detail = str(response.json().get("error", ""))
    except (ValueError, AttributeError):
        detail = response.text.strip()
    head = f"{target} answered {response.status_code} {response.reason}"
    return f"{head}: {detail[:160]}" if detail else head


__all__ = [
    "AndonClient",
    "AndonUnavailable",
    "Fault",
    "Link",
    "Outcome",
    "Plan",
    "Simulator",
    "Stats",
    "links_from_db",
]
