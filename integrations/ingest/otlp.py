"""Placeholder until the OTLP ingest lands."""

from django.http import HttpResponse


def traces_view(request):  # type: ignore[no-untyped-def]
    return HttpResponse(status=501)
