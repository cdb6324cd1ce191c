"""The embedded demo: one process, SQLite by default, no Redis needed.

``python manage.py demo`` prepares the database (landscape, rules, notification
routing when present, logins), then serves the console with, in the same
process: the rule scheduler and the outbox worker (threads), the local targets
that play the receiving systems (``integrations.targets``) and the traffic
simulator (``integrations.simulator``), which posts through the console's own
ingest endpoints over HTTP with an ingest token of its own.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management import call_command, get_commands
from django.core.management.base import CommandError
from django.db import transaction
from django.utils import timezone

from console.models import ApiToken, Role

if TYPE_CHECKING:
    from console.outbox import EmbeddedWorker
    from integrations.simulator import AndonClient, Simulator
    from integrations.targets import Targets
    from monitors.scheduler import Scheduler

log = logging.getLogger(__name__)

DEMO_LANDSCAPE = Path(settings.BASE_DIR) / "integrations" / "fixtures" / "demo_landscape.yaml"
DEMO_RULES = Path(settings.BASE_DIR) / "monitors" / "fixtures" / "demo_rules.yaml"
DEMO_NOTIFICATIONS = Path(settings.BASE_DIR) / "monitors" / "fixtures" / "demo_notifications.yaml"
SIMULATOR_TOKEN_NAME = "demo-simulator"
MQTT_BROKER = ("127.0.0.1", 1883)


@dataclass(frozen=True)
class Login:
    username: str
    password: str
    role: str


@dataclass(frozen=True)
class Options:
    """How the demo runs (the command's flags)."""

    speed: float = 1.0
    simulate: bool = True
    seed: int | None = None
    targets_port: int = 9100
    mqtt: bool = True
    # A Celery worker and beat run beside the demo: no scheduler or outbox thread here.
    external_workers: bool = False


def prepare(out: TextIO) -> list[Login]:
    """Migrate, load the demo landscape, rules and routing, and (re)create the demo logins."""
    call_command("migrate", interactive=False, verbosity=0)
    call_command("loadlandscape", str(DEMO_LANDSCAPE), stdout=out)
    call_command("loadrules", str(DEMO_RULES), "--actor", "demo", stdout=out)
    load_notifications(out)
    return ensure_logins()


def load_notifications(out: TextIO) -> bool:
    """Load the demo's notification routing when the project has it; False when it has not."""
    if not DEMO_NOTIFICATIONS.exists() or "loadnotifications" not in get_commands():
        return False
    try:
        call_command("loadnotifications", str(DEMO_NOTIFICATIONS), stdout=out)
    except CommandError as exc:
        out.write(f"notification routing not loaded: {exc}\n")
        return False
    return True


@transaction.atomic
def ensure_logins() -> list[Login]:
    """Create or reset the demo admin and operator; passwords from the environment or fresh."""
    logins = []
    for username, role in (("admin", "admin"), ("operator", "operator")):
        password = os.environ.get(
            f"ANDON_DEMO_{username.upper()}_PASSWORD"
        ) or secrets.token_urlsafe(9)
        user, _ = User.objects.get_or_create(username=username)
        user.set_password(password)
        user.is_staff = role == "admin"
        user.is_superuser = role == "admin"
        user.save()
        user.groups.set([Group.objects.get(name=role)])
        logins.append(Login(username, password, role))
    return logins


@transaction.atomic
def simulator_token() -> str:
    """Revoke the previous run's simulator token and return a fresh ingest token."""
    ApiToken.objects.active().filter(name=SIMULATOR_TOKEN_NAME).update(revoked_at=timezone.now())
    _, raw = ApiToken.issue(SIMULATOR_TOKEN_NAME, Role.INGEST)
    return raw


def first_number() -> int:
    """Return where this run's business numbers start, past every earlier run's.

    Each earlier work order, lot or shipment number came with at least one stored
    event, so numbering from the event count never reuses one: a reused number
    would make this run's acknowledgements duplicates of an earlier run's.
    """
    from integrations.models import Event

    return 100_000 + Event.objects.count()


def client_host(host: str) -> str:
    """Return the address a local client reaches a server bound to ``host`` at."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        return "127.0.0.1"
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


class DemoPlant:
    """The living parts of the demo beside the web server: targets, workers, simulator."""

    def __init__(self, base_url: str, options: Options, out: TextIO) -> None:
        self.base_url = base_url
        self.options = options
        self.out = out
        self.client: AndonClient | None = None
        self.targets: Targets | None = None
        self.simulator: Simulator | None = None
        self.scheduler: Scheduler | None = None
        self.worker: EmbeddedWorker | None = None
        self.mqtt = False

    def start(self) -> None:
        """Start the targets, the embedded workers and (unless disabled) the simulator."""
        from integrations.simulator import AndonClient, Simulator, links_from_db
        from integrations.targets import Targets, reachable, retarget_adapters

        client = self.client = AndonClient(self.base_url, simulator_token())
        targets = Targets(client, port=self.options.targets_port, speed=self.options.speed)
        try:
            self.targets = targets.start()
        except OSError as exc:
            self._say(
                f"warning: the demo targets cannot listen on 127.0.0.1:"
                f"{self.options.targets_port} ({exc}); deliveries and replays to them will fail. "
                "Is another demo running? Try --targets-port 0."
            )
        if self.targets is not None:
            if retarget_adapters(self.targets.port):
                self._say(f"adapters and contact points now point at {self.targets.url}")
            if self.options.mqtt and reachable(*MQTT_BROKER):
                self.mqtt = self.targets.start_mqtt(*MQTT_BROKER)
            topics = f" and MQTT topics on {MQTT_BROKER[0]}:{MQTT_BROKER[1]}" if self.mqtt else ""
            self._say(f"receiving systems (targets) on {self.targets.url}{topics}")
        self._start_workers()
        if not self.options.simulate:
            return
        self.simulator = Simulator(
            client,
            links_from_db(),
            self.targets,
            speed=self.options.speed,
            seed=self.options.seed,
            id_base=first_number(),
            mqtt=MQTT_BROKER if self.mqtt else None,
            on_backfilled=self._wake_scheduler,
        )
        if self.targets is not None:
            self.targets.listener = self.simulator.on_delivery
        self.simulator.start()

    def _start_workers(self) -> None:
        if self.options.external_workers:
            self._say("rules and outbox work are left to a Celery worker and beat")
            return
        from console.outbox import embedded_worker
        from monitors.scheduler import start_embedded

        if settings.REDIS_URL:
            self._say(
                "REDIS_URL is set: this process still evaluates rules and runs outbox work; "
                "pass --external-workers when a Celery worker and beat run beside it"
            )
        self.scheduler = start_embedded()
        self.worker = embedded_worker()
        self.worker.start()

    def _wake_scheduler(self) -> None:
        from monitors.scheduler import wake

        wake()

    def tour(self) -> list[str]:
        """Return the printed tour of what to look at and when."""
        if self.simulator is None:
            return ["No traffic is simulated (--no-simulate): post your own to the ingest API."]
        return self.simulator.plan.tour(self.base_url)

    def stop(self) -> None:
        """Stop the simulator, the targets and the workers (each within a few seconds)."""
        for name, part in (("simulator", self.simulator), ("targets", self.targets)):
            if part is None:
                continue
            try:
                part.stop()
            except Exception:  # noqa: BLE001 - stop the rest anyway
                log.exception("could not stop the demo %s", name)
        if self.client is not None:
            self.client.close()
        if self.worker is not None:
            self.worker.stop()
        if self.scheduler is not None:
            self.scheduler.stop(timeout=5)

    def _say(self, line: str) -> None:
        self.out.write(line + "\n")
        self.out.flush()


def serve(host: str, port: int, options: Options | None = None, out: TextIO | None = None) -> None:
    """Serve the ASGI console in this process, with the living plant beside it, until stopped.

    Without Redis there is no Celery beat or worker, so the rule scheduler and
    the outbox worker run as threads of this process (with Redis too, unless
    ``external_workers``: running both is safe, claims and rule locks see to it).
    Ctrl-C or SIGTERM stops the server, then the simulator, targets and workers.
    """
    import uvicorn

    options = options or Options()
    out = out or sys.stdout
    base_url = f"http://{client_host(host)}:{port}"
    plant = DemoPlant(base_url, options, out)
    # SIGTERM stops like Ctrl-C: uvicorn shuts down, then re-raises it into this handler.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        plant.start()
        out.write(f"Andon console on http://{host}:{port}/  (Ctrl-C to stop)\n")
        for line in plant.tour():
            out.write(line + "\n")
        out.flush()
        uvicorn.run("console.asgi:application", host=host, port=port, log_level="warning")
    finally:
        plant.stop()
