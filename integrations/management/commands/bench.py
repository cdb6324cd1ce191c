"""``python manage.py bench ingest``: measure Andon against a real server and PostgreSQL.

Run it on a database of its own (created and migrated when missing; its stores
are truncated)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/andon_bench python manage.py bench ingest
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.bench import ingest
from integrations.bench.harness import BenchError, usage


class Command(BaseCommand):
    help = f"Run a benchmark on PostgreSQL, e.g. {usage('ingest')}"

    def add_arguments(self, parser: CommandParser) -> None:
        benches = parser.add_subparsers(dest="bench", metavar="BENCH", required=True)
        sub = benches.add_parser(
            "ingest", help="HTTP ingest of events and spans through uvicorn vs raw COPY"
        )
        defaults = ingest.IngestOptions()
        sub.add_argument("--events", type=int, default=defaults.events, help="events to send")
        sub.add_argument("--spans", type=int, default=defaults.spans, help="spans to send")
        sub.add_argument("--batch", type=int, default=defaults.batch, help="items per request")
        sub.add_argument("--senders", type=int, default=defaults.senders, help="sender processes")
        sub.add_argument("--workers", type=int, default=defaults.workers, help="uvicorn workers")
        sub.add_argument("--port", type=int, default=None, help="server port (default: free)")
        sub.add_argument("--seed", type=int, default=defaults.seed, help="workload seed")

    def handle(self, *args: Any, **options: Any) -> None:
        bench_options = ingest.IngestOptions(
            **{f.name: options[f.name] for f in fields(ingest.IngestOptions)}
        )
        for name in ("batch", "senders", "workers"):
            if getattr(bench_options, name) < 1:
                raise CommandError(f"--{name} must be at least 1")
        if bench_options.events < 0 or bench_options.spans < 0:
            raise CommandError("--events and --spans must not be negative")
        try:
            results = ingest.run(bench_options, self.stdout)
        except BenchError as exc:
            raise CommandError(str(exc)) from None
        if not all(result.passed for result in results):
            raise CommandError("the ingest bench missed a target (see above)")
