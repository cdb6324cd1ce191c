"""The alerting API: list and filter alerts, acknowledge and resolve, create and expire silences."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import time_machine

from console.auth import Principal
from monitors.models import Alert, AlertTransition, MaintenanceWindow, Silence
from tests.alerts_kit import T0, make_alert, make_rule
from tests.conftest import _token, bearer, make_user

NOW = T0 + timedelta(hours=1)
CONTRACT_FIELDS = {
    "id",
    "rule",
    "key",
    "state",
    "severity",
    "labels",
    "summary",
    "started_at",
    "resolved_at",
    "resolution",
    "silenced",
}


@pytest.fixture(autouse=True)
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def world(landscape):
    """Alerts of three rules in two plants, one resolved, one suppressed by a heartbeat."""
    p1, p2 = landscape["p1"], landscape["p2"]
    wo = make_rule(
        "wo-not-acknowledged",
        labels={"flow": "order-to-production"},
        runbook="https://runbooks.example/wo-ack",
    )
    beat = make_rule("mes-p1-silent", kind="heartbeat", severity="major")
    lab = make_rule("lab-result-failed", kind="match", severity="minor")
    heartbeat = make_alert(beat, "mes-p1", plant=p1, started_at=T0 - timedelta(minutes=20))
    alerts = {
        "wo1": make_alert(wo, "WO-1001", plant=p1, started_at=T0, suppressed_by=heartbeat),
        "wo2": make_alert(wo, "WO-1002", plant=p2, started_at=T0 + timedelta(minutes=1)),
        "wo3": make_alert(
            wo, "WO-1003", plant=p1, started_at=T0 + timedelta(minutes=2), state="acknowledged"
        ),
        "old": make_alert(
            wo, "WO-0999", plant=p1, started_at=T0 - timedelta(hours=5), state="resolved"
        ),
        "lab": make_alert(lab, "L-7731", plant=p2, started_at=T0 + timedelta(minutes=3)),
        "beat": heartbeat,
    }
    return {**landscape, **alerts, "rules": {"wo": wo, "beat": beat, "lab": lab}}


def get(client, url: str, token: str):  # type: ignore[no-untyped-def]
    return client.get(url, **bearer(token))


def post(client, url: str, token: str, body: object | None = None):  # type: ignore[no-untyped-def]
    data = json.dumps(body) if body is not None else ""
    return client.post(url, data=data, content_type="application/json", **bearer(token))


def keys(response) -> list[str]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.content
    return [a["key"] for a in response.json()["results"]]


# --- Listing ----------------------------------------------------------------------------


def test_it_lists_alerts_newest_first_with_the_contract_fields(client, world, operator_token):
    response = get(client, "/api/v1/alerts", operator_token)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"count", "next", "previous", "results"}
    assert body["count"] == 6
    assert [a["key"] for a in body["results"]] == [
        "L-7731",
        "WO-1003",
        "WO-1002",
        "WO-1001",
        "mes-p1",
        "WO-0999",
    ]
    first = body["results"][3]
    assert CONTRACT_FIELDS <= set(first)
    assert first["rule"] == "wo-not-acknowledged"
    assert first["plant"] == "p1"
    assert first["started_at"] == "2026-05-21T08:00:00Z"
    assert first["labels"]["flow"] == "order-to-production"
    assert first["silenced"] is False
    assert first["runbook"] == "https://runbooks.example/wo-ack"
    assert first["timeline"] == "/correlations/?key=WO-1001"


def test_an_alert_names_the_dependency_that_suppresses_it(client, world, operator_token):
    results = get(client, "/api/v1/alerts?key=WO-1001", operator_token).json()["results"]

    assert results[0]["suppressed_by"] == {
        "id": world["beat"].pk,
        "rule": "mes-p1-silent",
        "key": "mes-p1",
        "state": "firing",
    }


def test_it_paginates(client, world, operator_token):
    first = get(client, "/api/v1/alerts?page_size=4", operator_token).json()
    second = client.get(first["next"], **bearer(operator_token)).json()

    assert first["count"] == 6
    assert len(first["results"]) == 4
    assert first["previous"] is None
    assert len(second["results"]) == 2
    assert second["next"] is None
    assert second["previous"]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("state=acknowledged", ["WO-1003"]),
        ("state=resolved,acknowledged", ["WO-1003", "WO-0999"]),
        ("state=open", ["L-7731", "WO-1003", "WO-1002", "WO-1001", "mes-p1"]),
        ("severity=minor,major", ["L-7731", "mes-p1"]),
        ("rule=lab-result-failed,mes-p1-silent", ["L-7731", "mes-p1"]),
        ("plant=p2", ["L-7731", "WO-1002"]),
        ("plant=p1&state=firing&rule=wo-not-acknowledged", ["WO-1001"]),
        ("key=WO-1001,WO-0999", ["WO-1001", "WO-0999"]),
    ],
)
def test_it_filters_by_comma_separated_values(client, world, operator_token, query, expected):
    assert keys(get(client, f"/api/v1/alerts?{query}", operator_token)) == expected


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("state=burning", "state"),
        ("severity=urgent", "severity"),
        ("rule=no-such-rule", "rule"),
        ("plant=p9", "plant"),
        ("silenced=maybe", "silenced"),
    ],
)
def test_a_bad_filter_value_is_a_400_naming_the_parameter(
    client, world, operator_token, query, param
):
    response = get(client, f"/api/v1/alerts?{query}", operator_token)

    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{param}: ")
    assert response.json()["field"] == param


def test_the_silenced_flag_and_filter_follow_active_silences(client, world, operator_token):
    silence = Silence.objects.create(
        matchers=[{"name": "rule", "value": "wo-not-acknowledged", "is_regex": False}],
        starts_at=NOW - timedelta(minutes=5),
        ends_at=NOW + timedelta(hours=1),
        comment="MES upgrade",
        created_by="ada",
    )

    results = get(client, "/api/v1/alerts?key=WO-1001", operator_token).json()["results"]
    assert results[0]["silenced"] is True
    assert results[0]["silenced_by"]["kind"] == "silence"
    assert results[0]["silenced_by"]["id"] == silence.pk
    assert results[0]["silenced_by"]["comment"] == "MES upgrade"
    # The resolved WO-0999 matches too, but a resolved alert is never silenced.
    assert keys(get(client, "/api/v1/alerts?silenced=true", operator_token)) == [
        "WO-1003",
        "WO-1002",
        "WO-1001",
    ]
    assert keys(get(client, "/api/v1/alerts?silenced=false", operator_token)) == [
        "L-7731",
        "mes-p1",
        "WO-0999",
    ]


def test_a_maintenance_window_silences_its_plants_alerts(client, world, operator_token):
    MaintenanceWindow.objects.create(
        plant=world["p2"],
        name="shutdown",
        starts_at=NOW - timedelta(hours=1),
        ends_at=NOW + timedelta(hours=1),
    )

    results = get(client, "/api/v1/alerts?silenced=true", operator_token).json()["results"]

    assert [a["key"] for a in results] == ["L-7731", "WO-1002"]
    assert results[0]["silenced_by"]["kind"] == "maintenance"
    assert results[0]["silenced_by"]["name"] == "shutdown"


def test_silenced_true_without_any_mute_is_empty(client, world, operator_token):
    assert keys(get(client, "/api/v1/alerts?silenced=true", operator_token)) == []
    assert len(keys(get(client, "/api/v1/alerts?silenced=false", operator_token))) == 6


def test_one_alert_reads_with_its_alarm_log(client, world, operator_token):
    response = get(client, f"/api/v1/alerts/{world['wo1'].pk}", operator_token)

    assert response.status_code == 200
    assert response.json()["transitions"] == [
        {"at": "2026-05-21T08:00:00Z", "state": "firing", "actor": "", "note": ""}
    ]


# --- Who may see and do what ------------------------------------------------------------


def test_a_plant_scoped_token_sees_its_plants_alerts_only(client, world, operator_token_p1):
    assert keys(get(client, "/api/v1/alerts?state=open", operator_token_p1)) == [
        "WO-1003",
        "WO-1001",
        "mes-p1",
    ]


def test_a_plant_scoped_token_may_not_filter_on_another_plant(client, world, operator_token_p1):
    response = get(client, "/api/v1/alerts?plant=p2", operator_token_p1)

    assert response.status_code == 403
    assert response.json()["field"] == "plant"


def test_another_plants_alert_does_not_exist_for_a_scoped_token(client, world, operator_token_p1):
    other = world["wo2"].pk

    assert get(client, f"/api/v1/alerts/{other}", operator_token_p1).status_code == 404
    assert post(client, f"/api/v1/alerts/{other}/ack", operator_token_p1).status_code == 404
    assert Alert.objects.get(pk=other).state == "firing"


def test_no_token_is_a_401(client, world):
    assert client.get("/api/v1/alerts").status_code == 401
    assert client.post(f"/api/v1/alerts/{world['wo1'].pk}/ack").status_code == 401


def test_a_bad_token_is_a_401(client, world):
    assert get(client, "/api/v1/alerts", "andon_not-a-token").status_code == 401


def test_an_ingest_token_may_not_read_or_act(client, world, ingest_token):
    assert get(client, "/api/v1/alerts", ingest_token).status_code == 403
    assert post(client, f"/api/v1/alerts/{world['wo1'].pk}/ack", ingest_token).status_code == 403
    assert post(client, "/api/v1/silences", ingest_token, {}).status_code == 403


def test_a_viewer_session_reads_but_may_not_acknowledge(world):
    from django.test import Client

    make_user("vera", "viewer")
    browser = Client()
    browser.login(username="vera", password="pw-vera")

    assert browser.get("/api/v1/alerts").status_code == 200
    assert browser.post(f"/api/v1/alerts/{world['wo1'].pk}/ack").status_code == 403


# --- Acknowledge and resolve ------------------------------------------------------------


def test_an_operator_acknowledges_with_a_comment(client, world, operator_token):
    alert = world["wo1"]

    response = post(client, f"/api/v1/alerts/{alert.pk}/ack", operator_token, {"comment": "on it"})

    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "acknowledged"
    assert body["acknowledged_by"] == "operator-token"
    assert body["acknowledged_at"] == "2026-05-21T09:00:00Z"
    assert body["ack_comment"] == "on it"
    log = AlertTransition.objects.filter(alert=alert).order_by("at", "id")
    assert [(t.state, t.actor, t.note) for t in log][-1] == (
        "acknowledged",
        "operator-token",
        "on it",
    )


def test_acknowledging_without_a_body_works(client, world, admin_token):
    response = client.post(f"/api/v1/alerts/{world['wo1'].pk}/ack", **bearer(admin_token))

    assert response.status_code == 200
    assert response.json()["ack_comment"] == ""


def test_acknowledging_twice_keeps_the_first_acknowledgement(client, world, operator_token):
    url = f"/api/v1/alerts/{world['wo1'].pk}/ack"
    post(client, url, operator_token, {"comment": "first"})
    second = post(client, url, _token("operator", name="second-op"), {"comment": "second"})

    assert second.status_code == 200
    assert second.json()["acknowledged_by"] == "operator-token"
    assert second.json()["ack_comment"] == "first"
    assert AlertTransition.objects.filter(alert=world["wo1"], state="acknowledged").count() == 1


def test_acknowledging_a_resolved_alert_is_a_409(client, world, operator_token):
    response = post(client, f"/api/v1/alerts/{world['old'].pk}/ack", operator_token)

    assert response.status_code == 409
    assert "already resolved" in response.json()["error"]


def test_an_unknown_alert_is_a_404(client, world, operator_token):
    assert post(client, "/api/v1/alerts/999999/ack", operator_token).status_code == 404


@pytest.mark.parametrize("body", [["x"], {"comment": 5}])
def test_a_bad_ack_body_is_a_400(client, world, operator_token, body):
    response = post(client, f"/api/v1/alerts/{world['wo1'].pk}/ack", operator_token, body)

    assert response.status_code == 400
    assert response.json()["error"]


def test_an_operator_resolves_by_hand_once(client, world, operator_token):
    url = f"/api/v1/alerts/{world['lab'].pk}/resolve"

    first = post(client, url, operator_token, {"comment": "false positive"})
    again = post(client, url, operator_token)

    assert first.status_code == 200
    assert first.json()["state"] == "resolved"
    assert first.json()["resolution"] == "manual"
    assert first.json()["resolved_at"] == "2026-05-21T09:00:00Z"
    assert again.status_code == 409


# --- Silences ---------------------------------------------------------------------------


def silence_body(**overrides) -> dict:  # type: ignore[no-untyped-def]
    body = {
        "matchers": [{"name": "rule", "value": "wo-not-acknowledged", "is_regex": False}],
        "starts_at": "2026-05-21T09:00:00Z",
        "ends_at": "2026-05-21T11:00:00Z",
        "comment": "MES upgrade in plant 1",
    }
    body.update(overrides)
    return body


def test_an_operator_creates_a_silence(client, world, operator_token):
    response = post(client, "/api/v1/silences", operator_token, silence_body())

    assert response.status_code == 201
    body = response.json()
    assert body["matchers"] == [{"name": "rule", "value": "wo-not-acknowledged", "is_regex": False}]
    assert body["created_by"] == "operator-token"
    assert body["state"] == "active"
    assert body["ends_at"] == "2026-05-21T11:00:00Z"
    assert Silence.objects.get(pk=body["id"]).comment == "MES upgrade in plant 1"
    assert get(client, f"/api/v1/alerts/{world['wo1'].pk}", operator_token).json()["silenced"]


def test_a_silence_starts_now_when_no_start_is_given(client, world, operator_token):
    body = silence_body()
    del body["starts_at"]

    response = post(client, "/api/v1/silences", operator_token, body)

    assert response.json()["starts_at"] == "2026-05-21T09:00:00Z"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"matchers": []}, "matchers"),
        ({"matchers": [{"name": "", "value": "x"}]}, "matchers[0].name"),
        ({"matchers": [{"name": "key", "value": "WO-(", "is_regex": True}]}, "matchers[0].value"),
        ({"ends_at": "2026-05-21T08:30:00Z"}, "ends_at"),
        ({"ends_at": "tomorrow"}, "ends_at"),
        ({"starts_at": 12}, "starts_at"),
        ({"comment": ""}, "comment"),
        ({"comment": None}, "comment"),
    ],
)
def test_an_invalid_silence_is_a_400_naming_the_field(
    client, world, operator_token, overrides, field
):
    response = post(client, "/api/v1/silences", operator_token, silence_body(**overrides))

    assert response.status_code == 400, response.content
    assert response.json()["field"] == field
    assert response.json()["error"].startswith(f"{field}: ")
    assert not Silence.objects.exists()


def test_a_silence_body_must_be_an_object(client, world, operator_token):
    response = post(client, "/api/v1/silences", operator_token, [silence_body()])

    assert response.status_code == 400


def test_a_plant_scoped_silence_is_limited_to_its_plant(client, world, operator_token_p1):
    response = post(client, "/api/v1/silences", operator_token_p1, silence_body())

    assert response.status_code == 201
    assert {"name": "plant", "value": "p1", "is_regex": False} in response.json()["matchers"]
    assert response.json()["plant"] == "p1"
    silenced = keys(get(client, "/api/v1/alerts?silenced=true", _token("operator", name="all")))
    assert silenced == ["WO-1003", "WO-1001"]


def test_a_plant_scoped_token_may_not_silence_another_plant(client, world, operator_token_p1):
    body = silence_body(matchers=[{"name": "plant", "value": "p2", "is_regex": False}])

    response = post(client, "/api/v1/silences", operator_token_p1, body)

    assert response.status_code == 403
    assert not Silence.objects.exists()


def test_it_lists_active_pending_and_recent_silences(client, world, operator_token):
    def make(name: str, start_h: float, end_h: float, **fields) -> Silence:  # type: ignore[no-untyped-def]
        return Silence.objects.create(
            matchers=[{"name": "key", "value": name, "is_regex": False}],
            starts_at=NOW + timedelta(hours=start_h),
            ends_at=NOW + timedelta(hours=end_h),
            comment=name,
            created_by="ada",
            **fields,
        )

    make("active", -1, 1)
    make("pending", 1, 2)
    make("ended-yesterday", -30, -24)
    make("expired-early", -1, 5, expired_at=NOW - timedelta(minutes=5))
    make("ended-long-ago", -24 * 30, -24 * 20)

    every = get(client, "/api/v1/silences", operator_token).json()
    active = get(client, "/api/v1/silences?state=active,pending", operator_token).json()

    assert {s["comment"]: s["state"] for s in every["results"]} == {
        "active": "active",
        "pending": "pending",
        "ended-yesterday": "expired",
        "expired-early": "expired",
    }
    assert {s["comment"] for s in active["results"]} == {"active", "pending"}
    assert get(client, "/api/v1/silences?state=gone", operator_token).status_code == 400


def test_deleting_a_silence_expires_it_now(client, world, operator_token):
    created = post(client, "/api/v1/silences", operator_token, silence_body()).json()

    response = client.delete(f"/api/v1/silences/{created['id']}", **bearer(operator_token))

    assert response.status_code == 204
    silence = Silence.objects.get(pk=created["id"])
    assert silence.expired_at == NOW
    assert get(client, f"/api/v1/silences/{silence.pk}", operator_token).json()["state"] == (
        "expired"
    )
    assert not get(client, f"/api/v1/alerts/{world['wo1'].pk}", operator_token).json()["silenced"]


def test_deleting_an_unknown_silence_is_a_404(client, world, operator_token):
    assert client.delete("/api/v1/silences/424242", **bearer(operator_token)).status_code == 404


def test_a_scoped_token_may_not_expire_another_plants_or_a_global_silence(
    client, world, operator_token, operator_token_p1
):
    p2 = post(
        client,
        "/api/v1/silences",
        operator_token,
        silence_body(matchers=[{"name": "plant", "value": "p2", "is_regex": False}]),
    ).json()
    everywhere = post(client, "/api/v1/silences", operator_token, silence_body()).json()

    assert client.delete(
        f"/api/v1/silences/{p2['id']}", **bearer(operator_token_p1)
    ).status_code == (404)
    assert (
        client.delete(
            f"/api/v1/silences/{everywhere['id']}", **bearer(operator_token_p1)
        ).status_code
        == 403
    )
    assert not Silence.objects.filter(expired_at__isnull=False).exists()


# --- Cost -------------------------------------------------------------------------------


def count_queries(client, token: str) -> int:  # type: ignore[no-untyped-def]
    """Return how many queries one list request costs."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        response = get(client, "/api/v1/alerts?state=open&silenced=false", token)
    assert response.status_code == 200
    return len(captured.captured_queries)


def test_the_list_costs_the_same_queries_for_5_or_50_alerts(
    client, landscape, operator_token, django_assert_max_num_queries
):
    rule = make_rule()
    beat = make_rule("mes-p1-silent", kind="heartbeat")
    cause = make_alert(beat, "mes-p1", plant=landscape["p1"])
    Silence.objects.create(
        matchers=[{"name": "key", "value": "WO-1.*", "is_regex": True}],
        starts_at=NOW - timedelta(hours=1),
        ends_at=NOW + timedelta(hours=1),
        comment="x",
        created_by="ada",
    )
    MaintenanceWindow.objects.create(
        plant=landscape["p2"], name="w", starts_at=T0, ends_at=NOW + timedelta(hours=1)
    )
    for n in range(5):
        make_alert(rule, f"WO-{n}", plant=landscape["p1" if n % 2 else "p2"], suppressed_by=cause)
    small = count_queries(client, operator_token)
    for n in range(5, 50):
        make_alert(rule, f"WO-{n}", plant=landscape["p1" if n % 2 else "p2"], suppressed_by=cause)

    with django_assert_max_num_queries(small):
        response = get(
            client, "/api/v1/alerts?state=open&silenced=false&page_size=100", operator_token
        )

    assert response.json()["count"] == 51 - 11 - 25 + 5  # minus WO-1x silenced, p2 windowed
    # token, silences, windows, the silenced pre-pass, count, page: nothing per alert.
    assert small <= 8


# --- The correlation timeline's alert source --------------------------------------------


def test_the_correlation_engine_gets_alerts_of_its_keys_scoped_to_the_reader(world):
    from integrations import correlation
    from monitors.api import alerts_for_keys

    p1_reader = Principal(
        name="olga",
        role="operator",
        plant_ids=frozenset({world["p1"].pk}),
        plant_keys=frozenset({"p1"}),
    )

    assert alerts_for_keys in correlation._alert_sources
    found = correlation.alerts_for(["WO-1001", "WO-1002", "L-7731"], p1_reader)
    assert [(a["key"], a["rule"], a["state"]) for a in found] == [
        ("WO-1001", "wo-not-acknowledged", "firing")
    ]
    assert found[0]["timeline"] == "/correlations/?key=WO-1001"
    assert alerts_for_keys(["WO-1001"], None) == []


# --- Documentation ----------------------------------------------------------------------


def test_the_schema_documents_filters_the_silence_body_and_the_409(client, db):
    document = client.get("/api/schema/").json()
    paths = document["paths"]

    params = {p["name"] for p in paths["/api/v1/alerts"]["get"]["parameters"]}
    assert {"state", "rule", "plant", "severity", "silenced", "page"} <= params
    body = paths["/api/v1/silences"]["post"]["requestBody"]["content"]["application/json"]
    request = document["components"]["schemas"][body["schema"]["$ref"].rsplit("/", 1)[1]]
    assert {"matchers", "ends_at", "comment"} <= set(request["required"])
    assert "409" in paths["/api/v1/alerts/{id}/ack"]["post"]["responses"]
    assert "204" in paths["/api/v1/silences/{id}"]["delete"]["responses"]
