"""``python manage.py evaluate [--at ISO-8601]``: one evaluation pass of every enabled rule."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from monitors.evaluate import evaluate


def parse_at(text: str) -> datetime:
    """Parse ``--at`` (ISO-8601; no offset means UTC); raise CommandError naming it."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"--at: {text!r} is not an ISO-8601 time (like 2026-05-04T08:00:00Z)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Run one evaluation pass of every enabled rule (what the scheduler runs periodically)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--at", help="evaluate as of this ISO-8601 time instead of now (e.g. to replay)"
        )

    def handle(self, *args: Any, at: str | None = None, **options: Any) -> None:
        report = evaluate(now=parse_at(at) if at else None)
        for line in report.lines():
            self.stdout.write(line)
        if report.errors:
            names = ", ".join(result.rule for result in report.errors)
            raise CommandError(f"{len(report.errors)} rule(s) could not be evaluated: {names}")
