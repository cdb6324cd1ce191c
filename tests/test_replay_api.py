"""The replay API: single and bulk replays, dry runs, progress, approval, cancel, failure groups."""

from __future__ import annotations

import base64
import json

import pytest
from drf_spectacular.validation import validate_schema

from console.models import ApiToken, OutboxTask
from integrations.models import Message, MessageAttempt, ReplayItem, ReplayJob
from tests.conftest import bearer
from tests.replay_kit import Target, drain, failed_message, point_at


@pytest.fixture
def target():
    with Target() as running:
        yield running


@pytest.fixture
def orders(landscape, target):
    return point_at(landscape["c1"], target)


@pytest.fixture
def second_admin_token(db) -> str:
    return ApiToken.issue("second-admin", "admin")[1]


@pytest.fixture
def admin_token_p1(landscape) -> str:
    return ApiToken.issue("admin-p1", "admin", landscape["p1"])[1]


def post(client, path: str, token: str, body: object = None):
    data = json.dumps(body) if body is not None else ""
    return client.post(path, data, content_type="application/json", **bearer(token))


def get(client, path: str, token: str):
    return client.get(path, **bearer(token))


def bulk(client, token: str, filter: dict, **extra):
    return post(client, "/api/v1/replays", token, {"filter": filter, **extra})


# --- Single replay -----------------------------------------------------------------------------


def test_replaying_one_message_answers_202_with_the_replay_and_queued(
    client, admin_token, orders, target
):
    message = failed_message(orders, external_id="ORD-1")

    response = post(client, f"/api/v1/messages/{message.pk}/replay", admin_token, {"reason": "x"})

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and isinstance(body["replay"], int)
    drain()
    assert target.received[0].header("X-Andon-Replay") == str(body["replay"])
    assert target.received[0].header("Idempotency-Key") == "erp-to-mes-orders:ORD-1"
    detail = get(client, f"/api/v1/messages/{message.pk}", admin_token).json()
    assert detail["status"] == "delivered"
    assert detail["attempts"][-1]["replay"] == body["replay"]


def test_a_single_replay_needs_no_reason_or_body(client, admin_token, orders):
    message = failed_message(orders)

    response = post(client, f"/api/v1/messages/{message.pk}/replay", admin_token)

    assert response.status_code == 202
    assert ReplayJob.objects.get().reason == ""


def test_only_admins_replay(client, operator_token, ingest_token, orders):
    message = failed_message(orders)
    path = f"/api/v1/messages/{message.pk}/replay"

    assert post(client, path, operator_token).status_code == 403
    assert post(client, path, ingest_token).status_code == 403
    assert client.post(path).status_code == 401
    assert bulk(client, operator_token, {"connector": "erp-to-mes-orders"}).status_code == 403
    assert not ReplayJob.objects.exists()


def test_a_message_of_another_plant_is_not_found_for_a_scoped_admin(
    client, admin_token_p1, landscape, target
):
    theirs = failed_message(point_at(landscape["c2"], target))

    response = post(client, f"/api/v1/messages/{theirs.pk}/replay", admin_token_p1)

    assert response.status_code == 404
    assert not ReplayJob.objects.exists()


def test_a_message_that_cannot_be_replayed_is_refused_with_the_reason(
    client, admin_token, landscape
):
    message = failed_message(landscape["c2"])  # its connector has no adapter

    response = post(client, f"/api/v1/messages/{message.pk}/replay", admin_token)

    assert response.status_code == 409
    assert "no adapter" in response.json()["error"]


def test_edit_and_replay_sends_the_edited_json_once(client, admin_token, orders, target):
    message = failed_message(orders, payload=b'{"qty": -1}')

    response = post(
        client,
        f"/api/v1/messages/{message.pk}/replay",
        admin_token,
        {"reason": "qty fixed", "payload": {"qty": 40}},
    )

    assert response.status_code == 202
    drain()
    assert [r.body for r in target.received] == [b'{"qty":40}']
    message.refresh_from_db()
    assert bytes(message.payload) == b'{"qty": -1}'
    job = get(client, f"/api/v1/replays/{response.json()['replay']}", admin_token).json()
    assert job["edited"] is True
    assert job["items"][0]["edit"]["original"]["payload"] == '{"qty": -1}'
    assert job["items"][0]["edit"]["edited"]["payload"] == '{"qty":40}'


def test_edit_and_replay_takes_raw_bytes_with_their_content_type(
    client, admin_token, orders, target
):
    message = failed_message(orders)
    edi = b"UNH+1+ORDERS:D:96A:UN'\x00\xff"

    response = post(
        client,
        f"/api/v1/messages/{message.pk}/replay",
        admin_token,
        {"payload_b64": base64.b64encode(edi).decode(), "content_type": "application/edifact"},
    )

    assert response.status_code == 202
    drain()
    assert target.received[0].body == edi
    assert target.received[0].header("Content-Type") == "application/edifact"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload_b64": "not base64!"}, "payload_b64"),
        ({"payload": {"a": 1}, "payload_b64": "e30="}, "payload"),
        ({"content_type": "text/plain"}, "content_type"),
        ({"reason": 7}, "reason"),
        (["not", "an", "object"], "body"),
    ],
)
def test_a_bad_single_replay_body_is_refused_naming_the_field(
    client, admin_token, orders, body, field
):
    message = failed_message(orders)

    response = post(client, f"/api/v1/messages/{message.pk}/replay", admin_token, body)

    assert response.status_code == 400
    assert response.json()["field"] == field


# --- Bulk replay --------------------------------------------------------------------------------


def test_a_bulk_replay_is_one_job_with_progress_and_each_outcome(
    client, admin_token, orders, target
):
    ids = [failed_message(orders).pk for _ in range(5)]
    failed_message(orders, status="delivered", error="")

    response = bulk(
        client, admin_token, {"connector": "erp-to-mes-orders", "status": "failed"}, reason="MES"
    )

    assert response.status_code == 202
    started = response.json()
    assert (started["status"], started["total"], started["needs_approval"]) == ("queued", 5, False)
    drain()
    progress = get(client, f"/api/v1/replays/{started['replay']}", admin_token).json()
    assert (progress["state"], progress["delivered"], progress["percent"]) == ("done", 5, 100.0)
    assert progress["counts"]["delivered"] == 5
    assert [i["message"] for i in progress["items"]] == ids
    assert {i["state"] for i in progress["items"]} == {"delivered"}
    assert progress["created_by"] == "admin-token" and progress["reason"] == "MES"
    assert target.count == 5


def test_the_items_of_a_job_are_paged(client, admin_token, orders):
    ids = [failed_message(orders).pk for _ in range(5)]
    job = bulk(client, admin_token, {"message_ids": ids}, reason="page").json()["replay"]

    first = get(client, f"/api/v1/replays/{job}?limit=2", admin_token).json()
    second = client.get(first["next"], **bearer(admin_token)).json()

    assert [i["message"] for i in first["items"] + second["items"]] == ids[:4]
    assert get(client, f"/api/v1/replays/{job}?state=delivered", admin_token).json()["items"] == []


def test_a_bulk_replay_needs_a_reason(client, admin_token, orders):
    failed_message(orders)

    response = bulk(client, admin_token, {"connector": "erp-to-mes-orders"})

    assert response.status_code == 400
    assert response.json()["field"] == "reason"


@pytest.mark.parametrize(
    ("filter", "field"),
    [
        ({"connector": "nope"}, "filter.connector"),
        ({"since": "last tuesday"}, "filter.since"),
        ({"status": ["failed", "lost"]}, "filter.status"),
        ({"colour": "red"}, "filter.colour"),
        ({}, "filter"),
        ("connector=erp", "filter"),
    ],
)
def test_a_bad_filter_is_a_400_naming_the_field(client, admin_token, orders, filter, field):
    failed_message(orders)

    response = bulk(client, admin_token, filter, reason="x")

    assert response.status_code == 400
    body = response.json()
    assert body["field"] == field and body["error"].startswith(field)


def test_a_filter_selecting_nothing_is_a_400(client, admin_token, orders):
    response = bulk(client, admin_token, {"connector": "erp-to-mes-orders"}, reason="x")

    assert response.status_code == 400
    assert "no messages" in response.json()["error"]


def test_a_scoped_admin_may_not_ask_for_another_plant(client, admin_token_p1, landscape, target):
    failed_message(point_at(landscape["c2"], target))

    response = bulk(client, admin_token_p1, {"plant": "p2"}, reason="theirs")

    assert response.status_code == 403
    assert response.json()["field"] == "filter.plant"


def test_a_scoped_admin_replays_only_its_plant_s_share_of_a_filter(
    client, admin_token_p1, landscape, target
):
    mine = failed_message(point_at(landscape["c1"], target))
    failed_message(point_at(landscape["c2"], target))

    response = bulk(client, admin_token_p1, {"status": "failed"}, reason="mine")

    assert response.status_code == 202 and response.json()["total"] == 1
    drain()
    assert list(ReplayItem.objects.values_list("message_id", flat=True)) == [mine.pk]


# --- Dry run ------------------------------------------------------------------------------------


def test_a_dry_run_answers_count_sample_and_exact_requests_and_changes_nothing(
    client, admin_token, orders, target
):
    first = failed_message(orders, external_id="ORD-1", payload=b'{"order": 1}')
    for _ in range(3):
        failed_message(orders)
    messages = list(Message.objects.order_by("id").values())
    attempts = MessageAttempt.objects.count()

    response = bulk(client, admin_token, {"connector": "erp-to-mes-orders"}, dry_run=True, sample=2)

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["count"], body["replayable"]) == ("dry_run", 4, 4)
    assert [m["id"] for m in body["sample"]][0] == first.pk and len(body["sample"]) == 2
    request = body["requests"][0]
    assert (request["method"], request["url"], request["body"]) == (
        "POST",
        target.url,
        '{"order": 1}',
    )
    assert request["headers"]["Idempotency-Key"] == "erp-to-mes-orders:ORD-1"
    assert request["headers"]["Content-Type"] == "application/json"
    drain()
    assert target.count == 0
    assert list(Message.objects.order_by("id").values()) == messages
    assert MessageAttempt.objects.count() == attempts
    assert not ReplayItem.objects.exists() and not OutboxTask.objects.exists()
    # The dry run is in the audit list, marked as such.
    (listed,) = get(client, "/api/v1/replays", admin_token).json()["results"]
    assert (listed["id"], listed["dry_run"], listed["state"]) == (body["replay"], True, "dry_run")


def test_a_dry_run_needs_no_reason_but_a_boolean(client, admin_token, orders):
    failed_message(orders)

    response = bulk(client, admin_token, {"connector": "erp-to-mes-orders"}, dry_run="yes")

    assert response.status_code == 400 and response.json()["field"] == "dry_run"


# --- Approval and cancel ------------------------------------------------------------------------


def test_a_large_job_waits_for_a_second_admin(
    client, admin_token, second_admin_token, orders, target, settings
):
    settings.ANDON_REPLAY_APPROVAL_ABOVE = 2
    for _ in range(3):
        failed_message(orders)
    started = bulk(client, admin_token, {"connector": "erp-to-mes-orders"}, reason="bulk").json()
    assert (started["status"], started["needs_approval"]) == ("pending_approval", True)
    path = f"/api/v1/replays/{started['replay']}/approve"

    refused = post(client, path, admin_token)
    approved = post(client, path, second_admin_token)

    assert refused.status_code == 403 and "second admin" in refused.json()["error"]
    assert approved.status_code == 200
    assert (approved.json()["state"], approved.json()["approved_by"]) == ("queued", "second-admin")
    assert post(client, path, second_admin_token).status_code == 409
    drain()
    assert target.count == 3


def test_an_operator_may_not_approve_or_cancel(client, admin_token, operator_token, orders):
    failed_message(orders)
    job = bulk(client, admin_token, {"connector": "erp-to-mes-orders"}, reason="x").json()

    assert (
        post(client, f"/api/v1/replays/{job['replay']}/approve", operator_token).status_code == 403
    )
    assert (
        post(client, f"/api/v1/replays/{job['replay']}/cancel", operator_token).status_code == 403
    )
    assert get(client, f"/api/v1/replays/{job['replay']}", operator_token).status_code == 200


def test_cancelling_a_queued_job_sends_nothing(client, admin_token, orders, target):
    for _ in range(3):
        failed_message(orders)
    job = bulk(client, admin_token, {"connector": "erp-to-mes-orders"}, reason="x").json()

    response = post(client, f"/api/v1/replays/{job['replay']}/cancel", admin_token)

    assert response.status_code == 200
    body = response.json()
    assert (body["state"], body["cancelled_by"], body["counts"]["cancelled"]) == (
        "cancelled",
        "admin-token",
        3,
    )
    drain()
    assert target.count == 0
    assert post(client, f"/api/v1/replays/{job['replay']}/cancel", admin_token).status_code == 409


def test_an_unknown_replay_is_a_404(client, admin_token, db):
    assert get(client, "/api/v1/replays/999999", admin_token).status_code == 404
    assert post(client, "/api/v1/replays/999999/cancel", admin_token).status_code == 404


def test_a_scoped_user_does_not_see_another_plant_s_replays(
    client, admin_token, operator_token_p1, landscape, target
):
    failed_message(point_at(landscape["c2"], target))
    job = bulk(client, admin_token, {"connector": "erp-to-mes-p2-orders"}, reason="p2").json()

    assert get(client, f"/api/v1/replays/{job['replay']}", operator_token_p1).status_code == 404
    assert get(client, "/api/v1/replays", operator_token_p1).json()["results"] == []


# --- Audit list and failure groups --------------------------------------------------------------


def test_the_audit_lists_every_replay_newest_first_with_who_and_why(
    client, admin_token, operator_token, orders
):
    message = failed_message(orders)
    first = post(client, f"/api/v1/messages/{message.pk}/replay", admin_token, {"reason": "one"})
    second = bulk(client, admin_token, {"message_ids": [message.pk]}, reason="two")

    page = get(client, "/api/v1/replays", operator_token).json()

    assert page["count"] == 2
    assert [(j["id"], j["reason"], j["created_by"]) for j in page["results"]] == [
        (second.json()["replay"], "two", "admin-token"),
        (first.json()["replay"], "one", "admin-token"),
    ]
    assert get(client, "/api/v1/replays?state=running", operator_token).json()["count"] == 0
    assert get(client, "/api/v1/replays?state=lost", operator_token).status_code == 400


def test_failure_groups_are_listed_and_one_is_replayed_through_its_filter(
    client, admin_token, operator_token, orders, target
):
    for order in ("WO-1", "WO-2", "WO-3"):
        failed_message(orders, error=f"MES answered 503 for {order}")
    failed_message(orders, error="quantity '-1' rejected")

    groups = get(client, "/api/v1/failure-groups", operator_token).json()["results"]

    assert [(g["pattern"], g["count"]) for g in groups] == [
        ("MES answered # for #", 3),
        ('quantity "…" rejected', 1),
    ]
    started = bulk(client, admin_token, groups[0]["filter"], reason="group").json()
    assert started["total"] == 3
    drain()
    assert target.count == 3
    assert get(client, "/api/v1/failure-groups?since=soon", operator_token).status_code == 400


# --- Schema -------------------------------------------------------------------------------------


def test_the_openapi_document_describes_the_replay_endpoints(client, db):
    document = json.loads(client.get("/api/schema/").content)

    validate_schema(document)
    for path in (
        "/api/v1/messages/{id}/replay",
        "/api/v1/replays",
        "/api/v1/replays/{id}",
        "/api/v1/replays/{id}/cancel",
        "/api/v1/replays/{id}/approve",
        "/api/v1/failure-groups",
    ):
        assert path in document["paths"], path
