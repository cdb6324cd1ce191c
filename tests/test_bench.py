"""The bench machinery, run small: workload, the endpoints' rows, COPY baseline, server, senders.

No timing is asserted; ``python manage.py bench ingest`` is where speed is measured.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest
from django.conf import settings
from django.db import connection
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from integrations.bench import harness, ingest, workload
from integrations.ingest.events import EVENT_FIELDS
from integrations.ingest.otlp import SPAN_FIELDS
from integrations.models import Event, Plant, Span

N = 1_000


@pytest.fixture
def postgres(db) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("the bench's COPY baseline needs PostgreSQL")


@pytest.fixture
def bench_landscape(db) -> None:
    ingest.load_bench_landscape()


def run_bench_command(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "console.settings"}
    return subprocess.run(
        [sys.executable, "manage.py", "bench", "ingest", "--events", "10", "--spans", "10"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- Workload ---------------------------------------------------------------------------------


def test_it_generates_well_formed_unique_cloudevents():
    events = workload.generate_events(N, seed=7)

    assert len(events) == N
    assert len({(e["source"], e["id"]) for e in events}) == N
    flow_types = {event_type for event_type, _ in workload.WORK_ORDER_FLOW}
    for event in events:
        assert event["specversion"] == "1.0"
        assert event["type"] in flow_types
        assert event["source"] in {"/erp", "/mes/p1", "/mes/p2", "/wms/p1", "/qms/p1"}
        assert event["subject"].startswith("WO-")
        assert event["correlationid"].startswith("SO-")
        assert datetime.fromisoformat(event["time"]).tzinfo is not None
        assert isinstance(event["data"], dict) and event["data"]["order"] == event["subject"]


def test_the_same_seed_and_start_generate_the_same_events():
    start = datetime(2026, 5, 21, 6, 0, tzinfo=UTC)

    assert workload.generate_events(50, 3, start) == workload.generate_events(50, 3, start)


def test_event_bodies_hold_every_event_in_batches():
    events = workload.generate_events(N, seed=7)

    bodies = workload.event_bodies(events, 400)

    assert [len(orjson.loads(body)) for body in bodies] == [400, 400, 200]
    assert [e for body in bodies for e in orjson.loads(body)] == events


def test_it_generates_otlp_requests_of_batch_size_with_valid_ids():
    spans = workload.generate_spans(N, seed=7)

    bodies = workload.span_bodies(spans, 500)

    assert len(bodies) == 2
    identities = set()
    for body in bodies:
        request = ExportTraceServiceRequest.FromString(body)
        count = 0
        for resource_spans in request.resource_spans:
            service = {kv.key: kv.value.string_value for kv in resource_spans.resource.attributes}[
                "service.name"
            ]
            assert service in {"erp", "mes-p1", "mes-p2", "wms-p1"}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    count += 1
                    assert len(span.trace_id) == 16 and len(span.span_id) == 8
                    assert len(span.parent_span_id) in (0, 8)
                    assert span.end_time_unix_nano >= span.start_time_unix_nano > 0
                    identities.add((span.trace_id, span.span_id))
        assert count == 500
    assert len(identities) == N


# --- The rows the endpoints store and the COPY baseline ------------------------------------


def test_event_rows_are_the_endpoints_rows_attributed_to_the_landscape(bench_landscape):
    events = workload.generate_events(N, seed=7)

    fields, rows = ingest.event_rows(events)

    assert fields == tuple(EVENT_FIELDS)
    assert len(rows) == N
    assert all(len(row) == len(fields) for row in rows)
    p1 = Plant.objects.get(key="p1").pk
    plant_at = fields.index("plant")
    source_at = fields.index("source")
    assert {row[plant_at] for row in rows if row[source_at] == "/mes/p1"} == {p1}


def test_the_copy_baseline_stores_exactly_the_generated_events(postgres, bench_landscape):
    fields, rows = ingest.event_rows(workload.generate_events(N, seed=7))

    harness.copy_baseline(Event, fields, rows, batch=300)

    assert Event.objects.count() == N
    assert Event.objects.filter(subject__startswith="WO-").count() == N


def test_the_copy_baseline_stores_exactly_the_generated_spans(postgres, bench_landscape):
    bodies = workload.span_bodies(workload.generate_spans(N, seed=7), 500)

    fields, rows = ingest.span_rows(bodies)
    harness.copy_baseline(Span, fields, rows, batch=500)

    assert fields == tuple(SPAN_FIELDS)
    assert Span.objects.count() == N
    assert Span.objects.exclude(correlation_id="").count() == N
    assert not Span.objects.filter(system__isnull=True).exists()


# --- The server and the senders --------------------------------------------------------------


def test_the_server_starts_under_uvicorn_and_is_always_stopped(postgres):
    server = harness.Server(harness.free_port(), 1, harness.database_url())

    with server:
        assert server.running
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        process = server.process

    assert not server.running
    assert process is not None and process.poll() is not None
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=2).connect()


@pytest.mark.django_db(transaction=True)
def test_the_senders_post_every_batch_and_every_event_is_stored():
    if connection.vendor != "postgresql":
        pytest.skip("the bench runs on PostgreSQL")
    ingest.load_bench_landscape()
    token = ingest.issue_bench_token()
    bodies = workload.event_bodies(workload.generate_events(N, seed=7), 250)
    headers = {"Content-Type": ingest.EVENTS_CONTENT_TYPE, "Authorization": f"Bearer {token}"}

    with harness.Server(harness.free_port(), 1, harness.database_url()) as server:
        report = harness.send_all(
            server.port, "/api/v1/events", headers, bodies, 2, ingest.rejected_events
        )

    assert report.errors == []
    assert report.statuses == Counter({202: 4})
    assert report.rejected == 0
    assert report.ok
    assert harness.row_count(Event) == N


# --- The command and its verdict ---------------------------------------------------------------


def test_the_command_refuses_sqlite(tmp_path):
    result = run_bench_command(f"sqlite:///{tmp_path / 'andon.sqlite3'}")

    assert result.returncode == 1
    assert "bench needs DATABASE_URL=postgres://" in result.stderr


def test_the_command_refuses_a_database_not_named_for_benches(postgres):
    result = run_bench_command("postgres://postgres@127.0.0.1:5432/andon_production")

    assert result.returncode == 1
    assert "not named for benches" in result.stderr


def _result(**overrides) -> ingest.Result:
    values = {
        "store": "events",
        "items": 82_400,
        "stored": 82_400,
        "http_seconds": 2.0,
        "copy_seconds": 82_400 / 70_100,
        "copied": 82_400,
        "send": harness.SendReport(statuses=Counter({202: 165})),
        "ratio_target": 0.5,
    }
    return ingest.Result(**{**values, **overrides})


def test_the_verdict_line_gives_both_rates_the_ratio_and_the_target():
    assert _result().line() == (
        "ingest events: 41,200/s via HTTP vs 70,100/s raw COPY: ratio 0.59 (target >= 0.50) PASS"
    )


def test_a_span_verdict_is_judged_by_its_rate():
    result = _result(store="spans", ratio_target=None, rate_target=50_000)

    assert result.line().endswith("(target >= 50,000/s) FAIL")


def test_lost_items_fail_the_verdict_whatever_the_speed():
    result = _result(stored=82_000, http_seconds=0.1)

    assert not result.passed
    assert "stored 82,000 of 82,400 via HTTP" in result.line()


def test_error_answers_fail_the_verdict():
    report = harness.SendReport(statuses=Counter({202: 160, 400: 5}), errors=["400: b'bad'"])

    result = _result(send=report)

    assert not result.passed
    assert "5x 400" in result.line()
