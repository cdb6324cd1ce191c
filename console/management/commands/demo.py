"""``python manage.py demo``: the embedded default in one command (see console.demo)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from console import demo


class Command(BaseCommand):
    help = (
        "Migrate, load the demo plant landscape, rules and logins, and serve the console with "
        "local targets and a traffic simulator that injects the faults the rules exist for."
    )

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--no-serve", action="store_true", help="set everything up, print the logins and exit"
        )
        parser.add_argument(
            "--speed",
            type=float,
            default=1.0,
            help="pace of the live traffic and fault schedule (2 = twice as fast; default 1)",
        )
        parser.add_argument(
            "--no-simulate", action="store_true", help="serve without simulated traffic"
        )
        parser.add_argument("--seed", type=int, help="make the simulator's choices repeatable")
        parser.add_argument(
            "--targets-port",
            type=int,
            default=9100,
            help="port of the local receiving systems (0: any free port; adapters follow it)",
        )
        parser.add_argument(
            "--no-mqtt", action="store_true", help="play MQTT deliveries in-process, not via 1883"
        )
        parser.add_argument(
            "--external-workers",
            action="store_true",
            help="a Celery worker and beat run beside the demo: no scheduler or outbox thread",
        )

    def handle(self, *args, host: str, port: int, no_serve: bool, **options) -> None:  # type: ignore[no-untyped-def]
        if options["speed"] <= 0:
            raise CommandError("--speed must be above zero")
        logins = demo.prepare(self.stdout)
        for login in logins:
            self.stdout.write(f"login: {login.username} / {login.password} ({login.role})")
        if no_serve:
            return
        settings = demo.Options(
            speed=options["speed"],
            simulate=not options["no_simulate"],
            seed=options["seed"],
            targets_port=options["targets_port"],
            mqtt=not options["no_mqtt"],
            external_workers=options["external_workers"],
        )
        try:
            demo.serve(host, port, settings, self.stdout)
        except KeyboardInterrupt:
            pass  # Ctrl-C or SIGTERM: serve() has stopped everything
        self.stdout.write("demo stopped")
