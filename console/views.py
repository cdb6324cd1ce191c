"""The operator web UI (first page: the landscape at a glance)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console.auth import principal_for_user
from integrations.models import Connector, Plant, System


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """Show the plants, systems and connectors the user may see."""
    principal = principal_for_user(request.user)
    if principal is None:
        raise PermissionDenied("your account has no Andon role (viewer, operator or admin)")
    plants = principal.scope(Plant.objects.all(), "id")
    systems = principal.scope(System.objects.select_related("plant"), "plant")
    connectors = principal.scope(
        Connector.objects.select_related("source", "target").annotate(n=Count("messages")), "plant"
    )
    return render(
        request,
        "console/home.html",
        {"principal": principal, "plants": plants, "systems": systems, "connectors": connectors},
    )
