"""``manage.py loadlandscape FILE.yaml``: create or update plants, systems and connectors."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from integrations.landscape import LandscapeError, load_landscape, read_landscape_file

# A badly broken file can produce hundreds of messages; the first ones tell the story.
MAX_MESSAGES = 50


class Command(BaseCommand):
    help = (
        "Create or update plants, systems and connectors from a landscape YAML file "
        "(idempotent). An invalid file is refused whole: nothing is written."
    )

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("file", help="the landscape YAML file")
        parser.add_argument(
            "--check",
            action="store_true",
            help="validate the file and report what would change, writing nothing",
        )

    def handle(self, *args, file: str, check: bool, **options) -> None:  # type: ignore[no-untyped-def]
        try:
            report = load_landscape(read_landscape_file(file), dry_run=check)
        except LandscapeError as exc:
            shown = exc.messages[:MAX_MESSAGES]
            if len(exc.messages) > MAX_MESSAGES:
                shown.append(f"... and {len(exc.messages) - MAX_MESSAGES} more")
            details = "\n".join(f"  {message}" for message in shown)
            raise CommandError(f"{file}: refused, nothing was loaded:\n{details}") from None
        for line in report.lines():
            self.stdout.write(line)
