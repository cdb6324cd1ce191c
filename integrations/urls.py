"""Ingest and integration API routes."""

from django.urls import path

from integrations.ingest import events, messages, otlp

urlpatterns = [
    path("v1/traces", otlp.traces_view, name="ingest-traces"),
    path("api/v1/events", events.events_view, name="ingest-events"),
    path("api/v1/messages", messages.messages_view, name="ingest-messages"),
]
