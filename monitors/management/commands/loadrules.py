"""``manage.py loadrules FILE.yaml``: create or update alert rules from a rules file."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from monitors.rules import RuleError
from monitors.ruleset import apply_specs, read_rules_file

# A badly broken file can produce hundreds of messages; the first ones tell the story.
MAX_MESSAGES = 50


class Command(BaseCommand):
    help = (
        "Create or update alert rules by name from a rules YAML file (idempotent; every change "
        "is audited). An invalid file is refused whole: nothing is written."
    )

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("file", help="the rules YAML file")
        parser.add_argument(
            "--actor", default="loadrules", help="who the audit trail names (default: loadrules)"
        )
        parser.add_argument(
            "--prune",
            action="store_true",
            help="disable (never delete) the rules in the database that the file does not name",
        )

    def handle(self, *args, file: str, actor: str, prune: bool, **options) -> None:  # type: ignore[no-untyped-def]
        try:
            report = apply_specs(read_rules_file(file), actor, prune=prune)
        except RuleError as exc:
            shown = exc.messages[:MAX_MESSAGES]
            if len(exc.messages) > MAX_MESSAGES:
                shown.append(f"... and {len(exc.messages) - MAX_MESSAGES} more")
            details = "\n".join(f"  {message}" for message in shown)
            raise CommandError(f"{file}: refused, nothing was loaded:\n{details}") from None
        for line in report.lines():
            self.stdout.write(line)
