"""Placeholder: the alerts page."""

from django.http import HttpRequest, HttpResponse

from console.pages.common import page


@page()
def alert_list(request: HttpRequest) -> HttpResponse:
    return HttpResponse("alerts: not built yet", status=501)
