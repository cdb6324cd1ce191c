"""API tokens: `createtoken`, hashed storage, and issuing and revoking them in the admin."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection

from console.auth import AuthError, principal_for_token
from console.models import ApiToken


def _create(*args: str) -> tuple[str, str]:
    """Run createtoken; return its whole stdout and its last line."""
    out = StringIO()
    call_command("createtoken", *args, stdout=out)
    text = out.getvalue()
    return text, text.rstrip("\n").splitlines()[-1]


@pytest.mark.django_db
def test_it_prints_a_working_token_alone_on_the_last_line():
    _, raw = _create("mes-p1-connector", "--role", "ingest")
    assert raw.startswith("andon_") and " " not in raw
    principal = principal_for_token(raw)
    assert principal.name == "mes-p1-connector"
    assert principal.role == "ingest"
    assert principal.plant_ids is None


def test_a_plant_scoped_token_sees_only_its_plant(landscape):
    _, raw = _create("operator-p2", "--role", "operator", "--plant", "p2")
    principal = principal_for_token(raw)
    assert principal.role == "operator"
    assert principal.plant_ids == frozenset({landscape["p2"].pk})
    assert principal.plant_keys == frozenset({"p2"})


@pytest.mark.django_db
def test_each_run_issues_a_new_token():
    _, first = _create("script", "--role", "admin")
    _, second = _create("script", "--role", "admin")
    assert first != second
    assert principal_for_token(first).role == principal_for_token(second).role == "admin"


@pytest.mark.django_db
def test_the_clear_token_is_not_stored():
    _, raw = _create("erp-connector", "--role", "ingest")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {ApiToken._meta.db_table}")
        rows = cursor.fetchall()
    assert len(rows) == 1
    stored = " ".join(str(value) for value in rows[0])
    assert raw not in stored
    assert raw[len("andon_") :] not in stored
    assert len(ApiToken.objects.get().digest) == 64


@pytest.mark.django_db
def test_it_refuses_an_unknown_role():
    with pytest.raises(CommandError, match="unknown role 'root'.*ingest, operator, admin"):
        _create("x", "--role", "root")
    assert not ApiToken.objects.exists()


def test_it_refuses_an_unknown_plant_and_lists_the_known_ones(landscape):
    with pytest.raises(CommandError, match="unknown plant 'p9' \\(known plants: p1, p2\\)"):
        _create("x", "--role", "ingest", "--plant", "p9")
    assert not ApiToken.objects.exists()


@pytest.mark.django_db
def test_it_refuses_a_missing_role():
    with pytest.raises(CommandError, match="--role"):
        _create("x")


@pytest.mark.django_db
def test_it_refuses_an_empty_or_overlong_name():
    with pytest.raises(CommandError, match="name"):
        _create(" ", "--role", "ingest")
    with pytest.raises(CommandError, match="name"):
        _create("n" * 129, "--role", "ingest")
    assert not ApiToken.objects.exists()


# --- admin ---------------------------------------------------------------------------------


def test_the_admin_issues_a_token_and_shows_it_once(admin_client, landscape):
    response = admin_client.post(
        "/admin/console/apitoken/add/",
        {"name": "wms-p1-connector", "role": "ingest", "plant": landscape["p1"].pk},
        follow=True,
    )
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"] if "copy it now" in str(m)]
    assert len(shown) == 1
    raw = shown[0].split(" is ", 1)[1].split(" ", 1)[0]
    principal = principal_for_token(raw)
    assert (principal.role, principal.plant_keys) == ("ingest", frozenset({"p1"}))

    token = ApiToken.objects.get()
    again = admin_client.get(f"/admin/console/apitoken/{token.pk}/change/")
    assert raw.encode() not in again.content
    assert token.digest.encode() not in again.content
    listing = admin_client.get("/admin/console/apitoken/")
    assert raw.encode() not in listing.content
    assert token.digest.encode() not in listing.content


def test_the_admin_revokes_tokens_by_action(admin_client, ingest_token, operator_token):
    ids = list(ApiToken.objects.values_list("pk", flat=True))
    response = admin_client.post(
        "/admin/console/apitoken/",
        {"action": "revoke", "_selected_action": ids},
        follow=True,
    )
    assert response.status_code == 200
    assert not ApiToken.objects.active().exists()
    for raw in (ingest_token, operator_token):
        with pytest.raises(AuthError) as caught:
            principal_for_token(raw)
        assert caught.value.status == 401


def test_the_admin_lists_plant_access(admin_client, admin_user, landscape):
    from console.models import PlantAccess

    PlantAccess.objects.create(user=admin_user, plant=landscape["p1"])
    response = admin_client.get("/admin/console/plantaccess/")
    assert response.status_code == 200
    assert b"p1" in response.content
