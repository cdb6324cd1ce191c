"""The one way Andon sends HTTP requests to other systems.

Every outbound request (replay deliveries, and any other caller that talks HTTP
to a target) goes through :func:`send`, so that timeouts, connection reuse,
redirect policy and error classification are decided here once, and tests serve
or patch this single seam.

- One ``requests.Session`` per thread (and per process: a forked worker opens its
  own), so connections are kept alive and pooled across requests.
- Bodies are sent byte for byte and headers exactly as given; only the framing
  headers the transport computes itself (``Content-Length``, ``Transfer-Encoding``,
  ``Host``, ``Connection``) are dropped from the caller's headers.
- Redirects are followed by hand and only to the same scheme, host and port; a
  redirect to anywhere else is refused as a permanent error naming the location.
- Failures raise :class:`OutboundError`, whose ``permanent`` flag says whether
  retrying can help; :meth:`Response.failure` classifies an answered status the
  same way.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

MAX_REDIRECTS = 5
# Redirects that ask for the same request again elsewhere; a 303 instead says the
# request was processed and points at its result, so it counts as accepted.
FOLLOWED_REDIRECTS = frozenset({301, 302, 307, 308})
ACCEPTED_REDIRECTS = frozenset({303})
# Client errors that say "not now" rather than "not this payload".
TRANSIENT_CLIENT_ERRORS = frozenset({408, 425, 429})
# The transport computes these for the body it sends; a caller's copy could only corrupt it.
FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})
# Answers are read to keep the connection reusable, kept up to KEPT_BYTES for error
# messages; an answer longer than DRAIN_BYTES costs the connection instead.
KEPT_BYTES = 64 * 1024
DRAIN_BYTES = 1024 * 1024
POOL_SIZE = 8
SNIPPET_CHARS = 200

_local = threading.local()


class OutboundError(Exception):
    """An outbound request failed; ``permanent`` says that retrying it cannot help.

    ``retry_after_s`` is the wait the target asked for (``Retry-After``),
    ``status_code`` its answer when there was one, and ``unreachable`` says no
    connection could be made, so nothing was sent.
    """

    def __init__(
        self,
        message: str,
        permanent: bool,
        *,
        retry_after_s: float | None = None,
        status_code: int | None = None,
        unreachable: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.retry_after_s = retry_after_s
        self.status_code = status_code
        self.unreachable = unreachable


@dataclass(frozen=True)
class Response:
    """What a target answered: status, headers, the start of the body, and timing."""

    method: str
    url: str
    status_code: int
    reason: str
    headers: Mapping[str, str]
    body: bytes
    latency_ms: int
    redirects: tuple[str, ...] = field(default=())

    @property
    def accepted(self) -> bool:
        """Return whether the target took the request (2xx, or 303 See Other)."""
        return 200 <= self.status_code < 300 or self.status_code in ACCEPTED_REDIRECTS

    @property
    def retry_after_s(self) -> float | None:
        """Return the wait the target asked for in ``Retry-After``, in seconds."""
        return parse_retry_after(self.headers.get("Retry-After"))

    def summary(self) -> str:
        """Return the status line, e.g. ``503 Service Unavailable``."""
        return f"{self.status_code} {self.reason}".strip()

    def failure(self) -> OutboundError | None:
        """Return the error this answer amounts to, or None when it was accepted."""
        if self.accepted:
            return None
        status = self.status_code
        permanent = 300 <= status < 500 and status not in TRANSIENT_CLIENT_ERRORS
        message = f"{self.method} {redact(self.url)} answered {self.summary()}"
        snippet = body_snippet(self.body)
        if snippet:
            message = f"{message}: {snippet}"
        return OutboundError(
            message, permanent, retry_after_s=self.retry_after_s, status_code=status
        )


@cache
def user_agent() -> str:
    """Return the User-Agent Andon sends, ``Andon/<version>``."""
    try:
        return f"Andon/{version('andon')}"
    except PackageNotFoundError:
        return "Andon/0+unknown"


def session() -> requests.Session:
    """Return this thread's keep-alive session, opening one on first use (and after a fork)."""
    current = getattr(_local, "session", None)
    if current is not None and _local.pid == os.getpid():
        return current
    new = requests.Session()
    new.trust_env = False  # a proxy from the environment must not reroute deliveries
    new.headers.clear()
    new.headers.update({"User-Agent": user_agent(), "Accept": "*/*"})
    pooled = HTTPAdapter(pool_connections=POOL_SIZE, pool_maxsize=POOL_SIZE, max_retries=0)
    new.mount("http://", pooled)
    new.mount("https://", pooled)
    _local.session, _local.pid = new, os.getpid()
    return new


def close_session() -> None:
    """Close this thread's session and its pooled connections."""
    current = getattr(_local, "session", None)
    if current is not None:
        current.close()
        _local.session = None


def send(
    method: str,
    url: str,
    *,
    body: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    max_redirects: int = MAX_REDIRECTS,
) -> Response:
    """Send one request and return the answer, whatever its status.

    Follows redirects only to the same scheme, host and port (at most
    ``max_redirects``), resending the same method, headers and body. Raises
    OutboundError when no answer came (timeout, refused connection), when a
    redirect leads elsewhere, or when the request itself cannot be sent.
    ``timeout_s`` bounds connecting and each wait for the target.
    """
    outgoing = {k: v for k, v in headers.items() if k.lower() not in FRAMING_HEADERS}
    started = time.perf_counter()
    current = url
    redirects: list[str] = []
    while True:
        raw, content = _request(method, current, body, outgoing, timeout_s)
        location = raw.headers.get("Location")
        if raw.status_code not in FOLLOWED_REDIRECTS or not location:
            return Response(
                method=method,
                url=current,
                status_code=raw.status_code,
                reason=raw.reason or "",
                headers=raw.headers,
                body=content,
                latency_ms=round((time.perf_counter() - started) * 1000),
                redirects=tuple(redirects),
            )
        target = urljoin(current, location)
        if origin(target) != origin(url):
            raise OutboundError(
                f"{method} {redact(url)} was redirected ({raw.status_code}) to another host: "
                f"{redact(target)}; Andon follows redirects only to the same scheme, host "
                "and port",
                permanent=True,
                status_code=raw.status_code,
            )
        if len(redirects) >= max_redirects:
            raise OutboundError(
                f"{method} {redact(url)} was redirected more than {max_redirects} times "
                f"(last to {redact(target)})",
                permanent=True,
                status_code=raw.status_code,
            )
        redirects.append(target)
        current = target


def _request(
    method: str, url: str, body: bytes, headers: dict[str, str], timeout_s: float
) -> tuple[requests.Response, bytes]:
    """Send one request without following redirects; return it and the start of its body."""
    where = f"{method} {redact(url)}"
    try:
        with session().request(
            method,
            url,
            data=body,
            headers=headers,
            timeout=(timeout_s, timeout_s),
            allow_redirects=False,
            stream=True,
        ) as raw:
            return raw, _read(raw)
    except requests.exceptions.ConnectTimeout:
        raise OutboundError(
            f"{where}: could not connect within {timeout_s:g}s", permanent=False, unreachable=True
        ) from None
    except requests.exceptions.Timeout:
        raise OutboundError(f"{where}: no answer within {timeout_s:g}s", permanent=False) from None
    except requests.exceptions.SSLError as exc:
        raise OutboundError(f"{where}: TLS failed: {_cause(exc)}", permanent=True) from None
    except requests.exceptions.ConnectionError as exc:
        refused = _never_connected(exc)
        what = "could not connect" if refused else "connection failed"
        raise OutboundError(
            f"{where}: {what}: {_cause(exc)}", permanent=False, unreachable=refused
        ) from None
    except (requests.exceptions.InvalidURL, requests.exceptions.InvalidHeader) as exc:
        raise OutboundError(f"{where}: cannot be sent: {exc}", permanent=True) from None
    except UnicodeEncodeError as exc:
        # http.client encodes header values as Latin-1; anything else cannot go on the wire.
        bad = exc.object[exc.start : exc.end]
        raise OutboundError(
            f"{where}: cannot be sent: a header value is not Latin-1 ({bad!r})", permanent=True
        ) from None
    except requests.exceptions.RequestException as exc:
        raise OutboundError(f"{where}: {_cause(exc)}", permanent=False) from None


def _read(raw: requests.Response) -> bytes:
    """Return the first KEPT_BYTES of the answer, draining the rest so the connection is reused."""
    kept = bytearray()
    seen = 0
    for chunk in raw.iter_content(chunk_size=16 * 1024):
        if len(kept) < KEPT_BYTES:
            kept += chunk[: KEPT_BYTES - len(kept)]
        seen += len(chunk)
        if seen > DRAIN_BYTES:
            break  # closing the response then drops this one connection
    return bytes(kept)


def _never_connected(exc: requests.exceptions.ConnectionError) -> bool:
    """Return whether the error happened while connecting, before anything was sent."""
    from urllib3.exceptions import MaxRetryError, NameResolutionError, NewConnectionError

    reason = exc.args[0] if exc.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, NewConnectionError | NameResolutionError)


def _cause(exc: BaseException) -> str:
    """Return the innermost useful description of a requests/urllib3 error."""
    from urllib3.exceptions import MaxRetryError

    reason: object = exc.args[0] if exc.args else exc
    if isinstance(reason, MaxRetryError) and reason.reason is not None:
        reason = reason.reason
    text = str(reason)
    # urllib3 prefixes its messages with the connection object's repr, which says nothing.
    if text.startswith("<") and ">: " in text:
        text = text.split(">: ", 1)[1]
    return text


def origin(url: str) -> tuple[str, str, int | None]:
    """Return ``(scheme, host, port)`` of a URL, the port defaulted from the scheme."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), parts.port or default


def redact(url: str) -> str:
    """Return ``url`` without a password, fit for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc}"))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Return the seconds a ``Retry-After`` value asks for (delta or HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def body_snippet(body: bytes) -> str:
    """Return the start of an answer's body as one line of text for an error message."""
    text = " ".join(body[: SNIPPET_CHARS * 4].decode("utf-8", "replace").split())
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"
