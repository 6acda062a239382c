"""The stage in force at an event's time."""

from __future__ import annotations

import pytest

from alerts.stages import stage_at

HISTORY = [(100.0, 1.0), (200.0, 5.0), (300.0, 25.0)]


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        (0.0, 0.0),  # before the first change: the default
        (99.999, 0.0),
        (100.0, 1.0),  # a change applies from its own instant on
        (150.0, 1.0),
        (200.0, 5.0),
        (299.0, 5.0),
        (300.0, 25.0),
        (1e12, 25.0),
    ],
)
def test_last_change_at_or_before_ts(ts: float, expected: float) -> None:
    assert stage_at(HISTORY, ts, default=0.0) == expected


def test_empty_history_is_the_default() -> None:
    assert stage_at([], 123.0, default=7.5) == 7.5


def test_same_instant_changes_last_one_wins() -> None:
    history = [(100.0, 1.0), (100.0, 5.0), (200.0, 0.0)]
    assert stage_at(history, 100.0, default=0.0) == 5.0
    assert stage_at(history, 250.0, default=3.0) == 0.0  # rolled back to 0 is not "no stage"
