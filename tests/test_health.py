"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

import re

import pytest
from django.db import connection, connections

from console import metrics
from integrations.models import Connector, Event

SAMPLE_LINE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*\})? (-?[0-9.e+-]+|\+Inf|-Inf|NaN)$'
)


def scrape(client) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return response.content.decode()


def samples(text: str) -> dict[str, float]:
    """Return ``{'name{labels}': value}`` of an exposition's sample lines."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            found[series] = float(value)
    return found


@pytest.fixture
def database_down():
    """Point new connections of the default database at a closed port (or a missing file).

    Readiness probes open their own connection, so the test's connection stays usable.
    """
    conf = connections["default"].settings_dict
    saved = dict(conf)
    if connection.vendor == "postgresql":
        conf["PORT"] = "1"
    else:
        conf["NAME"] = "/nonexistent-andon-dir/andon.sqlite3"
    yield
    conf.clear()
    conf.update(saved)


# --- /healthz ----------------------------------------------------------------------------------


def test_healthz_answers_ok_without_touching_the_database(client):
    # No db fixture: pytest-django fails any query made here.
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_healthz_only_answers_reads(client):
    assert client.post("/healthz").status_code == 405


# --- /readyz -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_readyz_answers_ready_when_the_database_and_redis_answer(client, settings):
    response = client.get("/readyz")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] == ("ok" if settings.REDIS_URL else "not configured")


@pytest.mark.django_db
def test_readyz_does_not_need_redis_when_none_is_configured(client, settings):
    settings.REDIS_URL = ""

    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "redis": "not configured"}


@pytest.mark.django_db
def test_readyz_names_redis_when_it_does_not_answer(client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"

    response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error: ")


@pytest.mark.django_db
def test_readyz_names_the_database_when_it_does_not_answer(client, settings, database_down):
    settings.REDIS_URL = ""

    response = client.get("/readyz")

    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"].startswith("error: ")
    assert body["checks"]["redis"] == "not configured"


def test_readyz_needs_no_token(client, db):
    response = client.get("/readyz", HTTP_AUTHORIZATION="Bearer not-a-token")

    assert response.status_code == 200


# --- /metrics ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_metrics_exposes_ingest_counters_by_endpoint_and_status(client):
    metrics.record_ingest("events", 202, 0.03, accepted=498, duplicates=1, rejected=1)
    metrics.record_ingest("events", 202, 0.02, accepted=500, duplicates=0, rejected=0)
    metrics.record_ingest("traces", 400, 0.004, accepted=0, duplicates=0, rejected=7)

    values = samples(scrape(client))

    assert values['andon_ingest_requests_total{endpoint="events",status="202"}'] == 2
    assert values['andon_ingest_requests_total{endpoint="traces",status="400"}'] == 1
    assert values['andon_ingest_items_total{endpoint="events",outcome="accepted"}'] == 998
    assert values['andon_ingest_items_total{endpoint="events",outcome="duplicate"}'] == 1
    assert values['andon_ingest_items_total{endpoint="traces",outcome="rejected"}'] == 7


@pytest.mark.django_db
def test_metrics_declares_help_and_type_once_per_family(client):
    metrics.record_ingest("events", 202, 0.03, 1, 0, 0)
    metrics.record_ingest("messages", 202, 0.03, 1, 0, 0)

    text = scrape(client)

    for family, kind in (
        ("andon_ingest_requests_total", "counter"),
        ("andon_ingest_items_total", "counter"),
        ("andon_request_duration_seconds", "histogram"),
        ("andon_store_rows", "gauge"),
        ("andon_connectors", "gauge"),
        ("andon_up", "gauge"),
    ):
        assert text.count(f"# TYPE {family} ") == 1, family
        assert f"# TYPE {family} {kind}\n" in text
        assert text.count(f"# HELP {family} ") == 1, family


@pytest.mark.django_db
def test_metrics_lines_follow_the_text_format(client):
    metrics.record_ingest('odd"endpoint', 202, 0.03, 1, 0, 0)

    text = scrape(client)

    assert text.endswith("\n")
    for line in text.splitlines():
        if not line.startswith("#"):
            assert SAMPLE_LINE.match(line), line


@pytest.mark.django_db
def test_metrics_histogram_lists_every_bucket_in_order_ending_with_inf(client):
    metrics.record_ingest("events", 202, 0.03, 1, 0, 0)
    metrics.record_ingest("events", 202, 3.0, 1, 0, 0)

    text = scrape(client)

    bucket_lines = [
        line
        for line in text.splitlines()
        if line.startswith('andon_request_duration_seconds_bucket{endpoint="events"')
    ]
    bounds = [re.search(r'le="([^"]+)"', line)[1] for line in bucket_lines]
    assert bounds == [str(b) for b in metrics.LATENCY_BUCKETS] + ["+Inf"]
    counts = [float(line.rsplit(" ", 1)[1]) for line in bucket_lines]
    assert counts == sorted(counts), "buckets are cumulative"
    values = samples(text)
    assert values['andon_request_duration_seconds_bucket{endpoint="events",le="0.005"}'] == 0
    assert values['andon_request_duration_seconds_bucket{endpoint="events",le="0.05"}'] == 1
    assert values['andon_request_duration_seconds_bucket{endpoint="events",le="+Inf"}'] == 2
    assert values['andon_request_duration_seconds_count{endpoint="events"}'] == 2
    assert values['andon_request_duration_seconds_sum{endpoint="events"}'] == pytest.approx(3.03)


def _event(n: int, subject: str = "WO-1") -> Event:
    from django.utils import timezone

    now = timezone.now()
    return Event.objects.create(
        source="/erp",
        event_id=f"e-{n}",
        type="erp.workorder.released",
        subject=subject,
        occurred_at=now,
        received_at=now,
    )


@pytest.mark.django_db
def test_metrics_counts_rows_per_store_and_connectors_by_status(client, landscape):
    for n in range(3):
        _event(n)
    Connector.objects.create(key="mes-p1-to-qms", status="discovered")
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            # The gauge reads the planner's estimate, which ANALYZE refreshes.
            cursor.execute(f"ANALYZE {Event._meta.db_table}")

    values = samples(scrape(client))

    assert values['andon_store_rows{store="events"}'] == 3
    assert values['andon_store_rows{store="spans"}'] == 0
    assert values['andon_store_rows{store="messages"}'] == 0
    assert values['andon_connectors{status="active"}'] == 2
    assert values['andon_connectors{status="discovered"}'] == 1
    assert values["andon_up"] == 1
    assert values["andon_database_up"] == 1


@pytest.mark.django_db
def test_metrics_exposes_no_item_data(client, landscape):
    _event(1, subject="WO-SECRET-4711")

    text = scrape(client)

    assert "WO-SECRET-4711" not in text
    assert "/erp" not in text


@pytest.mark.django_db
def test_metrics_needs_no_token(client):
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer not-a-token")

    assert response.status_code == 200


@pytest.mark.django_db
def test_metrics_still_answers_when_the_database_is_down(client, database_down):
    metrics.record_ingest("events", 202, 0.03, 1, 0, 0)
    connections["default"].close()  # the scrape must open a connection, which now fails

    values = samples(scrape(client))

    assert values["andon_up"] == 1
    assert values["andon_database_up"] == 0
    assert values['andon_ingest_requests_total{endpoint="events",status="202"}'] == 1
