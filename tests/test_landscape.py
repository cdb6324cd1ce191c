"""`loadlandscape`: the demo landscape, idempotent reloads, and invalid files refused whole."""

from __future__ import annotations

import textwrap
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command, execute_from_command_line
from django.utils import timezone

from integrations.ingest.common import Attribution
from integrations.models import (
    Connector,
    Event,
    Message,
    MessageAttempt,
    Plant,
    Span,
    System,
)

DEMO = Path(settings.BASE_DIR) / "integrations" / "fixtures" / "demo_landscape.yaml"

SMALL = """
plants:
  - {key: p1, name: Plant 1}
systems:
  - {key: erp, name: Cloud ERP, kind: ERP, sources: [/erp, erp-gateway]}
  - {key: mes-p1, name: MES Plant 1, kind: MES, plant: p1, sources: [/mes/p1]}
connectors:
  - key: erp-to-mes-orders
    source: erp
    target: mes-p1
    flow: order-to-production
    pattern: api
    criticality: critical
    latency_slo_ms: 2000
    adapter: {kind: http, url: "http://127.0.0.1:9100/orders", method: POST, timeout_s: 10}
    replay: {max_attempts: 5, backoff_s: 30, rate_per_s: 10}
"""


def _file(tmp_path: Path, text: str, name: str = "landscape.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _load(path: Path, *options: str) -> str:
    out = StringIO()
    call_command("loadlandscape", str(path), *options, stdout=out)
    return out.getvalue()


def _snapshot() -> tuple[list[dict], list[dict], list[dict]]:
    """Return every landscape row, to prove that a refused file changed nothing."""
    return (
        list(Plant.objects.values()),
        list(System.objects.values()),
        list(Connector.objects.values()),
    )


# --- the demo landscape --------------------------------------------------------------------


@pytest.mark.django_db
def test_it_loads_the_demo_landscape():
    out = _load(DEMO)
    assert "plants: 2 created, 0 updated, 0 unchanged" in out
    assert Plant.objects.get(key="p1").timezone == "Europe/Berlin"
    kinds = set(System.objects.values_list("kind", flat=True))
    assert {"ERP", "MES", "WMS", "QMS", "LIMS", "EAM", "IOT", "TMS", "SAAS"} <= kinds
    assert System.objects.filter(kind="MES").count() == 2
    assert not Connector.objects.exclude(status="active").exists()

    order_release = Connector.objects.get(key="erp-to-mes-orders")
    assert order_release.plant.key == "p1"
    assert order_release.criticality == "critical"
    assert order_release.adapter == {
        "kind": "http",
        "url": "http://127.0.0.1:9100/mes/p1/orders",
        "method": "POST",
        "headers": {},
        "timeout_s": 10,
    }
    # A connector into a cloud system belongs to its source's plant.
    assert Connector.objects.get(key="mes-p2-to-erp-confirmations").plant.key == "p2"


@pytest.mark.django_db
def test_the_demo_landscape_covers_the_five_critical_paths_on_loopback():
    _load(DEMO)
    flows = set(Connector.objects.values_list("flow", flat=True))
    assert {
        "order-to-production",
        "production-confirmation",
        "quality-hold",
        "maintenance-trigger",
        "shipment-confirmation",
    } <= flows
    adapters = [c.adapter for c in Connector.objects.all() if c.adapter]
    assert {a["kind"] for a in adapters} == {"http", "mqtt", "amqp"}
    for adapter in adapters:
        target = adapter.get("url") or adapter["host"]
        assert "127.0.0.1" in target


@pytest.mark.django_db
def test_the_demo_sources_attribute_signals_to_their_system_and_plant():
    _load(DEMO)
    attribution = Attribution.load()
    mes_p1 = System.objects.get(key="mes-p1")
    assert attribution.resolve("/mes/p1") == (mes_p1.pk, mes_p1.plant_id)
    assert attribution.resolve("erp-gateway") == (System.objects.get(key="erp").pk, None)


@pytest.mark.django_db
def test_loading_the_same_file_again_changes_nothing():
    _load(DEMO)
    before = _snapshot()
    out = _load(DEMO)
    assert _snapshot() == before
    assert "plants: 0 created, 0 updated, 2 unchanged" in out
    assert f"systems: 0 created, 0 updated, {System.objects.count()} unchanged" in out
    assert f"connectors: 0 created, 0 updated, {Connector.objects.count()} unchanged" in out


# --- updates ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_changed_field_is_updated_and_the_rest_left_unchanged(tmp_path):
    _load(_file(tmp_path, SMALL))
    created_at = Connector.objects.get().created_at
    out = _load(_file(tmp_path, SMALL.replace("latency_slo_ms: 2000", "latency_slo_ms: 5000")))
    assert "connectors: 0 created, 1 updated, 0 unchanged" in out
    assert "updated: erp-to-mes-orders" in out
    assert "systems: 0 created, 0 updated, 2 unchanged" in out
    connector = Connector.objects.get()
    assert connector.latency_slo_ms == 5000
    assert connector.created_at == created_at


@pytest.mark.django_db
def test_a_field_left_out_returns_to_its_default(tmp_path):
    _load(_file(tmp_path, SMALL))
    text = "\n".join(line for line in SMALL.splitlines() if "adapter:" not in line)
    _load(_file(tmp_path, text.replace("criticality: critical", "criticality: low")))
    connector = Connector.objects.get()
    assert connector.adapter == {}
    assert connector.criticality == "low"


@pytest.mark.django_db
def test_a_discovered_connector_declared_in_the_file_becomes_active(tmp_path):
    Connector.objects.create(key="erp-to-mes-orders", status="discovered")
    out = _load(_file(tmp_path, SMALL))
    connector = Connector.objects.get()
    assert connector.status == "active"
    assert connector.source.key == "erp"
    assert connector.plant.key == "p1"
    assert "promoted from discovered to active: erp-to-mes-orders" in out


def test_entries_missing_from_the_file_are_left_alone(landscape, tmp_path):
    _load(_file(tmp_path, SMALL))
    assert Connector.objects.filter(key="erp-to-mes-p2-orders").exists()
    assert System.objects.filter(key="wms-p1").exists()


def test_references_may_point_to_entries_already_in_the_database(landscape, tmp_path):
    text = """
    connectors:
      - {key: mes-to-wms-p1, source: mes-p1, target: wms-p1, pattern: event}
    systems:
      - {key: qms, name: QMS, kind: QMS, plant: p2}
    """
    out = _load(_file(tmp_path, text))
    assert "connectors: 1 created" in out
    assert Connector.objects.get(key="mes-to-wms-p1").plant == landscape["p1"]
    assert System.objects.get(key="qms").plant == landscape["p2"]


def test_a_system_moved_to_another_plant_takes_its_connectors_along(landscape, tmp_path):
    text = """
    systems:
      - {key: mes-p1, name: MES Plant 1, kind: MES, plant: p2, sources: [/mes/p1, mes-p1]}
    """
    out = _load(_file(tmp_path, text))
    assert Connector.objects.get(key="erp-to-mes-orders").plant == landscape["p2"]
    assert "moved with their system to another plant: erp-to-mes-orders" in out


def test_check_reports_the_changes_and_writes_nothing(landscape, tmp_path):
    before = _snapshot()
    out = _load(_file(tmp_path, SMALL), "--check")
    assert "connectors: 0 created, 1 updated, 0 unchanged" in out
    assert "dry run: nothing was written" in out
    assert _snapshot() == before


# --- invalid files ---------------------------------------------------------------------------

INVALID = [
    pytest.param(
        "plants:\n  - {key: p1, name: Plant 1\n  - {key: p2, name: Plant 2}\n",
        "YAML syntax error at line 3",
        id="yaml-syntax",
    ),
    pytest.param(
        "plants:\n  - key: p1\n    name: Plant 1\n    name: Plant One\n",
        "line 4, column 5: found duplicate key 'name'",
        id="yaml-duplicate-mapping-key",
    ),
    pytest.param("", "the file is empty", id="empty"),
    pytest.param("- {key: p1}\n", "the top level must be a mapping", id="top-level-list"),
    pytest.param(
        "plants: []\nrules: []\n", "rules: unknown top-level key (expected one of", id="top-key"
    ),
    pytest.param("plants: {key: p1}\n", "plants: must be a list", id="section-not-list"),
    pytest.param(
        "plants:\n  - {key: p7, name: Plant 7}\n  - p8\n",
        "plants[1]: must be a mapping, not a string",
        id="entry-not-mapping",
    ),
    pytest.param(
        "plants:\n  - {key: p7, name: Plant 7}\n  - {name: Plant 8}\n",
        "plants[1]: key: is required",
        id="missing-key",
    ),
    pytest.param(
        "systems:\n  - {key: mes-p7, kind: MES}\n",
        "systems[0] (mes-p7): name: is required",
        id="missing-name",
    ),
    pytest.param(
        "plants:\n  - {key: p7, name: A}\n  - {key: p8, name: B}\n  - {key: p7, name: C}\n",
        "plants[2] (p7): key: duplicate of plants[0]",
        id="duplicate-key",
    ),
    pytest.param(
        "plants:\n  - {key: Plant 7, name: A}\n",
        "plants[0] (Plant 7): key: must contain only letters",
        id="key-not-a-slug",
    ),
    pytest.param(
        "plants:\n  - {key: p7, name: A, timezone: Europe/Atlantis}\n",
        "plants[0] (p7): timezone: unknown time zone 'Europe/Atlantis'",
        id="bad-timezone",
    ),
    pytest.param(
        "systems:\n  - {key: mes-p7, name: MES 7, kind: MES, plant: p7}\n",
        "systems[0] (mes-p7): plant: unknown plant 'p7' (not in this file nor in the database)",
        id="unknown-plant",
    ),
    pytest.param(
        "systems:\n  - {key: crm, name: CRM, kind: CRM}\n",
        "systems[0] (crm): kind: must be one of ERP, MES",
        id="bad-kind",
    ),
    pytest.param(
        "systems:\n  - {key: crm, name: CRM, kind: OTHER, sources: /crm}\n",
        "systems[0] (crm): sources: must be a list of strings, not a string",
        id="sources-not-list",
    ),
    pytest.param(
        "systems:\n  - {key: erp2, name: ERP 2, kind: ERP, sources: [/erp]}\n",
        "systems[0] (erp2): sources: '/erp' already belongs to system 'erp'",
        id="source-claimed-twice",
    ),
    pytest.param(
        "systems:\n  - {key: crm, name: CRM, kind: OTHER, owner: sales}\n",
        "systems[0] (crm): owner: unknown field (expected one of: key, name, kind, plant, sources)",
        id="unknown-system-field",
    ),
    pytest.param(
        "connectors:\n  - {key: erp-to-mes-p9, source: erp, target: mes-p9}\n",
        "connectors[0] (erp-to-mes-p9): target: unknown system 'mes-p9'",
        id="unknown-system",
    ),
    pytest.param(
        "connectors:\n  - {key: c, target: mes-p1}\n",
        "connectors[0] (c): source: is required",
        id="missing-source",
    ),
    pytest.param(
        "connectors:\n  - {key: c, source: erp, target: mes-p1, pattern: stream}\n",
        "connectors[0] (c): pattern: must be one of api, event, batch, not 'stream'",
        id="bad-pattern",
    ),
    pytest.param(
        "connectors:\n  - {key: c, source: erp, target: mes-p1, criticality: urgent}\n",
        "connectors[0] (c): criticality: must be one of critical, high, normal, low",
        id="bad-criticality",
    ),
    pytest.param(
        "connectors:\n  - {key: c, source: erp, target: mes-p1, latency_slo_ms: 2s}\n",
        "connectors[0] (c): latency_slo_ms: must be an integer, not a string",
        id="wrong-type",
    ),
    pytest.param(
        "connectors:\n  - {key: c, source: erp, target: mes-p1, latency_slo_ms: 0}\n",
        "connectors[0] (c): latency_slo_ms: must be between 1 and",
        id="slo-not-positive",
    ),
    pytest.param(
        "connectors:\n  - {key: c, source: erp, target: mes-p1, owner: it}\n",
        "connectors[0] (c): owner: unknown field",
        id="unknown-connector-field",
    ),
    pytest.param(
        "connectors:\n  - {key: c, source: erp, target: mes-p1, adapter: http}\n",
        "connectors[0] (c): adapter: must be a mapping, not a string",
        id="adapter-not-mapping",
    ),
    pytest.param(
        "connectors:\n  - {key: c, source: erp, target: mes-p1, adapter: {kind: ftp}}\n",
        "connectors[0] (c): adapter.kind: unknown adapter kind 'ftp' (valid kinds: http, mqtt",
        id="adapter-kind",
    ),
    pytest.param(
        "connectors:\n  - {key: c, source: erp, target: mes-p1,"
        " adapter: {kind: mqtt, host: h, topic: 'a/#'}}\n",
        "connectors[0] (c): adapter.topic: must not contain the wildcards",
        id="adapter-mqtt-topic",
    ),
    pytest.param(
        "connectors:\n  - {key: c, source: erp, target: mes-p1, replay: {max_attempts: 500}}\n",
        "connectors[0] (c): replay.max_attempts: must be between 1 and 100, not 500",
        id="replay-policy",
    ),
    pytest.param(
        "connectors:\n  - {key: c, source: erp, target: mes-p1, sensitive_fields: customer}\n",
        "connectors[0] (c): sensitive_fields: must be a list of strings",
        id="sensitive-fields",
    ),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_an_invalid_file_is_refused_whole_naming_entry_and_field(
    landscape, tmp_path, text, message
):
    # Each file also holds a valid entry (a new plant, or a renamed p1) that must not be written.
    if text.startswith(("systems:", "connectors:")):
        text = "plants:\n  - {key: p1, name: Renamed Plant}\n" + text
    before = _snapshot()
    with pytest.raises(CommandError) as caught:
        _load(_file(tmp_path, text))
    assert "refused, nothing was loaded" in str(caught.value)
    assert message in str(caught.value)
    assert _snapshot() == before


@pytest.mark.django_db
def test_a_file_whose_first_entries_are_valid_and_a_later_one_invalid_writes_nothing(tmp_path):
    text = SMALL + (
        "  - key: mes-to-erp-confirmations\n"
        "    source: mes-p1\n"
        "    target: erp\n"
        '    adapter: {kind: http, url: "mes-p1/confirmations"}\n'
    )
    with pytest.raises(CommandError) as caught:
        _load(_file(tmp_path, text))
    assert "connectors[1] (mes-to-erp-confirmations): adapter.url: must be an http(s) URL" in str(
        caught.value
    )
    assert (Plant.objects.count(), System.objects.count(), Connector.objects.count()) == (0, 0, 0)


@pytest.mark.django_db
def test_every_problem_is_reported_at_once_in_file_order(tmp_path):
    text = """
    connectors:
      - {key: c, source: erp, target: nowhere}
    systems:
      - {key: erp, name: ERP, kind: erp}
    plants:
      - {key: p1}
    """
    with pytest.raises(CommandError) as caught:
        _load(_file(tmp_path, text))
    lines = [line.strip() for line in str(caught.value).splitlines()[1:]]
    assert lines == [
        "plants[0] (p1): name: is required",
        "systems[0] (erp): kind: must be one of ERP, MES, WMS, QMS, EAM, IOT, TMS, SCADA, LIMS, "
        "SAAS, OTHER, not 'erp'",
        "connectors[0] (c): target: unknown system 'nowhere' "
        "(not in this file nor in the database)",
    ]


@pytest.mark.django_db
def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(CommandError, match="no such file"):
        _load(tmp_path / "absent.yaml")


@pytest.mark.django_db(transaction=True)
def test_the_command_exits_with_status_1_and_the_reason_on_stderr(tmp_path, capsys):
    path = _file(tmp_path, "systems:\n  - {key: x, name: X, kind: ERP, plant: p9}\n")
    with pytest.raises(SystemExit) as caught:
        execute_from_command_line(["manage.py", "loadlandscape", str(path)])
    assert caught.value.code == 1
    assert "systems[0] (x): plant: unknown plant 'p9'" in capsys.readouterr().err
    assert not System.objects.exists()


# --- admin -----------------------------------------------------------------------------------


def test_the_admin_lists_the_landscape_with_filters(admin_client, landscape):
    response = admin_client.get(
        "/admin/integrations/connector/?status__exact=active&plant__id__exact="
        + str(landscape["p1"].pk)
    )
    assert response.status_code == 200
    assert b"erp-to-mes-orders" in response.content
    assert b"erp-to-mes-p2-orders" not in response.content
    for page in ("plant", "system"):
        assert admin_client.get(f"/admin/integrations/{page}/").status_code == 200


def test_the_admin_shows_ingested_data_read_only_and_finds_it_by_id(admin_client, landscape):
    now = timezone.now()
    event = Event.objects.create(
        source="/erp",
        event_id="ev-1",
        type="erp.workorder.released",
        subject="WO-1001",
        occurred_at=now,
        received_at=now,
    )
    span = Span.objects.create(
        trace_id="ab" * 16,
        span_id="cd" * 8,
        name="POST /orders",
        start=now,
        end=now,
        received_at=now,
    )
    message = Message.objects.create(
        connector=landscape["c1"],
        external_id="m-42",
        status="failed",
        occurred_at=now,
        last_attempt_at=now,
        received_at=now,
        payload=b'{"order": "WO-1001"}',
    )
    MessageAttempt.objects.create(
        message=message, at=now, status="failed", error="MES answered 503", received_at=now
    )

    found = admin_client.get("/admin/integrations/event/?q=WO-1001")
    assert b"ev-1" in found.content
    assert admin_client.get("/admin/integrations/span/?q=" + "ab" * 16).status_code == 200
    assert b"m-42" in admin_client.get("/admin/integrations/message/?q=m-42").content

    page = admin_client.get(f"/admin/integrations/message/{message.pk}/change/")
    assert page.status_code == 200
    assert b"MES answered 503" in page.content
    assert b"WO-1001" in page.content
    assert b'name="_save"' not in page.content
    assert admin_client.get("/admin/integrations/event/add/").status_code == 403
    assert admin_client.post(f"/admin/integrations/event/{event.pk}/delete/").status_code == 403
    assert (
        admin_client.post(f"/admin/integrations/span/{span.pk}/change/", {"name": "x"}).status_code
        == 403
    )
    span.refresh_from_db()
    assert span.name == "POST /orders"
