"""Placeholder until the messages ingest lands."""

from django.http import HttpResponse


def messages_view(request):  # type: ignore[no-untyped-def]
    return HttpResponse(status=501)
