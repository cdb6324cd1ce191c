"""What the three ingest endpoints share: auth, body limits, gzip, attribution, answers.

Ingest views are plain Django views (no DRF request parsing) so that a batch of
500 items costs one body read, one parse and a few set-based statements.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from console import metrics
from console.auth import AuthError, Principal, authenticate_request
from integrations.models import Plant, System

log = logging.getLogger(__name__)


class IngestError(Exception):
    """A request-level failure with its HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


# --- Body handling -----------------------------------------------------------------


def max_body_bytes() -> int:
    return int(settings.ANDON_MAX_BODY_BYTES)


def read_body(request: HttpRequest) -> bytes:
    """Read the request body, gunzipping it, refusing anything over the size limit.

    The limit applies after decompression, and decompression stops as soon as it
    is passed, so a gzip bomb costs at most the limit in memory.
    """
    limit = max_body_bytes()
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise IngestError(400, "Content-Length is not a number") from None
    if declared > limit:
        raise IngestError(413, f"request body of {declared} bytes exceeds the {limit}-byte limit")
    raw = request.read(limit + 1)
    if len(raw) > limit:
        raise IngestError(413, f"request body exceeds the {limit}-byte limit")
    encoding = request.META.get("HTTP_CONTENT_ENCODING", "").strip().lower()
    if encoding in ("", "identity"):
        return raw
    if encoding != "gzip":
        raise IngestError(415, f"unsupported Content-Encoding {encoding!r}; use gzip or identity")
    return gunzip_limited(raw, limit)


def gunzip_limited(raw: bytes, limit: int) -> bytes:
    """Decompress gzip data, raising 413 once the output passes ``limit`` bytes."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(raw, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            raise IngestError(413, f"decompressed body exceeds the {limit}-byte limit")
        out += inflater.flush()
    except zlib.error as exc:
        raise IngestError(400, f"body is not valid gzip: {exc}") from None
    if len(out) > limit:
        raise IngestError(413, f"decompressed body exceeds the {limit}-byte limit")
    if not inflater.eof:
        raise IngestError(400, "body is not valid gzip: truncated stream")
    return out


def parse_json(body: bytes) -> object:
    """Parse a JSON body; raise 400 naming the position of the error."""
    if not body.strip():
        raise IngestError(400, "request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise IngestError(400, f"malformed JSON: {exc}") from None


def media_type(request: HttpRequest) -> str:
    """Return the request's media type, lower-cased, without parameters."""
    return request.META.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()


def parse_time(value: object, what: str) -> datetime:
    """Parse an RFC 3339 timestamp into an aware datetime; raise ValueError naming ``what``."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be an RFC 3339 timestamp string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{what} is not an RFC 3339 timestamp: {value[:64]!r}") from None
    if parsed.tzinfo is None:
        raise ValueError(f"{what} must carry a time zone offset (e.g. 'Z'): {value[:64]!r}")
    return parsed


# --- Attribution ---------------------------------------------------------------------


@dataclass
class Attribution:
    """Maps source strings (CloudEvents source, service.name) to a system and plant."""

    by_source: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    plant_by_key: dict[str, int] = field(default_factory=dict)
    plant_key_by_id: dict[int, str] = field(default_factory=dict)

    @classmethod
    def load(cls) -> Attribution:
        """Read the landscape's systems and plants (two small queries)."""
        attribution = cls()
        for plant_id, key in Plant.objects.values_list("id", "key"):
            attribution.plant_by_key[key] = plant_id
            attribution.plant_key_by_id[plant_id] = key
        for system_id, key, sources, plant_id in System.objects.values_list(
            "id", "key", "sources", "plant_id"
        ):
            for source in sources or [key]:
                attribution.by_source[str(source)] = (system_id, plant_id)
            attribution.by_source.setdefault(key, (system_id, plant_id))
        return attribution

    def resolve(self, source: str) -> tuple[int | None, int | None]:
        """Return ``(system_id, plant_id)`` for a source; ``(None, None)`` when unattributed."""
        hit = self.by_source.get(source)
        if hit is None and source.startswith("/"):
            hit = self.by_source.get(source.lstrip("/"))
        return hit if hit is not None else (None, None)


def plant_denied(
    principal: Principal, plant_id: int | None, attribution: Attribution
) -> str | None:
    """Return why a plant-scoped principal may not post an item of ``plant_id``, else None.

    A scoped token may post items of its plant and unattributed items (kept, and
    attributed to its plant when they carry none).
    """
    if principal.plant_ids is None or plant_id is None or plant_id in principal.plant_ids:
        return None
    other = attribution.plant_key_by_id.get(plant_id, str(plant_id))
    mine = ", ".join(sorted(principal.plant_keys))
    return f"token is scoped to plant {mine}; this item belongs to plant {other}"


# --- Answers ---------------------------------------------------------------------------


@dataclass
class BatchResult:
    """What happened to each item of a batch (CONTRACT's answer shape)."""

    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict[str, object]] = field(default_factory=list)
    forbidden: int = 0

    def reject(self, index: int, item_id: object, error: str, *, forbidden: bool = False) -> None:
        self.rejected.append(
            {"index": index, "id": "" if item_id is None else str(item_id), "error": error}
        )
        if forbidden:
            self.forbidden += 1

    def response(self) -> HttpResponse:
        """202 when anything was acceptable; 403 when all failed on plant scope; else 400."""
        body = {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected}
        if self.accepted or self.duplicates:
            status = 202
        elif self.rejected and self.forbidden == len(self.rejected):
            status = 403
        else:
            status = 400
        return json_response(body, status)


def json_response(body: object, status: int, headers: dict[str, str] | None = None) -> HttpResponse:
    response = HttpResponse(orjson.dumps(body), status=status, content_type="application/json")
    for key, value in (headers or {}).items():
        response[key] = value
    return response


def error_body(message: str) -> dict[str, object]:
    return {"accepted": 0, "duplicates": 0, "rejected": [], "error": message}


# --- The view wrapper ------------------------------------------------------------------


class _Gate:
    """Bounds concurrent ingest requests per process; past it, answer 503 + Retry-After."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0

    def enter(self) -> bool:
        with self._lock:
            if self._active >= settings.ANDON_MAX_CONCURRENT_INGEST:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._active -= 1


_gate = _Gate()

ErrorRenderer = Callable[[HttpRequest, int, str], HttpResponse]


def _default_error(request: HttpRequest, status: int, message: str) -> HttpResponse:
    return json_response(error_body(message), status)


def ingest_view(
    endpoint: str, render_error: ErrorRenderer = _default_error
) -> Callable[[Callable[[HttpRequest, Principal], HttpResponse]], Callable[..., HttpResponse]]:
    """Wrap an ingest view: POST only, bearer auth with an ingest-capable role,
    overload shedding, request-level errors rendered by ``render_error``, metrics.

    The wrapped function receives ``(request, principal)`` and returns a response.
    """

    def decorate(
        func: Callable[[HttpRequest, Principal], HttpResponse],
    ) -> Callable[..., HttpResponse]:
        @csrf_exempt
        @functools.wraps(func)
        def view(request: HttpRequest, *args, **kwargs) -> HttpResponse:  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            response = _run(request, func, render_error)
            seconds = time.perf_counter() - started
            counts = getattr(response, "andon_counts", (0, 0, 0))
            metrics.record_ingest(endpoint, response.status_code, seconds, *counts)
            return response

        return view

    return decorate


def _run(
    request: HttpRequest,
    func: Callable[[HttpRequest, Principal], HttpResponse],
    render_error: ErrorRenderer,
) -> HttpResponse:
    if request.method != "POST":
        response = render_error(request, 405, f"method {request.method} not allowed; use POST")
        response["Allow"] = "POST"
        return response
    try:
        principal = authenticate_request(request)
    except AuthError as exc:
        response = render_error(request, exc.status, exc.message)
        response["WWW-Authenticate"] = 'Bearer realm="andon"'
        return response
    except OperationalError:
        return _unavailable(request, render_error)
    if not principal.may_ingest():
        return render_error(request, 403, f"a token with role {principal.role!r} may not ingest")
    if not _gate.enter():
        response = render_error(request, 503, "ingest is overloaded; retry later")
        response["Retry-After"] = "1"
        return response
    try:
        return func(request, principal)
    except IngestError as exc:
        response = render_error(request, exc.status, exc.message)
        if exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
        return response
    except (OperationalError, InterfaceError):
        log.exception("database unavailable during ingest")
        return _unavailable(request, render_error)
    finally:
        _gate.leave()


def _unavailable(request: HttpRequest, render_error: ErrorRenderer) -> HttpResponse:
    response = render_error(request, 503, "database unavailable; retry later")
    response["Retry-After"] = "5"
    return response


def with_counts(response: HttpResponse, result: BatchResult) -> HttpResponse:
    """Attach a batch's counts to its response for the metrics wrapper."""
    response.andon_counts = (result.accepted, result.duplicates, len(result.rejected))  # type: ignore[attr-defined]
    return response
