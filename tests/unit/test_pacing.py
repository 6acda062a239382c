"""When snapshots are published: every interval with a backlog, sooner once caught up."""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

import pytest

from streams.pacing import PublishPacer, caught_up, lags


def _ticks(pacer: PublishPacer, caught: Callable[[float], bool], until: float) -> list[float]:
    """The times a timer ticking every ``pacer.tick`` (with 1 ms of jitter) publishes,
    ``caught(now)`` saying whether the worker is caught up then."""
    out, now = [], 0.0
    while now < until:
        current = caught(now)
        if pacer.due(now, current):
            pacer.published(now, current)
            out.append(round(now, 3))
        now += pacer.tick + 0.001
    return out


def _gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in pairwise(times)]


def test_a_worker_that_keeps_up_publishes_every_interval() -> None:
    pacer = PublishPacer(interval=0.5, catch_up_check=0.1)
    assert pacer.tick == 0.1
    times = _ticks(pacer, lambda now: True, 3.0)
    # a tick's jitter must not push a publish a whole tick late (0.6 s)
    assert times[0] == 0.0 and len(times) == 6 and set(_gaps(times)) == {0.505}, times


def test_a_backlogged_worker_publishes_every_interval() -> None:
    times = _ticks(PublishPacer(interval=0.5, catch_up_check=0.1), lambda now: False, 3.0)
    assert len(times) == 6 and set(_gaps(times)) == {0.505}, times


def test_a_worked_off_backlog_is_published_at_the_next_check() -> None:
    # behind until 1.23 s: the publish at 1.01 s found it behind, the tick at 1.313 s finds
    # it caught up and publishes; from then on the interval again
    times = _ticks(PublishPacer(interval=0.5, catch_up_check=0.1), lambda now: now >= 1.23, 3.0)
    assert times[:4] == [0.0, 0.505, 1.01, 1.313], times
    assert set(_gaps(times[3:])) == {0.505}, times


def test_at_most_one_early_publish_per_interval_however_the_lag_flickers() -> None:
    # behind at every other tick: each interval publish that finds it behind buys one
    # early publish, never more
    pacer = PublishPacer(interval=0.5, catch_up_check=0.1)
    times = _ticks(pacer, lambda now: round(now / 0.101) % 2 == 1, 10.0)
    assert len(times) <= 2 * 10 / 0.5 + 1, times


def test_a_zero_check_publishes_every_interval_only() -> None:
    pacer = PublishPacer(interval=0.5, catch_up_check=0.0)
    assert pacer.tick == 0.5
    assert len(_ticks(pacer, lambda now: now > 0.7, 2.0)) == 4
    pacer.published(10.0, caught_up=False)
    assert not pacer.due(10.1, caught_up=True)  # behind, then caught up: still no early one


def test_runs_wake_the_publish_loop_only_while_an_early_publish_is_possible() -> None:
    # the ingest agent wakes the loop after a run only then: otherwise a check between
    # ticks could publish an interval's half-tick slack early, and at a zero check a
    # quarter of a second early (tick = interval)
    pacer = PublishPacer(interval=0.5, catch_up_check=0.1)
    assert not pacer.awaiting_catch_up
    pacer.published(0.0, caught_up=False)
    assert pacer.awaiting_catch_up
    # a run that ends with the backlog worked off publishes then, not at the next tick
    assert pacer.due(0.237, caught_up=True)
    pacer.published(0.237, caught_up=True)
    assert not pacer.awaiting_catch_up
    off = PublishPacer(interval=0.5, catch_up_check=0.0)
    off.published(0.0, caught_up=False)
    assert not off.awaiting_catch_up


def test_a_check_a_run_brought_forward_gets_no_slack() -> None:
    # found by review of 25f00c9: with the tick's half-tick slack, a backlogged worker
    # woken at every run published every 0.45 s, not every 0.5 s
    pacer = PublishPacer(interval=0.5, catch_up_check=0.1)
    pacer.published(0.0, caught_up=False)
    assert pacer.due(0.451, caught_up=False)  # the timer's tick: jitter slack
    assert not pacer.due(0.451, caught_up=False, on_tick=False)
    assert pacer.due(0.5, caught_up=False, on_tick=False)
    assert pacer.due(0.2, caught_up=True, on_tick=False)  # the catch-up itself


def test_the_first_tick_publishes() -> None:
    assert PublishPacer(interval=0.5, catch_up_check=0.1).due(123.0, caught_up=False)


def test_lags_are_the_high_watermark_less_the_next_offset() -> None:
    marks = {("t", 0): 10, ("t", 1): 7, ("x", 0): None, ("x", 1): 0, ("x", 2): 5, ("x", 3): 9}
    processed = {("t", 0): 9, ("t", 1): 3, ("x", 0): 5}
    commits = {("t", 1): 1, ("x", 3): 4}
    got = lags(
        sorted(marks), processed, lambda t, p: marks[(t, p)], lambda t, p: commits.get((t, p))
    )
    # t/1: processed wins over the older commit; x/1: an empty log; x/2: nothing processed
    # and nothing committed; x/3: nothing processed yet, counted from the commit
    assert got == {
        ("t", 0): 0, ("t", 1): 3, ("x", 0): None, ("x", 1): 0, ("x", 2): None, ("x", 3): 5,
    }  # fmt: skip


def test_with_no_offset_of_its_own_a_partition_counts_from_its_log_start() -> None:
    # e/0: every record expired (start = high watermark): caught up, not unknown; e/1: a
    # new group's backlog; e/2: the start not read yet; e/3: a commit wins over the start
    marks = {("e", 0): 500, ("e", 1): 100, ("e", 2): 100, ("e", 3): 100}
    starts = {("e", 0): 500, ("e", 1): 40, ("e", 3): 0}
    got = lags(
        sorted(marks),
        {},
        lambda t, p: marks[(t, p)],
        lambda t, p: {("e", 3): 90}.get((t, p)),
        lambda t, p: starts.get((t, p)),
    )
    assert got == {("e", 0): 0, ("e", 1): 60, ("e", 2): None, ("e", 3): 10}
    assert not caught_up(got)
    assert caught_up(lags([("e", 0)], {}, lambda t, p: 500, log_start=lambda t, p: 500))


@pytest.mark.parametrize(
    ("lag", "expected"),
    [
        ({}, False),  # nothing processed yet: no evidence of being caught up
        ({("t", 0): 0, ("x", 0): 0}, True),
        ({("t", 0): 0, ("x", 0): 1}, False),
        ({("t", 0): 0, ("x", 0): None}, False),
    ],
)
def test_caught_up_needs_every_partition_at_its_high_watermark(
    lag: dict[tuple[str, int], int | None], expected: bool
) -> None:
    assert caught_up(lag) is expected
