"""``python manage.py demo``: the embedded default in one command (see console.demo)."""

from __future__ import annotations

from django.core.management.base import BaseCommand

from console import demo


class Command(BaseCommand):
    help = "Migrate, load the demo plant landscape, create demo logins and serve the console."

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--no-serve", action="store_true", help="set everything up, print the logins and exit"
        )

    def handle(self, *args, host: str, port: int, no_serve: bool, **options) -> None:  # type: ignore[no-untyped-def]
        logins = demo.prepare(self.stdout)
        for login in logins:
            self.stdout.write(f"login: {login.username} / {login.password} ({login.role})")
        if no_serve:
            return
        self.stdout.write(f"Andon console on http://{host}:{port}/  (Ctrl-C to stop)")
        demo.serve(host, port)
