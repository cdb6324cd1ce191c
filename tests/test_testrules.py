"""`testrules`: rule unit tests on a simulated clock in an empty in-memory world."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command

from integrations.models import Event, Message, MessageAttempt
from monitors.models import Alert, AlertState, Rule
from monitors.testing import (
    ORIGIN,
    AlertRef,
    RuleTestError,
    compare,
    format_offset,
    in_memory_database,
    parse_offset,
    read_test_file,
    run_suite,
)

FIXTURES = Path(settings.BASE_DIR) / "monitors" / "fixtures"
LANDSCAPE = Path(settings.BASE_DIR) / "integrations" / "fixtures" / "demo_landscape.yaml"

RULES = """
rules:
  - name: wo-not-acknowledged
    kind: followup
    when: {type: erp.workorder.released}
    expect: {type: mes.workorder.acknowledged}
    key: subject
    within: 10m
"""

PASSING = """
rule_files: [rules.yaml]
tests:
  - name: acknowledgement arrives late
    events:
      - {at: 0m, type: erp.workorder.released, source: /erp, subject: WO-1}
      - {at: 14m, type: mes.workorder.acknowledged, source: /mes/p1, subject: WO-1}
    expect:
      - {at: 9m, firing: []}
      - {at: 11m, firing: [{rule: wo-not-acknowledged, key: WO-1}]}
      - {at: 15m, firing: [], resolved: [{rule: wo-not-acknowledged, key: WO-1, resolution: late}]}
"""


def _write(tmp_path: Path, tests: str, rules: str = RULES) -> Path:
    (tmp_path / "rules.yaml").write_text(textwrap.dedent(rules), encoding="utf-8")
    path = tmp_path / "rules_test.yaml"
    path.write_text(textwrap.dedent(tests), encoding="utf-8")
    return path


def _run(path: Path) -> str:
    out = StringIO()
    call_command("testrules", str(path), stdout=out)
    return out.getvalue()


def _fails(path: Path) -> tuple[str, str]:
    out = StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("testrules", str(path), stdout=out)
    return out.getvalue(), str(caught.value)


# --- the command (a child process on an in-memory database, the real evaluation engine) -----


@pytest.mark.django_db
def test_the_shipped_demo_rule_tests_pass():
    out = _run(FIXTURES / "demo_rules_test.yaml")
    assert "FAIL" not in out
    count = out.count("PASS ")
    assert count >= 15
    assert f"{count} rule tests: {count} passed, 0 failed" in out


@pytest.mark.django_db
def test_a_passing_file_prints_pass_and_a_summary(tmp_path):
    out = _run(_write(tmp_path, PASSING))
    assert out.splitlines() == [
        "PASS acknowledgement arrives late",
        "1 rule tests: 1 passed, 0 failed",
    ]


@pytest.mark.django_db
def test_it_never_touches_the_database_it_was_started_on(tmp_path):
    if in_memory_database():
        pytest.skip("the test database is in memory itself, so testrules runs in-process")
    Rule.objects.create(name="mine", kind="heartbeat", definition={})
    _run(_write(tmp_path, PASSING))
    assert list(Rule.objects.values_list("name", flat=True)) == ["mine"]
    assert not Event.objects.exists()


@pytest.mark.django_db
def test_a_failing_test_prints_a_readable_diff_and_exits_1(tmp_path):
    failing = """
rule_files: [rules.yaml]
tests:
  - name: acknowledgement arrives late
    events:
      - {at: 0m, type: erp.workorder.released, source: /erp, subject: WO-1}
      - {at: 14m, type: mes.workorder.acknowledged, source: /mes/p1, subject: WO-1}
    expect:
      - {at: 11m, firing: []}
  - name: never acknowledged
    events:
      - {at: 0m, type: erp.workorder.released, source: /erp, subject: WO-2}
    expect:
      - {at: 11m, firing: [{rule: wo-not-acknowledged, key: WO-3}]}
"""
    out, error = _fails(_write(tmp_path, failing))
    assert "FAIL acknowledgement arrives late" in out
    assert "at 11m: expected firing [], got [wo-not-acknowledged WO-1]" in out
    assert "unexpected: wo-not-acknowledged WO-1" in out
    assert "FAIL never acknowledged" in out
    assert (
        "at 11m: expected firing [wo-not-acknowledged WO-3], got [wo-not-acknowledged WO-2]" in out
    )
    assert "missing: wo-not-acknowledged WO-3" in out
    assert "2 rule tests: 0 passed, 2 failed" in out
    assert "2 of 2 rule tests failed" in error


@pytest.mark.django_db
def test_a_wrong_resolution_is_named_in_the_diff(tmp_path):
    wrong = PASSING.replace("resolution: late}", "resolution: recovered, late_by: 3m}")
    out, _ = _fails(_write(tmp_path, wrong))
    assert (
        "at 15m: resolved wo-not-acknowledged WO-1: expected resolution recovered, got late" in out
    )
    assert "expected late_by 3m, got 4m" in out


@pytest.mark.django_db
def test_an_invalid_test_file_is_refused_naming_the_test_and_field(tmp_path):
    bad = PASSING.replace("at: 14m", "at: soon").replace(
        "key: WO-1}]}", "key: WO-1, colour: red}]}"
    )
    bad = bad.replace(
        "rule: wo-not-acknowledged, key: WO-1, resolution", "rule: typo, key: WO-1, resolution"
    )
    out, error = _fails(_write(tmp_path, bad))
    assert out == ""
    assert "refused, no test was run" in error
    assert "tests[0] (acknowledgement arrives late): events[1].at: must be a time like 0m" in error
    assert "expect[1].firing[0].colour: unknown field" in error
    assert "expect[2].resolved[0].rule: unknown rule 'typo'" in error


@pytest.mark.django_db
def test_an_invalid_rule_file_is_refused_naming_the_rule_and_field(tmp_path):
    path = _write(tmp_path, PASSING, rules=RULES.replace("within: 10m", "within: later"))
    _, error = _fails(path)
    assert "rules.yaml: rules[0] (wo-not-acknowledged): within: must be a duration" in error


@pytest.mark.django_db
def test_a_missing_rule_file_is_refused(tmp_path):
    path = _write(tmp_path, PASSING.replace("[rules.yaml]", "[absent.yaml]"))
    _, error = _fails(path)
    assert "absent.yaml: no such file" in error


@pytest.mark.django_db
def test_a_yaml_error_in_the_test_file_names_the_line(tmp_path):
    _, error = _fails(_write(tmp_path, "rule_files: [rules.yaml\ntests: []\n"))
    assert "YAML syntax error at line" in error


# --- reading ---------------------------------------------------------------------------------


def test_offsets_read_and_print_like_durations():
    assert parse_offset("0m") == 0
    assert parse_offset(0) == 0
    assert parse_offset("9m59s") == 599
    assert parse_offset("10h1m") == 36060
    assert format_offset(599) == "9m59s"
    assert format_offset(3600) == "1h"
    assert format_offset(0) == "0m"
    with pytest.raises(ValueError, match="must be a time"):
        parse_offset("soon")
    with pytest.raises(ValueError, match="negative"):
        parse_offset(-5)


def test_a_test_may_only_name_rules_from_its_rule_files(tmp_path):
    bad = PASSING.replace(
        "  - name: acknowledgement arrives late\n", "  - name: x\n    rules: [nope]\n"
    )
    with pytest.raises(RuleTestError) as caught:
        read_test_file(_write(tmp_path, bad))
    assert any("tests[0] (x): rules: unknown rule 'nope'" in m for m in caught.value.messages)


def test_a_step_must_be_exactly_one_kind_of_thing(tmp_path):
    bad = PASSING.replace(
        "- {at: 0m, type: erp.workorder.released, source: /erp, subject: WO-1}",
        "- {at: 0m, type: erp.workorder.released, message: {connector: c}}",
    )
    with pytest.raises(RuleTestError) as caught:
        read_test_file(_write(tmp_path, bad))
    assert "events[0]: must be exactly one of an event" in "\n".join(caught.value.messages)


# --- the diff --------------------------------------------------------------------------------


def _alert(rule: str, key: str, **fields) -> Alert:
    return Alert(rule=Rule(name=rule), key=key, **fields)


def test_compare_is_silent_when_the_lists_match_in_any_order():
    actual = [_alert("a", "K-2"), _alert("a", "K-1")]
    assert compare(60, "firing", (AlertRef("a", "K-1"), AlertRef("a", "K-2")), actual) == []


def test_compare_names_missing_and_unexpected_alerts():
    lines = compare(660, "firing", (AlertRef("a", "K-1"),), [_alert("b", "K-9")])
    assert lines == [
        "at 11m: expected firing [a K-1], got [b K-9]",
        "  missing: a K-1",
        "  unexpected: b K-9",
    ]


def test_compare_counts_two_episodes_of_one_key_separately():
    actual = [_alert("a", "K", resolution="late"), _alert("a", "K", resolution="recovered")]
    expected = (AlertRef("a", "K", resolution="late"),)
    lines = compare(60, "resolved", expected, actual)
    assert lines[0] == "at 1m: expected resolved [a K], got [a K, a K]"
    assert "  unexpected: a K" in lines


# --- the runner, against a stand-in engine ------------------------------------------------


class RecordingEngine:
    """Stands in for monitors.evaluate: records each pass, fires one alert per stored release."""

    def __init__(self) -> None:
        self.passes: list[tuple[float, list[tuple[str, float, float]]]] = []

    def __call__(self, now=None, rules=None):  # noqa: ANN001 -- evaluate()'s signature
        events = [
            (
                e.type,
                (e.occurred_at - ORIGIN).total_seconds(),
                (e.received_at - ORIGIN).total_seconds(),
            )
            for e in Event.objects.order_by("occurred_at", "id")
        ]
        self.passes.append(((now - ORIGIN).total_seconds(), events))
        rule = Rule.objects.get()
        for event in Event.objects.filter(type="erp.workorder.released"):
            Alert.objects.get_or_create(
                rule=rule,
                key=event.subject,
                defaults={"state": AlertState.FIRING, "severity": "major", "started_at": now},
            )


@pytest.mark.django_db
def test_the_runner_stores_items_when_received_and_evaluates_at_every_moment(tmp_path):
    text = """
    rule_files: [rules.yaml]
    tests:
      - name: out of order
        events:
          - {at: 1m, type: mes.workorder.acknowledged, source: /mes/p1, subject: WO-1}
          - {at: 0m, received: 5m, type: erp.workorder.released, source: /erp, subject: WO-1}
          - {at: 7m, ack: {rule: wo-not-acknowledged, key: WO-1}, by: alice}
        expect:
          - {at: 3m, firing: []}
          - {at: 8m, firing: [{rule: wo-not-acknowledged, key: WO-1}]}
    """
    engine = RecordingEngine()
    result = run_suite(read_test_file(_write(tmp_path, text)), evaluate=engine)

    assert result.passed, result.lines()
    assert [moment for moment, _ in engine.passes] == [60, 180, 300, 420, 480]
    assert engine.passes[0][1] == [("mes.workorder.acknowledged", 60, 60)]
    assert engine.passes[2][1] == [
        ("erp.workorder.released", 0, 300),
        ("mes.workorder.acknowledged", 60, 60),
    ]
    assert not Event.objects.exists()  # the world is wiped after the suite


@pytest.mark.django_db
def test_each_test_starts_from_an_empty_world(tmp_path):
    text = """
    rule_files: [rules.yaml]
    tests:
      - name: first
        events: [{at: 0m, type: erp.workorder.released, subject: WO-1}]
        expect: [{at: 1m, firing: [{rule: wo-not-acknowledged, key: WO-1}]}]
      - name: second
        events: [{at: 0m, type: erp.workorder.released, subject: WO-2}]
        expect: [{at: 1m, firing: [{rule: wo-not-acknowledged, key: WO-2}]}]
    """
    engine = RecordingEngine()
    result = run_suite(read_test_file(_write(tmp_path, text)), evaluate=engine)
    assert result.passed, result.lines()
    assert [len(events) for _, events in engine.passes] == [1, 1, 1, 1]


@pytest.mark.django_db
def test_messages_are_stored_with_their_attempts_and_a_count_makes_several(tmp_path):
    seen: list[list[tuple[str, str, int]]] = []

    def engine(now=None, rules=None):  # noqa: ANN001
        seen.append(
            [
                (m.external_id, m.status, m.attempts.count())
                for m in Message.objects.order_by("external_id")
            ]
        )

    text = f"""
    rule_files: [rules.yaml]
    landscape: {LANDSCAPE}
    tests:
      - name: messages
        events:
          - {{at: 0m, message: {{connector: erp-to-mes-orders, status: failed, id: M-1}}}}
          - {{at: 1m, message: {{connector: erp-to-mes-orders, status: delivered, id: M-1}}}}
          - {{at: 1m, count: 3, message: {{connector: erp-to-mes-orders, status: delivered}}}}
        expect:
          - {{at: 1m, firing: []}}
    """
    result = run_suite(read_test_file(_write(tmp_path, text)), evaluate=engine)
    assert result.passed, result.lines()
    assert seen[0] == [("M-1", "failed", 1)]
    assert seen[1][0] == ("M-1", "delivered", 2)
    assert len(seen[1]) == 4
    assert MessageAttempt.objects.count() == 0  # wiped after the suite


def test_a_message_for_an_unknown_connector_fails_the_test_with_the_reason(tmp_path, db):
    text = """
    rule_files: [rules.yaml]
    tests:
      - name: no landscape
        events: [{at: 0m, message: {connector: nowhere, status: failed}}]
        expect: [{at: 1m, firing: []}]
    """
    result = run_suite(read_test_file(_write(tmp_path, text)), evaluate=lambda **_: None)
    assert result.results[0].failures == [
        "at 0m: events[0]: unknown connector 'nowhere' (load a landscape)"
    ]


def test_the_origin_is_fixed_so_runs_are_repeatable():
    assert ORIGIN + timedelta(minutes=11) == ORIGIN.replace(minute=11)


@pytest.mark.django_db
def test_a_rule_the_engine_cannot_evaluate_fails_its_test_with_the_reason(tmp_path):
    rules = """
    rules:
      - {name: t, kind: threshold, connector: nowhere, metric: failed_count, window: 5m,
         op: ">", value: 1}
    """
    tests = """
    rule_files: [rules.yaml]
    tests:
      - name: broken threshold
        expect: [{at: 5m, firing: []}]
    """
    out, _ = _fails(_write(tmp_path, tests, rules=rules))
    assert "FAIL broken threshold" in out
    assert "at 5m: rule t could not be evaluated: RuleProblem: connector 'nowhere'" in out
