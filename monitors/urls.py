"""Alerting API routes (alerts, silences), per CONTRACT.md."""

from django.urls import path

from monitors import api

urlpatterns = [
    path("api/v1/alerts", api.AlertList.as_view(), name="api-alerts"),
    path("api/v1/alerts/<int:id>", api.AlertDetail.as_view(), name="api-alert"),
    path("api/v1/alerts/<int:id>/ack", api.AlertAck.as_view(), name="api-alert-ack"),
    path("api/v1/alerts/<int:id>/resolve", api.AlertResolve.as_view(), name="api-alert-resolve"),
    path("api/v1/silences", api.SilenceList.as_view(), name="api-silences"),
    path("api/v1/silences/<int:id>", api.SilenceDetail.as_view(), name="api-silence"),
]
