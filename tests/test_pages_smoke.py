"""Every page of the console answers an admin and an operator on the demo landscape."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from tests.conftest import make_user

PAGES = [
    "/",
    "/alerts/",
    "/dashboards/it/",
    "/dashboards/plant/p1/",
    "/messages/",
    "/connectors/",
    "/systems/",
    "/rules/",
    "/rules/wo-not-acknowledged-p1/",
    "/rules/wo-not-acknowledged-p1/history/",
    "/notifications/",
    "/replays/",
    "/replays/failures/",
    "/api/schema/",
]


@pytest.fixture
def demo_world(db):
    call_command("demo", "--no-serve", stdout=StringIO())


@pytest.mark.parametrize("path", PAGES)
@pytest.mark.parametrize("role", ["admin", "operator"])
def test_each_page_answers(client, demo_world, role, path):
    make_user(f"smoke-{role}", role)
    client.login(username=f"smoke-{role}", password=f"pw-smoke-{role}")
    response = client.get(path, follow=True)
    assert response.status_code == 200, (path, response.status_code)


def test_an_unknown_key_gets_a_friendly_not_found_page(client, demo_world):
    make_user("smoke-op", "operator")
    client.login(username="smoke-op", password="pw-smoke-op")
    response = client.get("/correlations/?key=WO-NOPE")
    assert response.status_code == 404
    assert b"WO-NOPE" in response.content
