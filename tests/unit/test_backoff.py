"""Full-jitter exponential backoff bounds."""

from __future__ import annotations

import random

import pytest

from alerts.delivery import backoff_delay


@pytest.mark.parametrize("attempt", range(10))
def test_delay_stays_within_the_exponential_ceiling(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling = min(60.0, 0.5 * 2**attempt)
    delays = [backoff_delay(attempt, 0.5, 60.0, rng) for _ in range(500)]
    assert all(0.0 <= d <= ceiling for d in delays)
    # full jitter: spread over the whole range, not clustered near the ceiling
    assert min(delays) < 0.1 * ceiling
    assert max(delays) > 0.9 * ceiling


def test_cap_applies_and_huge_attempts_do_not_overflow() -> None:
    rng = random.Random(1)
    for attempt in (7, 8, 100, 10_000):
        assert backoff_delay(attempt, 0.5, 60.0, rng) <= 60.0


def test_same_seed_same_delays() -> None:
    first = [backoff_delay(a, 0.5, 60.0, random.Random(42)) for a in range(8)]
    second = [backoff_delay(a, 0.5, 60.0, random.Random(42)) for a in range(8)]
    assert first == second


def test_zero_base_means_immediate_retry() -> None:
    assert backoff_delay(5, 0.0, 60.0, random.Random(0)) == 0.0


@pytest.mark.parametrize(
    ("attempt", "base", "cap"), [(-1, 0.5, 60.0), (0, -0.5, 60.0), (0, 0.5, -1.0)]
)
def test_invalid_arguments_raise(attempt: int, base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        backoff_delay(attempt, base, cap, random.Random(0))
