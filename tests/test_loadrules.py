"""`loadrules` and `exportrules`: rules as code, idempotent, audited, refused whole when invalid."""

from __future__ import annotations

import textwrap
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command, execute_from_command_line

from monitors.models import Rule, RuleChange
from monitors.ruleset import apply_specs, parse_rules_text, set_enabled

DEMO_RULES = Path(settings.BASE_DIR) / "monitors" / "fixtures" / "demo_rules.yaml"
DEMO_LANDSCAPE = Path(settings.BASE_DIR) / "integrations" / "fixtures" / "demo_landscape.yaml"

TWO_RULES = """
rules:
  - name: wo-not-acknowledged
    kind: followup
    when: {type: erp.workorder.released}
    expect: {type: mes.workorder.acknowledged}
    key: subject
    within: 10m
    severity: critical
    labels: {flow: order-to-production}
    summary: "Work order {{ key }} not acknowledged by MES"
  - name: mes-p1-silent
    kind: heartbeat
    source: mes-p1
    within: 5m
"""


def _file(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def _load(path: Path, *options: str) -> str:
    out = StringIO()
    call_command("loadrules", str(path), *options, stdout=out)
    return out.getvalue()


def _refusal(path: Path) -> str:
    with pytest.raises(CommandError) as caught:
        _load(path)
    return str(caught.value)


def _snapshot() -> tuple[list[dict], list[dict]]:
    """Return every rule and audit row, to prove that a refused file changed nothing."""
    return list(Rule.objects.values()), list(RuleChange.objects.values())


# --- loading ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_loads_the_demo_rules_and_records_each_creation():
    out = _load(DEMO_RULES)
    count = Rule.objects.count()
    assert count >= 10
    assert f"rules: {count} created, 0 updated, 0 unchanged" in out
    assert set(Rule.objects.values_list("kind", flat=True)) == {
        "followup",
        "heartbeat",
        "threshold",
        "match",
    }
    rule = Rule.objects.get(name="wo-not-acknowledged-p1")
    assert (rule.version, rule.severity, rule.enabled) == (1, "critical", True)
    assert rule.definition["within_s"] == 600
    change = RuleChange.objects.get(rule=rule)
    assert (change.action, change.actor, change.before) == ("create", "loadrules", None)
    assert change.after == rule.definition


@pytest.mark.django_db
def test_it_warns_about_keys_the_landscape_lacks_but_loads_the_rules(tmp_path):
    out = _load(_file(tmp_path, TWO_RULES))
    assert "warning: mes-p1-silent: source: 'mes-p1' is no system or connector" in out
    assert Rule.objects.count() == 2


def test_the_demo_rules_name_only_keys_of_the_demo_landscape(db):
    call_command("loadlandscape", str(DEMO_LANDSCAPE), stdout=StringIO())
    assert "warning" not in _load(DEMO_RULES)


@pytest.mark.django_db
def test_loading_the_same_file_twice_touches_nothing():
    path = DEMO_RULES
    _load(path)
    before = _snapshot()
    out = _load(path)
    assert f"0 created, 0 updated, {Rule.objects.count()} unchanged" in out
    assert _snapshot() == before


@pytest.mark.django_db
def test_a_changed_rule_gets_a_new_version_and_an_audit_row_with_before_and_after(tmp_path):
    _load(_file(tmp_path, TWO_RULES))
    changed = TWO_RULES.replace("within: 10m", "within: 15m")
    out = StringIO()
    call_command("loadrules", str(_file(tmp_path, changed)), "--actor", "ci-pipeline", stdout=out)

    assert "0 created, 1 updated, 1 unchanged" in out.getvalue()
    assert "updated: wo-not-acknowledged" in out.getvalue()
    rule = Rule.objects.get(name="wo-not-acknowledged")
    assert rule.version == 2
    assert Rule.objects.get(name="mes-p1-silent").version == 1
    change = rule.changes.first()
    assert (change.action, change.actor) == ("update", "ci-pipeline")
    assert change.before["within_s"] == 600
    assert change.after["within_s"] == 900
    assert rule.definition == change.after


@pytest.mark.django_db
def test_a_rule_disabled_in_the_file_is_recorded_as_disabled_not_deleted(tmp_path):
    _load(_file(tmp_path, TWO_RULES))
    disabled = TWO_RULES.replace("    within: 5m", "    within: 5m\n    enabled: false")
    _load(_file(tmp_path, disabled))
    rule = Rule.objects.get(name="mes-p1-silent")
    assert rule.enabled is False
    assert rule.changes.first().action == "disable"


@pytest.mark.django_db
def test_rules_missing_from_the_file_are_left_alone(tmp_path):
    _load(_file(tmp_path, TWO_RULES))
    only_one = TWO_RULES.split("  - name: mes-p1-silent")[0]
    out = _load(_file(tmp_path, only_one))
    assert "0 created, 0 updated, 1 unchanged" in out
    assert Rule.objects.get(name="mes-p1-silent").enabled is True


@pytest.mark.django_db
def test_prune_disables_the_rules_missing_from_the_file_and_records_it(tmp_path):
    _load(_file(tmp_path, TWO_RULES))
    only_one = TWO_RULES.split("  - name: mes-p1-silent")[0]
    out = _load(_file(tmp_path, only_one), "--prune")
    assert "disabled (not in the file): mes-p1-silent" in out
    rule = Rule.objects.get(name="mes-p1-silent")
    assert rule.enabled is False
    change = rule.changes.first()
    assert (change.action, change.actor) == ("disable", "loadrules")
    assert change.before["enabled"] is True and change.after["enabled"] is False


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_file_whose_later_rule_is_invalid_changes_nothing(tmp_path):
    _load(_file(tmp_path, TWO_RULES))
    before = _snapshot()
    text = (
        TWO_RULES.replace("within: 10m", "within: 20m")
        + """
  - name: brand-new
    kind: match
    when: {type: lims.result.failed}
    key: data.lot
  - name: bad-rule
    kind: followup
    when: {type: a}
    expect: {type: b}
    key: subject
    within: ten minutes
"""
    )
    message = _refusal(_file(tmp_path, text))
    assert "refused, nothing was loaded" in message
    assert "rules[3] (bad-rule): within: must be a duration like 30s, 10m, 2h or 1d" in message
    assert _snapshot() == before
    assert not Rule.objects.filter(name="brand-new").exists()


@pytest.mark.django_db
def test_every_problem_is_reported_with_its_rule_and_field(tmp_path):
    text = """
    rules:
      - name: no-kind
        within: 5m
      - name: bad-threshold
        kind: threshold
        connector: erp-to-mes-orders
        metric: error_rate
        window: 15m
        op: ">"
        value: lots
      - name: typo
        kind: heartbeat
        source: mes-p1
        within: 5m
        severty: major
    """
    message = _refusal(_file(tmp_path, text))
    assert "rules[0] (no-kind): kind: is required" in message
    assert "rules[1] (bad-threshold): metric:" in message
    assert "rules[1] (bad-threshold): value:" in message
    assert "rules[2] (typo): severty:" in message
    assert not Rule.objects.exists()


@pytest.mark.django_db
def test_duplicate_names_are_refused(tmp_path):
    text = TWO_RULES + TWO_RULES.split("rules:")[1].split("  - name: mes-p1-silent")[0]
    message = _refusal(_file(tmp_path, text))
    assert "rules[2] (wo-not-acknowledged): name: 'wo-not-acknowledged' is already used" in message
    assert not Rule.objects.exists()


@pytest.mark.django_db
def test_a_yaml_syntax_error_names_the_line(tmp_path):
    message = _refusal(_file(tmp_path, "rules:\n  - name: x\n    kind: [followup\n"))
    assert "YAML syntax error at line" in message
    assert not Rule.objects.exists()


@pytest.mark.django_db
def test_a_duplicate_key_in_one_rule_is_refused(tmp_path):
    text = "rules:\n  - name: x\n    kind: match\n    kind: heartbeat\n"
    message = _refusal(_file(tmp_path, text))
    assert "duplicate key 'kind'" in message


@pytest.mark.django_db
def test_a_missing_file_is_refused_clearly(tmp_path):
    assert "no such file" in _refusal(tmp_path / "absent.yaml")


@pytest.mark.django_db
def test_a_name_the_console_needs_for_its_own_pages_is_refused(tmp_path):
    text = "rules:\n  - {name: new, kind: heartbeat, source: mes-p1, within: 5m}\n"
    assert "rules[0] (new): name: 'new' is reserved" in _refusal(_file(tmp_path, text))


@pytest.mark.django_db(transaction=True)
def test_the_command_exits_with_status_1_and_the_reason_on_stderr(tmp_path, capsys):
    path = _file(tmp_path, "rules:\n  - {name: x, kind: heartbeat, source: mes-p1}\n")
    with pytest.raises(SystemExit) as caught:
        execute_from_command_line(["manage.py", "loadrules", str(path)])
    assert caught.value.code == 1
    assert "rules[0] (x): within: is required" in capsys.readouterr().err
    assert not Rule.objects.exists()


# --- export ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_export_then_load_changes_nothing(tmp_path):
    _load(DEMO_RULES)
    set_enabled(Rule.objects.get(name="wms-p2-silent"), False, "alice")
    before = _snapshot()
    exported = tmp_path / "exported.yaml"
    call_command("exportrules", "--output", str(exported), stderr=StringIO())

    out = _load(exported)
    assert f"0 created, 0 updated, {Rule.objects.count()} unchanged" in out
    assert _snapshot() == before
    assert "enabled: false" in exported.read_text()


@pytest.mark.django_db
def test_export_writes_the_rules_file_format_to_stdout(tmp_path):
    _load(_file(tmp_path, TWO_RULES))
    out = StringIO()
    call_command("exportrules", stdout=out)
    text = out.getvalue()
    assert text.startswith("# Andon alert rules")
    specs = parse_rules_text(text)
    assert [s.name for s in specs] == ["mes-p1-silent", "wo-not-acknowledged"]
    assert "within: 10m" in text and "when:\n      type: erp.workorder.released" in text


@pytest.mark.django_db
def test_an_export_loads_into_an_empty_database_as_the_same_rules(tmp_path):
    _load(DEMO_RULES)
    definitions = dict(Rule.objects.values_list("name", "definition"))
    out = StringIO()
    call_command("exportrules", stdout=out)
    Rule.objects.all().delete()
    apply_specs(parse_rules_text(out.getvalue()), "restore")
    assert dict(Rule.objects.values_list("name", "definition")) == definitions
