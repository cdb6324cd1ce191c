"""Local stand-ins for the systems the demo's connectors deliver to (HTTP, and MQTT when it can).

The demo landscape points every HTTP adapter at ``127.0.0.1:9100``; each path there
plays one receiving system, and the MQTT topics of the landscape are subscribed to
when Mosquitto is reachable. A target accepts what a connector or a replay sends
and, like the real system, reports its reaction to Andon's ingest API a moment
later: MES acknowledges a released work order, WMS applies a hold, ERP posts a
goods receipt or a goods issue, TMS dispatches, EAM opens a maintenance case.

Reactions are pure functions of the payload (:func:`reactions`) with event ids
derived from the business keys, so a replayed order is acknowledged once however
often it arrives, and the simulator's backfill can stamp the same reactions in
the past. ``set_down(route)`` makes a route answer 503 (a MES outage).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger(__name__)

DEFAULT_PORT = 9100
# Where the demo's notification contact points post (webhook, Slack, Teams).
NOTIFY_PREFIX = "/notify/"
# What a system in a (demo) outage answers with its 503.
OUTAGE = "maintenance mode, try again later"
# A reaction Andon could not take (it is restarting) is tried again this many times.
POST_ATTEMPTS = 5


class EventSink(Protocol):
    """Where targets report their reactions: Andon's ingest API (``simulator.AndonClient``)."""

    def post_events(self, events: list[dict[str, Any]]) -> Any: ...


Payload = Mapping[str, Any]
React = Callable[[Payload], list[dict[str, Any]]]
Listener = Callable[[str, Payload, Mapping[str, str]], None]


def cloud_event(
    event_id: str,
    event_type: str,
    source: str,
    *,
    subject: str = "",
    data: Mapping[str, Any] | None = None,
    **extensions: str,
) -> dict[str, Any]:
    """Return a CloudEvent (structured JSON form) without ``time``, stamped when it is sent."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": event_type,
        "datacontenttype": "application/json",
        "data": dict(data or {}),
    }
    if subject:
        event["subject"] = subject
    event.update({name: value for name, value in extensions.items() if value})
    return event


# --- What each receiving system does with what it receives -------------------------------------


def _mes_acknowledges(plant: str) -> React:
    def react(p: Payload) -> list[dict[str, Any]]:
        order = str(p["order"])
        return [
            cloud_event(
                f"mes-{plant}-ack-{order}",
                "mes.workorder.acknowledged",
                f"/mes/{plant}",
                subject=order,
                data={"order": order, "plant": plant, "line": p.get("line", "")},
                workorder=order,
                correlationid=order,
            )
        ]

    return react


def _erp_posts_goods_receipt(p: Payload) -> list[dict[str, Any]]:
    order, plant = str(p["order"]), str(p.get("plant", ""))
    return [
        cloud_event(
            f"erp-gr-{order}",
            "erp.goodsreceipt.posted",
            "/erp",
            subject=order,
            data={"order": order, "lot": p.get("lot"), "qty": p.get("qty_good"), "plant": plant},
            workorder=order,
            lot=str(p.get("lot") or ""),
            plant=plant,
            correlationid=order,
        )
    ]


def _wms_receives_goods(plant: str) -> React:
    def react(p: Payload) -> list[dict[str, Any]]:
        unit = str(p["handling_unit"])
        return [
            cloud_event(
                f"wms-{plant}-gr-{unit}",
                "wms.goods.received",
                f"/wms/{plant}",
                subject=unit,
                data={
                    "handling_unit": unit,
                    "lot": p.get("lot"),
                    "order": p.get("order"),
                    "qty": p.get("qty"),
                },
                lot=str(p.get("lot") or ""),
                workorder=str(p.get("order") or ""),
            )
        ]

    return react


def _wms_applies_hold(plant: str) -> React:
    def react(p: Payload) -> list[dict[str, Any]]:
        lot, hold = str(p["lot"]), str(p.get("hold", ""))
        return [
            cloud_event(
                f"wms-{plant}-hold-{hold or lot}",
                "wms.hold.applied",
                f"/wms/{plant}",
                subject=lot,
                data={"lot": lot, "hold": hold, "plant": plant, "bins": p.get("bins", 1)},
                lot=lot,
            )
        ]

    return react


def _erp_blocks_shipment(p: Payload) -> list[dict[str, Any]]:
    lot, plant = str(p["lot"]), str(p.get("plant", ""))
    return [
        cloud_event(
            f"erp-block-{p.get('hold') or lot}",
            "erp.shipment.blocked",
            "/erp",
            subject=lot,
            data={"lot": lot, "hold": p.get("hold"), "plant": plant},
            lot=lot,
            plant=plant,
        )
    ]


def _erp_posts_goods_issue(p: Payload) -> list[dict[str, Any]]:
    shipment, plant = str(p["shipment"]), str(p.get("plant", ""))
    return [
        cloud_event(
            f"erp-gi-{shipment}",
            "erp.goodsissue.posted",
            "/erp",
            subject=shipment,
            data={"shipment": shipment, "plant": plant, "lots": list(p.get("lots") or [])},
            shipment=shipment,
            plant=plant,
        )
    ]


def _tms_dispatches(p: Payload) -> list[dict[str, Any]]:
    shipment = str(p["shipment"])
    return [
        cloud_event(
            f"tms-dispatch-{shipment}",
            "tms.shipment.dispatched",
            "/tms",
            subject=shipment,
            data={"shipment": shipment, "carrier": p.get("carrier"), "plant": p.get("plant")},
            shipment=shipment,
        )
    ]


def _eam_opens_case(p: Payload) -> list[dict[str, Any]]:
    alert, asset = str(p["alert_id"]), str(p["asset"])
    case = "MC-" + "".join(ch for ch in alert if ch.isdigit())
    return [
        cloud_event(
            f"eam-case-{alert}",
            "eam.case.opened",
            "/eam",
            subject=case,
            data={
                "case": case,
                "asset": asset,
                "alert": alert,
                "priority": "high" if p.get("severity") == "high" else "medium",
                "plant": p.get("plant"),
            },
            asset=asset,
        )
    ]


def _supplier_acknowledges(p: Payload) -> list[dict[str, Any]]:
    po = str(p["po"])
    return [
        cloud_event(
            f"sp-ack-{po}",
            "supplier.po.acknowledged",
            "/supplier-portal",
            subject=po,
            data={"po": po, "supplier": (p.get("supplier") or {}).get("id")},
        )
    ]


@dataclass(frozen=True)
class Route:
    """One receiving endpoint: an HTTP path and/or MQTT topic played by one system."""

    name: str
    system: str
    path: str = ""
    topic: str = ""
    # Fields a payload must carry; without them the target answers 422 (a permanent failure).
    requires: tuple[str, ...] = ()
    react: React | None = None
    # How long the system takes to react, in seconds at speed 1 (uniform between the two).
    delay_s: tuple[float, float] = (1.0, 3.0)


ROUTES: dict[str, Route] = {
    route.name: route
    for route in (
        Route(
            "mes-p1-orders",
            "mes-p1",
            "/mes/p1/orders",
            "",
            ("order",),
            _mes_acknowledges("p1"),
            (2, 4),
        ),
        Route(
            "mes-p2-orders",
            "mes-p2",
            "/mes/p2/orders",
            "",
            ("order",),
            _mes_acknowledges("p2"),
            (2, 4),
        ),
        Route("mes-p2-consumption", "mes-p2", "/mes/p2/consumption", "", ("batch",)),
        Route("erp-plans", "erp", "/erp/plans", "", ("plan",)),
        Route(
            "erp-confirmations",
            "erp",
            "/erp/confirmations",
            "",
            ("order",),
            _erp_posts_goods_receipt,
            (3, 10),
        ),
        Route(
            "wms-p1-goods-receipts",
            "wms-p1",
            "",
            "plant1/wms/goods-receipts",
            ("handling_unit",),
            _wms_receives_goods("p1"),
            (2, 6),
        ),
        Route(
            "wms-p2-goods-receipts",
            "wms-p2",
            "/wms/p2/goods-receipts",
            "",
            ("handling_unit",),
            _wms_receives_goods("p2"),
            (2, 6),
        ),
        Route(
            "wms-p1-holds",
            "wms-p1",
            "/wms/p1/holds",
            "",
            ("lot",),
            _wms_applies_hold("p1"),
            (5, 15),
        ),
        Route(
            "wms-p2-holds",
            "wms-p2",
            "/wms/p2/holds",
            "",
            ("lot",),
            _wms_applies_hold("p2"),
            (5, 15),
        ),
        Route(
            "erp-shipment-block",
            "erp",
            "",
            "",
            ("lot",),
            _erp_blocks_shipment,
            (3, 8),
        ),
        Route("qms-lab-results", "qms", "/qms/lab-results", "", ("lot", "result")),
        Route(
            "eam-asset-alerts",
            "eam",
            "",
            "eam/asset-alerts",
            ("alert_id", "asset"),
            _eam_opens_case,
            (20, 60),
        ),
        Route("erp-delay-risks", "erp", "/erp/delay-risks", "", ("asset",)),
        Route(
            "erp-goods-issues",
            "erp",
            "/erp/goods-issues",
            "",
            ("shipment",),
            _erp_posts_goods_issue,
            (2, 6),
        ),
        Route(
            "tms-shipments", "tms", "/tms/shipments", "", ("shipment",), _tms_dispatches, (5, 15)
        ),
        Route(
            "supplier-portal-purchase-orders",
            "supplier-portal",
            "/supplier-portal/purchase-orders",
            "",
            ("po",),
            _supplier_acknowledges,
            (5, 20),
        ),
    )
}
ROUTE_BY_PATH = {route.path: route for route in ROUTES.values() if route.path}
ROUTE_BY_TOPIC = {route.topic: route for route in ROUTES.values() if route.topic}
# AMQP deliveries are played in-process (no consumer): exchange/routing key -> route.
ROUTE_BY_AMQP = {("quality", "erp.shipment.block"): ROUTES["erp-shipment-block"]}


def route_for_adapter(adapter: Mapping[str, Any] | None) -> Route | None:
    """Return the route that plays the receiving end of a connector's adapter, if any."""
    if not adapter:
        return None
    kind = adapter.get("kind")
    if kind == "http":
        return ROUTE_BY_PATH.get(urlsplit(str(adapter.get("url", ""))).path)
    if kind == "mqtt":
        return ROUTE_BY_TOPIC.get(str(adapter.get("topic", "")))
    if kind == "amqp":
        return ROUTE_BY_AMQP.get((adapter.get("exchange"), adapter.get("routing_key")))
    return None


def missing_fields(route: Route, payload: object) -> str | None:
    """Return why ``payload`` is not something ``route`` accepts, or None."""
    if not isinstance(payload, Mapping):
        return "the body must be a JSON object"
    missing = [name for name in route.requires if payload.get(name) in (None, "")]
    if missing:
        return f"missing field(s): {', '.join(missing)}"
    return None


def reactions(route: Route, payload: Payload) -> list[dict[str, Any]]:
    """Return the events (without ``time``) the route's system reports on receiving ``payload``."""
    if route.react is None or missing_fields(route, payload):
        return []
    return route.react(payload)


def stamp(events: list[dict[str, Any]], at: datetime) -> list[dict[str, Any]]:
    """Return copies of ``events`` with ``time`` set to ``at`` (RFC 3339, UTC)."""
    text = at.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return [{**event, "time": text} for event in events]


def moved_url(
    url: str, port: int, host: str = "127.0.0.1", default_port: int = DEFAULT_PORT
) -> str:
    """Return ``url`` moved to ``host:port`` if it names ``host:default_port``, else unchanged."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != host or parts.port != default_port:
        return url
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


def retarget_adapters(port: int, host: str = "127.0.0.1", default_port: int = DEFAULT_PORT) -> int:
    """Point what the demo files aim at ``host:default_port`` at ``port``; return how many moved.

    The demo landscape's HTTP adapters and the demo's webhook, Slack and Teams
    contact points name port 9100; a demo (or test) whose targets listen
    elsewhere moves them along, so replays and notifications reach its targets.
    """
    from django.apps import apps

    from integrations.models import Connector

    moved = 0
    if port == default_port:
        return moved
    for connector in Connector.objects.filter(adapter__kind="http"):
        adapter = dict(connector.adapter)
        url = moved_url(str(adapter.get("url", "")), port, host, default_port)
        if url != adapter.get("url"):
            adapter["url"] = url
            Connector.objects.filter(pk=connector.pk).update(adapter=adapter)
            moved += 1
    try:
        contact_points = apps.get_model("monitors", "ContactPoint")
    except LookupError:
        return moved
    for point in contact_points.objects.all():
        options = dict(point.options or {})
        url = moved_url(str(options.get("url", "")), port, host, default_port)
        if url != options.get("url", ""):
            options["url"] = url
            contact_points.objects.filter(pk=point.pk).update(options=options)
            moved += 1
    return moved


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- The server -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Receipt:
    """One delivery a target received (kept for inspection: the demo's tests read them)."""

    route: str
    at: datetime
    body: bytes
    headers: dict[str, str]
    status: int


@dataclass
class _Reactor:
    """Posts reactions to Andon when they are due, in one thread, retrying while Andon restarts."""

    sink: EventSink | None
    queue: list[tuple[float, int, list[dict[str, Any]], int]] = field(default_factory=list)
    counter: itertools.count = field(default_factory=itertools.count)
    cond: threading.Condition = field(default_factory=threading.Condition)
    busy: int = 0
    posted: int = 0
    rejected: list[str] = field(default_factory=list)
    stopped: bool = False

    def add(self, events: list[dict[str, Any]], delay_s: float, attempt: int = 0) -> None:
        with self.cond:
            heapq.heappush(
                self.queue, (time.monotonic() + delay_s, next(self.counter), events, attempt)
            )
            self.cond.notify_all()

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.stopped and (not self.queue or self.queue[0][0] > time.monotonic()):
                    timeout = self.queue[0][0] - time.monotonic() if self.queue else None
                    self.cond.wait(timeout)
                if self.stopped:
                    return
                due: list[dict[str, Any]] = []
                attempts = 0
                while self.queue and self.queue[0][0] <= time.monotonic():
                    _, _, events, attempt = heapq.heappop(self.queue)
                    due.extend(events)
                    attempts = max(attempts, attempt)
                self.busy += 1
            try:
                self._post(due, attempts)
            finally:
                with self.cond:
                    self.busy -= 1
                    self.cond.notify_all()

    def _post(self, events: list[dict[str, Any]], attempt: int) -> None:
        if self.sink is None or not events:
            return
        try:
            outcome = self.sink.post_events(stamp(events, datetime.now(UTC)))
            self.posted += len(events)
            for problem in getattr(outcome, "rejected", None) or []:
                self.rejected.append(str(problem))
                log.warning("Andon rejected a reaction: %s", problem)
        except Exception as exc:  # noqa: BLE001 - Andon restarting: try again a little later
            if attempt + 1 < POST_ATTEMPTS:
                log.info("could not report %d reaction(s) yet (%s); retrying", len(events), exc)
                self.add(events, 2.0 * (attempt + 1), attempt + 1)
            else:
                log.warning("gave up reporting %d reaction(s): %s", len(events), exc)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued reaction was posted; False if ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while self.queue or self.busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(min(remaining, 0.1))
        return True

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()


class _Handler(BaseHTTPRequestHandler):
    server_version = "AndonDemoTarget/1.0"
    protocol_version = "HTTP/1.1"
    targets: Targets  # set on the subclass made per server

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self._handle()

    def do_PUT(self) -> None:  # noqa: N802
        self._handle()

    def do_GET(self) -> None:  # noqa: N802
        routes = sorted(ROUTE_BY_PATH)
        self._answer(200, {"targets": routes, "down": sorted(self.targets.down)})

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        if path.startswith(NOTIFY_PREFIX):
            # The demo's webhook, Slack and Teams contact points: taken and kept, like a chat.
            self.targets.notified(path, body, dict(self.headers.items()))
            self._answer(200, {"ok": True})
            return
        route = ROUTE_BY_PATH.get(path)
        if route is None:
            self._answer(404, {"error": f"no demo system listens on {self.path}"})
            return
        status, answer = self.targets.receive(route.name, body, dict(self.headers.items()))
        extra = {"Retry-After": "30"} if status == 503 else {}
        self._answer(status, answer, extra)

    def _answer(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's name
        log.debug("target %s: " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class Targets:
    """The receiving systems of the demo landscape, on one local HTTP port (and MQTT topics).

    ``sink`` is where reactions go (Andon's ingest API); ``listener(route, payload,
    headers)`` is told of every accepted delivery (the simulator continues the flow
    from there: an acknowledged order goes into production). ``speed`` divides the
    reaction delays; 0 delays nothing.
    """

    def __init__(
        self,
        sink: EventSink | None,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        speed: float = 1.0,
        listener: Listener | None = None,
        seed: int | None = None,
        keep: int = 2000,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.speed = speed
        self.listener = listener
        self.down: dict[str, int] = {}
        self.received: deque[Receipt] = deque(maxlen=keep)
        self.notifications: deque[Receipt] = deque(maxlen=keep)
        self._rng = random.Random(seed)
        self._reactor = _Reactor(sink)
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._mqtt: Any = None
        self.mqtt_topics: list[str] = []
        self._lock = threading.Lock()

    # Lifecycle.

    @property
    def port(self) -> int:
        """Return the port listened on (the OS's choice when 0 was asked for)."""
        return self._server.server_address[1] if self._server else self.requested_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Targets:
        """Listen (raises OSError when the port is taken) and start posting reactions."""
        handler = type("Handler", (_Handler,), {"targets": self})
        self._server = _Server((self.host, self.requested_port), handler)
        self._spawn("andon-demo-targets", self._server.serve_forever)
        self._spawn("andon-demo-reactions", self._reactor.run)
        return self

    def start_mqtt(self, host: str, port: int) -> bool:
        """Subscribe to the landscape's MQTT topics on ``host:port``; False when unreachable."""
        if not reachable(host, port):
            return False
        try:
            import paho.mqtt.client as mqtt

            client = mqtt.Client(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=f"andon-demo-targets-{self.port}-{random.getrandbits(32):08x}",
            )
            topics = sorted(ROUTE_BY_TOPIC)
            subscribed = threading.Event()

            def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
                client.subscribe([(topic, 1) for topic in topics])

            def on_subscribe(client: Any, userdata: Any, mid: Any, codes: Any, props: Any) -> None:
                subscribed.set()

            def on_message(client: Any, userdata: Any, message: Any) -> None:
                route = ROUTE_BY_TOPIC.get(message.topic)
                if route is not None:
                    self.receive(
                        route.name, bytes(message.payload), {"content-type": "application/json"}
                    )

            client.on_connect = on_connect
            client.on_subscribe = on_subscribe
            client.on_message = on_message
            client.connect(host, port, keepalive=30)
            client.loop_start()
            # Deliveries published before the broker confirmed the subscription would be lost.
            if not subscribed.wait(5):
                client.loop_stop()
                log.warning("MQTT %s:%s did not confirm the subscription", host, port)
                return False
        except Exception:  # noqa: BLE001 - MQTT is optional: the in-process path plays it
            log.warning("could not subscribe to MQTT on %s:%s", host, port, exc_info=True)
            return False
        self._mqtt = client
        self.mqtt_topics = topics
        return True

    def stop(self) -> None:
        """Stop listening and posting (queued reactions are dropped)."""
        if self._mqtt is not None:
            try:
                self._mqtt.loop_stop()
                self._mqtt.disconnect()
            except Exception:  # noqa: BLE001 - stopping anyway
                log.debug("MQTT disconnect failed", exc_info=True)
            self._mqtt = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self._reactor.stop()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # Behaviour.

    def set_down(self, route: str, down: bool = True, status: int = 503) -> None:
        """Make a route answer ``status`` (an outage) or, with ``down=False``, recover."""
        if route not in ROUTES:
            raise KeyError(f"unknown route {route!r}")
        with self._lock:
            if down:
                self.down[route] = status
            else:
                self.down.pop(route, None)

    def receive(self, route_name: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict]:
        """Accept one delivery as the route's system would; return (status, answer body)."""
        route = ROUTES[route_name]
        now = datetime.now(UTC)
        headers = {name.lower(): value for name, value in headers.items()}
        with self._lock:
            down = self.down.get(route_name)
        if down is not None:
            self._record(route, now, body, headers, down)
            return down, {"error": OUTAGE}
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            self._record(route, now, body, headers, 400)
            return 400, {"error": "the body is not JSON"}
        problem = missing_fields(route, payload)
        if problem:
            self._record(route, now, body, headers, 422)
            return 422, {"error": problem}
        self._record(route, now, body, headers, 202)
        events = reactions(route, payload)
        if events:
            low, high = route.delay_s
            delay = self._rng.uniform(low, high) / self.speed if self.speed > 0 else 0.0
            self._reactor.add(events, delay)
        if self.listener is not None:
            try:
                self.listener(route_name, payload, headers)
            except Exception:  # noqa: BLE001 - the target answers whatever the listener does
                log.exception("demo listener failed on %s", route_name)
        answer: dict[str, Any] = {"accepted": True, "system": route.system}
        if "idempotency-key" in headers:
            answer["idempotency_key"] = headers["idempotency-key"]
        return 202, answer

    def _record(
        self, route: Route, at: datetime, body: bytes, headers: Mapping[str, str], status: int
    ) -> None:
        self.received.append(Receipt(route.name, at, body, dict(headers), status))

    def notified(self, path: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Keep a notification a contact point posted (the path names the channel)."""
        self.notifications.append(Receipt(path, datetime.now(UTC), body, dict(headers), 200))

    def receipts(self, route: str) -> list[Receipt]:
        """Return what ``route`` received so far, oldest first."""
        return [r for r in list(self.received) if r.route == route]

    def drain(self, timeout_s: float = 30.0) -> bool:
        """Wait until every pending reaction was reported to Andon."""
        return self._reactor.drain(timeout_s)

    @property
    def reactions_posted(self) -> int:
        """Return how many reactions were reported to Andon."""
        return self._reactor.posted

    @property
    def rejections(self) -> list[str]:
        """Return what Andon refused of the reactions (nothing, when all is well)."""
        return list(self._reactor.rejected)
