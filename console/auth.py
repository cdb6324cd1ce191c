"""Who is calling: bearer tokens for the API, Django sessions for the web UI.

Both resolve to a :class:`Principal` with a role and an optional plant scope;
every view asks the principal, never the raw user or token.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.http import HttpRequest
from rest_framework import authentication, exceptions, permissions

from console.models import ApiToken, Role, hash_token

ROLE_RANK = {Role.INGEST: 0, "viewer": 1, Role.OPERATOR: 2, Role.ADMIN: 3}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a role and the plants it may see (None: every plant)."""

    name: str
    role: str
    plant_ids: frozenset[int] | None = None
    plant_keys: frozenset[str] = field(default_factory=frozenset)
    token_id: int | None = None
    user_id: int | None = None

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def is_admin(self) -> bool:
        return self.role == Role.ADMIN

    def may_ingest(self) -> bool:
        return self.role in (Role.INGEST, Role.ADMIN)

    def may_read(self) -> bool:
        return self.role in ("viewer", Role.OPERATOR, Role.ADMIN)

    def may_operate(self) -> bool:
        return self.role in (Role.OPERATOR, Role.ADMIN)

    def allows(self, check: str) -> bool:
        """Return the answer of a named check (``may_read``, ``may_operate``, ``is_admin``)."""
        value = getattr(self, check)
        return bool(value() if callable(value) else value)

    def sees_plant(self, plant_id: int | None) -> bool:
        """Return whether an item of this plant (None: unattributed) is visible."""
        if self.plant_ids is None:
            return True
        return plant_id is not None and plant_id in self.plant_ids

    def scope(self, queryset, field_name: str = "plant"):  # type: ignore[no-untyped-def]
        """Restrict a queryset to the principal's plants."""
        if self.plant_ids is None:
            return queryset
        return queryset.filter(**{f"{field_name}__in": self.plant_ids})


class AuthError(Exception):
    """Authentication failed (401) or the caller lacks the right (403)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def principal_for_token(raw: str) -> Principal:
    """Resolve a clear bearer token; raise AuthError(401) for an unknown or revoked one."""
    if not raw:
        raise AuthError(401, "empty bearer token")
    token = ApiToken.objects.active().select_related("plant").filter(digest=hash_token(raw)).first()
    if token is None:
        raise AuthError(401, "invalid or revoked token")
    token.touch()
    plant_ids = frozenset({token.plant_id}) if token.plant_id else None
    plant_keys = frozenset({token.plant.key}) if token.plant_id else frozenset()
    return Principal(
        name=token.name,
        role=token.role,
        plant_ids=plant_ids,
        plant_keys=plant_keys,
        token_id=token.pk,
    )


def bearer_from_header(request: HttpRequest) -> str | None:
    """Return the token of an ``Authorization: Bearer`` header, None when there is none."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError(401, "Authorization header must be 'Bearer <token>'")
    return value.strip()


def principal_for_user(user) -> Principal | None:  # type: ignore[no-untyped-def]
    """Map a logged-in Django user to a principal by group (admin > operator > viewer)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return None
    groups = set(user.groups.values_list("name", flat=True))
    if user.is_superuser or Role.ADMIN in groups:
        role = Role.ADMIN
    elif Role.OPERATOR in groups:
        role = Role.OPERATOR
    elif "viewer" in groups:
        role = "viewer"
    else:
        return None
    plant_ids: frozenset[int] | None = None
    plant_keys: frozenset[str] = frozenset()
    if not user.is_superuser:
        rows = list(user.plant_access.values_list("plant_id", "plant__key"))
        if rows:
            plant_ids = frozenset(r[0] for r in rows)
            plant_keys = frozenset(r[1] for r in rows)
    return Principal(
        name=user.get_username(),
        role=str(role),
        plant_ids=plant_ids,
        plant_keys=plant_keys,
        user_id=user.pk,
    )


def authenticate_request(request: HttpRequest) -> Principal:
    """Authenticate a plain Django view request by bearer token (the ingest path)."""
    raw = bearer_from_header(request)
    if raw is None:
        raise AuthError(401, "missing 'Authorization: Bearer <token>' header")
    return principal_for_token(raw)


class BearerTokenAuthentication(authentication.BaseAuthentication):
    """DRF authentication by ``Authorization: Bearer <token>``."""

    def authenticate(self, request):  # type: ignore[no-untyped-def]
        try:
            raw = bearer_from_header(request._request)
            if raw is None:
                return None
            principal = principal_for_token(raw)
        except AuthError as exc:
            raise exceptions.AuthenticationFailed(exc.message) from None
        return (principal, principal)

    def authenticate_header(self, request) -> str:  # type: ignore[no-untyped-def]
        return 'Bearer realm="andon"'


def request_principal(request) -> Principal | None:  # type: ignore[no-untyped-def]
    """Return the principal of a DRF request (token or session)."""
    if isinstance(request.auth, Principal):
        return request.auth
    cached = getattr(request, "_andon_principal", None)
    if cached is None:
        cached = principal_for_user(getattr(request, "user", None))
        request._andon_principal = cached
    return cached


class _RolePermission(permissions.BasePermission):
    check = "may_read"
    message = "this token's role may not do that"

    def has_permission(self, request, view) -> bool:  # type: ignore[no-untyped-def]
        principal = request_principal(request)
        if principal is None:
            if request.user is None or not getattr(request.user, "is_authenticated", False):
                raise exceptions.NotAuthenticated()
            return False
        return principal.allows(self.check)


class CanRead(_RolePermission):
    """Operators, viewers (web) and admins may read."""

    check = "may_read"


class CanOperate(_RolePermission):
    """Operators and admins may acknowledge and silence."""

    check = "may_operate"


class IsAdmin(_RolePermission):
    """Only admins may replay and edit rules."""

    check = "is_admin"
