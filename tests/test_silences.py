"""Silences: label matchers (exact and full-match regex) over a time window, expirable early."""

from __future__ import annotations

from datetime import timedelta

import pytest

from console.auth import Principal
from monitors.models import Alert, Silence
from monitors.silences import (
    MuteError,
    active_mutes,
    create_silence,
    expire_silence,
    is_silenced,
    parse_matchers,
    silence_state,
    silenced_ids,
)
from tests.alerts_kit import T0, make_alert, make_rule

ADMIN = Principal(name="ada", role="admin")


def silence(*matchers: tuple[str, str] | tuple[str, str, bool], starts=T0, hours=2) -> Silence:
    """Store a silence of (name, value[, is_regex]) matchers from ``starts`` for ``hours``."""
    return Silence.objects.create(
        matchers=[
            {"name": m[0], "value": m[1], "is_regex": m[2] if len(m) > 2 else False}
            for m in matchers
        ],
        starts_at=starts,
        ends_at=starts + timedelta(hours=hours),
        comment="test",
        created_by="ada",
    )


def loaded(alert: Alert) -> Alert:
    return Alert.objects.select_related("rule", "plant").get(pk=alert.pk)


@pytest.fixture
def wo_alert(landscape) -> Alert:
    rule = make_rule("wo-not-acknowledged", labels={"flow": "order-to-production"})
    return loaded(make_alert(rule, "WO-1001", plant=landscape["p1"]))


def muted(alert: Alert, at=T0 + timedelta(minutes=30)) -> bool:
    return active_mutes(at).silenced(alert) is not None


def test_an_exact_rule_matcher_mutes_that_rules_alerts(wo_alert):
    silence(("rule", "wo-not-acknowledged"))

    assert muted(wo_alert)


def test_it_does_not_mute_another_rule(wo_alert):
    silence(("rule", "mes-p1-silent"))

    assert not muted(wo_alert)


def test_every_matcher_must_match(wo_alert):
    silence(("rule", "wo-not-acknowledged"), ("key", "WO-1002"))

    assert not muted(wo_alert)


def test_it_matches_key_plant_severity_kind_and_the_rules_own_labels(wo_alert):
    silence(
        ("key", "WO-1001"),
        ("plant", "p1"),
        ("severity", "critical"),
        ("kind", "followup"),
        ("flow", "order-to-production"),
    )

    assert muted(wo_alert)


def test_a_regex_matcher_must_match_the_whole_label(wo_alert):
    silence(("rule", "wo-", True))
    assert not muted(wo_alert)

    silence(("rule", "wo-.*", True))
    assert muted(wo_alert)


def test_a_regex_may_alternate_keys(wo_alert):
    silence(("key", "WO-100[0-9]|LOT-.*", True))

    assert muted(wo_alert)


def test_an_absent_label_reads_as_the_empty_string(wo_alert):
    silence(("rule", "wo-not-acknowledged"), ("shift", ""))

    assert muted(wo_alert)


def test_a_silence_mutes_from_its_start_until_just_before_its_end(wo_alert):
    silence(("rule", "wo-not-acknowledged"), starts=T0 + timedelta(hours=1), hours=1)

    assert not muted(wo_alert, T0 + timedelta(minutes=59))
    assert muted(wo_alert, T0 + timedelta(hours=1))
    assert muted(wo_alert, T0 + timedelta(hours=2) - timedelta(seconds=1))
    assert not muted(wo_alert, T0 + timedelta(hours=2))


def test_an_expired_silence_mutes_no_more(wo_alert):
    s = silence(("rule", "wo-not-acknowledged"))
    assert muted(wo_alert, T0 + timedelta(minutes=10))

    expire_silence(s, T0 + timedelta(minutes=20))

    assert not muted(wo_alert, T0 + timedelta(minutes=30))
    assert silence_state(s, T0 + timedelta(minutes=30)) == "expired"


def test_expiring_twice_keeps_the_first_time(wo_alert):
    s = silence(("rule", "wo-not-acknowledged"))
    expire_silence(s, T0 + timedelta(minutes=20))
    expire_silence(s, T0 + timedelta(minutes=40))

    s.refresh_from_db()
    assert s.expired_at == T0 + timedelta(minutes=20)


def test_silence_states_follow_the_clock(wo_alert):
    s = silence(("rule", "x"), starts=T0 + timedelta(hours=1), hours=1)

    assert silence_state(s, T0) == "pending"
    assert silence_state(s, T0 + timedelta(hours=1, minutes=1)) == "active"
    assert silence_state(s, T0 + timedelta(hours=2)) == "expired"


def test_a_resolved_alert_is_never_silenced(landscape):
    rule = make_rule()
    alert = loaded(make_alert(rule, "WO-1", plant=landscape["p1"], state="resolved"))
    silence(("rule", rule.name))

    assert not muted(alert)


def test_the_silence_that_mutes_is_named(wo_alert):
    s = silence(("key", "WO-1001"))

    assert active_mutes(T0 + timedelta(minutes=1)).silenced(wo_alert) == s
    assert silenced_ids([wo_alert], T0 + timedelta(minutes=1)) == {wo_alert.pk: s}
    assert is_silenced(wo_alert, T0 + timedelta(minutes=1))
    assert not is_silenced(wo_alert, T0 - timedelta(minutes=1))


def test_a_stored_silence_with_a_broken_regex_mutes_nothing(wo_alert):
    silence(("rule", "(", True))

    assert not muted(wo_alert)


def test_fifty_alerts_cost_two_queries_once_loaded(landscape, django_assert_num_queries):
    rule = make_rule()
    for n in range(50):
        make_alert(rule, f"WO-{n}", plant=landscape["p1"])
    alerts = list(Alert.objects.select_related("rule", "plant"))
    silence(("key", "WO-1.*", True))

    with django_assert_num_queries(2):
        mutes = active_mutes(T0 + timedelta(minutes=1))
        found = [alert.key for alert in alerts if mutes.silenced(alert)]

    assert len(found) == 11  # WO-1 and WO-10 .. WO-19


# --- Validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("matchers", "field"),
    [
        ([], "matchers"),
        (None, "matchers"),
        ([{"value": "x"}], "matchers[0].name"),
        ([{"name": "  ", "value": "x"}], "matchers[0].name"),
        (
            [{"name": "rule", "value": "x"}, {"name": "key", "value": "(", "is_regex": True}],
            "matchers[1].value",
        ),
        ([{"name": "key", "value": "(", "is_regex": True}], "matchers[0].value"),
        ([{"name": "key", "value": 5}], "matchers[0].value"),
        ([{"name": "key", "value": "x", "is_regex": "yes"}], "matchers[0].is_regex"),
        ([{"name": "key", "value": "x", "regex": True}], "matchers[0].regex"),
        (["rule=x"], "matchers[0]"),
    ],
)
def test_it_refuses_bad_matchers_naming_the_field(matchers, field):
    with pytest.raises(MuteError) as caught:
        parse_matchers(matchers)

    assert caught.value.field == field


def test_an_unclosed_group_is_reported_as_an_invalid_regular_expression():
    with pytest.raises(MuteError, match="invalid regular expression"):
        parse_matchers([{"name": "key", "value": "(", "is_regex": True}])


def test_creating_needs_a_comment_and_a_future_end(db):
    matchers = [{"name": "rule", "value": "x"}]
    with pytest.raises(MuteError) as no_comment:
        create_silence(ADMIN, matchers, ends_at=T0 + timedelta(hours=1), comment=" ", now=T0)
    with pytest.raises(MuteError) as backwards:
        create_silence(
            ADMIN,
            matchers,
            starts_at=T0 + timedelta(hours=2),
            ends_at=T0 + timedelta(hours=1),
            comment="x",
            now=T0,
        )
    with pytest.raises(MuteError) as past:
        create_silence(
            ADMIN,
            matchers,
            starts_at=T0 - timedelta(hours=2),
            ends_at=T0 - timedelta(hours=1),
            comment="x",
            now=T0,
        )

    assert no_comment.value.field == "comment"
    assert backwards.value.field == "ends_at"
    assert "after starts_at" in backwards.value.message
    assert past.value.field == "ends_at"
    assert Silence.objects.count() == 0


def test_a_new_silence_starts_now_by_default_and_records_its_creator(db):
    created = create_silence(
        ADMIN,
        [{"name": "rule", "value": "x"}],
        ends_at=T0 + timedelta(hours=1),
        comment="deploy",
        now=T0,
    )

    assert created.starts_at == T0
    assert created.created_by == "ada"
    assert created.matchers == [{"name": "rule", "value": "x", "is_regex": False}]


# --- Plant scope ------------------------------------------------------------------------------


def operator_of(*plants) -> Principal:
    return Principal(
        name="olga",
        role="operator",
        plant_ids=frozenset(p.pk for p in plants),
        plant_keys=frozenset(p.key for p in plants),
    )


def test_a_plant_scoped_silence_gets_its_plant_matcher(landscape):
    created = create_silence(
        operator_of(landscape["p1"]),
        [{"name": "rule", "value": "x"}],
        ends_at=T0 + timedelta(hours=1),
        comment="line stop",
        now=T0,
    )

    assert {"name": "plant", "value": "p1", "is_regex": False} in created.matchers
    assert created.plant == landscape["p1"]


def test_a_plant_scoped_caller_may_not_silence_another_plant(landscape):
    with pytest.raises(MuteError) as caught:
        create_silence(
            operator_of(landscape["p1"]),
            [{"name": "plant", "value": "p2"}],
            ends_at=T0 + timedelta(hours=1),
            comment="x",
            now=T0,
        )

    assert caught.value.status == 403
    assert caught.value.field == "matchers"


def test_a_plant_scoped_caller_may_not_use_a_plant_regex(landscape):
    with pytest.raises(MuteError) as caught:
        create_silence(
            operator_of(landscape["p1"]),
            [{"name": "plant", "value": "p.*", "is_regex": True}],
            ends_at=T0 + timedelta(hours=1),
            comment="x",
            now=T0,
        )

    assert caught.value.status == 400


def test_a_caller_of_two_plants_must_name_one(landscape):
    with pytest.raises(MuteError, match="plant matcher is required"):
        create_silence(
            operator_of(landscape["p1"], landscape["p2"]),
            [{"name": "rule", "value": "x"}],
            ends_at=T0 + timedelta(hours=1),
            comment="x",
            now=T0,
        )


def test_an_unscoped_silence_with_an_exact_plant_records_the_plant(landscape):
    created = create_silence(
        ADMIN,
        [{"name": "plant", "value": "p2"}],
        ends_at=T0 + timedelta(hours=1),
        comment="x",
        now=T0,
    )

    assert created.plant == landscape["p2"]
