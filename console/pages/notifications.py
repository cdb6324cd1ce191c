"""The notifications page (contact points, routing, delivery log) and the public ack link.

Readers see the contact points with their health (a failing one shows its last
error and how many attempts in a row failed), the routing policies in the
order alerts try them, and the delivery log of their plants. Admins can send
a test notification to a contact point. ``/ack/<token>/`` needs no login: the
signed, single-use token is the credential (see ``monitors.acklinks``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods, require_POST

from console import outbox
from console.auth import Principal
from console.pages.common import page
from monitors import acklinks
from monitors.models import (
    ContactPoint,
    DeliveryStatus,
    NotificationDelivery,
    RoutingPolicy,
)
from monitors.notifiers import notifier_for
from monitors.notifiers.base import NotifierConfigError
from monitors.notify import send_test
from monitors.rules import format_duration


def _principal(request: HttpRequest) -> Principal:
    return request.principal  # type: ignore[attr-defined,no-any-return]


@dataclass(frozen=True)
class ContactRow:
    """A contact point with where it sends (no secrets) and the policies that use it."""

    contact_point: ContactPoint
    target: str
    problem: str
    policies: list[str]


@dataclass(frozen=True)
class PolicyRow:
    """A routing policy in words."""

    policy: RoutingPolicy
    matchers: str
    contact_points: list[str]
    escalate_to: list[str]

    @property
    def timings(self) -> str:
        p = self.policy
        wait = format_duration(p.group_wait_s) if p.group_wait_s else "0s"
        return (
            f"wait {wait} · interval {format_duration(p.group_interval_s)}"
            f" · repeat {format_duration(p.repeat_interval_s)}"
        )

    @property
    def escalation(self) -> str:
        if not self.policy.escalate_after_s or not self.escalate_to:
            return ""
        after = format_duration(self.policy.escalate_after_s)
        return f"after {after} unacknowledged: {', '.join(self.escalate_to)}"


def _describe_matchers(matchers: list[dict[str, Any]]) -> str:
    parts = []
    for m in matchers or []:
        op = "=~" if m.get("is_regex") else "="
        parts.append(f'{m.get("name")}{op}"{m.get("value", "")}"')
    return ", ".join(parts)


def _contact_rows() -> list[ContactRow]:
    used: dict[int, list[str]] = {}
    for policy_id, cp_id in RoutingPolicy.contact_points.through.objects.values_list(
        "routingpolicy_id", "contactpoint_id"
    ):
        used.setdefault(cp_id, []).append(policy_id)
    names = dict(RoutingPolicy.objects.values_list("id", "name"))
    rows = []
    for cp in ContactPoint.objects.order_by("name"):
        problem = ""
        try:
            target = notifier_for(cp).target()
        except NotifierConfigError as exc:
            target, problem = "—", f"invalid options: {exc}"
        policies = sorted(names[p] for p in used.get(cp.pk, []) if p in names)
        rows.append(ContactRow(cp, target, problem, policies))
    return rows


def _policy_rows() -> list[PolicyRow]:
    policies = RoutingPolicy.objects.prefetch_related("contact_points", "escalate_to")
    return [
        PolicyRow(
            policy,
            _describe_matchers(policy.matchers) or "(everything else)",
            [cp.name for cp in policy.contact_points.all()],
            [cp.name for cp in policy.escalate_to.all()],
        )
        for policy in policies.order_by("is_default", "position", "name")
    ]


@page()
def notification_page(request: HttpRequest) -> HttpResponse:
    """Show contact points and their health, routing policies and the delivery log."""
    principal = _principal(request)
    params = request.GET
    deliveries = principal.scope(
        NotificationDelivery.objects.select_related("contact_point"), "plant"
    )
    status = params.get("status", "")
    if status in DeliveryStatus.values:
        deliveries = deliveries.filter(status=status)
    contact = params.get("contact_point", "")
    if contact:
        deliveries = deliveries.filter(contact_point__name=contact)
    page_obj = Paginator(deliveries.order_by("-at", "-id"), 50).get_page(params.get("page"))
    contacts = _contact_rows()
    context = {
        "nav": "notifications",
        "now": timezone.now(),
        "contacts": contacts,
        "failing": [row for row in contacts if row.contact_point.failing],
        "policies": _policy_rows(),
        "page_obj": page_obj,
        "statuses": DeliveryStatus.values,
        "params": params,
        "is_admin": principal.is_admin,
    }
    return render(request, "console/notifications.html", context)


@require_POST
@page("is_admin")
def contact_point_test(request: HttpRequest, pk: int) -> HttpResponse:
    """Send a test notification to a contact point now (admins) and say how it went."""
    principal = _principal(request)
    contact_point = ContactPoint.objects.filter(pk=pk).first()
    if contact_point is None:
        raise Http404("no such contact point")
    delivery, task = send_test(contact_point, principal.name)
    # Run it here so the admin sees the outcome; a worker that claimed it first is fine too.
    outbox.run(task.pk)
    delivery.refresh_from_db()
    if delivery.status == DeliveryStatus.DELIVERED:
        code = f" (HTTP {delivery.response_code})" if delivery.response_code else ""
        messages.success(request, f"Test notification delivered to {contact_point.name}{code}.")
    elif delivery.status == DeliveryStatus.RETRYING:
        messages.error(
            request,
            f"Test notification to {contact_point.name} failed: {delivery.error}. "
            f"It will be retried at {delivery.next_attempt_at:%H:%M:%S} UTC.",
        )
    elif delivery.status == DeliveryStatus.FAILED:
        messages.error(
            request, f"Test notification to {contact_point.name} failed: {delivery.error}."
        )
    else:
        messages.info(request, f"Test notification to {contact_point.name} is queued.")
    return redirect(reverse("notifications") + "#contact-points")


@require_http_methods(["GET", "POST"])
def ack_link(request: HttpRequest, token: str) -> HttpResponse:
    """Show (GET) or use (POST) an acknowledgement link from a notification; no login needed.

    Tampered: 400; expired: 410; already used: 409. Using it takes a POST so
    that mail scanners that open links do not use them up.
    """
    context: dict[str, Any] = {"token": token}
    try:
        if request.method == "POST":
            outcome = acklinks.use(token)
            context.update(done=outcome.result, alert=outcome.alert, actor=outcome.actor)
            return render(request, "console/notifications_ack.html", context)
        link = acklinks.verify(token)
    except acklinks.AckLinkError as exc:
        context.update(error=exc, alert=exc.link.alert if exc.link else None)
        return render(request, "console/notifications_ack.html", context, status=exc.status)
    context.update(link=link, alert=link.alert)
    return render(request, "console/notifications_ack.html", context)
