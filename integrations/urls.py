"""Ingest and integration API routes."""

from django.urls import path

from integrations import api, api_messages, replay_api
from integrations.ingest import events, messages, otlp

urlpatterns = [
    path("v1/traces", otlp.traces_view, name="ingest-traces"),
    path("api/v1/events", events.events_view, name="ingest-events"),
    path("api/v1/messages", messages.messages_view, name="ingest-messages"),
    path("api/v1/messages/<int:pk>", api_messages.MessageDetailView.as_view(), name="message-api"),
    path("api/v1/correlations/<path:key>", api.CorrelationView.as_view(), name="correlation-api"),
    path(
        "api/v1/messages/<int:pk>/replay",
        replay_api.MessageReplayView.as_view(),
        name="message-replay-api",
    ),
    path("api/v1/replays", replay_api.ReplayListView.as_view(), name="replays-api"),
    path("api/v1/replays/<int:pk>", replay_api.ReplayDetailView.as_view(), name="replay-api"),
    path(
        "api/v1/replays/<int:pk>/cancel",
        replay_api.ReplayCancelView.as_view(),
        name="replay-cancel-api",
    ),
    path(
        "api/v1/replays/<int:pk>/approve",
        replay_api.ReplayApproveView.as_view(),
        name="replay-approve-api",
    ),
    path(
        "api/v1/failure-groups", replay_api.FailureGroupsView.as_view(), name="failure-groups-api"
    ),
]
