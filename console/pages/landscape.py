"""Placeholder: systems and connectors pages with the flow map."""

from django.http import HttpRequest, HttpResponse

from console.pages.common import page


@page()
def systems(request: HttpRequest) -> HttpResponse:
    return HttpResponse("systems: not built yet", status=501)


@page()
def connectors(request: HttpRequest) -> HttpResponse:
    return HttpResponse("connectors: not built yet", status=501)
