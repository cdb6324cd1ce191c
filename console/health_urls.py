"""Probe and scrape routes, at the root where orchestrators and Prometheus expect them."""

from django.urls import path

from console import health

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", health.metrics_view, name="metrics"),
]
