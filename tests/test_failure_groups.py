"""Failure groups: failed messages grouped by connector and normalised error, replayable at once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from console.auth import Principal
from integrations.failures import failure_groups, normalise_error, with_error_group
from integrations.models import Message, ReplayItem
from integrations.replay import selection, start_replay
from tests.replay_kit import ADMIN, OPERATOR, Target, drain, failed_message, point_at

SAMPLES = [
    ("MES answered 503", "MES answered #"),
    ("MES answered 503 for WO-1001", "MES answered # for #"),
    (
        "order 4f1c2a9e-8b7d-4c3e-9a1f-0e2d3c4b5a69 rejected at 2026-05-21T08:00:03.120Z",
        "order <uuid> rejected at <time>",
    ),
    ("checksum deadbeefcafe mismatch", "checksum <hex> mismatch"),
    ("field 'qty' must be positive", 'field "…" must be positive'),
    ('unknown material "MAT-77" in line 3', 'unknown material "…" in line #'),
    ("timeout after 30s   (retry   2)", "timeout after # (retry #)"),
    ("connection reset at 08:15:02", "connection reset at <time>"),
    ("", ""),
]


@pytest.mark.parametrize(("error", "pattern"), SAMPLES)
def test_normalising_strips_what_varies_between_occurrences(error, pattern):
    assert normalise_error(error) == pattern


def test_the_database_normalises_exactly_as_python_does(landscape):
    connector = landscape["c1"]
    for error, _ in SAMPLES:
        failed_message(connector, error=error)
    failed_message(connector, error="a" * 1000 + " 42")

    for error, pattern in with_error_group(Message.objects.all()).values_list(
        "error", "error_group"
    ):
        assert pattern == normalise_error(error), error


@pytest.fixture
def failures(landscape):
    """Three kinds of failure on two connectors, over the last hour."""
    c1, c2 = landscape["c1"], landscape["c2"]
    now = timezone.now()
    made = {"503": [], "qty": [], "p2": []}
    for minutes, order in ((50, "WO-1"), (40, "WO-2"), (30, "WO-3"), (20, "WO-4")):
        made["503"].append(
            failed_message(
                c1, error=f"MES answered 503 for {order}", at=now - timedelta(minutes=minutes)
            )
        )
    for minutes, qty in ((45, "-1"), (15, "-7")):
        made["qty"].append(
            failed_message(
                c1,
                status="dead_lettered",
                error=f"quantity '{qty}' rejected",
                at=now - timedelta(minutes=minutes),
            )
        )
    made["p2"].append(failed_message(c2, error="MES answered 502 for WO-9"))
    failed_message(c1, status="delivered", error="", at=now - timedelta(minutes=5))
    return made


def test_failed_messages_are_grouped_by_connector_and_error_with_counts_and_times(failures):
    groups = failure_groups(ADMIN)

    summary = [(g.connector, g.pattern, g.count) for g in groups]
    assert summary == [
        ("erp-to-mes-orders", "MES answered # for #", 4),
        ("erp-to-mes-orders", 'quantity "…" rejected', 2),
        ("erp-to-mes-p2-orders", "MES answered # for #", 1),
    ]
    biggest = groups[0]
    assert biggest.first_seen == failures["503"][0].occurred_at
    assert biggest.last_seen == failures["503"][-1].last_attempt_at
    newest_first = [m.pk for m in reversed(failures["503"])]
    assert biggest.sample_message_ids == newest_first


def test_a_group_converts_to_a_filter_that_selects_exactly_its_messages(failures):
    groups = failure_groups(ADMIN)

    for group, kind in zip(groups, ("503", "qty", "p2"), strict=True):
        chosen = set(selection(group.filter, ADMIN).values_list("id", flat=True))
        assert chosen == {m.pk for m in failures[kind]}


def test_an_operator_replays_a_whole_group_in_one_action(failures, landscape):
    with Target() as mes:
        point_at(landscape["c1"], mes)
        group = failure_groups(ADMIN)[0]

        job = start_replay(ADMIN, filter=group.filter, reason="MES was down for twenty minutes")
        drain()

    job.refresh_from_db()
    assert (job.total, job.delivered) == (4, 4)
    assert sorted(
        ReplayItem.objects.filter(job=job).values_list("message_id", flat=True)
    ) == sorted(m.pk for m in failures["503"])
    assert mes.count == 4
    remaining = [(g.pattern, g.count) for g in failure_groups(ADMIN, connector="erp-to-mes-orders")]
    assert remaining == [('quantity "…" rejected', 2)]


def test_since_counts_only_recent_failures_and_is_kept_in_the_filter(failures):
    since = timezone.now() - timedelta(minutes=35)

    groups = failure_groups(ADMIN, since=since)

    counts = {(g.connector, g.pattern): g.count for g in groups}
    assert counts[("erp-to-mes-orders", "MES answered # for #")] == 2
    assert counts[("erp-to-mes-orders", 'quantity "…" rejected')] == 1
    assert groups[0].filter["since"] == since.isoformat()
    assert selection(groups[0].filter, ADMIN).count() == 2


def test_a_plant_scoped_user_sees_only_its_plant_s_groups(failures, landscape):
    p2 = landscape["p2"]
    scoped = Principal(
        name="p2-op", role="operator", plant_ids=frozenset({p2.pk}), plant_keys=frozenset({"p2"})
    )

    assert [(g.connector, g.count) for g in failure_groups(scoped)] == [("erp-to-mes-p2-orders", 1)]
    assert len(failure_groups(OPERATOR)) == 3


def test_messages_without_error_text_form_their_own_group(landscape):
    failed_message(landscape["c1"], error="")

    (group,) = failure_groups(ADMIN)

    assert (group.pattern, group.label, group.count) == ("", "(no error text)", 1)
    assert selection(group.filter, ADMIN).count() == 1
