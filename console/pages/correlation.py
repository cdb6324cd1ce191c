"""Placeholder: the correlation page lands with the correlation engine."""

from django.http import HttpRequest, HttpResponse

from console.pages.common import page


@page()
def correlation(request: HttpRequest) -> HttpResponse:
    return HttpResponse("correlation page: not built yet", status=501)
