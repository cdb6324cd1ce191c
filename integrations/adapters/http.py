"""HTTP(S) adapter: POSTs (or PUTs, PATCHes) the payload to a URL."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from integrations import outbound
from integrations.adapters.base import (
    Adapter,
    AdapterConfigError,
    AdapterError,
    DeliveryResult,
    merge_headers,
)

METHODS = ("POST", "PUT", "PATCH")
DEFAULT_TIMEOUT_S = 10
MAX_TIMEOUT_S = 300
# Andon sets these on every delivery (CONTRACT, replay); a connector may not override them.
RESERVED_HEADERS = frozenset({"idempotency-key", "x-andon-replay", "traceparent"})
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")


def check_url(url: str, schemes: tuple[str, ...], field: str, description: str) -> None:
    """Raise AdapterConfigError unless ``url`` has one of ``schemes`` and a host."""
    if any(ch.isspace() for ch in url):
        raise AdapterConfigError(field, f"must be {description}, not {url!r} (it has blanks)")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- parsing the port is what validates it
    except ValueError as exc:
        raise AdapterConfigError(field, f"must be {description}, not {url!r} ({exc})") from None
    if parts.scheme.lower() not in schemes or not parts.hostname:
        raise AdapterConfigError(field, f"must be {description}, not {url!r}")


class HttpAdapter(Adapter):
    """Sends the payload as the body of an HTTP request to ``url``.

    Requests go through :mod:`integrations.outbound` (keep-alive session per
    thread, same-origin redirects only), so a batch reuses one connection. The
    configured ``headers`` are merged under each delivery's own headers.
    """

    kind = "http"
    fields = ("url", "method", "headers", "timeout_s")

    @classmethod
    def validate_config(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``{kind, url, method, headers, timeout_s}`` or raise AdapterConfigError."""
        read = cls.reader(config)
        url = read.string("url", required=True)
        assert url is not None
        check_url(url, ("http", "https"), "url", "an http(s) URL with a host")
        method = read.string("method", default="POST")
        assert method is not None
        if method.upper() not in METHODS:
            listed = ", ".join(METHODS)
            raise AdapterConfigError("method", f"must be one of {listed}, not {method!r}")
        headers = read.string_map("headers") or {}
        for name, value in headers.items():
            if not _TOKEN.match(name):
                raise AdapterConfigError(f"headers.{name}", "is not a valid HTTP header name")
            if name.lower() in RESERVED_HEADERS:
                raise AdapterConfigError(
                    f"headers.{name}", "is set by Andon on every delivery and cannot be configured"
                )
            if any(ch in value for ch in "\r\n\x00"):
                raise AdapterConfigError(f"headers.{name}", "must not contain line breaks")
        timeout_s = read.number(
            "timeout_s", default=DEFAULT_TIMEOUT_S, above=0, maximum=MAX_TIMEOUT_S
        )
        return {
            "kind": cls.kind,
            "url": url,
            "method": method.upper(),
            "headers": headers,
            "timeout_s": timeout_s,
        }

    def deliver(self, body: bytes, headers: dict[str, str]) -> DeliveryResult:
        """Send ``body`` once; accept a 2xx (or 303), classify anything else (see Adapter)."""
        try:
            response = outbound.send(
                self.config["method"],
                self.config["url"],
                body=body,
                headers=merge_headers(self.config["headers"], headers),
                timeout_s=self.config["timeout_s"],
            )
        except outbound.OutboundError as exc:
            raise _adapter_error(exc) from None
        failure = response.failure()
        if failure is not None:
            raise _adapter_error(failure)
        detail = response.summary()
        if response.redirects:
            detail = f"{detail} from {outbound.redact(response.url)}"
        return DeliveryResult(
            latency_ms=response.latency_ms, status_code=response.status_code, detail=detail
        )

    def close(self) -> None:
        """Close this thread's outbound session (its pooled connections)."""
        outbound.close_session()


def _adapter_error(exc: outbound.OutboundError) -> AdapterError:
    return AdapterError(
        exc.message,
        exc.permanent,
        retry_after_s=exc.retry_after_s,
        status_code=exc.status_code,
        unreachable=exc.unreachable,
    )
