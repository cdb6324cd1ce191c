"""AMQP 0-9-1 adapter: publishes the payload to an exchange with a routing key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from integrations.adapters.base import Adapter, AdapterConfigError
from integrations.adapters.http import check_url

# AMQP "short strings" (exchange names, routing keys) are at most 255 bytes.
MAX_SHORT_STRING = 255


class AmqpAdapter(Adapter):
    """Publishes the payload to ``exchange`` with ``routing_key`` on the broker at ``url``."""

    kind = "amqp"
    fields = ("url", "exchange", "routing_key")

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
