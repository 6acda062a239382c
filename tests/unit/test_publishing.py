"""When a worker publishes its snapshots (streams.publishing)."""

from __future__ import annotations

import pytest

from streams.publishing import PublishSchedule


def test_under_steady_load_it_publishes_once_per_interval() -> None:
    s = PublishSchedule(interval=0.5, quiet=0.1)
    published = []
    now = 0.0
    for step in range(300):  # a run every 10 ms for 3 s: never quiet
        now = step * 0.01
        s.ran(now)
        if step % 10 == 0 and s.due(now):  # the timer ticks every 0.1 s
            s.published(now)
            published.append(round(now, 2))
    assert published == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]


def test_a_quiet_ingest_publishes_its_last_runs_without_waiting_out_the_interval() -> None:
    s = PublishSchedule(interval=0.5, quiet=0.1)
    s.published(0.0)
    s.ran(0.05)  # the end of a backlog
    assert not s.due(0.1)  # 0.05 s quiet
    assert s.due(0.2)  # 0.15 s quiet, 0.3 s before the interval would have elapsed
    s.published(0.2)
    assert not s.due(0.3)  # nothing new since: the interval rules again
    assert not s.due(0.6)
    assert s.due(0.7)


def test_it_never_publishes_more_often_than_once_per_quiet_period() -> None:
    s = PublishSchedule(interval=0.5, quiet=0.1)
    s.published(0.0)
    s.ran(0.0)  # a run right at the publish: counts as after it only if strictly later
    assert not s.due(0.15)
    s.ran(0.01)
    assert not s.due(0.1)
    assert s.due(0.11)


def test_the_interval_keeps_half_a_tick_of_slack_for_timer_jitter() -> None:
    s = PublishSchedule(interval=0.5, quiet=0.1)
    s.published(0.0)
    assert not s.due(0.44)
    assert s.due(0.46)  # a tick that fires a little early still publishes


@pytest.mark.parametrize(("interval", "quiet"), [(0.5, 0.0), (0.5, 0.6), (0.5, -1.0)])
def test_a_quiet_period_outside_the_interval_is_refused(interval: float, quiet: float) -> None:
    with pytest.raises(ValueError, match="quiet"):
        PublishSchedule(interval, quiet)
