"""Placeholder: the message explorer."""

from django.http import HttpRequest, HttpResponse

from console.pages.common import page


@page()
def message_list(request: HttpRequest) -> HttpResponse:
    return HttpResponse("message explorer: not built yet", status=501)


@page()
def message_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return HttpResponse("message page: not built yet", status=501)
