"""Ingest and integration API routes."""

urlpatterns: list = []
