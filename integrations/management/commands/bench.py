"""``python manage.py bench ingest|correlate``: measure Andon against PostgreSQL.

Run it on a database of its own (created and migrated when missing; its stores
are truncated)::

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/andon_bench python manage.py bench ingest
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/andon_bench python manage.py bench correlate
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from integrations.bench import correlate, ingest
from integrations.bench import dashboards as dashboards_bench
from integrations.bench import evaluate as evaluate_bench
from integrations.bench import replay as replay_bench
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

        sub = benches.add_parser(
            "correlate",
            help="correlation API over 5M seeded items vs the bare indexed lookup; explorer pages",
        )
        chains = correlate.CorrelateOptions()
        sub.add_argument(
            "--work-orders",
            type=int,
            default=chains.work_orders,
            help="work-order chains to seed (4 events, 4 spans, 2 messages each)",
        )
        sub.add_argument("--keys", type=int, default=chains.keys, help="random keys to look up")
        sub.add_argument(
            "--explorer-runs", type=int, default=chains.explorer_runs, help="requests per page"
        )
        sub.add_argument("--reseed", action="store_true", help="seed again even if in place")
        sub.add_argument("--seed", type=int, default=chains.seed, help="workload seed")
        evaluate_bench.add_parser(benches)
        replay_bench.add_parser(benches)
        dashboards_bench.add_parser(benches)

    def handle(self, *args: Any, **options: Any) -> None:
        if options["bench"] == "evaluate":
            evaluate_bench.command(options, self.stdout)
            return
        if options["bench"] == "replay":
            replay_bench.command(options, self.stdout)
            return
        if options["bench"] == "dashboards":
            dashboards_bench.command(options, self.stdout)
            return
        if options["bench"] == "correlate":
            self.correlate(options)
            return
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

    def correlate(self, options: dict[str, Any]) -> None:
        """Run ``bench correlate``; exit 1 when a target is missed."""
        bench_options = correlate.CorrelateOptions(
            **{f.name: options[f.name] for f in fields(correlate.CorrelateOptions)}
        )
        for name in ("work_orders", "keys", "explorer_runs"):
            if getattr(bench_options, name) < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
        try:
            api, explorer = correlate.run(bench_options, self.stdout)
        except BenchError as exc:
            raise CommandError(str(exc)) from None
        if not api.passed or not explorer.passed:
            raise CommandError("the correlate bench missed a target (see above)")
