"""``manage.py testrules FILE.yaml``: run rule unit tests against an empty in-memory world."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from monitors.testing import RuleTestError, in_memory_database, read_test_file, run_suite

# Set in the child process, so that it never re-executes itself again.
CHILD_FLAG = "ANDON_TESTRULES_CHILD"


class Command(BaseCommand):
    help = (
        "Run rule unit tests (CONTRACT 'Rule tests file') on a simulated clock against an empty "
        "in-memory database. Exit 0 when all pass, 1 with a readable diff when not."
    )

    def add_arguments(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("file", help="the rule tests YAML file")

    def handle(self, *args, file: str, **options) -> None:  # type: ignore[no-untyped-def]
        if not in_memory_database():
            # Never touch a real database: run in a child process on a fresh in-memory one.
            if os.environ.get(CHILD_FLAG):
                raise CommandError("testrules needs DATABASE_URL=sqlite://:memory:")
            self._run_child(file)
            return
        try:
            suite = read_test_file(file)
            call_command("migrate", interactive=False, verbosity=0)
            result = run_suite(suite)
        except RuleTestError as exc:
            details = "\n".join(f"  {message}" for message in exc.messages)
            raise CommandError(f"{file}: refused, no test was run:\n{details}") from None
        for line in result.lines():
            self.stdout.write(line)
        if not result.passed:
            failed = sum(not r.passed for r in result.results)
            raise CommandError(f"{failed} of {len(result.results)} rule tests failed")

    def _run_child(self, file: str) -> None:
        env = {
            **os.environ,
            "DATABASE_URL": "sqlite://:memory:",
            # Empty, not absent: the test settings would otherwise find a local Redis.
            "REDIS_URL": "",
            CHILD_FLAG: "1",
        }
        manage = Path(settings.BASE_DIR) / "manage.py"
        child = subprocess.run(  # noqa: S603 -- our own interpreter and manage.py
            [sys.executable, str(manage), "testrules", str(Path(file).resolve())],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if child.stdout:
            self.stdout.write(child.stdout, ending="")
        # The child's own failure is its last "CommandError: ..." (maybe several lines long);
        # whatever it logged before (a rule that could not be evaluated) is passed on as is.
        logged, marker, message = child.stderr.rpartition("CommandError: ")
        if not marker:
            logged, message = child.stderr, ""
        if logged.strip():
            self.stderr.write(logged, ending="")
        if child.returncode != 0:
            raise CommandError(
                message.strip() or f"testrules exited with status {child.returncode}"
            )
