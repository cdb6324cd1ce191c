"""MQTT delivery: a paho subscriber on the real Mosquitto checks what arrived."""

from __future__ import annotations

import queue
import socket
import threading
import uuid
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from integrations.adapters import AdapterError, MqttAdapter, build_adapter
from tests.conftest import require_service

HOST, PORT = "127.0.0.1", 1883
HEADERS = {
    "Content-Type": "application/json; charset=utf-8",
    "Idempotency-Key": "eam-alerts:42",
    "X-Andon-Replay": "7",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}


class Subscriber:
    """An MQTT 5 client subscribed (qos 2) to one fresh topic, collecting what arrives."""

    def __init__(self) -> None:
        self.topic = f"andon-test/{uuid.uuid4().hex}"
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect(HOST, PORT)
        self.client.loop_start()
        self.client.subscribe(self.topic, qos=2)
        assert subscribed.wait(10), "Mosquitto did not confirm the subscription"

    def next(self) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber() -> Iterator[Subscriber]:
    require_service("Mosquitto", HOST, PORT)
    subscriber = Subscriber()
    yield subscriber
    subscriber.close()


@pytest.fixture
def adapters() -> Iterator[list[MqttAdapter]]:
    made: list[MqttAdapter] = []
    yield made
    for adapter in made:
        adapter.close()


def mqtt_adapter(adapters: list[MqttAdapter], topic: str, **config) -> MqttAdapter:
    adapter = build_adapter({"kind": "mqtt", "host": HOST, "topic": topic, **config})
    assert isinstance(adapter, MqttAdapter)
    adapters.append(adapter)
    return adapter


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- against Mosquitto ------------------------------------------------------------------------


def test_it_publishes_the_exact_payload_with_content_type_and_user_properties(subscriber, adapters):
    body = '{"asset": "PRESS-07", "alarm": "Öldruck niedrig"}'.encode() + b"\xff\x00"
    result = mqtt_adapter(adapters, subscriber.topic).deliver(body, dict(HEADERS))
    assert result.detail.startswith("PUBACK")
    message = subscriber.next()
    assert message.payload == body
    assert message.qos == 1
    assert message.properties.ContentType == HEADERS["Content-Type"]
    assert message.properties.UserProperty == [
        ("Idempotency-Key", "eam-alerts:42"),
        ("X-Andon-Replay", "7"),
        ("traceparent", HEADERS["traceparent"]),
    ]


def test_qos_2_waits_for_pubcomp(subscriber, adapters):
    result = mqtt_adapter(adapters, subscriber.topic, qos=2).deliver(b"exactly once", {})
    assert result.detail.startswith("PUBCOMP")
    assert subscriber.next().payload == b"exactly once"


def test_qos_0_is_sent_without_acknowledgement(subscriber, adapters):
    result = mqtt_adapter(adapters, subscriber.topic, qos=0).deliver(b"fire and forget", {})
    assert result.detail == "sent (qos 0)"
    assert subscriber.next().payload == b"fire and forget"


def test_a_batch_goes_over_one_connection_in_order(subscriber, adapters):
    adapter = mqtt_adapter(adapters, subscriber.topic)
    items = [(f"reading {n}".encode(), {**HEADERS, "X-Andon-Replay": str(n)}) for n in range(100)]
    outcomes = adapter.deliver_many(items)
    assert all(not isinstance(o, AdapterError) for o in outcomes)
    received = [subscriber.next() for _ in items]
    assert [m.payload for m in received] == [body for body, _ in items]
    assert dict(received[42].properties.UserProperty)["X-Andon-Replay"] == "42"


def test_the_adapter_keeps_its_connection_and_reopens_it_after_close(subscriber, adapters):
    adapter = mqtt_adapter(adapters, subscriber.topic)
    adapter.deliver(b"one", {})
    connection = adapter._client
    adapter.deliver(b"two", {})
    assert adapter._client is connection
    adapter.close()
    adapter.deliver(b"three", {})
    assert [subscriber.next().payload for _ in range(3)] == [b"one", b"two", b"three"]


def test_a_connection_the_network_dropped_is_reopened_on_the_next_delivery(subscriber, adapters):
    adapter = mqtt_adapter(adapters, subscriber.topic)
    adapter.deliver(b"before", {})
    dropped = adapter._client
    dropped.socket().shutdown(socket.SHUT_RDWR)
    noticed = threading.Event()
    while dropped.is_connected() and not noticed.wait(0.01):
        pass  # paho's network thread notices the dead socket on its own
    adapter.deliver(b"after", {})
    assert adapter._client is not dropped
    assert [subscriber.next().payload for _ in range(2)] == [b"before", b"after"]


def test_a_broker_that_is_down_is_a_transient_error(adapters):
    adapter = mqtt_adapter(adapters, "andon-test/nowhere", port=unused_port())
    with pytest.raises(AdapterError) as caught:
        adapter.deliver(b"{}", dict(HEADERS))
    assert not caught.value.permanent
    assert caught.value.unreachable
    assert "could not connect" in caught.value.message
    first, second = adapter.deliver_many([(b"a", {}), (b"b", {})])
    assert not first.permanent and second.message.startswith("not attempted: ")


# --- against brokers that misbehave on purpose ------------------------------------------------


class FakeBroker:
    """A loopback MQTT broker speaking just enough to accept a connection.

    ``mqtt5`` False makes it refuse MQTT 5 like a 3.1.1-only broker; ``ack`` False
    makes it swallow publishes without PUBACK. It records the payloads it got.
    """

    def __init__(self, *, mqtt5: bool, ack: bool) -> None:
        self.mqtt5, self.ack = mqtt5, ack
        self.payloads: list[bytes] = []
        self.protocols: list[int] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            while packet := read_packet(stream):
                kind, body = packet
                if kind == 0x10:  # CONNECT: protocol name, then the protocol level
                    level = body[2 + body[1]]
                    self.protocols.append(level)
                    if level == 5 and not self.mqtt5:
                        conn.sendall(b"\x20\x02\x00\x01")  # 3.1.1: unacceptable version
                        return
                    conn.sendall(b"\x20\x03\x00\x00\x00" if level == 5 else b"\x20\x02\x00\x00")
                elif kind >> 4 == 3:  # PUBLISH, qos 1 (topic, packet id, payload)
                    end = 2 + int.from_bytes(body[:2])
                    packet_id, rest = body[end : end + 2], body[end + 2 :]
                    self.payloads.append(rest)
                    if self.ack:
                        conn.sendall(b"\x40\x02" + packet_id)
                elif kind == 0xE0:  # DISCONNECT
                    return

    def close(self) -> None:
        self.listener.close()


def read_packet(stream) -> tuple[int, bytes] | None:
    header = stream.read(1)
    if not header:
        return None
    length, shift = 0, 0
    while True:
        byte = stream.read(1)[0]
        length += (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return header[0], stream.read(length)


@pytest.fixture
def fake_brokers() -> Iterator[list[FakeBroker]]:
    made: list[FakeBroker] = []
    yield made
    for broker in made:
        broker.close()


def test_a_broker_without_mqtt_5_gets_the_bare_payload_over_3_1_1(adapters, fake_brokers):
    broker = FakeBroker(mqtt5=False, ack=True)
    fake_brokers.append(broker)
    adapter = mqtt_adapter(adapters, "plant/alerts", port=broker.port)
    result = adapter.deliver(b"\x00raw\xff", dict(HEADERS))
    assert broker.protocols == [5, 4]
    assert broker.payloads == [b"\x00raw\xff"]  # no v5 properties in front of it
    assert "MQTT 3.1.1 broker, headers not sent" in result.detail
    assert adapter._protocol == MQTTProtocolVersion.MQTTv311


def test_no_puback_in_time_is_a_transient_error(adapters, fake_brokers):
    broker = FakeBroker(mqtt5=True, ack=False)
    fake_brokers.append(broker)
    adapter = mqtt_adapter(adapters, "plant/alerts", port=broker.port)
    adapter.timeout_s = 0.3
    with pytest.raises(AdapterError) as caught:
        adapter.deliver(b"{}", dict(HEADERS))
    assert not caught.value.permanent
    assert "no PUBACK within 0.3s" in caught.value.message
    assert adapter._client is None  # the stalled connection is not used again


def test_a_stalled_broker_fails_the_whole_batch_as_transient(adapters, fake_brokers):
    broker = FakeBroker(mqtt5=True, ack=False)
    fake_brokers.append(broker)
    adapter = mqtt_adapter(adapters, "plant/alerts", port=broker.port)
    adapter.timeout_s = 0.3
    outcomes = adapter.deliver_many([(b"a", {}), (b"b", {}), (b"c", {})])
    assert all(isinstance(o, AdapterError) and not o.permanent for o in outcomes)
