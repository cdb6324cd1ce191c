"""The live-updates websocket: one multiplexing endpoint, ``/ws/live/?streams=alerts,health``.

The user is the Django session's (``AuthMiddlewareStack``); the principal is
computed once when the socket opens and every event is filtered for it before
it is sent (see ``console.live`` for what producers mark). A refused socket is
accepted and closed at once with a code, because a refused handshake reaches
a browser only as 1006 and it could not tell "log in" from "network down":

- 4401: not logged in;
- 4403: the account has no Andon role (viewer, operator or admin);
- 4400: the request names an unknown stream.

Frames sent: ``{"type": "hello", "streams": [...], "role": ..., "plants": [...]}``
once, then ``{"type": "event", "stream": ..., "event": {...}}`` per visible event;
an ``{"type": "error", "code": ..., "message": ...}`` frame precedes a refusal.
The client may send ``{"type": "ping"}`` and gets ``{"type": "pong"}``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from console import live
from console.auth import Principal, principal_for_user

CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


def parse_streams(query_string: bytes) -> tuple[str, ...]:
    """Return the streams a query string asks for (all of them when it names none).

    Raises ValueError naming an unknown stream.
    """
    params = parse_qs(query_string.decode("latin-1"))
    names: list[str] = []
    for value in params.get("streams", []):
        names.extend(name.strip() for name in value.split(",") if name.strip())
    if not names:
        return live.STREAMS
    for name in names:
        if name not in live.STREAMS:
            raise ValueError(
                f"streams: unknown stream {name[:40]!r}; choose from {', '.join(live.STREAMS)}"
            )
    return tuple(dict.fromkeys(names))


def _strip_admin(principal: Principal, row: dict[str, Any]) -> dict[str, Any]:
    if principal.is_admin or live.ADMIN_KEY not in row:
        return row
    return {key: value for key, value in row.items() if key != live.ADMIN_KEY}


def _visible_row(principal: Principal, row: Any) -> bool:
    return (
        not isinstance(row, dict) or "plant_id" not in row or principal.sees_plant(row["plant_id"])
    )


def visible_event(principal: Principal, item: dict[str, Any]) -> dict[str, Any] | None:
    """Return what ``principal`` may see of a published item, None when nothing.

    A scoped item needs its plant to be visible; admin-only details go for
    non-admins; list rows of other plants are dropped.
    """
    if item.get("scoped") and not principal.sees_plant(item.get("plant_id")):
        return None
    event = _strip_admin(principal, item["event"])
    shown: dict[str, Any] = {}
    for key, value in event.items():
        if isinstance(value, list):
            value = [
                _strip_admin(principal, row) if isinstance(row, dict) else row
                for row in value
                if _visible_row(principal, row)
            ]
        shown[key] = value
    return shown


class LiveConsumer(AsyncJsonWebsocketConsumer):
    """Forwards the requested streams' events that the user's role and plants allow."""

    principal: Principal | None = None
    streams: tuple[str, ...] = ()

    async def connect(self) -> None:
        """Authenticate by session, join the requested streams' groups, say hello."""
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.refuse(CLOSE_UNAUTHENTICATED, "log in to receive live updates")
            return
        principal = await database_sync_to_async(principal_for_user)(user)
        if principal is None or not principal.may_read():
            await self.refuse(
                CLOSE_FORBIDDEN, "your account has no Andon role (viewer, operator or admin)"
            )
            return
        try:
            streams = parse_streams(self.scope.get("query_string", b""))
        except ValueError as exc:
            await self.refuse(CLOSE_BAD_REQUEST, str(exc))
            return
        self.principal = principal
        live.attach_loop(asyncio.get_running_loop())
        for stream in streams:
            await self.channel_layer.group_add(live.group_name(stream), self.channel_name)
        self.streams = streams
        live.listening(streams, +1)
        await self.send_json(
            {
                "type": "hello",
                "streams": list(streams),
                "role": principal.role,
                "plants": sorted(principal.plant_keys),
            }
        )
        if "health" in streams and not settings.REDIS_URL:
            # The embedded default: no beat, so this process publishes its own health.
            live.embedded_health().start()

    async def refuse(self, code: int, message: str) -> None:
        """Tell the client why, then close with ``code``."""
        await self.send_json({"type": "error", "code": code, "message": message})
        await self.close(code=code, reason=message[:120])

    async def disconnect(self, code: int) -> None:
        """Leave the groups joined at connect."""
        streams, self.streams = self.streams, ()
        if not streams:
            return
        live.listening(streams, -1)
        for stream in streams:
            await self.channel_layer.group_discard(live.group_name(stream), self.channel_name)

    @classmethod
    async def decode_json(cls, text_data: str) -> Any:
        """Parse a client frame; anything but JSON is ignored rather than closing the socket."""
        try:
            return json.loads(text_data)
        except ValueError:
            return None

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        """Answer a ping; the socket carries nothing else from the client."""
        if isinstance(content, dict) and content.get("type") == "ping":
            await self.send_json({"type": "pong"})

    async def andon_update(self, message: dict[str, Any]) -> None:
        """Forward the published events this principal may see (``andon.update``)."""
        principal = self.principal
        stream = message.get("stream")
        if principal is None or stream not in self.streams:
            return
        for item in message.get("items", ()):
            event = visible_event(principal, item)
            if event is not None:
                await self.send_json({"type": "event", "stream": stream, "event": event})
