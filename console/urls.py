"""Andon's URL map: ingest, API, health, schema, admin and (later) the operator UI."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("", include("console.health_urls")),
    path("", include("integrations.urls")),
    path("admin/", admin.site.urls),
]
