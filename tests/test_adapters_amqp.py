"""AMQP delivery: a pika consumer on the real RabbitMQ checks what arrived."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pika
import pytest

from integrations.adapters import AdapterError, AmqpAdapter, build_adapter
from tests.conftest import require_service

URL = "amqp://guest:guest@127.0.0.1:5672/"
HEADERS = {
    "Content-Type": "application/xml",
    "Idempotency-Key": "erp-to-wms-shipments:42",
    "X-Andon-Replay": "7",
    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
}


@dataclass
class Broker:
    """A temporary exchange with a temporary queue bound for routing key ``orders``."""

    channel: pika.adapters.blocking_connection.BlockingChannel
    exchange: str
    queue: str

    def get(self) -> tuple[pika.BasicProperties, bytes]:
        method, properties, body = self.channel.basic_get(self.queue, auto_ack=True)
        assert method is not None, "the queue is empty"
        return properties, body

    def count(self) -> int:
        return self.channel.queue_declare(self.queue, passive=True).method.message_count


@pytest.fixture
def broker() -> Iterator[Broker]:
    require_service("RabbitMQ", "127.0.0.1", 5672)
    connection = pika.BlockingConnection(pika.URLParameters(URL))
    channel = connection.channel()
    exchange = f"andon-test-{uuid.uuid4().hex}"
    channel.exchange_declare(exchange, "direct", auto_delete=True)
    queue = channel.queue_declare("", exclusive=True).method.queue
    channel.queue_bind(queue, exchange, routing_key="orders")
    yield Broker(channel, exchange, queue)
    channel.exchange_delete(exchange)
    connection.close()


@pytest.fixture
def adapters() -> Iterator[list[AmqpAdapter]]:
    made: list[AmqpAdapter] = []
    yield made
    for adapter in made:
        adapter.close()


def amqp_adapter(adapters: list[AmqpAdapter], **config) -> AmqpAdapter:
    adapter = build_adapter({"kind": "amqp", "url": URL, **config})
    assert isinstance(adapter, AmqpAdapter)
    adapters.append(adapter)
    return adapter


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_it_publishes_body_content_type_headers_and_message_id(broker, adapters):
    body = "<shipment id='S-1'>Größe ✓</shipment>".encode("utf-16") + b"\x00\xff"
    adapter = amqp_adapter(adapters, exchange=broker.exchange, routing_key="orders")
    result = adapter.deliver(body, dict(HEADERS))
    assert result.detail == "confirmed"
    properties, received = broker.get()
    assert received == body
    assert properties.content_type == "application/xml"
    assert properties.message_id == "erp-to-wms-shipments:42"
    assert properties.delivery_mode == 2
    assert properties.headers == {
        "Idempotency-Key": "erp-to-wms-shipments:42",
        "X-Andon-Replay": "7",
        "traceparent": HEADERS["traceparent"],
    }


def test_it_publishes_to_a_queue_through_the_default_exchange(broker, adapters):
    amqp_adapter(adapters, routing_key=broker.queue).deliver(b"direct", dict(HEADERS))
    assert broker.get()[1] == b"direct"


def test_an_unroutable_message_is_a_permanent_error_naming_the_routing_key(broker, adapters):
    adapter = amqp_adapter(adapters, exchange=broker.exchange, routing_key="nobody-listens")
    with pytest.raises(AdapterError) as caught:
        adapter.deliver(b"{}", dict(HEADERS))
    assert caught.value.permanent
    assert "unroutable" in caught.value.message
    assert "'nobody-listens'" in caught.value.message
    assert broker.count() == 0


def test_a_missing_queue_on_the_default_exchange_is_unroutable(adapters):
    require_service("RabbitMQ", "127.0.0.1", 5672)
    adapter = amqp_adapter(adapters, routing_key=f"andon-test-missing-{uuid.uuid4().hex}")
    with pytest.raises(AdapterError) as caught:
        adapter.deliver(b"{}", {})
    assert caught.value.permanent
    assert "no queue is named after routing key" in caught.value.message


def test_a_missing_exchange_is_permanent_and_the_adapter_recovers_once_it_exists(broker, adapters):
    exchange = f"{broker.exchange}-later"
    adapter = amqp_adapter(adapters, exchange=exchange, routing_key="orders")
    with pytest.raises(AdapterError) as caught:
        adapter.deliver(b"first", {})
    assert caught.value.permanent
    assert "NOT_FOUND" in caught.value.message
    broker.channel.exchange_declare(exchange, "direct", auto_delete=True)
    broker.channel.queue_bind(broker.queue, exchange, routing_key="orders")
    adapter.deliver(b"second", {})
    assert broker.get()[1] == b"second"


def test_a_batch_is_confirmed_over_one_channel_in_order(broker, adapters):
    adapter = amqp_adapter(adapters, exchange=broker.exchange, routing_key="orders")
    items = [(f"<n>{n}</n>".encode(), {**HEADERS, "X-Andon-Replay": str(n)}) for n in range(100)]
    outcomes = adapter.deliver_many(items)
    assert all(not isinstance(o, AdapterError) for o in outcomes)
    received = [broker.get() for _ in items]
    assert [body for _, body in received] == [body for body, _ in items]
    assert received[42][0].headers["X-Andon-Replay"] == "42"


def test_the_adapter_reconnects_after_close(broker, adapters):
    adapter = amqp_adapter(adapters, exchange=broker.exchange, routing_key="orders")
    adapter.deliver(b"one", {})
    adapter.close()
    adapter.deliver(b"two", {})
    assert [broker.get()[1] for _ in range(2)] == [b"one", b"two"]


def test_a_connection_the_network_dropped_is_reopened_on_the_next_delivery(broker, adapters):
    adapter = amqp_adapter(adapters, exchange=broker.exchange, routing_key="orders")
    adapter.deliver(b"before", {})
    # pika exposes no public handle on the socket; cutting it is what a dead link does.
    adapter._connection._impl._transport._sock.shutdown(socket.SHUT_RDWR)
    adapter.deliver(b"after", {})
    assert [broker.get()[1] for _ in range(2)] == [b"before", b"after"]


def test_a_broker_that_is_down_is_a_transient_error(adapters):
    url = f"amqp://guest:guest@127.0.0.1:{unused_port()}/"
    adapter = amqp_adapter(adapters, url=url, routing_key="orders")
    with pytest.raises(AdapterError) as caught:
        adapter.deliver(b"{}", dict(HEADERS))
    assert not caught.value.permanent
    assert caught.value.unreachable
    assert "could not connect" in caught.value.message
    assert "guest:***@" in caught.value.message
    first, second = adapter.deliver_many([(b"a", {}), (b"b", {})])
    assert not first.permanent and second.message.startswith("not attempted: ")
