"""Alerting API routes (alerts, silences)."""

urlpatterns: list = []
