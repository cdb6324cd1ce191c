"""API-wide DRF glue: an exception handler that never answers 500 to bad input."""

from __future__ import annotations

from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc, context):  # type: ignore[no-untyped-def]
    """Render DRF errors as ``{"error": ..., "detail": ...}`` keeping DRF's status."""
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" in response.data:
        response.data = {"error": str(response.data["detail"]), **response.data}
    return response
