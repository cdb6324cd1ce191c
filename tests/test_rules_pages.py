"""Rule pages: admins edit rules as YAML (validated, backtested, audited); others only read."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from integrations.models import Event
from monitors.models import Alert, Rule, RuleChange
from monitors.ruleset import apply_specs, parse_rules_text
from tests.conftest import make_user

RULES = """
rules:
  - name: wo-not-acknowledged
    kind: followup
    when: {type: erp.workorder.released}
    expect: {type: mes.workorder.acknowledged}
    key: subject
    within: 10m
    severity: critical
  - name: mes-p1-silent
    kind: heartbeat
    source: mes-p1
    within: 5m
"""

EDITED = """\
name: wo-not-acknowledged
kind: followup
when: {type: erp.workorder.released}
expect: {type: mes.workorder.acknowledged}
key: subject
within: 15m
severity: critical
"""

NEW = """\
name: lab-result-failed
kind: match
when: {type: lims.result.failed}
key: data.lot
severity: critical
"""


@pytest.fixture
def rules(landscape):
    apply_specs(parse_rules_text(RULES), "loadrules")
    return {rule.name: rule for rule in Rule.objects.all()}


def _login(client, name: str, role: str, plants=()) -> None:
    make_user(name, role, plants)
    client.login(username=name, password=f"pw-{name}")


def _csrf(client, url: str) -> str:
    """Fetch a page as a browser would and return its CSRF token (the client enforces CSRF)."""
    body = client.get(url).content.decode()
    return re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1)


def _post(client, url: str, **data):
    data["csrfmiddlewaretoken"] = _csrf(client, url)
    return client.post(url, data)


def _release(subject: str, minutes_ago: float, plant=None) -> None:
    at = timezone.now() - timedelta(minutes=minutes_ago)
    Event.objects.create(
        source="/erp",
        event_id=f"e-{subject}-{minutes_ago}",
        type="erp.workorder.released",
        subject=subject,
        occurred_at=at,
        received_at=at,
        plant=plant,
    )


# --- the list --------------------------------------------------------------------------------


def test_a_viewer_sees_the_rules_with_kind_severity_and_last_change(client, rules):
    _login(client, "vera", "viewer")
    body = client.get("/rules/").content.decode()
    assert "wo-not-acknowledged" in body and "mes-p1-silent" in body
    assert "followup" in body and "heartbeat" in body
    assert "create by loadrules" in body
    assert "New rule" not in body  # only admins write rules
    assert 'href="/rules/export.yaml"' in body


def test_the_list_counts_open_alerts_in_the_users_plants_only(client, rules, landscape):
    now = timezone.now()
    for key, plant in (("WO-1", landscape["p1"]), ("WO-2", landscape["p2"])):
        Alert.objects.create(
            rule=rules["wo-not-acknowledged"],
            key=key,
            state="firing",
            severity="critical",
            started_at=now,
            plant=plant,
        )
    _login(client, "op1", "operator", [landscape["p1"]])
    body = client.get("/rules/").content.decode()
    row = re.search(r'data-rule="wo-not-acknowledged">.*?</tr>', body, re.S).group(0)
    assert re.search(r'class="num open"><a [^>]*>1</a>', row)


def test_the_export_link_downloads_a_rules_file(client, rules):
    _login(client, "vera", "viewer")
    response = client.get("/rules/export.yaml")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/yaml")
    assert "attachment" in response["Content-Disposition"]
    names = [s.name for s in parse_rules_text(response.content.decode())]
    assert names == ["mes-p1-silent", "wo-not-acknowledged"]


# --- editing ---------------------------------------------------------------------------------


def test_an_admin_sees_the_rule_as_yaml_in_an_editor(client, rules):
    _login(client, "ada", "admin")
    body = client.get("/rules/wo-not-acknowledged/").content.decode()
    assert 'name="definition"' in body
    assert "within: 10m" in body
    assert 'value="backtest"' in body and 'value="save"' in body


def test_an_admin_saves_a_change_recorded_with_the_user_as_actor(client, rules):
    _login(client, "ada", "admin")
    response = _post(client, "/rules/wo-not-acknowledged/", definition=EDITED, action="save")
    assert response.status_code == 302
    rule = Rule.objects.get(name="wo-not-acknowledged")
    assert (rule.version, rule.definition["within_s"]) == (2, 900)
    change = rule.changes.first()
    assert (change.action, change.actor) == ("update", "ada")
    assert (change.before["within_s"], change.after["within_s"]) == (600, 900)


def test_a_validation_error_names_the_field_and_keeps_the_text(client, rules):
    _login(client, "ada", "admin")
    bad = EDITED.replace("within: 15m", "within: a quarter hour")
    response = _post(client, "/rules/wo-not-acknowledged/", definition=bad, action="save")
    assert response.status_code == 400
    body = response.content.decode()
    assert (
        "within: must be a duration like 30s, 10m, 2h or 1d, not &#x27;a quarter hour&#x27;" in body
    )
    assert "within: a quarter hour" in body  # the submitted text, not the stored one
    assert Rule.objects.get(name="wo-not-acknowledged").version == 1
    assert RuleChange.objects.filter(action="update").count() == 0


def test_a_yaml_error_names_the_line(client, rules):
    _login(client, "ada", "admin")
    response = _post(client, "/rules/new/", definition="name: x\nkind: [match\n", action="save")
    assert response.status_code == 400
    assert "YAML syntax error at line" in response.content.decode()


def test_a_rule_cannot_be_renamed_in_its_editor(client, rules):
    _login(client, "ada", "admin")
    renamed = EDITED.replace("name: wo-not-acknowledged", "name: wo-late")
    response = _post(client, "/rules/wo-not-acknowledged/", definition=renamed, action="save")
    assert response.status_code == 400
    assert "name: must stay &#x27;wo-not-acknowledged&#x27;" in response.content.decode()
    assert not Rule.objects.filter(name="wo-late").exists()


def test_saving_over_a_change_made_meanwhile_is_refused_once(client, rules):
    _login(client, "ada", "admin")
    url = "/rules/wo-not-acknowledged/"
    token = _csrf(client, url)
    apply_specs(parse_rules_text(RULES.replace("within: 10m", "within: 20m")), "bob")
    data = {"definition": EDITED, "action": "save", "version": "1", "csrfmiddlewaretoken": token}
    response = client.post(url, data)
    assert response.status_code == 409
    assert "changed by bob while you edited it (now version 2)" in response.content.decode()
    data["version"] = "2"
    assert client.post(url, data).status_code == 302
    assert Rule.objects.get(name="wo-not-acknowledged").definition["within_s"] == 900


def test_an_admin_creates_a_rule(client, rules):
    _login(client, "ada", "admin")
    assert "name: wo-not-acknowledged" in client.get("/rules/new/").content.decode()
    response = _post(client, "/rules/new/", definition=NEW, action="save")
    assert response.status_code == 302
    assert response["Location"] == "/rules/lab-result-failed/"
    rule = Rule.objects.get(name="lab-result-failed")
    assert (rule.kind, rule.version) == ("match", 1)
    assert rule.changes.get().action == "create"


def test_a_new_rule_may_not_take_an_existing_name(client, rules):
    _login(client, "ada", "admin")
    response = _post(client, "/rules/new/", definition=EDITED, action="save")
    assert response.status_code == 400
    assert "name: a rule named &#x27;wo-not-acknowledged&#x27; already exists" in (
        response.content.decode()
    )


def test_disabling_keeps_the_rule_and_records_who(client, rules):
    _login(client, "ada", "admin")
    response = _post(client, "/rules/mes-p1-silent/", action="disable")
    assert response.status_code == 302
    rule = Rule.objects.get(name="mes-p1-silent")
    assert rule.enabled is False
    assert (rule.changes.first().action, rule.changes.first().actor) == ("disable", "ada")
    assert "Enable rule" in client.get("/rules/mes-p1-silent/").content.decode()
    _post(client, "/rules/mes-p1-silent/", action="enable")
    assert Rule.objects.get(name="mes-p1-silent").enabled is True


# --- backtest before saving ------------------------------------------------------------------


def test_a_backtest_shows_what_the_unsaved_text_would_have_raised(client, rules, landscape):
    _release("WO-1", 60 * 24)  # overdue, never acknowledged
    _release("WO-2", 60 * 30)
    _release("WO-3", 60 * 24 * 10)  # older than the period
    _login(client, "ada", "admin")
    response = _post(
        client, "/rules/wo-not-acknowledged/", definition=EDITED, action="backtest", days="7"
    )
    assert response.status_code == 200
    body = response.content.decode()
    assert re.search(r'<b class="alerts">2</b>', body)
    assert "WO-1" in body and "WO-2" in body and "WO-3" not in body
    assert "within: 15m" in body  # the text stays as submitted
    rule = Rule.objects.get(name="wo-not-acknowledged")
    assert rule.version == 1 and not Alert.objects.exists()  # nothing saved, nothing raised


def test_a_backtest_of_invalid_text_shows_the_errors_instead(client, rules):
    _login(client, "ada", "admin")
    bad = EDITED.replace("key: subject", "key: lot")
    response = _post(client, "/rules/new/", definition=bad, action="backtest")
    assert response.status_code == 400
    assert "key: must be subject, correlationid or data.&lt;json path&gt;" in (
        response.content.decode()
    )


def test_a_backtest_period_outside_the_choices_is_refused(client, rules):
    _login(client, "ada", "admin")
    response = _post(client, "/rules/new/", definition=NEW, action="backtest", days="365")
    assert response.status_code == 400
    assert "days: must be one of 1, 3, 7, 14, 30" in response.content.decode()


# --- history ---------------------------------------------------------------------------------


def test_the_history_lists_each_change_with_who_and_a_diff(client, rules):
    _login(client, "ada", "admin")
    _post(client, "/rules/wo-not-acknowledged/", definition=EDITED, action="save")
    _post(client, "/rules/wo-not-acknowledged/", action="disable")
    body = client.get("/rules/wo-not-acknowledged/history/").content.decode()
    actions = re.findall(r'<td class="action">(\w+)</td>', body)
    assert actions == ["disable", "update", "create"]
    actors = re.findall(r'<td class="actor">([^<]+)</td>', body)
    assert actors == ["ada", "ada", "loadrules"]
    assert '<span class="del">-within: 10m</span>' in body
    assert '<span class="add">+within: 15m</span>' in body
    assert '<span class="add">+enabled: false</span>' in body


# --- who may do what -------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["operator", "viewer"])
def test_only_admins_may_post(client, rules, role):
    _login(client, "someone", role)
    page = client.get("/rules/wo-not-acknowledged/").content.decode()
    assert "readonly" in page and 'value="save"' not in page
    token = _csrf(client, "/rules/")
    for url, data in (
        ("/rules/wo-not-acknowledged/", {"definition": EDITED, "action": "save"}),
        ("/rules/wo-not-acknowledged/", {"action": "disable"}),
        ("/rules/wo-not-acknowledged/", {"definition": EDITED, "action": "backtest"}),
        ("/rules/new/", {"definition": NEW, "action": "save"}),
    ):
        response = client.post(url, {**data, "csrfmiddlewaretoken": token})
        assert response.status_code == 403, url
    assert Rule.objects.get(name="wo-not-acknowledged").version == 1
    assert not Rule.objects.filter(name="lab-result-failed").exists()


def test_a_post_without_a_csrf_token_is_refused(client, rules):
    _login(client, "ada", "admin")
    response = client.post("/rules/wo-not-acknowledged/", {"definition": EDITED, "action": "save"})
    assert response.status_code == 403
    assert Rule.objects.get(name="wo-not-acknowledged").version == 1


def test_anonymous_visitors_are_sent_to_login(client, rules):
    assert client.get("/rules/").status_code == 302
    assert client.post("/rules/new/", {"definition": NEW}).status_code in (302, 403)
    assert not Rule.objects.filter(name="lab-result-failed").exists()


def test_an_unknown_rule_is_404(client, rules):
    _login(client, "ada", "admin")
    assert client.get("/rules/nope/").status_code == 404
    assert client.get("/rules/nope/history/").status_code == 404


# --- Django admin ----------------------------------------------------------------------------


def test_the_django_admin_shows_alerts_and_the_audit_read_only(admin_client, rules):
    assert admin_client.get("/admin/monitors/rule/").status_code == 200
    assert admin_client.get("/admin/monitors/rulechange/").status_code == 200
    assert admin_client.get("/admin/monitors/alert/").status_code == 200
    assert admin_client.get("/admin/monitors/alert/add/").status_code == 403
    assert admin_client.get("/admin/monitors/rulechange/add/").status_code == 403


def test_the_django_admin_disables_rules_through_the_audited_path(admin_client, rules):
    rule = rules["mes-p1-silent"]
    response = admin_client.post(
        "/admin/monitors/rule/", {"action": "disable", "_selected_action": [rule.pk]}
    )
    assert response.status_code == 302
    rule.refresh_from_db()
    assert rule.enabled is False
    assert (rule.changes.first().action, rule.changes.first().actor) == ("disable", "admin")
