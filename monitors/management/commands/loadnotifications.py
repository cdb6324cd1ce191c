"""``manage.py loadnotifications FILE.yaml``: load contact points and routing policies."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from monitors.notifyconfig import NotificationConfigError, apply, read_file


class Command(BaseCommand):
    help = (
        "Create or update notification contact points by name and replace the routing policies "
        "from a YAML file. An invalid file is refused whole: nothing is written."
    )

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("file", help="the notifications YAML file")

    def handle(self, *args, file: str, **options) -> None:  # type: ignore[no-untyped-def]
        try:
            report = apply(read_file(file))
        except NotificationConfigError as exc:
            details = "\n".join(f"  {message}" for message in exc.messages)
            raise CommandError(f"{file}: refused, nothing was loaded:\n{details}") from None
        for line in report.lines():
            self.stdout.write(line)
