"""Placeholder: rule pages (list, edit, history, backtest)."""

from django.http import HttpRequest, HttpResponse

from console.pages.common import page


@page()
def rule_list(request: HttpRequest) -> HttpResponse:
    return HttpResponse("rules: not built yet", status=501)
