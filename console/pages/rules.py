"""Rule pages: the list, the editor (YAML, validation, backtest before saving), the history.

Everyone with a role reads; only admins change anything: every POST checks
the role on the server (403 otherwise). A rule is edited as its rules-file
entry in YAML; saving validates it with the same code as ``loadrules`` and
records the change (who, when, before/after) with the user as actor. Rules are
disabled, never deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, OuterRef, Q, Subquery
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone

from console.pages.common import page
from monitors.backtest import BacktestReport, backtest
from monitors.models import OPEN_STATES, Rule, RuleChange
from monitors.rules import RuleError, RuleSpec
from monitors.ruleset import (
    StaleRuleError,
    change_diff,
    entry_yaml,
    export_yaml,
    parse_rule_entry,
    rule_spec,
    save_rule,
    set_enabled,
    unknown_references,
)

BACKTEST_DAYS = (1, 3, 7, 14, 30)
DEFAULT_BACKTEST_DAYS = 7

NEW_RULE_TEMPLATE = """\
name: wo-not-acknowledged
kind: followup
when:
  type: erp.workorder.released
expect:
  type: mes.workorder.acknowledged
key: subject
within: 10m
severity: major
labels:
  flow: order-to-production
summary: Work order {{ key }} not acknowledged by MES
runbook: https://runbooks.example/wo-ack
"""


def _require_admin(request: HttpRequest) -> None:
    """Refuse a change by anyone but an admin (the server's check, whatever the page showed)."""
    if not request.principal.is_admin:  # type: ignore[attr-defined]
        raise PermissionDenied("only admins may change rules")


def _actor(request: HttpRequest) -> str:
    return request.principal.name  # type: ignore[attr-defined]


@page()
def rule_list(request: HttpRequest) -> HttpResponse:
    """List every rule with its open alerts (in the user's plants) and its last change."""
    principal = request.principal  # type: ignore[attr-defined]
    open_alerts = Q(alerts__state__in=OPEN_STATES)
    if principal.plant_ids is not None:
        open_alerts &= Q(alerts__plant_id__in=principal.plant_ids)
    last = RuleChange.objects.filter(rule=OuterRef("pk")).order_by("-at", "-id")
    rules = Rule.objects.annotate(
        open_alerts=Count("alerts", filter=open_alerts),
        last_at=Subquery(last.values("at")[:1]),
        last_actor=Subquery(last.values("actor")[:1]),
        last_action=Subquery(last.values("action")[:1]),
    ).order_by("name")
    return render(request, "console/rules.html", {"nav": "rules", "rules": rules})


@page()
def rule_export(request: HttpRequest) -> HttpResponse:
    """Download every rule as a rules file (what ``exportrules`` writes)."""
    response = HttpResponse(export_yaml(), content_type="application/yaml; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="andon-rules-{stamp}.yaml"'
    return response


@dataclass
class Editor:
    """What the editor shows: the text, its problems, and a backtest report."""

    text: str
    rule: Rule | None = None
    errors: list[str] = field(default_factory=list)
    report: BacktestReport | None = None
    days: int = DEFAULT_BACKTEST_DAYS
    version: int | None = None

    def context(self) -> dict[str, object]:
        return {
            "nav": "rules",
            "rule": self.rule,
            "text": self.text,
            "errors": self.errors,
            "report": self.report,
            "days": self.days,
            "day_choices": BACKTEST_DAYS,
            "version": self.version if self.version is not None else "",
        }


def _render(request: HttpRequest, editor: Editor, status: int = 200) -> HttpResponse:
    return render(request, "console/rules_edit.html", editor.context(), status=status)


def _parse(editor: Editor) -> RuleSpec | None:
    try:
        return parse_rule_entry(editor.text)
    except RuleError as exc:
        editor.errors = exc.messages
        return None


def _days(request: HttpRequest, editor: Editor) -> bool:
    raw = request.POST.get("days", str(DEFAULT_BACKTEST_DAYS))
    if not raw.isdigit() or int(raw) not in BACKTEST_DAYS:
        editor.errors = [f"days: must be one of {', '.join(map(str, BACKTEST_DAYS))}, not {raw!r}"]
        return False
    editor.days = int(raw)
    return True


def _post(request: HttpRequest, editor: Editor) -> HttpResponse:
    """Handle the editor's buttons: backtest (writes nothing), save, enable, disable."""
    _require_admin(request)
    action = request.POST.get("action", "save")
    rule = editor.rule
    if action in ("enable", "disable"):
        if rule is None:
            return _render(request, Editor(editor.text, errors=["save the rule first"]), 400)
        if set_enabled(rule, action == "enable", _actor(request)):
            messages.success(request, f"Rule {rule.name} {action}d.")
        return redirect("rule", name=rule.name)
    if not _days(request, editor):
        return _render(request, editor, 400)
    spec = _parse(editor)
    if spec is None:
        return _render(request, editor, 400)
    if action == "backtest":
        principal = request.principal  # type: ignore[attr-defined]
        editor.report = backtest(spec, editor.days, plant_ids=principal.plant_ids)
        return _render(request, editor)
    if action != "save":
        editor.errors = [f"action: unknown action {action!r}"]
        return _render(request, editor, 400)
    try:
        saved, change = save_rule(
            spec, _actor(request), name=rule.name if rule else None, expected_version=editor.version
        )
    except RuleError as exc:
        editor.errors = exc.messages
        return _render(request, editor, 400)
    except StaleRuleError as exc:
        # Saving again, having looked, overwrites the other change deliberately.
        editor.errors = [f"{exc}; see its history, then save again to replace it with your text"]
        editor.version = rule.version if rule else None
        return _render(request, editor, 409)
    for warning in unknown_references([spec]):
        messages.warning(request, f"Saved, but {warning}.")
    if change is None:
        messages.info(request, f"No change: {saved.name} is as saved (version {saved.version}).")
    else:
        messages.success(request, f"Rule {saved.name} saved ({change}, version {saved.version}).")
    return redirect("rule", name=saved.name)


@page()
def rule_new(request: HttpRequest) -> HttpResponse:
    """Write a new rule (admins); backtest it before saving."""
    if request.method == "POST":
        return _post(request, Editor(request.POST.get("definition", "")))
    return _render(request, Editor(NEW_RULE_TEMPLATE))


@page()
def rule_edit(request: HttpRequest, name: str) -> HttpResponse:
    """Show a rule as YAML; admins edit, backtest, enable or disable it."""
    rule = get_object_or_404(Rule, name=name)
    if request.method == "POST":
        version = request.POST.get("version", "")
        editor = Editor(
            request.POST.get("definition", ""),
            rule=rule,
            version=int(version) if version.isdigit() else None,
        )
        return _post(request, editor)
    return _render(request, Editor(entry_yaml(rule_spec(rule)), rule=rule, version=rule.version))


@dataclass
class Change:
    """One history row: the audit record and its before/after diff."""

    record: RuleChange
    diff: list[tuple[str, str]]


def _diff_rows(change: RuleChange) -> list[tuple[str, str]]:
    rows = []
    for line in change_diff(change):
        kind = {"+": "add", "-": "del", "@": "hunk"}.get(line[:1], "same")
        rows.append((kind, line))
    return rows


@page()
def rule_history(request: HttpRequest, name: str) -> HttpResponse:
    """List every recorded change of a rule: who, when, what, and the before/after diff."""
    rule = get_object_or_404(Rule, name=name)
    changes = [
        Change(record, _diff_rows(record))
        for record in RuleChange.objects.filter(rule_name=name).order_by("-at", "-id")
    ]
    return render(
        request,
        "console/rules_history.html",
        {"nav": "rules", "rule": rule, "changes": changes},
    )
