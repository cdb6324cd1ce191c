"""The console's first page: login required, plant scoping on the server."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group, User

from console.models import PlantAccess


def _user(name: str, role: str, plants=()) -> User:
    user = User.objects.create_user(name, password="pw-" + name)
    user.groups.add(Group.objects.get(name=role))
    for plant in plants:
        PlantAccess.objects.create(user=user, plant=plant)
    return user


@pytest.mark.django_db
def test_anonymous_visitors_are_sent_to_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith("/login/")


def test_an_operator_of_plant_1_sees_only_plant_1_systems(client, landscape):
    _user("op1", "operator", [landscape["p1"]])
    client.login(username="op1", password="pw-op1")
    body = client.get("/").content.decode()
    assert "mes-p1" in body
    assert "mes-p2" not in body
    assert "erp-to-mes-p2-orders" not in body


def test_an_unscoped_operator_sees_every_plant(client, landscape):
    _user("op", "operator")
    client.login(username="op", password="pw-op")
    body = client.get("/").content.decode()
    assert "mes-p1" in body and "mes-p2" in body


def test_a_user_without_a_role_is_refused(client, landscape):
    User.objects.create_user("nobody", password="pw")
    client.login(username="nobody", password="pw")
    assert client.get("/").status_code == 403
