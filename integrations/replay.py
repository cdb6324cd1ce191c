"""Replay: re-drive captured messages through their connector's adapter, one or many at a time.

Only admins replay, and a plant-scoped admin only its plants' messages. The
functions the API (``integrations.replay_api``) and the pages call:

- :func:`selection` and :func:`preview`: what a filter selects, and the exact
  requests a replay of it would send (a dry run);
- :func:`start_replay`: commits a :class:`ReplayJob`, one :class:`ReplayItem` per
  selected message (one ``INSERT ... SELECT``) and its outbox tasks in ONE
  transaction, before any broker hears of it;
- :func:`approve` (a second admin) and :func:`cancel`;
- :func:`job_progress` and :func:`job_items`: progress and each message's outcome.

The target receives the captured body and content type (or an admin's edited
copy) with ``Idempotency-Key: <connector>:<message external id>`` (the same on
every replay of a message), ``X-Andon-Replay: <job id>`` and a W3C ``traceparent``
(the original trace when the message carried one).

The worker side is the outbox handler ``replay.run_job``: a job is split in up to
``ANDON_REPLAY_PARALLELISM`` shards (items by ``id % shards``), one outbox task
each, so several workers share a large job. A shard claims a batch of due items
of one connector, takes that many tokens from the connector's rate bucket (shared
by every process through Redis when configured), marks the batch ``sending`` and
COMMITS, sends it with the adapter's ``deliver_many`` over one connection, then
records the outcomes set-based: the items, one new :class:`MessageAttempt` per
message (``replay_id`` = the job) and the messages' current status (ingest's
``refresh_from_attempts``). Transient errors are retried with backoff up to the
connector's ``max_attempts`` and then dead-lettered; permanent errors fail at
once. A shard that finds items of its own still ``sending`` when it starts was
killed mid-batch: those are marked ``uncertain`` and NOT sent again (a human
decides; the Idempotency-Key lets the target drop a duplicate).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, F, Min, Q, QuerySet
from django.db.models.functions import Coalesce
from django.utils import timezone

from console import live, outbox
from console.auth import Principal
from console.models import OutboxTask
from integrations.adapters import (
    AdapterError,
    ConfigError,
    DeliveryResult,
    get_adapter,
    validate_adapter_config,
    validate_replay_policy,
)
from integrations.failures import FAILED_STATUSES, ErrorGroup
from integrations.ingest.messages import refresh_from_attempts
from integrations.models import (
    Connector,
    Message,
    MessageAttempt,
    MessageStatus,
    Plant,
    ReplayItem,
    ReplayItemState,
    ReplayJob,
    ReplayState,
)
from integrations.queries import STATUSES, FilterError, MessageFilter, parse_instant

log = logging.getLogger(__name__)

TASK = "replay.run_job"
FILTER_FIELDS = (
    "connector",
    "status",
    "since",
    "until",
    "error",
    "plant",
    "key",
    "message_ids",
    "alert",
    "error_group",
)
MAX_JOB_MESSAGES = 100_000
MAX_ERROR_TEXT = 2000
# A shard whose next retry is this close sleeps for it; a later one frees its worker.
SHORT_WAIT_S = 2.0
MAX_BACKOFF_S = 3600.0
DEFAULT_CONTENT_TYPE = "application/octet-stream"
REPLAY_ID_PLACEHOLDER = "<replay id>"
PARENT_ID_PLACEHOLDER = "<parent id>"
OPEN_ITEM_STATES = (
    ReplayItemState.PENDING.value,
    ReplayItemState.RETRYING.value,
    ReplayItemState.SENDING.value,
)
ACTIVE_JOB_STATES = (
    ReplayState.PENDING_APPROVAL.value,
    ReplayState.QUEUED.value,
    ReplayState.RUNNING.value,
)
UNCERTAIN_ERROR = (
    "its worker stopped while this message was being sent, so whether it arrived is unknown; "
    "it was not sent again (replay it once more if the target lacks it: the Idempotency-Key "
    "lets the target drop a duplicate)"
)
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


# --- Errors --------------------------------------------------------------------------------


class ReplayError(Exception):
    """A replay request is wrong; ``field`` names what, ``status`` is the HTTP answer."""

    status = 400

    def __init__(self, field: str, message: str, status: int | None = None) -> None:
        self.field = field
        self.detail = message
        self.message = f"{field}: {message}" if field else message
        super().__init__(self.message)
        if status is not None:
            self.status = status


class ReplayFilterError(ReplayError):
    """A filter field is wrong (the API names it ``filter.<field>``)."""


class ReplayForbidden(ReplayError):
    """The caller may not do this (not an admin, another plant, approving its own job)."""

    status = 403


class ReplayFilterForbidden(ReplayFilterError, ReplayForbidden):
    """A filter field asks for what the caller may not see (another plant)."""

    status = 403


class ReplayNotFound(ReplayError):
    """No such replay job in the caller's plants."""

    status = 404


class ReplayConflict(ReplayError):
    """The job is not in a state that allows this (approve a running job...)."""

    status = 409


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise ReplayForbidden("", "only admins may replay messages")


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


# --- Filters ---------------------------------------------------------------------------------


def _strings(raw: object, name: str) -> list[str]:
    """Read a string (comma-separated) or a list of strings."""
    if raw is None:
        return []
    if isinstance(raw, str):
        values = raw.split(",")
    elif isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        values = raw
    else:
        raise ReplayFilterError(
            name, f"must be a string or a list of strings, not {_type_name(raw)}"
        )
    return list(dict.fromkeys(v.strip() for v in values if v.strip()))


def _text(raw: object, name: str, max_length: int = 1000) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise ReplayFilterError(name, f"must be a string, not {_type_name(raw)}")
    if len(raw) > max_length:
        raise ReplayFilterError(name, f"exceeds {max_length} characters")
    return raw.strip()


def _instant(raw: object, name: str) -> datetime | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, datetime):
        return raw
    if not isinstance(raw, str):
        raise ReplayFilterError(name, f"must be an ISO 8601 time string, not {_type_name(raw)}")
    try:
        return parse_instant(raw, name)
    except FilterError as exc:
        raise ReplayFilterError(name, exc.message.removeprefix(f"{name}: ")) from None


def _positive_int(raw: object, name: str) -> int:
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw.strip())
    if isinstance(raw, bool) or not isinstance(raw, int) or raw < 1:
        raise ReplayFilterError(name, f"must be a positive integer id, not {raw!r}"[:200])
    return raw


def _message_ids(raw: object) -> tuple[int, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, int | str) and not isinstance(raw, bool):
        raw = [raw]
    if not isinstance(raw, list):
        raise ReplayFilterError("message_ids", f"must be a list of ids, not {_type_name(raw)}")
    if len(raw) > MAX_JOB_MESSAGES:
        raise ReplayFilterError("message_ids", f"lists more than {MAX_JOB_MESSAGES} ids")
    return tuple(dict.fromkeys(_positive_int(v, "message_ids") for v in raw))


@dataclass(frozen=True)
class ReplayFilter:
    """A validated replay filter: the explorer's filters plus ids, an error group, an alert."""

    messages: MessageFilter
    message_ids: tuple[int, ...] | None = None
    error_group: str | None = None
    alert: MessageFilter | None = None
    alert_id: int | None = None

    def apply(self, messages: QuerySet[Message]) -> QuerySet[Message]:
        """Return ``messages`` narrowed by every part of this filter."""
        messages = self.messages.apply(messages)
        if self.message_ids is not None:
            messages = messages.filter(pk__in=self.message_ids)
        if self.error_group is not None:
            messages = messages.alias(error_group=ErrorGroup("error")).filter(
                error_group=self.error_group
            )
        if self.alert is not None:
            messages = self.alert.apply(messages)
        return messages


def parse_filter(raw: object, principal: Principal) -> ReplayFilter:
    """Validate a filter dict; raise ReplayFilterError naming the field, ReplayForbidden (403).

    Keys (all optional, at least one): ``connector`` (keys), ``status``
    (received, delivered, failed, dead_lettered), ``since``/``until`` (ISO 8601,
    on ``occurred_at``), ``error`` (substring), ``plant`` (keys), ``key`` (a
    correlation id or business key), ``message_ids`` (Andon ids), ``alert`` (an
    alert id: the failed messages behind it) and ``error_group`` (a failure
    group's pattern, see ``integrations.failures``). Several values of
    ``connector``, ``status`` and ``plant`` may be a list or comma-separated.
    """
    if not isinstance(raw, dict):
        raise ReplayFilterError("", f"the filter must be an object, not {_type_name(raw)}")
    for name in raw:
        if name not in FILTER_FIELDS:
            raise ReplayFilterError(
                str(name), f"unknown filter field (expected one of: {', '.join(FILTER_FIELDS)})"
            )
    if not any(raw.get(name) not in (None, "", []) for name in FILTER_FIELDS):
        raise ReplayFilterError(
            "", f"the filter is empty: narrow it with one of {', '.join(FILTER_FIELDS)}"
        )

    statuses = _strings(raw.get("status"), "status")
    for status in statuses:
        if status not in STATUSES:
            raise ReplayFilterError(
                "status", f"unknown status {status[:40]!r}; use one of {', '.join(STATUSES)}"
            )
    since = _instant(raw.get("since"), "since")
    until = _instant(raw.get("until"), "until")
    if since is not None and until is not None and until <= since:
        raise ReplayFilterError("until", "must be after since")

    connector_keys = _strings(raw.get("connector"), "connector")
    connector_ids: tuple[int, ...] | None = None
    if connector_keys:
        found = dict(Connector.objects.filter(key__in=connector_keys).values_list("key", "id"))
        unknown = [k for k in connector_keys if k not in found]
        if unknown:
            raise ReplayFilterError("connector", f"unknown connector {unknown[0][:128]!r}")
        connector_ids = tuple(found[k] for k in connector_keys)

    plant_keys = _strings(raw.get("plant"), "plant")
    plant_ids: tuple[int, ...] = ()
    if plant_keys:
        found = dict(Plant.objects.filter(key__in=plant_keys).values_list("key", "id"))
        unknown = [k for k in plant_keys if k not in found]
        if unknown:
            raise ReplayFilterError("plant", f"unknown plant {unknown[0][:64]!r}")
        plant_ids = tuple(found[k] for k in plant_keys)
        if principal.plant_ids is not None and not set(plant_ids) <= principal.plant_ids:
            mine = ", ".join(sorted(principal.plant_keys))
            raise ReplayFilterForbidden("plant", f"you are scoped to plant {mine}")

    error_group = raw.get("error_group")
    if error_group is not None and not isinstance(error_group, str):
        raise ReplayFilterError("error_group", f"must be a string, not {_type_name(error_group)}")

    alert_id = None
    alert = None
    if raw.get("alert") not in (None, ""):
        alert_id = _positive_int(raw.get("alert"), "alert")
        alert = alert_message_filter(alert_id, principal)

    messages = MessageFilter(
        plant_keys=tuple(plant_keys),
        plant_ids=plant_ids,
        connector_keys=tuple(connector_keys),
        connector_ids=connector_ids,
        statuses=tuple(statuses),
        since=since,
        until=until,
        error=_text(raw.get("error"), "error"),
        key=_text(raw.get("key"), "key", 255),
    )
    return ReplayFilter(
        messages=messages,
        message_ids=_message_ids(raw.get("message_ids")),
        error_group=error_group,
        alert=alert,
        alert_id=alert_id,
    )


def alert_message_filter(alert_id: int, principal: Principal) -> MessageFilter:
    """Return the filter of the failed messages behind an alert the principal sees.

    A follow-up or match alert's key is a business key: its failed messages
    (by correlation id or business key), narrowed to the connectors of the
    rule's ``flow`` label when the landscape has any. A threshold alert: its
    connector's failed messages over the rule's window before the alert began.
    A heartbeat alert: the failed messages of the silent connector, or of the
    connectors into or out of the silent system, since the silence began.
    """
    from monitors.models import Alert, RuleKind

    alert = (
        principal.scope(Alert.objects.select_related("rule"), "plant").filter(pk=alert_id).first()
    )
    if alert is None:
        raise ReplayFilterError("alert", f"no alert {alert_id} in your plants")
    definition = alert.rule.definition or {}
    if alert.rule.kind == RuleKind.THRESHOLD:
        key = definition.get("connector") or alert.key
        window = float(definition.get("window_s") or 0)
        return MessageFilter(
            connector_ids=tuple(Connector.objects.filter(key=key).values_list("id", flat=True)),
            statuses=FAILED_STATUSES,
            since=alert.started_at - timedelta(seconds=window),
        )
    if alert.rule.kind == RuleKind.HEARTBEAT:
        source = definition.get("source") or alert.key
        touching = Q(key=source) | Q(target__key=source) | Q(source__key=source)
        return MessageFilter(
            connector_ids=tuple(Connector.objects.filter(touching).values_list("id", flat=True)),
            statuses=FAILED_STATUSES,
            since=alert.started_at,
        )
    connector_ids = None
    flow = (alert.labels or {}).get("flow")
    if flow:
        in_flow = tuple(Connector.objects.filter(flow=flow).values_list("id", flat=True))
        connector_ids = in_flow or None
    return MessageFilter(key=alert.key, statuses=FAILED_STATUSES, connector_ids=connector_ids)


def selection(filter: dict[str, Any], principal: Principal) -> QuerySet[Message]:
    """Return the messages ``filter`` selects in the principal's plants, oldest first.

    ``filter`` keys: ``connector``, ``status``, ``since``, ``until``, ``error``,
    ``plant``, ``key``, ``message_ids``, ``alert``, ``error_group`` (see
    :func:`parse_filter`). Raise ReplayFilterError naming a bad field.
    """
    spec = parse_filter(filter, principal)
    messages = spec.apply(principal.scope(Message.objects.all(), "plant"))
    return messages.order_by("occurred_at", "id")


# --- Connector policy ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayPolicy:
    """A connector's ``replay:`` policy with its defaults (see ``validate_replay_policy``).

    ``approve_edits``: an edited payload needs a second admin's approval; true
    when the policy says so, and by default when it sets ``approval_above``
    (the connector asked for approvals).
    """

    max_attempts: int = 5
    backoff_s: float = 30.0
    rate_per_s: float = 10.0
    approval_above: int | None = None
    approve_edits: bool = False

    @classmethod
    def of(cls, connector: Connector) -> ReplayPolicy:
        """Return the connector's policy (defaults when it has none or a broken one)."""
        raw = dict(connector.replay_policy or {})
        approve_edits = raw.pop("approve_edits", None)
        try:
            policy = validate_replay_policy(raw)
        except ConfigError as exc:
            log.warning(
                "connector %s has an invalid replay policy (%s); using defaults", connector, exc
            )
            policy = validate_replay_policy({})
        approval_above = policy.get("approval_above")
        return cls(
            max_attempts=int(policy["max_attempts"]),
            backoff_s=float(policy["backoff_s"]),
            rate_per_s=float(policy["rate_per_s"]),
            approval_above=approval_above,
            approve_edits=(
                bool(approve_edits) if approve_edits is not None else approval_above is not None
            ),
        )

    def backoff(self, attempts: int) -> float:
        """Return the wait before the next try after ``attempts`` tries (doubling each time)."""
        return min(MAX_BACKOFF_S, self.backoff_s * 2 ** max(0, attempts - 1))

    @property
    def batch_size(self) -> int:
        """Return how many messages one claim takes: a batch, at most one second's rate."""
        return max(1, min(settings.ANDON_REPLAY_BATCH, int(self.rate_per_s)))


def approval_threshold(connectors: Iterable[Connector]) -> int:
    """Return the job size above which a second admin must approve (the strictest connector)."""
    limits = [ReplayPolicy.of(c).approval_above for c in connectors]
    given = [limit for limit in limits if limit is not None]
    return min(given) if given else settings.ANDON_REPLAY_APPROVAL_ABOVE


def replay_problem(connector: Connector) -> str:
    """Return why a connector's messages cannot be replayed ("" when they can)."""
    if not connector.adapter:
        return f"connector {connector.key} has no adapter configured to replay through"
    try:
        validate_adapter_config(connector.adapter)
    except ConfigError as exc:
        return f"connector {connector.key} has an invalid adapter: {exc}"
    return ""


# --- The requests -----------------------------------------------------------------------------


def idempotency_key(connector_key: str, external_id: str) -> str:
    """Return ``<connector>:<external id>``, percent-encoding what a header cannot carry."""
    value = f"{connector_key}:{external_id}"
    if all(" " <= ch <= "~" for ch in value):
        return value
    return "".join(ch if " " <= ch <= "~" and ch != "%" else _percent(ch) for ch in value)


def _percent(ch: str) -> str:
    return "".join(f"%{byte:02X}" for byte in ch.encode("utf-8"))


def trace_id_of(message: Message) -> str:
    """Return the trace a replay of ``message`` continues: its own, else one derived from it."""
    for name, value in (message.headers or {}).items():
        if name.lower() == "traceparent" and isinstance(value, str):
            match = _TRACEPARENT.match(value.strip().lower())
            if match and match.group(1) != "0" * 32:
                return match.group(1)
    seed = f"andon-message:{message.connector_id}:{message.external_id}".encode()
    return hashlib.sha256(seed).hexdigest()[:32]


def traceparent(message: Message, job_id: int | None) -> str:
    """Return the W3C traceparent of a replay of ``message`` by job ``job_id``."""
    if job_id is None:
        return f"00-{trace_id_of(message)}-{PARENT_ID_PLACEHOLDER}-01"
    parent = hashlib.sha256(f"andon-replay:{job_id}:{message.pk}".encode()).hexdigest()[:16]
    if parent == "0" * 16:
        parent = "0" * 15 + "1"
    return f"00-{trace_id_of(message)}-{parent}-01"


def replay_headers(
    message: Message, connector_key: str, job_id: int | None, content_type: str
) -> dict[str, str]:
    """Return the headers Andon sets on a replay (the adapter adds the connector's own)."""
    return {
        "Content-Type": content_type or DEFAULT_CONTENT_TYPE,
        "Idempotency-Key": idempotency_key(connector_key, message.external_id),
        "X-Andon-Replay": REPLAY_ID_PLACEHOLDER if job_id is None else str(job_id),
        "traceparent": traceparent(message, job_id),
    }


@dataclass
class ReplayRequest:
    """One delivery a replay makes (or a dry run shows): where, which headers, which body.

    ``headers`` are what the target receives from Andon: the connector's
    configured headers and Andon's own (``Content-Type``, ``Idempotency-Key``,
    ``X-Andon-Replay``, ``traceparent``); a dry run shows ``<replay id>`` and
    ``<parent id>`` where the started replay puts its own. ``problem`` says why
    it would not be sent ("" when it would).
    """

    message_id: int
    connector: str
    adapter: str
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    problem: str = ""

    def as_json(self) -> dict[str, Any]:
        """Return the request as the API shows it: ``body`` as text when UTF-8, else base64."""
        try:
            text: str | None = self.body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return {
            "message": self.message_id,
            "connector": self.connector,
            "adapter": self.adapter,
            "method": self.method,
            "url": self.url,
            "headers": self.headers,
            "body": text,
            "body_b64": None if text is not None else base64.b64encode(self.body).decode(),
            "problem": self.problem,
        }


def adapter_target(config: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    """Return (method, url, configured headers) of an adapter config, as a dry run shows them."""
    kind = config.get("kind", "")
    if kind == "http":
        return (
            str(config.get("method", "POST")).upper(),
            str(config.get("url", "")),
            dict(config.get("headers") or {}),
        )
    if kind == "mqtt":
        url = f"mqtt://{config.get('host')}:{config.get('port', 1883)}/{config.get('topic')}"
        return f"PUBLISH qos={config.get('qos', 1)}", url, {}
    if kind == "amqp":
        url = f"{config.get('url')} exchange={config.get('exchange', '')!r}"
        return f"PUBLISH routing_key={config.get('routing_key')}", url, {}
    return "", "", {}


def planned_request(
    message: Message,
    job_id: int | None,
    *,
    body: bytes | None = None,
    content_type: str | None = None,
) -> ReplayRequest:
    """Return the request a replay of ``message`` sends (``body``: an edited copy instead)."""
    connector = message.connector
    problem = replay_problem(connector)
    config: dict[str, Any] = {}
    if not problem:
        config = validate_adapter_config(connector.adapter)
    method, url, configured = adapter_target(config)
    if body is None:
        if message.payload is None and not problem:
            problem = "no payload was captured for this message"
        body = bytes(message.payload) if message.payload is not None else b""
        content_type = message.content_type
    ours = replay_headers(message, connector.key, job_id, content_type or message.content_type)
    return ReplayRequest(
        message_id=message.pk,
        connector=connector.key,
        adapter=str(config.get("kind", "")),
        method=method,
        url=url,
        headers={**configured, **ours},
        body=body,
        problem=problem,
    )


@dataclass
class Preview:
    """What a replay of a filter would do: how many, a sample, the exact requests.

    ``requests`` are those of the ``sample`` messages, in order. ``replayable``
    counts the selected messages that would be sent (an adapter and a payload);
    ``needs_approval`` says whether starting it waits for a second admin.
    """

    count: int
    sample: list[Message]
    requests: list[ReplayRequest]
    replayable: int = 0
    needs_approval: bool = False
    approval_above: int = 0


def _connectors_of(messages: QuerySet[Message]) -> list[Connector]:
    ids = messages.order_by().values("connector_id").distinct()
    return list(Connector.objects.filter(pk__in=ids))


def preview(filter: dict[str, Any], principal: Principal, sample: int = 5) -> Preview:
    """Return the count, a sample and the exact requests of a replay of ``filter`` (admins).

    Changes nothing. Raise ReplayForbidden for non-admins, ReplayFilterError
    naming a bad filter field.
    """
    _require_admin(principal)
    messages = selection(filter, principal)
    count = messages.count()
    rows = list(messages.select_related("connector")[: max(0, sample)])
    connectors = _connectors_of(messages)
    sendable = [c.pk for c in connectors if not replay_problem(c)]
    replayable = messages.filter(connector_id__in=sendable, payload__isnull=False).count()
    threshold = approval_threshold(connectors)
    return Preview(
        count=count,
        sample=rows,
        requests=[planned_request(m, None) for m in rows],
        replayable=replayable,
        needs_approval=count > threshold,
        approval_above=threshold,
    )


# --- Starting, approving, cancelling -------------------------------------------------------


def _job_filter(
    filter: dict[str, Any] | None, message_ids: Sequence[int] | None, alert_id: int | None
) -> dict[str, Any]:
    if filter is not None and not isinstance(filter, dict):
        raise ReplayFilterError("", f"the filter must be an object, not {_type_name(filter)}")
    merged = dict(filter or {})
    if message_ids is not None:
        merged["message_ids"] = list(message_ids)
    if alert_id is not None:
        merged["alert"] = alert_id
    return merged


def _edited_body(edited_payload: object) -> bytes | None:
    if edited_payload is None:
        return None
    if isinstance(edited_payload, str):
        body = edited_payload.encode("utf-8")
    elif isinstance(edited_payload, bytes | bytearray | memoryview):
        body = bytes(edited_payload)
    else:
        raise ReplayError(
            "edited_payload", f"must be bytes or text, not {_type_name(edited_payload)}"
        )
    if len(body) > settings.ANDON_MAX_BODY_BYTES:
        raise ReplayError(
            "edited_payload",
            f"exceeds {settings.ANDON_MAX_BODY_BYTES} bytes (ANDON_MAX_BODY_BYTES)",
        )
    return body


def _qn(name: str) -> str:
    return connection.ops.quote_name(name)


def _insert_items(job: ReplayJob, messages: QuerySet[Message]) -> int:
    """Insert a pending item per selected message (one ``INSERT ... SELECT``); return how many."""
    inner, params = messages.order_by().values("id", "occurred_at").query.sql_with_params()
    table = _qn(ReplayItem._meta.db_table)
    columns = ", ".join(
        _qn(c)
        for c in ("job_id", "message_id", "state", "attempts", "error", "edited_content_type")
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT %s, s.id, %s, 0, '', '' FROM ({inner}) s "
            "ORDER BY s.occurred_at, s.id",
            [job.pk, ReplayItemState.PENDING.value, *params],
        )
        return max(0, cursor.rowcount)


def _skip_unsendable(job: ReplayJob, connectors: list[Connector], payload_required: bool) -> int:
    """Mark items that cannot be sent as skipped, saying why; return how many are skipped."""
    items = ReplayItem.objects.filter(job=job)
    for connector in connectors:
        problem = replay_problem(connector)
        if problem:
            items.filter(message__connector_id=connector.pk).update(
                state=ReplayItemState.SKIPPED, error=problem
            )
    if payload_required:
        items.filter(state=ReplayItemState.PENDING, message__payload__isnull=True).update(
            state=ReplayItemState.SKIPPED, error="no payload was captured for this message"
        )
    return items.filter(state=ReplayItemState.SKIPPED).count()


def _single_plant(plant_ids: Iterable[int | None]) -> int | None:
    found = list(plant_ids)
    return found[0] if len(found) == 1 else None


def _enqueue_shards(job_id: int, replayable: int) -> int:
    """Queue the job's shards in the outbox (inside the caller's transaction); return how many."""
    wanted = math.ceil(replayable / settings.ANDON_REPLAY_BATCH)
    shards = max(1, min(settings.ANDON_REPLAY_PARALLELISM, wanted))
    for shard in range(shards):
        outbox.enqueue(
            TASK,
            {"job": job_id, "shard": shard, "shards": shards},
            dedup_key=f"replay:{job_id}:{shard}",
        )
    return shards


def start_replay(
    principal: Principal,
    *,
    filter: dict[str, Any] | None = None,
    message_ids: Sequence[int] | None = None,
    reason: str,
    dry_run: bool = False,
    edited_payload: bytes | str | None = None,
    edited_content_type: str | None = None,
    alert_id: int | None = None,
) -> ReplayJob:
    """Start a replay of the messages selected by ``filter``, ``message_ids`` and ``alert_id``.

    Admins only (ReplayForbidden otherwise); a plant-scoped admin selects in its
    plants only. The three selectors combine (all must hold). In ONE transaction:
    the job, an item per message (messages without adapter or payload are
    ``skipped`` with the reason) and its outbox tasks, so nothing is sent unless
    all of it is committed, and nothing committed is lost.

    - ``dry_run``: records a ``dry_run`` job (who looked at what) with the count,
      and nothing else: no items, no tasks, nothing sent (see :func:`preview`).
    - ``edited_payload`` (bytes or text; one message only): send this copy, once,
      instead of the captured body (which stays untouched); ``edited_content_type``
      replaces the content type. The item keeps the copy: the audit of who
      edited what, when, against the original on the message.
    - A job above the connectors' ``approval_above`` (else
      ``ANDON_REPLAY_APPROVAL_ABOVE``) messages, or an edit where the policy asks
      for it, waits in ``pending_approval`` for a second admin (:func:`approve`).

    Raise ReplayFilterError/ReplayError (400) naming a bad field, including a
    filter that selects nothing.
    """
    _require_admin(principal)
    raw = _job_filter(filter, message_ids, alert_id)
    spec = parse_filter(raw, principal)
    edited = _edited_body(edited_payload)
    if edited_content_type is not None:
        if edited is None:
            raise ReplayError("edited_content_type", "is only used with edited_payload")
        if not isinstance(edited_content_type, str) or len(edited_content_type) > 255:
            raise ReplayError("edited_content_type", "must be a content type of at most 255 chars")
    messages = spec.apply(principal.scope(Message.objects.all(), "plant"))
    common = {
        "created_by": principal.name,
        "reason": (reason or "").strip(),
        "filter": raw,
        "alert_id": spec.alert_id,
    }
    if dry_run:
        count = messages.count()
        if count == 0:
            raise ReplayFilterError("", "the filter selects no messages (in your plants)")
        plants = messages.order_by().values_list("plant_id", flat=True).distinct()[:2]
        return ReplayJob.objects.create(
            **common,
            state=ReplayState.DRY_RUN,
            dry_run=True,
            edited=edited is not None,
            total=count,
            plant_id=_single_plant(plants),
            finished_at=timezone.now(),
        )
    with transaction.atomic():
        job = ReplayJob.objects.create(**common, state=ReplayState.QUEUED)
        total = _insert_items(job, messages)
        if total == 0:
            raise ReplayFilterError("", "the filter selects no messages (in your plants)")
        if total > MAX_JOB_MESSAGES:
            raise ReplayFilterError(
                "",
                f"the filter selects {total} messages; a replay takes at most {MAX_JOB_MESSAGES}",
            )
        items = ReplayItem.objects.filter(job=job)
        connectors = list(
            Connector.objects.filter(
                pk__in=items.order_by().values("message__connector_id").distinct()
            )
        )
        if edited is not None and total != 1:
            raise ReplayError(
                "edited_payload", f"edit-and-replay sends one message; this selection has {total}"
            )
        skipped = _skip_unsendable(job, connectors, payload_required=edited is None)
        if edited is not None:
            message = items.select_related("message").get().message
            items.update(
                edited_payload=edited,
                edited_content_type=edited_content_type or message.content_type,
            )
        plants = items.order_by().values_list("message__plant_id", flat=True).distinct()[:2]
        needs_approval = total > approval_threshold(connectors) or (
            edited is not None and any(ReplayPolicy.of(c).approve_edits for c in connectors)
        )
        replayable = total - skipped
        state = ReplayState.PENDING_APPROVAL if needs_approval else ReplayState.QUEUED
        finished_at = None
        if replayable == 0:
            state, finished_at = ReplayState.DONE, timezone.now()
        ReplayJob.objects.filter(pk=job.pk).update(
            total=total,
            skipped=skipped,
            plant_id=_single_plant(plants),
            edited=edited is not None,
            needs_approval=needs_approval,
            state=state,
            finished_at=finished_at,
        )
        if state == ReplayState.QUEUED:
            _enqueue_shards(job.pk, replayable)
        job.refresh_from_db()
        _publish_on_commit(job)
    return job


def visible_jobs(principal: Principal) -> QuerySet[ReplayJob]:
    """Return the replay jobs the principal sees (a plant-scoped one: its plants' jobs)."""
    return principal.scope(ReplayJob.objects.all(), "plant")


def _job_for(job_id: int, principal: Principal, *, lock: bool = False) -> ReplayJob:
    jobs = visible_jobs(principal).filter(pk=job_id)
    if lock:
        jobs = jobs.select_for_update()
    job = jobs.first()
    if job is None:
        raise ReplayNotFound("", f"no replay {job_id} in your plants")
    return job


def approve(job_id: int, principal: Principal) -> ReplayJob:
    """Approve a job waiting in ``pending_approval``: a SECOND admin, not its creator.

    Queues it (in the outbox, with the approval, in one transaction). Raise
    ReplayForbidden for its creator or a non-admin, ReplayConflict when the job
    is not waiting for approval, ReplayNotFound outside the caller's plants.
    """
    _require_admin(principal)
    with transaction.atomic():
        job = _job_for(job_id, principal, lock=True)
        if job.state != ReplayState.PENDING_APPROVAL:
            raise ReplayConflict("state", f"replay {job_id} is {job.state}, not pending_approval")
        if job.created_by == principal.name:
            raise ReplayForbidden(
                "approved_by", "a second admin must approve this replay; you started it"
            )
        now = timezone.now()
        ReplayJob.objects.filter(pk=job.pk).update(
            state=ReplayState.QUEUED, approved_by=principal.name, approved_at=now
        )
        pending = ReplayItem.objects.filter(job=job, state=ReplayItemState.PENDING).count()
        _enqueue_shards(job.pk, pending)
        job.refresh_from_db()
        _publish_on_commit(job)
    return job


def cancel(job_id: int, principal: Principal) -> ReplayJob:
    """Cancel a job that has not finished: its remaining items are cancelled, none sent.

    A batch already in flight finishes and is recorded. Raise ReplayConflict
    for a finished job, ReplayForbidden for non-admins.
    """
    _require_admin(principal)
    with transaction.atomic():
        job = _job_for(job_id, principal, lock=True)
        if job.state not in ACTIVE_JOB_STATES:
            raise ReplayConflict("state", f"replay {job_id} is {job.state}; it cannot be cancelled")
        now = timezone.now()
        ReplayJob.objects.filter(pk=job.pk).update(
            state=ReplayState.CANCELLED, cancelled_by=principal.name, finished_at=now
        )
        ReplayItem.objects.filter(
            job=job, state__in=(ReplayItemState.PENDING, ReplayItemState.RETRYING)
        ).update(
            state=ReplayItemState.CANCELLED,
            next_attempt_at=None,
            error=f"cancelled by {principal.name}"[:MAX_ERROR_TEXT],
        )
        update_totals(job.pk)
        job.refresh_from_db()
        _publish_on_commit(job)
    return job


# --- Progress ---------------------------------------------------------------------------------


def item_counts(job_id: int) -> dict[str, int]:
    """Return the number of the job's items in each state (every state present, 0 included)."""
    counts = dict.fromkeys(ReplayItemState.values, 0)
    rows = (
        ReplayItem.objects.filter(job_id=job_id)
        .order_by()
        .values_list("state")
        .annotate(n=Count("id"))
    )
    counts.update({state: n for state, n in rows})
    return counts


def update_totals(job_id: int) -> dict[str, int]:
    """Store the job's delivered/failed/dead-lettered/skipped totals from its items."""
    counts = item_counts(job_id)
    ReplayJob.objects.filter(pk=job_id).update(
        delivered=counts[ReplayItemState.DELIVERED],
        failed=counts[ReplayItemState.FAILED],
        dead_lettered=counts[ReplayItemState.DEAD_LETTERED],
        skipped=counts[ReplayItemState.SKIPPED] + counts[ReplayItemState.CANCELLED],
    )
    return counts


def job_json(job: ReplayJob) -> dict[str, Any]:
    """Return a job as the API and the audit list show it."""
    return {
        "id": job.pk,
        "state": job.state,
        "created_by": job.created_by,
        "reason": job.reason,
        "filter": job.filter,
        "dry_run": job.dry_run,
        "edited": job.edited,
        "needs_approval": job.needs_approval,
        "approved_by": job.approved_by or None,
        "approved_at": job.approved_at,
        "cancelled_by": job.cancelled_by or None,
        "plant": job.plant.key if job.plant_id and job.plant else None,
        "alert": job.alert_id,
        "total": job.total,
        "delivered": job.delivered,
        "failed": job.failed,
        "dead_lettered": job.dead_lettered,
        "skipped": job.skipped,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
    }


def _progress_of(job: ReplayJob, counts: dict[str, int]) -> dict[str, Any]:
    remaining = sum(counts[s] for s in OPEN_ITEM_STATES)
    done = job.total - remaining if not job.dry_run else 0
    return {
        **job_json(job),
        "counts": counts,
        "done": done,
        "remaining": remaining,
        "uncertain": counts[ReplayItemState.UNCERTAIN],
        "percent": round(100.0 * done / job.total, 1) if job.total and not job.dry_run else 0.0,
    }


def job_progress(job_id: int, principal: Principal) -> dict[str, Any]:
    """Return a job's figures and progress: the job, ``counts`` per item state, ``done``,
    ``remaining``, ``uncertain`` and ``percent`` (anyone who may read; its plants only)."""
    if not principal.may_read():
        raise ReplayForbidden("", "this role may not read replays")
    job = _job_for(job_id, principal)
    return _progress_of(job, item_counts(job.pk))


def _body_json(body: bytes | None, content_type: str) -> dict[str, Any]:
    if body is None:
        return {"payload": None, "payload_b64": None, "content_type": content_type}
    try:
        text: str | None = bytes(body).decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "payload": text,
        "payload_b64": None if text is not None else base64.b64encode(bytes(body)).decode(),
        "content_type": content_type,
    }


def item_json(item: ReplayItem, principal: Principal) -> dict[str, Any]:
    """Return one item (message, outcome); for an edit, admins also see original vs edited."""
    message = item.message
    out: dict[str, Any] = {
        "id": item.pk,
        "message": item.message_id,
        "connector": message.connector.key,
        "external_id": message.external_id,
        "state": item.state,
        "attempts": item.attempts,
        "sent_at": item.sent_at,
        "next_attempt_at": item.next_attempt_at,
        "latency_ms": item.latency_ms,
        "response_status": item.response_status,
        "error": item.error,
        "edited": item.edited_payload is not None,
    }
    if item.edited_payload is not None and principal.is_admin:
        out["edit"] = {
            "original": _body_json(message.payload, message.content_type),
            "edited": _body_json(item.edited_payload, item.edited_content_type),
        }
    return out


def job_items(
    job_id: int,
    principal: Principal,
    *,
    state: str | None = None,
    after: int = 0,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Return up to ``limit`` items of a job after item id ``after`` (``state``: only those)."""
    if not principal.may_read():
        raise ReplayForbidden("", "this role may not read replays")
    job = _job_for(job_id, principal)
    items = ReplayItem.objects.filter(job=job, pk__gt=after).select_related("message__connector")
    if state:
        if state not in ReplayItemState.values:
            raise ReplayError(
                "state",
                f"unknown item state {state[:40]!r}; use {', '.join(ReplayItemState.values)}",
            )
        items = items.filter(state=state)
    return [item_json(item, principal) for item in items.order_by("id")[:limit]]


def _publish(job: ReplayJob, counts: dict[str, int] | None = None) -> None:
    counts = counts if counts is not None else item_counts(job.pk)
    progress = _progress_of(job, counts)
    event = {
        "replay": job.pk,
        "state": job.state,
        "total": job.total,
        "done": progress["done"],
        "percent": progress["percent"],
        "delivered": counts[ReplayItemState.DELIVERED],
        "failed": counts[ReplayItemState.FAILED],
        "dead_lettered": counts[ReplayItemState.DEAD_LETTERED],
        "uncertain": counts[ReplayItemState.UNCERTAIN],
        "skipped": counts[ReplayItemState.SKIPPED],
        "cancelled": counts[ReplayItemState.CANCELLED],
    }
    live.publish("replays", event, plant_id=job.plant_id)


def _publish_on_commit(job: ReplayJob) -> None:
    job_id = job.pk

    def send() -> None:
        fresh = ReplayJob.objects.filter(pk=job_id).first()
        if fresh is not None:
            _publish(fresh)

    transaction.on_commit(send)


# --- Rate limiting -----------------------------------------------------------------------------

_BUCKET_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local granted = math.min(want, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], 3600)
local wait = 0
if granted < want then
  wait = (want - granted - tokens) / rate
end
return {granted, tostring(wait)}
"""


class RateLimiter:
    """Token buckets, one per connector, shared by every worker and process.

    With ``REDIS_URL`` the bucket lives in Redis (one Lua script call per batch,
    on Redis's clock), so all workers on all machines draw from it together;
    without Redis (the embedded default: one process) it lives in this process.
    A bucket holds at most one second's worth of tokens (``rate``, at least 1), so
    over any span of T seconds a connector gets at most ``rate * (T + 1)`` sends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._local: dict[str, tuple[float, float]] = {}
        self._redis: Any = None
        self._redis_url = ""
        self._script: Any = None

    def key(self, connector_id: int) -> str:
        """Return the bucket's name: per database, so two installations never share one."""
        database = connection.settings_dict.get("NAME") or "default"
        return f"andon:replay:rate:{database}:{connector_id}"

    def acquire(self, connector_id: int, rate_per_s: float, count: int) -> float:
        """Block until ``count`` sends are allowed; return the seconds waited."""
        burst = max(1.0, float(rate_per_s))
        remaining = count
        waited = 0.0
        key = self.key(connector_id)
        while remaining > 0:
            granted, wait = self.take(key, rate_per_s, burst, min(remaining, int(burst)))
            remaining -= granted
            if remaining > 0:
                pause = max(wait, 0.001)
                time.sleep(pause)
                waited += pause
        return waited

    def take(self, key: str, rate: float, burst: float, want: int) -> tuple[int, float]:
        """Take up to ``want`` tokens; return (granted, seconds until the rest could be)."""
        if settings.REDIS_URL:
            try:
                return self._take_redis(key, rate, burst, want)
            except Exception:  # noqa: BLE001 - Redis down: keep limiting in this process
                log.warning("rate bucket in Redis unavailable; limiting per process", exc_info=True)
        return self._take_local(key, rate, burst, want)

    def _take_redis(self, key: str, rate: float, burst: float, want: int) -> tuple[int, float]:
        if self._redis is None or self._redis_url != settings.REDIS_URL:
            import redis

            self._redis = redis.Redis.from_url(
                settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2
            )
            self._redis_url = settings.REDIS_URL
            self._script = self._redis.register_script(_BUCKET_SCRIPT)
        granted, wait = self._script(keys=[key], args=[repr(rate), repr(burst), want])
        return int(granted), float(wait)

    def _take_local(self, key: str, rate: float, burst: float, want: int) -> tuple[int, float]:
        with self._lock:
            now = time.monotonic()
            tokens, at = self._local.get(key, (burst, now))
            tokens = min(burst, tokens + max(0.0, now - at) * rate)
            granted = min(want, int(math.floor(tokens)))
            tokens -= granted
            self._local[key] = (tokens, now)
        wait = (want - granted - tokens) / rate if granted < want else 0.0
        return granted, wait


_rate_limiter = RateLimiter()


def rate_limiter() -> RateLimiter:
    """Return this process's rate limiter (its buckets are shared through Redis when set)."""
    return _rate_limiter


# --- Delivery -----------------------------------------------------------------------------------

Outcome = DeliveryResult | AdapterError | None


def deliver(
    config: dict[str, Any], requests: Sequence[tuple[bytes, dict[str, str]]]
) -> list[Outcome]:
    """Send ``(body, headers)`` pairs through a connector's adapter; one outcome per request.

    The one place replay sends anything: the adapter this thread keeps open for
    the config (``get_adapter``), its ``deliver_many`` over one connection. An
    outcome is the target's :class:`DeliveryResult`, an :class:`AdapterError`
    (``permanent`` or not), or None when the adapter broke mid-batch so what
    arrived is unknown.
    """
    try:
        adapter = get_adapter(config)
    except ConfigError as exc:
        return [AdapterError(f"invalid adapter: {exc}", permanent=True) for _ in requests]
    try:
        outcomes = list(adapter.deliver_many(list(requests)))
    except Exception:  # noqa: BLE001 - an adapter bug must not lose track of the batch
        log.exception("adapter %s failed a whole batch", config.get("kind"))
        return [None for _ in requests]
    if len(outcomes) != len(requests):
        log.error(
            "adapter %s answered %d outcomes for %d requests",
            config.get("kind"),
            len(outcomes),
            len(requests),
        )
        return [None for _ in requests]
    return outcomes


# --- The worker -----------------------------------------------------------------------------------


class LeaseKeeper:
    """Keeps an outbox task's lease alive from a thread while its handler runs.

    A live worker never loses its task, however long a batch takes; a killed one
    stops extending it, and another worker takes the task over once the lease
    (``ANDON_REPLAY_LEASE_S``) runs out.
    """

    def __init__(self, task: OutboxTask | None, lease_s: float) -> None:
        self.task = task
        self.lease_s = lease_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> LeaseKeeper:
        if self.task is not None:
            outbox.extend_lease(self.task, self.lease_s)
            self._thread = threading.Thread(
                target=self._loop, name=f"andon-lease-{self.task.pk}", daemon=True
            )
            self._thread.start()
        return self

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.lease_s / 3):
                try:
                    outbox.extend_lease(self.task, self.lease_s)  # type: ignore[arg-type]
                except Exception:  # noqa: BLE001 - try again next tick
                    log.warning("could not extend a replay task's lease", exc_info=True)
        finally:
            connection.close()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


@outbox.handler(TASK)
def run_job_task(payload: dict[str, Any], task: OutboxTask) -> None:
    """Run one shard of a replay job (the outbox task ``replay.run_job``)."""
    run_shard(
        int(payload["job"]),
        shard=int(payload.get("shard", 0)),
        shards=int(payload.get("shards", 1)),
        task=task,
    )


def run_shard(
    job_id: int, *, shard: int = 0, shards: int = 1, task: OutboxTask | None = None
) -> str:
    """Run shard ``shard`` of ``shards`` of a job to its end; return ``done`` or ``stopped``.

    Resumable: items of this shard left ``sending`` by a killed worker become
    ``uncertain`` and are not sent again. Raise ``outbox.Retry`` when only
    retries remain and the next is more than a moment away.
    """
    with LeaseKeeper(task, settings.ANDON_REPLAY_LEASE_S):
        return Shard(job_id, shard, shards).run()


# What sending and recording a batch reads (the rest of a message stays in the database).
SENT_FIELDS = (
    "job_id",
    "attempts",
    "edited_payload",
    "edited_content_type",
    "message__connector_id",
    "message__external_id",
    "message__headers",
    "message__content_type",
    "message__payload",
)
OUTCOME_FIELDS = ("state", "attempts", "latency_ms", "response_status", "error", "next_attempt_at")


def store_outcomes(items: Sequence[ReplayItem]) -> None:
    """Write the items' outcome fields in one statement (``bulk_update`` costs more than I/O).

    PostgreSQL: one ``UPDATE ... FROM unnest(arrays)``; elsewhere one prepared
    ``UPDATE`` executed for every item.
    """
    if not items:
        return
    table = _qn(ReplayItem._meta.db_table)
    rows = [(item.pk, *(getattr(item, name) for name in OUTCOME_FIELDS)) for item in items]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            types = ("bigint", "text", "integer", "integer", "integer", "text", "timestamptz")
            arrays = ", ".join(f"%s::{kind}[]" for kind in types)
            names = ", ".join(("id", *OUTCOME_FIELDS))
            assignments = ", ".join(f"{_qn(name)} = v.{name}" for name in OUTCOME_FIELDS)
            cursor.execute(
                f"UPDATE {table} SET {assignments} FROM unnest({arrays}) AS v({names}) "
                f"WHERE {table}.{_qn('id')} = v.id",
                [list(column) for column in zip(*rows, strict=True)],
            )
            return
        assignments = ", ".join(f"{_qn(name)} = %s" for name in OUTCOME_FIELDS)
        cursor.executemany(
            f"UPDATE {table} SET {assignments} WHERE {_qn('id')} = %s",
            [(*row[1:], row[0]) for row in rows],
        )


def _retry_after(error: AdapterError) -> float:
    """Return how long the target asked to wait (``Retry-After``), capped; 0 when it did not."""
    asked = getattr(error, "retry_after_s", None)
    return min(MAX_BACKOFF_S, float(asked)) if asked else 0.0


@dataclass
class Batch:
    """Items of one connector claimed together, marked ``sending`` and committed."""

    connector: Connector
    policy: ReplayPolicy
    items: list[ReplayItem] = field(default_factory=list)


class Shard:
    """The items of one job with ``id % shards == shard``, driven by one worker at a time."""

    def __init__(self, job_id: int, shard: int, shards: int) -> None:
        self.job_id = job_id
        items = ReplayItem.objects.filter(job_id=job_id)
        if shards > 1:
            items = items.alias(shard=F("id") % shards).filter(shard=shard)
        self.items = items
        self._connectors: dict[int, tuple[Connector, ReplayPolicy]] = {}

    def run(self) -> str:
        """Drive this shard's items to an end; return ``done`` or ``stopped`` (see run_shard)."""
        job = ReplayJob.objects.filter(pk=self.job_id).first()
        if job is None:
            return "stopped"
        if self.resume() and job.state not in (ReplayState.QUEUED, ReplayState.RUNNING):
            update_totals(self.job_id)  # cancelled while a dead worker had a batch in flight
        if job.state not in (ReplayState.QUEUED, ReplayState.RUNNING):
            return "stopped"
        ReplayJob.objects.filter(pk=self.job_id, state=ReplayState.QUEUED).update(
            state=ReplayState.RUNNING, started_at=Coalesce(F("started_at"), timezone.now())
        )
        while self.job_state() == ReplayState.RUNNING:
            batch = self.claim()
            if batch is None:
                wait = self.next_retry_in()
                if wait is None:
                    break
                if wait > SHORT_WAIT_S:
                    self.finish()
                    raise outbox.Retry(wait, f"replay {self.job_id}: next retry in {wait:.0f}s")
                time.sleep(max(wait, 0.05))
                continue
            if batch.items:
                self.send(batch)
                self.progress()
        return self.finish()

    def job_state(self) -> str | None:
        """Return the job's state now (a cancel from another process shows here)."""
        return ReplayJob.objects.filter(pk=self.job_id).values_list("state", flat=True).first()

    def resume(self) -> int:
        """Mark this shard's items left ``sending`` by a dead worker ``uncertain``."""
        stuck = self.items.filter(state=ReplayItemState.SENDING)
        count = stuck.update(state=ReplayItemState.UNCERTAIN, error=UNCERTAIN_ERROR)
        if count:
            log.warning("replay %s: %d message(s) in flight when a worker died", self.job_id, count)
        return count

    def connector(self, connector_id: int) -> tuple[Connector, ReplayPolicy]:
        """Return a connector and its replay policy, read once per shard run."""
        if connector_id not in self._connectors:
            found = Connector.objects.get(pk=connector_id)
            self._connectors[connector_id] = (found, ReplayPolicy.of(found))
        return self._connectors[connector_id]

    def due(self) -> QuerySet[ReplayItem]:
        """Return this shard's items to send now: pending, or retrying and due."""
        now = timezone.now()
        return self.items.filter(
            Q(state=ReplayItemState.PENDING)
            | Q(state=ReplayItemState.RETRYING, next_attempt_at__lte=now)
        )

    def claim(self) -> Batch | None:
        """Take the next batch of due items of one connector: rate tokens, then ``sending``."""
        due = self.due()
        first = due.order_by("id").values_list("message__connector_id", flat=True).first()
        if first is None:
            return None
        connector, policy = self.connector(first)
        ids = list(
            due.filter(message__connector_id=first)
            .order_by("id")
            .values_list("id", flat=True)[: policy.batch_size]
        )
        rate_limiter().acquire(connector.pk, policy.rate_per_s, len(ids))
        sending = self.mark_sending(ids)
        items = list(
            ReplayItem.objects.filter(pk__in=sending)
            .select_related("message")
            .only(*SENT_FIELDS)
            .order_by("id")
        )
        return Batch(connector, policy, items)

    def mark_sending(self, ids: list[int]) -> list[int]:
        """Mark still-due items ``sending`` and commit; return those marked (not cancelled)."""
        if not ids:
            return []
        table = _qn(ReplayItem._meta.db_table)
        marks = ", ".join(["%s"] * len(ids))
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET {_qn('state')} = %s, {_qn('attempts')} = "
                f"{_qn('attempts')} + 1, {_qn('sent_at')} = %s, {_qn('next_attempt_at')} = NULL "
                f"WHERE {_qn('id')} IN ({marks}) AND {_qn('state')} IN (%s, %s) "
                f"RETURNING {_qn('id')}",
                [
                    ReplayItemState.SENDING.value,
                    timezone.now(),
                    *ids,
                    ReplayItemState.PENDING.value,
                    ReplayItemState.RETRYING.value,
                ],
            )
            return [row[0] for row in cursor.fetchall()]

    def request(self, item: ReplayItem, connector: Connector) -> tuple[bytes, dict[str, str]]:
        """Return the body (the edited copy, else the captured one) and headers of an item."""
        message = item.message
        if item.edited_payload is not None:
            body = bytes(item.edited_payload)
            content_type = item.edited_content_type or message.content_type
        else:
            body = bytes(message.payload) if message.payload is not None else b""
            content_type = message.content_type
        return body, replay_headers(message, connector.key, self.job_id, content_type)

    def send(self, batch: Batch) -> None:
        """Deliver a claimed batch and record every outcome."""
        requests = [self.request(item, batch.connector) for item in batch.items]
        outcomes = deliver(batch.connector.adapter, requests)
        self.record(batch, outcomes)

    def record(self, batch: Batch, outcomes: Sequence[Outcome]) -> None:
        """Store the outcomes set-based: items, one attempt per message, messages' status."""
        now = timezone.now()
        attempts: list[MessageAttempt] = []
        unreachable = False
        for item, outcome in zip(batch.items, outcomes, strict=True):
            item.next_attempt_at = None
            item.response_status = None
            item.latency_ms = None
            if isinstance(outcome, AdapterError) and outcome.unreachable:
                if unreachable:
                    # After an unreachable target the adapter tried no further: not an attempt.
                    item.attempts -= 1
                    item.state = ReplayItemState.RETRYING
                    item.error = str(outcome.message)[:MAX_ERROR_TEXT]
                    item.next_attempt_at = now + timedelta(
                        seconds=max(batch.policy.backoff(item.attempts), _retry_after(outcome))
                    )
                    continue
                unreachable = True
            if isinstance(outcome, DeliveryResult):
                item.state = ReplayItemState.DELIVERED
                item.latency_ms = outcome.latency_ms
                item.response_status = outcome.status_code
                item.error = ""
                status = MessageStatus.DELIVERED
            elif isinstance(outcome, AdapterError):
                item.latency_ms = None
                item.response_status = outcome.status_code
                item.error = str(outcome.message)[:MAX_ERROR_TEXT]
                last = 1 if item.edited_payload is not None else batch.policy.max_attempts
                if outcome.permanent:
                    item.state, status = ReplayItemState.FAILED, MessageStatus.FAILED
                elif item.attempts >= last:
                    item.state = ReplayItemState.DEAD_LETTERED
                    status = MessageStatus.DEAD_LETTERED
                else:
                    item.state, status = ReplayItemState.RETRYING, MessageStatus.FAILED
                    wait = max(batch.policy.backoff(item.attempts), _retry_after(outcome))
                    item.next_attempt_at = now + timedelta(seconds=wait)
            else:
                item.state = ReplayItemState.UNCERTAIN
                item.latency_ms = None
                item.error = "the adapter failed mid-batch; " + UNCERTAIN_ERROR
                continue
            attempts.append(
                MessageAttempt(
                    message_id=item.message_id,
                    at=now,
                    status=status,
                    latency_ms=item.latency_ms,
                    error=item.error,
                    received_at=now,
                    replay_id=self.job_id,
                )
            )
        with transaction.atomic():
            store_outcomes(batch.items)
            MessageAttempt.objects.bulk_create(attempts, ignore_conflicts=True)
            refresh_from_attempts(sorted({a.message_id for a in attempts}))

    def next_retry_in(self) -> float | None:
        """Return the seconds until this shard's next retry, None when none is waiting."""
        soonest = self.items.filter(state=ReplayItemState.RETRYING).aggregate(
            at=Min("next_attempt_at")
        )["at"]
        if soonest is None:
            return None
        return max(0.0, (soonest - timezone.now()).total_seconds())

    def progress(self) -> dict[str, int]:
        """Store the job's totals and publish its progress; return the counts."""
        counts = update_totals(self.job_id)
        job = ReplayJob.objects.filter(pk=self.job_id).first()
        if job is not None:
            _publish(job, counts)
        return counts

    def finish(self) -> str:
        """Close the job when no item of any shard is left open; return ``done`` or ``stopped``."""
        counts = update_totals(self.job_id)
        closed = False
        if not any(counts[state] for state in OPEN_ITEM_STATES):
            closed = bool(
                ReplayJob.objects.filter(pk=self.job_id, state=ReplayState.RUNNING).update(
                    state=ReplayState.DONE, finished_at=timezone.now()
                )
            )
        job = ReplayJob.objects.filter(pk=self.job_id).first()
        if job is not None:
            _publish(job, counts)
        return (
            "done" if closed or (job is not None and job.state == ReplayState.DONE) else "stopped"
        )
