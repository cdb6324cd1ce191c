"""Notifications: route firing alerts to contact points, group, repeat, resolve and escalate.

The semantics are Alertmanager's, kept in the database so that any number of
processes may run the pass:

- **Routing.** Policies are tried in order; an alert goes to the first whose
  matchers all match its labels (and on to later ones while that policy says
  ``continue_matching``); an alert no policy takes goes to the default policy.
- **Grouping.** Under a policy, alerts with the same values of the policy's
  ``group_by`` labels form one group and are notified together. A new group
  waits ``group_wait`` (to collect its siblings) before its first notification;
  news in a group already notified (alerts added or resolved) waits until
  ``group_interval`` after its previous notification; an unchanged group that
  still fires is notified again every ``repeat_interval``.
- **What counts.** Only firing alerts: pending ones have not fired, an
  acknowledged one has someone on it, a silenced one (silence or maintenance
  window) and a suppressed one (its dependency's outage explains it) are muted.
  An alert that was notified firing and has resolved is notified ``resolved``
  (to the contact points with ``send_resolved``).
- **Escalation.** An alert still firing, unacknowledged, ``escalate_after``
  after it was first notified, is notified once more to the policy's
  ``escalate_to`` contact points.

Every notification becomes one :class:`~monitors.models.NotificationDelivery`
per contact point, sent by the outbox task ``notify.deliver`` and retried with
backoff; the contact point's health records the outcome.

The pass (:func:`run_pass`) reads the firing alerts and the active groups (two
queries, plus the mutes when anything fires) and stops there when nothing is
due; due groups are claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` and
re-planned from their fresh state, so two passes at once notify once.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from console import outbox
from monitors import acklinks
from monitors.models import (
    Alert,
    AlertState,
    ContactPoint,
    DeliveryReason,
    DeliveryStatus,
    NotificationDelivery,
    NotificationGroup,
    RoutingPolicy,
)
from monitors.notifiers import notifier_for
from monitors.notifiers.base import AlertItem, Notification, NotifierConfigError, NotifyError
from monitors.rules import format_duration
from monitors.silences import (
    LABEL_COLUMNS,
    LabelMatcher,
    MuteError,
    active_mutes,
    alert_labels,
    label_set,
    parse_matchers,
)

log = logging.getLogger(__name__)

DELIVER_TASK = "notify.deliver"
# A delivery is tried this many times (10 s, 30 s, 90 s, 4.5 min, 13.5 min apart), then failed.
MAX_ATTEMPTS = 6
BACKOFF_BASE_S = 10.0
BACKOFF_MAX_S = 900.0
# ``group_by: ["..."]`` groups by every label: each alert is a group of its own.
ALL_LABELS = "..."


def backoff_s(attempt: int) -> float:
    """Return the wait after failed attempt ``attempt``: 10 s, 30 s, 90 s... at most 15 min."""
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 3 ** max(0, attempt - 1))


def rfc3339(moment: datetime | None) -> str:
    """Return a time as Alertmanager writes it (``2026-05-21T08:00:00Z``)."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def public_url(path: str = "") -> str:
    return settings.ANDON_PUBLIC_URL.rstrip("/") + path


# --- Routing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """A routing policy, loaded once per pass with its matchers and contact points."""

    policy: RoutingPolicy
    matchers: tuple[LabelMatcher, ...]
    contact_points: tuple[ContactPoint, ...]
    escalate_to: tuple[ContactPoint, ...]
    # A policy whose stored matchers are invalid matches nothing rather than everything.
    broken: bool = False

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Return whether every matcher matches ``labels`` (no matchers: everything)."""
        return not self.broken and all(m.matches(labels) for m in self.matchers)

    def group(self, labels: Mapping[str, str]) -> tuple[str, str, dict[str, str]]:
        """Return the group key, its hash and the group labels of an alert under this policy."""
        group_by = [str(name) for name in self.policy.group_by or []]
        if ALL_LABELS in group_by:
            chosen = dict(sorted(labels.items()))
        else:
            chosen = {name: labels[name] for name in sorted(set(group_by)) if name in labels}
        inner = ",".join(f'{name}="{value}"' for name, value in chosen.items())
        key = f"{self.policy.name}:{{{inner}}}"
        return key, hashlib.sha256(key.encode()).hexdigest(), chosen

    @property
    def escalates(self) -> bool:
        return bool(self.policy.escalate_after_s and self.escalate_to)


@dataclass(frozen=True)
class RoutingTree:
    """Every routing policy, in the order alerts try them, and the default."""

    routes: tuple[Route, ...]
    default: Route | None

    @classmethod
    def load(cls) -> RoutingTree:
        """Load policies and their enabled contact points (four queries)."""
        contact = {cp.pk: cp for cp in ContactPoint.objects.filter(enabled=True)}
        receivers: dict[int, list[ContactPoint]] = {}
        for policy_id, cp_id in RoutingPolicy.contact_points.through.objects.values_list(
            "routingpolicy_id", "contactpoint_id"
        ).order_by("id"):
            if cp_id in contact:
                receivers.setdefault(policy_id, []).append(contact[cp_id])
        escalation: dict[int, list[ContactPoint]] = {}
        for policy_id, cp_id in RoutingPolicy.escalate_to.through.objects.values_list(
            "routingpolicy_id", "contactpoint_id"
        ).order_by("id"):
            if cp_id in contact:
                escalation.setdefault(policy_id, []).append(contact[cp_id])
        routes: list[Route] = []
        default = None
        for policy in RoutingPolicy.objects.order_by("position", "name"):
            broken = False
            matchers: tuple[LabelMatcher, ...] = ()
            if policy.matchers:
                try:
                    matchers = tuple(parse_matchers(policy.matchers))
                except MuteError as exc:
                    log.warning("routing policy %s has invalid matchers: %s", policy.name, exc)
                    broken = True
            route = Route(
                policy,
                matchers,
                tuple(receivers.get(policy.pk, ())),
                tuple(escalation.get(policy.pk, ())),
                broken,
            )
            if policy.is_default:
                default = route
            else:
                routes.append(route)
        return cls(tuple(routes), default)

    def by_policy(self) -> dict[int, Route]:
        found = {route.policy.pk: route for route in self.routes}
        if self.default is not None:
            found[self.default.policy.pk] = self.default
        return found

    def routes_for(self, labels: Mapping[str, str]) -> list[Route]:
        """Return the policies an alert with ``labels`` goes to (the default when none match)."""
        chosen = []
        for route in self.routes:
            if route.matches(labels):
                chosen.append(route)
                if not route.policy.continue_matching:
                    break
        if not chosen and self.default is not None:
            chosen.append(self.default)
        return chosen


# --- Planning a group --------------------------------------------------------------------


@dataclass
class Plan:
    """What a group needs now: a notification, an escalation, or going idle."""

    flush: bool = False
    repeat: bool = False
    escalate: list[int] = field(default_factory=list)
    reset: bool = False

    @property
    def due(self) -> bool:
        return self.flush or self.reset or bool(self.escalate)


def notified_ids(group: NotificationGroup) -> dict[int, str]:
    """Return the group's notified firing alerts: id -> when first notified (ISO)."""
    return {int(alert_id): str(at) for alert_id, at in (group.notified or {}).items()}


def plan(group: NotificationGroup, route: Route, firing: set[int], now: datetime) -> Plan:
    """Decide what a group needs at ``now``, given the ids of its alerts firing now."""
    result = Plan()
    if group.active_since is None:
        return result
    policy = route.policy
    notified = notified_ids(group)
    if group.flushed_at is None:
        if not firing:
            result.reset = True  # everything left before the first notification
        elif now >= group.active_since + timedelta(seconds=policy.group_wait_s):
            result.flush = True
    else:
        changed = firing != set(notified)
        if changed and now >= group.flushed_at + timedelta(seconds=policy.group_interval_s):
            result.flush = True
        elif firing and now >= group.flushed_at + timedelta(seconds=policy.repeat_interval_s):
            result.flush = result.repeat = True
    if route.escalates:
        after = timedelta(seconds=float(policy.escalate_after_s or 0))
        escalated = {int(i) for i in group.escalated or []}
        for alert_id in sorted((firing & set(notified)) - escalated):
            if now >= datetime.fromisoformat(notified[alert_id]) + after:
                result.escalate.append(alert_id)
    return result


# --- The pass ---------------------------------------------------------------------------


@dataclass
class Member:
    """The firing alerts of one group in this pass."""

    route: Route
    key: str
    labels: dict[str, str]
    ids: set[int] = field(default_factory=set)


@dataclass
class NotifyReport:
    """What one notification pass did."""

    at: datetime
    firing: int = 0
    groups: int = 0
    flushed: int = 0
    escalated: int = 0
    deliveries: int = 0

    def line(self) -> str:
        return (
            f"notifications at {self.at.isoformat()}: {self.firing} firing in {self.groups} "
            f"groups, {self.flushed} notified, {self.escalated} escalated, "
            f"{self.deliveries} deliveries queued"
        )


def run_pass(now: datetime | None = None) -> NotifyReport:
    """Run one notification pass at ``now`` (see the module docstring)."""
    now = now or timezone.now()
    report = NotifyReport(at=now)
    rows = list(
        Alert.objects.filter(state=AlertState.FIRING, suppressed_by__isnull=True).values(
            *LABEL_COLUMNS
        )
    )
    active = {
        (g.policy_id, g.group_hash): g
        for g in NotificationGroup.objects.filter(active_since__isnull=False)
    }
    if not rows and not active:
        return report
    tree = RoutingTree.load()
    muted = active_mutes(now).silenced_ids(rows) if rows else set()
    members: dict[tuple[int, str], Member] = {}
    for row in rows:
        if row["id"] in muted:
            continue
        report.firing += 1
        labels = label_set(
            row["labels"],
            rule=row["rule__name"],
            key=row["key"],
            severity=row["severity"],
            plant=row["plant__key"],
            kind=row["rule__kind"],
        )
        for route in tree.routes_for(labels):
            key, digest, group_labels = route.group(labels)
            member = members.setdefault((route.policy.pk, digest), Member(route, key, group_labels))
            member.ids.add(row["id"])
    fresh = {k: m for k, m in members.items() if k not in active}
    if fresh:
        active.update(_activate(fresh, now))
    report.groups = len(members)
    routes = tree.by_policy()
    due = []
    for identity, group in active.items():
        route = routes.get(group.policy_id)
        if route is None:
            continue
        member = members.get(identity)
        if plan(group, route, member.ids if member else set(), now).due:
            due.append(group.pk)
    if due:
        _notify(due, members, routes, now, report)
    return report


def after_evaluation(now: datetime | None = None) -> NotifyReport | None:
    """Run the notification pass after an evaluation pass, logging (never raising) a failure."""
    try:
        return run_pass(now)
    except Exception:  # noqa: BLE001 - notifications must not break evaluation
        log.exception("notification pass failed")
        return None


def _activate(fresh: Mapping[tuple[int, str], Member], now: datetime) -> dict:
    """Start the wait of groups new to this pass (created, or idle until now); return them."""
    NotificationGroup.objects.bulk_create(
        [
            NotificationGroup(
                policy_id=policy_id,
                group_hash=digest,
                group_key=member.key[:1000],
                labels=member.labels,
                active_since=now,
            )
            for (policy_id, digest), member in fresh.items()
        ],
        ignore_conflicts=True,
    )
    hashes = [digest for _, digest in fresh]
    # An idle group starts a new episode; one another pass activated meanwhile is left as is.
    NotificationGroup.objects.filter(group_hash__in=hashes, active_since__isnull=True).update(
        active_since=now, flushed_at=None, notified={}, escalated=[]
    )
    return {
        (g.policy_id, g.group_hash): g
        for g in NotificationGroup.objects.filter(group_hash__in=hashes)
        if (g.policy_id, g.group_hash) in fresh
    }


def _notify(
    due: list[int],
    members: Mapping[tuple[int, str], Member],
    routes: Mapping[int, Route],
    now: datetime,
    report: NotifyReport,
) -> None:
    """Claim the due groups, re-plan them from their locked state, and queue deliveries."""
    with transaction.atomic():
        groups = list(
            NotificationGroup.objects.select_for_update(skip_locked=True)
            .filter(pk__in=due)
            .order_by("pk")
        )
        work = []
        needed: set[int] = set()
        for group in groups:
            route = routes[group.policy_id]
            member = members.get((group.policy_id, group.group_hash))
            firing = set(member.ids) if member else set()
            todo = plan(group, route, firing, now)
            if not todo.due:
                continue  # another pass did it between our read and our lock
            work.append((group, route, firing, todo))
            if todo.flush:
                needed |= firing | set(notified_ids(group))
            needed |= set(todo.escalate)
        alerts = {
            alert.pk: alert
            for alert in Alert.objects.filter(pk__in=needed).select_related("rule", "plant")
        }
        deliveries: list[NotificationDelivery] = []
        for group, route, firing, todo in work:
            _apply(group, route, firing, todo, alerts, now, deliveries, report)
        NotificationGroup.objects.bulk_update(
            [group for group, *_ in work],
            ["active_since", "flushed_at", "notified", "escalated", "last_notified_at"],
        )
        created = NotificationDelivery.objects.bulk_create(deliveries)
        for delivery in created:
            outbox.enqueue(DELIVER_TASK, {"delivery": delivery.pk})
        report.deliveries += len(created)


def _apply(
    group: NotificationGroup,
    route: Route,
    firing: set[int],
    todo: Plan,
    alerts: Mapping[int, Alert],
    now: datetime,
    out: list[NotificationDelivery],
    report: NotifyReport,
) -> None:
    """Carry out a group's plan: append its deliveries and update its state."""
    if todo.reset:
        _idle(group)
        return
    notified = notified_ids(group)
    escalated = {int(i) for i in group.escalated or []}
    # The locked, fresh state wins over this pass's snapshot.
    still_firing = {i for i in firing if i in alerts and alerts[i].state == AlertState.FIRING}
    if todo.escalate:
        items = [alerts[i] for i in todo.escalate if i in still_firing]
        if items:
            out.extend(
                _deliveries(
                    route.escalate_to, route, group, DeliveryReason.ESCALATION, items, [], now
                )
            )
            report.escalated += len(items)
        escalated |= set(todo.escalate)
    if todo.flush:
        firing_now = [alerts[i] for i in sorted(still_firing)]
        new = still_firing - set(notified)
        resolved = [
            alerts[i]
            for i in sorted(set(notified) - still_firing)
            if i in alerts and alerts[i].state == AlertState.RESOLVED
        ]
        sent_before = len(out)
        if new or resolved or (todo.repeat and firing_now):
            reason = (
                DeliveryReason.FIRING
                if new
                else DeliveryReason.RESOLVED
                if resolved
                else DeliveryReason.REPEAT
            )
            for cp in route.contact_points:
                shown_resolved = resolved if cp.send_resolved else []
                if not (new or shown_resolved or todo.repeat) or not (firing_now or shown_resolved):
                    continue
                out.extend(_deliveries([cp], route, group, reason, firing_now, shown_resolved, now))
            # Whoever was escalated to hears that their alerts resolved.
            escalated_resolved = [a for a in resolved if a.pk in escalated]
            extra = [
                cp
                for cp in route.escalate_to
                if cp.send_resolved and cp not in route.contact_points
            ]
            if escalated_resolved and extra:
                out.extend(
                    _deliveries(
                        extra, route, group, DeliveryReason.RESOLVED, [], escalated_resolved, now
                    )
                )
        if len(out) > sent_before:
            report.flushed += 1
            group.last_notified_at = now
        stamp = now.isoformat()
        group.notified = {str(i): notified.get(i, stamp) for i in sorted(still_firing)}
        group.flushed_at = now
        escalated &= still_firing
        if not still_firing:
            _idle(group)
            return
    group.escalated = sorted(escalated)


def _idle(group: NotificationGroup) -> None:
    group.active_since = None
    group.flushed_at = None
    group.notified = {}
    group.escalated = []


def alert_item(alert: Alert, status: str) -> AlertItem:
    """Return the snapshot of an alert a notification carries (load rule and plant with it)."""
    labels = alert_labels(alert)
    digest = hashlib.sha256(
        "\x00".join(f"{k}={v}" for k, v in sorted(labels.items())).encode()
    ).hexdigest()
    return AlertItem(
        id=alert.pk,
        status=status,
        rule=alert.rule.name,
        key=alert.key,
        severity=alert.severity,
        plant=alert.plant.key if alert.plant_id else "",
        labels=labels,
        summary=alert.summary or f"{alert.rule.name}: {alert.key}",
        runbook_url=str((alert.rule.definition or {}).get("runbook") or ""),
        starts_at=rfc3339(alert.fired_at or alert.started_at),
        ends_at=rfc3339(alert.resolved_at) if status == "resolved" else "",
        generator_url=public_url(reverse("alert", args=[alert.pk])),
        fingerprint=digest[:16],
        acknowledged_by=alert.acknowledged_by,
    )


def _deliveries(
    contact_points: Iterable[ContactPoint],
    route: Route,
    group: NotificationGroup,
    reason: str,
    firing: list[Alert],
    resolved: list[Alert],
    now: datetime,
) -> list[NotificationDelivery]:
    """Return one unsaved delivery per contact point for these alerts."""
    items = [alert_item(a, "firing") for a in firing] + [
        alert_item(a, "resolved") for a in resolved
    ]
    if not items:
        return []
    body = {
        "reason": reason,
        "status": "firing" if firing else "resolved",
        "group_key": group.group_key,
        "group_labels": group.labels,
        "policy": route.policy.name,
        "external_url": public_url("/"),
        "escalate_after": format_duration(route.policy.escalate_after_s)
        if route.policy.escalate_after_s
        else "",
        "alerts": [item.as_json() for item in items],
    }
    plants = {a.plant_id for a in [*firing, *resolved]}
    plant_id = plants.pop() if len(plants) == 1 else None
    out = []
    for cp in contact_points:
        summary = Notification.from_body(body, receiver=cp.name).title
        out.append(
            NotificationDelivery(
                contact_point=cp,
                policy=route.policy,
                plant_id=plant_id,
                group_key=group.group_key,
                reason=reason,
                alert_ids=[item.id for item in items],
                summary=summary[:500],
                body=body,
                at=now,
            )
        )
    return out


# --- Delivering -------------------------------------------------------------------------


def deliver(delivery_id: int, now: datetime | None = None) -> NotificationDelivery | None:
    """Make one attempt at a delivery and record its outcome on it and its contact point.

    A delivery already delivered or failed is left alone (a duplicate wake-up).
    A transient failure leaves it ``retrying`` with ``next_attempt_at`` set;
    after ``MAX_ATTEMPTS``, or at once for a permanent failure, it is ``failed``.
    """
    now = now or timezone.now()
    delivery = (
        NotificationDelivery.objects.select_related("contact_point").filter(pk=delivery_id).first()
    )
    if delivery is None or delivery.status in (DeliveryStatus.DELIVERED, DeliveryStatus.FAILED):
        return delivery
    contact_point = delivery.contact_point
    attempt = delivery.attempts + 1
    error: NotifyError | None = None
    result = None
    try:
        if not contact_point.enabled:
            raise NotifyError("the contact point is disabled", permanent=True)
        notifier = notifier_for(contact_point)
        notification = Notification.from_body(
            delivery.body, receiver=contact_point.name, ack_links=_link_maker(delivery, now)
        )
        result = notifier.send(notification)
    except NotifierConfigError as exc:
        error = NotifyError(f"invalid contact point options: {exc}", permanent=True)
    except NotifyError as exc:
        error = exc
    except Exception as exc:  # noqa: BLE001 - a notifier bug is recorded and retried, not lost
        log.exception("delivery %s to %s failed", delivery.pk, contact_point.name)
        error = NotifyError(f"{type(exc).__name__}: {exc}")
    delivery.attempts = attempt
    delivery.last_attempt_at = now
    if error is None:
        delivery.status = DeliveryStatus.DELIVERED
        delivery.delivered_at = now
        delivery.next_attempt_at = None
        delivery.response_code = result.status_code if result else None
        delivery.error = ""
        ContactPoint.objects.filter(pk=contact_point.pk).update(
            consecutive_failures=0, last_success_at=now
        )
    else:
        delivery.error = error.message[:2000]
        delivery.response_code = error.status_code
        if error.permanent or attempt >= MAX_ATTEMPTS:
            delivery.status = DeliveryStatus.FAILED
            delivery.next_attempt_at = None
        else:
            wait = max(backoff_s(attempt), min(error.retry_after_s or 0.0, BACKOFF_MAX_S))
            delivery.status = DeliveryStatus.RETRYING
            delivery.next_attempt_at = now + timedelta(seconds=wait)
        ContactPoint.objects.filter(pk=contact_point.pk).update(
            consecutive_failures=F("consecutive_failures") + 1,
            last_error=f"attempt {attempt} of delivery #{delivery.pk}: {error.message}"[:2000],
            last_error_at=now,
        )
    delivery.save(
        update_fields=[
            "status",
            "attempts",
            "last_attempt_at",
            "next_attempt_at",
            "delivered_at",
            "response_code",
            "error",
        ]
    )
    return delivery


def _link_maker(delivery: NotificationDelivery, now: datetime) -> Any:
    """Return ``recipient -> {alert id: ack URL}`` for the delivery's firing alerts."""
    if delivery.reason == DeliveryReason.TEST:
        return lambda recipient: {}
    firing = [
        int(item["id"])
        for item in delivery.body.get("alerts") or []
        if item.get("status") == "firing" and item.get("id") is not None
    ]
    cache: dict[str, dict[int, str]] = {}

    def links(recipient: str) -> dict[int, str]:
        if recipient not in cache:
            cache[recipient] = acklinks.issue(firing, recipient, delivery, now)
        return cache[recipient]

    return links


@outbox.handler(DELIVER_TASK)
def deliver_task(payload: dict[str, Any], task: Any) -> None:
    """Outbox handler: one attempt; a transient failure comes back after its backoff."""
    delivery = deliver(int(payload["delivery"]))
    if delivery is not None and delivery.status == DeliveryStatus.RETRYING:
        wait = (delivery.next_attempt_at - timezone.now()).total_seconds()
        raise outbox.Retry(max(0.0, wait), f"attempt {delivery.attempts}: {delivery.error}")


def send_test(
    contact_point: ContactPoint, actor: str, now: datetime | None = None
) -> tuple[NotificationDelivery, Any]:
    """Queue a test notification to a contact point; return the delivery and its outbox task."""
    now = now or timezone.now()
    item = AlertItem(
        id=None,
        status="firing",
        rule="andon-test",
        key=contact_point.name,
        severity="info",
        plant="",
        labels={"rule": "andon-test", "key": contact_point.name, "severity": "info"},
        summary=f"Test notification for contact point {contact_point.name}, sent by {actor}",
        runbook_url="",
        starts_at=rfc3339(now),
        ends_at="",
        generator_url=public_url(reverse("notifications")),
        fingerprint=hashlib.sha256(contact_point.name.encode()).hexdigest()[:16],
    )
    body = {
        "reason": DeliveryReason.TEST,
        "status": "firing",
        "group_key": f"test:{contact_point.name}",
        "group_labels": {},
        "policy": "",
        "external_url": public_url("/"),
        "alerts": [item.as_json()],
    }
    with transaction.atomic():
        delivery = NotificationDelivery.objects.create(
            contact_point=contact_point,
            reason=DeliveryReason.TEST,
            group_key=body["group_key"],
            summary=Notification.from_body(body, receiver=contact_point.name).title[:500],
            body=body,
            requested_by=actor[:150],
            at=now,
        )
        task = outbox.enqueue(DELIVER_TASK, {"delivery": delivery.pk})
    return delivery, task
