"""MQTT adapter: publishes the payload to one topic of a broker."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from integrations.adapters.base import Adapter, AdapterConfigError

DEFAULT_PORT = 1883
DEFAULT_QOS = 1
MAX_TOPIC_BYTES = 65535


class MqttAdapter(Adapter):
    """Publishes the payload to ``topic`` on the broker at ``host:port`` with ``qos``."""

    kind = "mqtt"
    fields = ("host", "port", "topic", "qos")

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
