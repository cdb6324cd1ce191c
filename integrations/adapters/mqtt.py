"""MQTT adapter: publishes the payload to one topic of a broker."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from integrations.adapters.base import (
    Adapter,
    AdapterConfigError,
    AdapterError,
    DeliveryResult,
    not_attempted,
)

DEFAULT_PORT = 1883
DEFAULT_QOS = 1
MAX_TOPIC_BYTES = 65535
KEEPALIVE_S = 60
# CONNACK reason codes of a broker that speaks only MQTT 3.1.1 to an MQTT 5 CONNECT.
UNSUPPORTED_PROTOCOL = frozenset({1, 0x84})
# PUBACK/PUBREC/PUBCOMP failure codes that say "not now" rather than "not this message":
# unspecified error, implementation specific error, packet identifier in use, quota exceeded.
TRANSIENT_PUBLISH_REASONS = frozenset({0x80, 0x83, 0x91, 0x97})


class MqttAdapter(Adapter):
    """Publishes the payload to ``topic`` on the broker at ``host:port`` with ``qos``.

    MQTT 3.1.1 carries no headers, so the adapter speaks MQTT 5 and sends the
    ``Content-Type`` as the ``content_type`` property and every other header as a
    user property; a broker that refuses MQTT 5 gets the bare payload over 3.1.1
    (the result's detail says so). For qos 1 and 2 a delivery counts once the
    broker acknowledged it (PUBACK, PUBCOMP); no acknowledgement within
    ``timeout_s`` or a lost connection is a transient error. One connection (with
    paho's network thread) is kept open between deliveries until ``close()``;
    ``deliver_many`` publishes the whole batch before waiting for the
    acknowledgements.
    """

    kind = "mqtt"
    fields = ("host", "port", "topic", "qos")
    # Bounds connecting, the CONNACK and each batch's wait for acknowledgements.
    timeout_s: ClassVar[float] = 10.0

    def __init__(self, config: Mapping[str, Any]) -> None:
        super().__init__(config)
        self._client: mqtt.Client | None = None
        self._protocol = MQTTProtocolVersion.MQTTv5
        # mid -> (reason code, monotonic time of the acknowledgement), filled by paho's thread.
        self._acks: dict[int, tuple[ReasonCode, float]] = {}
        # One batch at a time on the connection, so threads may share the adapter.
        self._lock = threading.Lock()

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``{kind, host, port, topic, qos}`` or raise AdapterConfigError."""
        read = cls.reader(config)
        host = read.string("host", required=True, max_length=253)
        assert host is not None
        if "://" in host or "/" in host or any(ch.isspace() for ch in host):
            raise AdapterConfigError("host", f"must be a host name or IP address, not {host!r}")
        port = read.integer("port", default=DEFAULT_PORT, minimum=1, maximum=65535)
        topic = read.string("topic", required=True)
        assert topic is not None
        if "+" in topic or "#" in topic:
            raise AdapterConfigError(
                "topic",
                f"must not contain the wildcards '+' or '#' (publish needs one topic): {topic!r}",
            )
        if "\x00" in topic or len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
            raise AdapterConfigError("topic", "must be at most 65535 bytes without NUL characters")
        qos = read.choice("qos", (0, 1, 2), default=DEFAULT_QOS)
        return {"kind": cls.kind, "host": host, "port": port, "topic": topic, "qos": qos}

    def deliver(self, body: bytes, headers: dict[str, str]) -> DeliveryResult:
        """Publish ``body`` once and wait for the broker's acknowledgement (see Adapter)."""
        [outcome] = self.deliver_many([(body, headers)])
        if isinstance(outcome, AdapterError):
            raise outcome
        return outcome

    def deliver_many(
        self, items: Iterable[tuple[bytes, dict[str, str]]]
    ) -> list[DeliveryResult | AdapterError]:
        """Publish every item on one connection, then collect each acknowledgement in order."""
        with self._lock:
            return self._publish(list(items))

    def close(self) -> None:
        """Disconnect from the broker and stop the network thread."""
        with self._lock:
            if self._client is not None:
                client, self._client = self._client, None
                client.disconnect()
                client.loop_stop()
            self._acks.clear()

    def _publish(
        self, batch: list[tuple[bytes, dict[str, str]]]
    ) -> list[DeliveryResult | AdapterError]:
        if not batch:
            return []
        try:
            client = self._connected()
        except AdapterError as error:
            return [error] + [not_attempted(error) for _ in batch[1:]]
        sent: list[tuple[mqtt.MQTTMessageInfo, float] | AdapterError] = []
        for body, headers in batch:
            try:
                info = client.publish(
                    self.config["topic"],
                    body,
                    qos=self.config["qos"],
                    properties=self._properties(headers),
                )
            except ValueError as exc:
                sent.append(AdapterError(f"{self._where()}: cannot publish: {exc}", True))
                continue
            sent.append((info, time.monotonic()))
        outcomes: list[DeliveryResult | AdapterError] = []
        stalled = False
        for item in sent:
            # Each acknowledgement gets timeout_s after the one before it; once the broker
            # stalled, the rest only count if they were acknowledged already.
            deadline = time.monotonic() + (0 if stalled else self.timeout_s)
            outcome, broken = self._outcome(client, item, deadline)
            stalled = stalled or broken
            outcomes.append(outcome)
        if stalled:
            self._drop()  # a connection that lost or stalled a publish is not trusted again
        return outcomes

    def _where(self) -> str:
        return f"MQTT {self.config['host']}:{self.config['port']} topic {self.config['topic']!r}"

    def _properties(self, headers: Mapping[str, str]) -> Properties | None:
        if self._protocol != MQTTProtocolVersion.MQTTv5:
            return None
        properties = Properties(PacketTypes.PUBLISH)
        user = []
        for name, value in headers.items():
            if name.lower() == "content-type":
                properties.ContentType = value
            else:
                user.append((name, value))
        if user:
            properties.UserProperty = user
        return properties

    def _outcome(
        self,
        client: mqtt.Client,
        item: tuple[mqtt.MQTTMessageInfo, float] | AdapterError,
        deadline: float,
    ) -> tuple[DeliveryResult | AdapterError, bool]:
        """Wait until ``deadline`` for a publish; return its outcome and whether the link broke."""
        if isinstance(item, AdapterError):
            return item, False
        info, sent_at = item
        qos = self.config["qos"]
        while info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS and not info.is_published():
            remaining = deadline - time.monotonic()
            if not client.is_connected():
                lost = AdapterError(f"{self._where()}: connection lost before the ack", False)
                return lost, True
            if remaining <= 0:
                ack = "PUBCOMP" if qos == 2 else "PUBACK"
                late = AdapterError(
                    f"{self._where()}: no {ack} within {self.timeout_s:g}s", permanent=False
                )
                return late, True
            try:
                info.wait_for_publish(min(remaining, 0.2))
            except (ValueError, RuntimeError):
                break  # paho marked it failed; info.rc says why
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            failed = AdapterError(
                f"{self._where()}: publish failed: {mqtt.error_string(info.rc)}", permanent=False
            )
            return failed, True
        reason, acked_at = self._acks.pop(info.mid, (None, time.monotonic()))
        if reason is not None and reason.is_failure:
            refused = AdapterError(
                f"{self._where()}: the broker refused the message: {reason} ({reason.value:#x})",
                permanent=reason.value not in TRANSIENT_PUBLISH_REASONS,
            )
            return refused, False
        detail = {0: "sent (qos 0)", 1: "PUBACK", 2: "PUBCOMP"}[qos]
        if reason is not None and reason.value:
            detail = f"{detail}: {reason}"  # e.g. "No matching subscribers", still a success
        if self._protocol != MQTTProtocolVersion.MQTTv5:
            detail = f"{detail}; MQTT 3.1.1 broker, headers not sent"
        return DeliveryResult(latency_ms=round((acked_at - sent_at) * 1000), detail=detail), False

    def _connected(self) -> mqtt.Client:
        """Return the open connection, connecting (MQTT 5, else 3.1.1) when there is none."""
        if self._client is not None and self._client.is_connected():
            return self._client
        self._drop()
        client, reason = self._connect(MQTTProtocolVersion.MQTTv5)
        if client is None and reason is not None and reason.value in UNSUPPORTED_PROTOCOL:
            client, reason = self._connect(MQTTProtocolVersion.MQTTv311)
        if client is None:
            raise AdapterError(
                f"{self._where()}: the broker refused the connection: {reason}",
                permanent=False,
                unreachable=True,
            )
        self._client = client
        return client

    def _connect(
        self, protocol: MQTTProtocolVersion
    ) -> tuple[mqtt.Client | None, ReasonCode | None]:
        """Connect with ``protocol``; return the client, or None and the broker's refusal."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"andon-{uuid.uuid4().hex[:16]}",
            protocol=protocol,
            reconnect_on_failure=False,  # a lost connection is reopened by the next delivery
        )
        client.connect_timeout = self.timeout_s
        answered = threading.Event()
        connack: list[ReasonCode] = []

        def on_connect(_c: Any, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
            connack.append(reason)
            answered.set()

        def on_disconnect(_c: Any, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
            connack.append(reason)
            answered.set()

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = self._on_publish
        try:
            client.connect(self.config["host"], self.config["port"], keepalive=KEEPALIVE_S)
        except OSError as exc:
            raise AdapterError(
                f"{self._where()}: could not connect: {exc}", permanent=False, unreachable=True
            ) from None
        client.loop_start()
        if not answered.wait(self.timeout_s):
            _stop(client)
            raise AdapterError(
                f"{self._where()}: no CONNACK within {self.timeout_s:g}s",
                permanent=False,
                unreachable=True,
            )
        reason = connack[0]
        if reason.is_failure or not client.is_connected():
            _stop(client)
            return None, reason
        self._protocol = protocol
        return client, reason

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _properties: Any) -> None:
        self._acks[mid] = (reason, time.monotonic())

    def _drop(self) -> None:
        """Forget the connection without waiting for the broker."""
        if self._client is not None:
            client, self._client = self._client, None
            _stop(client)
        self._acks.clear()


def _stop(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()
