"""Placeholder until the events ingest lands."""

from django.http import HttpResponse


def events_view(request):  # type: ignore[no-untyped-def]
    return HttpResponse(status=501)
