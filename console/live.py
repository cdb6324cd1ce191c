"""Live updates to open pages: the one helper every producer publishes through.

Producers (evaluation, acknowledgements, replay progress, ingest rates) call
:func:`publish`; websocket consumers (``console.consumers``) forward to each
browser only what its user's role and plants allow. Publishing is best effort:
a page that misses an update catches up on its next load, so it never raises.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

log = logging.getLogger(__name__)

STREAMS = ("alerts", "replays", "health")


def group_name(stream: str) -> str:
    """Return the channel-layer group of a stream."""
    return f"andon.{stream}"


def publish(stream: str, event: dict[str, Any], *, plant_id: int | None = None) -> None:
    """Send ``event`` to every open page subscribed to ``stream`` (``plant_id`` scopes it)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown live stream {stream!r}")
    layer = get_channel_layer()
    if layer is None:
        return
    message = {"type": "andon.update", "stream": stream, "plant_id": plant_id, "event": event}
    try:
        async_to_sync(layer.group_send)(group_name(stream), message)
    except Exception:  # noqa: BLE001 - live updates are best effort
        log.warning("could not publish a live %s update", stream, exc_info=True)
