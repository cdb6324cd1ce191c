"""Adapters re-deliver captured payloads to a connector's target (see ``base.Adapter``).

A connector's ``adapter`` config names its kind (``{"kind": "http", ...}``);
``validate_adapter_config`` checks and normalises it. ``build_adapter`` makes a
fresh adapter for a config, ``get_adapter`` returns the one this thread keeps open
for it (``close_adapters`` releases them); outbound HTTP itself goes through
``integrations.outbound``. ``validate_replay_policy`` checks and normalises a
connector's replay policy, which governs how the replay workflow drives an adapter.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from typing import Any

from integrations.adapters.amqp import AmqpAdapter
from integrations.adapters.base import (
    Adapter,
    AdapterConfigError,
    AdapterError,
    ConfigError,
    ConfigReader,
    DeliveryResult,
    type_name,
)
from integrations.adapters.http import HttpAdapter
from integrations.adapters.mqtt import MqttAdapter

__all__ = [
    "ADAPTERS",
    "REPLAY_FIELDS",
    "Adapter",
    "AdapterConfigError",
    "AdapterError",
    "AmqpAdapter",
    "ConfigError",
    "ConfigReader",
    "DeliveryResult",
    "HttpAdapter",
    "MqttAdapter",
    "build_adapter",
    "close_adapters",
    "get_adapter",
    "type_name",
    "validate_adapter_config",
    "validate_replay_policy",
]

ADAPTERS: dict[str, type[Adapter]] = {
    "http": HttpAdapter,
    "mqtt": MqttAdapter,
    "amqp": AmqpAdapter,
}

REPLAY_FIELDS = ("max_attempts", "backoff_s", "rate_per_s", "approval_above")

# Adapters hold connections that are neither thread- nor fork-safe (paho, pika), so
# the cache is per thread and forgotten in a forked child.
_cache = threading.local()


def validate_adapter_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Return a connector's adapter config normalised, or raise AdapterConfigError."""
    if not isinstance(config, Mapping):
        raise AdapterConfigError("", f"must be a mapping with a kind, not {type_name(config)}")
    kind = config.get("kind")
    valid = ", ".join(ADAPTERS)
    if kind is None:
        raise AdapterConfigError("kind", f"is required (one of {valid})")
    if not isinstance(kind, str) or kind not in ADAPTERS:
        raise AdapterConfigError("kind", f"unknown adapter kind {kind!r} (valid kinds: {valid})")
    return ADAPTERS[kind].validate_config(config)


def build_adapter(config: Mapping[str, Any]) -> Adapter:
    """Return the adapter a connector's config selects, its config validated."""
    normalised = validate_adapter_config(config)
    return ADAPTERS[normalised["kind"]](normalised)


def get_adapter(config: Mapping[str, Any]) -> Adapter:
    """Return this thread's adapter for ``config``, built on first use and kept open.

    Two configs that normalise alike share an adapter. ``close_adapters`` releases
    them all.
    """
    normalised = validate_adapter_config(config)
    adapters = _thread_adapters()
    key = json.dumps(normalised, sort_keys=True)
    adapter = adapters.get(key)
    if adapter is None:
        adapter = adapters[key] = ADAPTERS[normalised["kind"]](normalised)
    return adapter


def close_adapters() -> None:
    """Close and forget every adapter ``get_adapter`` kept for this thread."""
    adapters = _thread_adapters()
    while adapters:
        _, adapter = adapters.popitem()
        adapter.close()


def _thread_adapters() -> dict[str, Adapter]:
    if getattr(_cache, "pid", None) != os.getpid():
        _cache.adapters, _cache.pid = {}, os.getpid()
    return _cache.adapters


def validate_replay_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    """Return a replay policy with defaults filled in, or raise ConfigError naming the field.

    ``max_attempts`` (1..100, default 5) caps deliveries per message,
    ``backoff_s`` (>= 0, default 30) is the wait before a retry, ``rate_per_s``
    (> 0, default 10) caps deliveries per second of one replay job, and the
    optional ``approval_above`` is the bulk size above which a second admin must
    approve the job.
    """
    if not isinstance(policy, Mapping):
        raise ConfigError("", f"must be a mapping, not {type_name(policy)}")
    read = ConfigReader(policy)
    read.reject_unknown(REPLAY_FIELDS)
    normalised: dict[str, Any] = {
        "max_attempts": read.integer("max_attempts", default=5, minimum=1, maximum=100),
        "backoff_s": read.number("backoff_s", default=30, minimum=0),
        "rate_per_s": read.number("rate_per_s", default=10, above=0),
    }
    approval_above = read.integer("approval_above", minimum=1)
    if approval_above is not None:
        normalised["approval_above"] = approval_above
    return normalised
