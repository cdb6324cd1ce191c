"""``manage.py exportrules [--output FILE]``: write every rule as a rules file."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from monitors.models import Rule
from monitors.ruleset import export_yaml


class Command(BaseCommand):
    help = "Write every alert rule as a rules YAML file that loadrules reads back unchanged."

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--output", "-o", help="write to this file instead of stdout")

    def handle(self, *args, output: str | None, **options) -> None:  # type: ignore[no-untyped-def]
        text = export_yaml()
        if output is None:
            self.stdout.write(text, ending="")
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"{output}: cannot be written ({exc.strerror})") from None
        self.stderr.write(f"wrote {Rule.objects.count()} rules to {output}")
