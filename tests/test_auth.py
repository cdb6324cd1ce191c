"""Principals: roles, named checks, plant scope, and revoked tokens."""

from __future__ import annotations

import pytest
from django.utils import timezone

from console.auth import AuthError, Principal, principal_for_token
from console.models import ApiToken


@pytest.mark.parametrize(
    ("role", "read", "operate", "admin"),
    [
        ("ingest", False, False, False),
        ("viewer", True, False, False),
        ("operator", True, True, False),
        ("admin", True, True, True),
    ],
)
def test_each_role_allows_what_it_should(role, read, operate, admin):
    principal = Principal(name="p", role=role)
    assert principal.allows("may_read") is read
    assert principal.allows("may_operate") is operate
    assert principal.allows("is_admin") is admin


def test_a_scoped_principal_sees_only_its_plants():
    principal = Principal(name="p", role="operator", plant_ids=frozenset({1}))
    assert principal.sees_plant(1)
    assert not principal.sees_plant(2)
    assert not principal.sees_plant(None)


@pytest.mark.django_db
def test_a_revoked_token_no_longer_authenticates():
    token, raw = ApiToken.issue("old", "operator")
    assert principal_for_token(raw).role == "operator"
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    with pytest.raises(AuthError) as caught:
        principal_for_token(raw)
    assert caught.value.status == 401
