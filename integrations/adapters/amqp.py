"""AMQP 0-9-1 adapter: publishes the payload to an exchange with a routing key."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import pika
import pika.exceptions as amqp_errors
from pika.adapters.blocking_connection import BlockingChannel

from integrations.adapters.base import (
    Adapter,
    AdapterConfigError,
    AdapterError,
    DeliveryResult,
    header_value,
)
from integrations.adapters.http import check_url
from integrations.outbound import redact

# AMQP "short strings" (exchange names, routing keys) are at most 255 bytes.
MAX_SHORT_STRING = 255
PERSISTENT = 2
# Channel-closing replies that name a standing problem with the target, not a passing one:
# access refused, no such exchange, precondition failed (e.g. a message over the size limit).
PERMANENT_REPLY_CODES = frozenset({403, 404, 406})


class AmqpAdapter(Adapter):
    """Publishes the payload to ``exchange`` with ``routing_key`` on the broker at ``url``.

    Each message is persistent (``delivery_mode=2``) and carries the
    ``Content-Type`` as ``content_type``, the ``Idempotency-Key`` as ``message_id``
    and the other headers as AMQP headers. The channel runs in publisher-confirm
    mode and publishes with the ``mandatory`` flag, so a delivery counts once the
    broker confirmed it, and a message no queue would receive is a permanent
    error naming the routing key. One connection and channel are kept open
    between deliveries until ``close()``.
    """

    kind = "amqp"
    fields = ("url", "exchange", "routing_key")
    # Bounds connecting, each socket wait and a broker's flow-control block.
    timeout_s: ClassVar[float] = 10.0

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        # A pika connection is not thread-safe; the lock lets threads share the adapter.
        self._lock = threading.RLock()

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``{kind, url, exchange, routing_key}`` or raise AdapterConfigError."""
        read = cls.reader(config)
        url = read.string("url", required=True)
        assert url is not None
        check_url(url, ("amqp", "amqps"), "url", "an amqp:// or amqps:// URL with a host")
        exchange = read.string(
            "exchange", default="", allow_empty=True, max_length=MAX_SHORT_STRING
        )
        routing_key = read.string(
            "routing_key", required=True, allow_empty=True, max_length=MAX_SHORT_STRING
        )
        # On the default exchange the routing key is the queue name, so it cannot be empty.
        if exchange == "" and routing_key == "":
            raise AdapterConfigError(
                "routing_key", "must name the queue when the exchange is the default ('')"
            )
        return {"kind": cls.kind, "url": url, "exchange": exchange, "routing_key": routing_key}

    def deliver(self, body: bytes, headers: dict[str, str]) -> DeliveryResult:
        """Publish ``body`` once and wait for the broker's confirm (see Adapter)."""
        with self._lock:
            return self._publish(body, headers)

    def deliver_many(
        self, items: Iterable[tuple[bytes, dict[str, str]]]
    ) -> list[DeliveryResult | AdapterError]:
        """Publish each item in turn on this adapter's one channel (see Adapter)."""
        with self._lock:
            return super().deliver_many(items)

    def close(self) -> None:
        """Close the channel and the connection."""
        with self._lock:
            self._close()

    def _publish(self, body: bytes, headers: dict[str, str]) -> DeliveryResult:
        channel = self._open_channel()
        exchange, routing_key = self.config["exchange"], self.config["routing_key"]
        extra = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        properties = pika.BasicProperties(
            content_type=header_value(headers, "Content-Type"),
            headers=extra or None,
            message_id=header_value(headers, "Idempotency-Key"),
            delivery_mode=PERSISTENT,
        )
        started = time.perf_counter()
        try:
            channel.basic_publish(exchange, routing_key, body, properties, mandatory=True)
        except amqp_errors.UnroutableError:
            raise AdapterError(f"{self._where()}: unroutable: {self._no_route()}", True) from None
        except amqp_errors.NackError:
            raise AdapterError(f"{self._where()}: the broker refused (nacked) it", False) from None
        except amqp_errors.ChannelClosedByBroker as exc:
            self._channel = None
            raise AdapterError(
                f"{self._where()}: the broker closed the channel: ({exc.reply_code}) "
                f"{exc.reply_text}",
                permanent=exc.reply_code in PERMANENT_REPLY_CODES,
            ) from None
        except amqp_errors.AMQPError as exc:
            self._close()
            raise AdapterError(
                f"{self._where()}: publish failed: {_describe(exc)}", False
            ) from None
        return DeliveryResult(
            latency_ms=round((time.perf_counter() - started) * 1000), detail="confirmed"
        )

    def _close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except amqp_errors.AMQPError:
                pass  # it is going away either way

    def _where(self) -> str:
        exchange = self.config["exchange"] or "(default)"
        return f"AMQP {redact(self.config['url'])} exchange {exchange}"

    def _no_route(self) -> str:
        key = self.config["routing_key"]
        if self.config["exchange"] == "":
            return f"no queue is named after routing key {key!r}"
        return f"no queue is bound to exchange {self.config['exchange']!r} for routing key {key!r}"

    def _open_channel(self) -> BlockingChannel:
        """Return a confirming channel, reconnecting when the broker dropped an idle connection."""
        if self._connection is not None:
            try:
                # Handles heartbeats and notices a connection the broker closed meanwhile.
                self._connection.process_data_events(time_limit=0)
            except amqp_errors.AMQPError:
                self._close()
            else:
                if not self._connection.is_open:
                    self._close()
                elif self._channel is not None and self._channel.is_open:
                    return self._channel
        try:
            if self._connection is None:
                self._connection = pika.BlockingConnection(self._parameters())
            channel = self._connection.channel()
            channel.confirm_delivery()
        except amqp_errors.AMQPError as exc:
            self._close()
            raise AdapterError(
                f"{self._where()}: could not connect: {_describe(exc)}",
                permanent=False,
                unreachable=True,
            ) from None
        self._channel = channel
        return channel

    def _parameters(self) -> pika.URLParameters:
        """Return the URL's connection parameters, with Andon's timeouts where it sets none."""
        parameters = pika.URLParameters(self.config["url"])
        given = parse_qs(urlsplit(self.config["url"]).query)
        for name in ("socket_timeout", "stack_timeout", "blocked_connection_timeout"):
            if name not in given:
                setattr(parameters, name, self.timeout_s)
        if "connection_attempts" not in given:
            parameters.connection_attempts = 1
        if parameters.client_properties is None:
            # Names the connection in RabbitMQ's management UI and rabbitmqctl.
            route = f"{self.config['exchange'] or '(default)'} {self.config['routing_key']}"
            parameters.client_properties = {"connection_name": f"andon replay: {route}"}
        return parameters


def _describe(exc: BaseException) -> str:
    text = "; ".join(str(arg) for arg in exc.args if str(arg))
    return text or type(exc).__name__
