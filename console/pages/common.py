"""What every operator page shares: login, a role, the principal in the template."""

from __future__ import annotations

import functools
from collections.abc import Callable

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from console.auth import Principal, principal_for_user


def page(
    check: str = "may_read",
) -> Callable[[Callable[..., HttpResponse]], Callable[..., HttpResponse]]:
    """Require a logged-in user with an Andon role allowing ``check``; set ``request.principal``.

    Every query a page makes must go through ``request.principal.scope(...)``.
    """

    def decorate(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @login_required
        @functools.wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:  # type: ignore[no-untyped-def]
            principal = principal_for_user(request.user)
            if principal is None:
                raise PermissionDenied("your account has no Andon role (viewer, operator or admin)")
            if not principal.allows(check):
                raise PermissionDenied("your role may not do that")
            request.principal = principal  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)

        return wrapped

    return decorate


def principal_context(request: HttpRequest) -> dict[str, Principal | None]:
    """Template context processor: the principal of a logged-in user, for the shell."""
    principal = getattr(request, "principal", None)
    if principal is None and getattr(request, "user", None) is not None:
        principal = principal_for_user(request.user)
    return {"principal": principal}
