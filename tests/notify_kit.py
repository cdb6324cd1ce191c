"""What the notification tests share: a real loopback receiver, contact points, policies.

The receiver is a real HTTP server on 127.0.0.1 (a thread) that records every
request and answers from a script of status codes, so the notifiers are tested
through their real outbound HTTP path.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from console import outbox
from monitors.models import ContactPoint, NotificationDelivery, RoutingPolicy
from monitors.notifiers import notifier_class
from monitors.notify import run_pass


@dataclass(frozen=True)
class Recorded:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A loopback HTTP server that records requests and answers a script of statuses."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._statuses: list[int] = [200]
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.requests.append(
                        Recorded("POST", self.path, dict(self.headers.items()), body)
                    )
                    status = (
                        receiver._statuses.pop(0)
                        if len(receiver._statuses) > 1
                        else receiver._statuses[0]
                    )
                payload = b"ok" if status < 400 else b"receiver says no"
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def answer(self, *statuses: int) -> None:
        """Answer the next requests with these statuses (the last one keeps being used)."""
        with self._lock:
            self._statuses = list(statuses)

    def url(self, path: str = "/hook") -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}{path}"

    @property
    def last(self) -> Recorded:
        return self.requests[-1]


@contextmanager
def running_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


def contact(name: str, kind: str, send_resolved: bool = True, **options: Any) -> ContactPoint:
    """Create a contact point with validated options."""
    cleaned = notifier_class(kind).clean(options)
    return ContactPoint.objects.create(
        name=name, kind=kind, options=cleaned, send_resolved=send_resolved
    )


def policy(
    name: str,
    contact_points: Iterable[ContactPoint],
    *,
    matchers: dict[str, str] | None = None,
    default: bool = False,
    group_by: Iterable[str] = ("rule", "plant"),
    wait: float = 0.0,
    interval: float = 300.0,
    repeat: float = 3600.0,
    escalate_after: float | None = None,
    escalate_to: Iterable[ContactPoint] = (),
    position: int = 0,
    cont: bool = False,
) -> RoutingPolicy:
    """Create a routing policy (``matchers`` as label equalities)."""
    created = RoutingPolicy.objects.create(
        name=name,
        is_default=default,
        position=position,
        matchers=[{"name": k, "value": v, "is_regex": False} for k, v in (matchers or {}).items()],
        group_by=list(group_by),
        group_wait_s=wait,
        group_interval_s=interval,
        repeat_interval_s=repeat,
        continue_matching=cont,
        escalate_after_s=escalate_after,
    )
    created.contact_points.set(list(contact_points))
    created.escalate_to.set(list(escalate_to))
    return created


def deliver_due() -> list[str]:
    """Run every due outbox task now (what a worker would do); return their outcomes."""
    return [outbox.run(task_id) for task_id in outbox.due()]


def notify(now: datetime) -> list[NotificationDelivery]:
    """Run a notification pass at ``now``; return the deliveries it queued (oldest first)."""
    before = set(NotificationDelivery.objects.values_list("id", flat=True))
    run_pass(now)
    return list(
        NotificationDelivery.objects.exclude(id__in=before)
        .select_related("contact_point")
        .order_by("id")
    )
