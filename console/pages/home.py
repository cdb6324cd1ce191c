"""The overview page: the landscape the user may see."""

from __future__ import annotations

from django.db.models import Count, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import urlencode

from console.pages.common import page
from integrations.models import Connector, Plant, System


@page()
def home(request: HttpRequest) -> HttpResponse:
    """Show the plants, systems and connectors the user may see."""
    principal = request.principal  # type: ignore[attr-defined]
    plants = principal.scope(Plant.objects.all(), "id")
    systems = principal.scope(System.objects.select_related("plant"), "plant")
    connectors = principal.scope(
        Connector.objects.select_related("source", "target").annotate(
            n=Count("messages"), failed=Count("messages", filter=Q(messages__status="failed"))
        ),
        "plant",
    )
    return render(
        request,
        "console/home.html",
        {"nav": "home", "plants": plants, "systems": systems, "connectors": connectors},
    )


@page()
def search(request: HttpRequest) -> HttpResponse:
    """Send any key, trace id or message id to its correlation timeline."""
    query = request.GET.get("q", "").strip()
    if not query:
        return redirect("home")
    return redirect(reverse("correlation") + "?" + urlencode({"key": query}))
