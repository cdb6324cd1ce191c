"""Ingest and integration API routes."""

from django.urls import path

from integrations import api, api_messages
from integrations.ingest import events, messages, otlp

urlpatterns = [
    path("v1/traces", otlp.traces_view, name="ingest-traces"),
    path("api/v1/events", events.events_view, name="ingest-events"),
    path("api/v1/messages", messages.messages_view, name="ingest-messages"),
    path("api/v1/messages/<int:pk>", api_messages.MessageDetailView.as_view(), name="message-api"),
    path("api/v1/correlations/<path:key>", api.CorrelationView.as_view(), name="correlation-api"),
]
