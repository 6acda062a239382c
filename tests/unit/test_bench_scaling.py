"""The memory and scale-out benchmarks' own arithmetic (the runs themselves are in bench/)."""

from __future__ import annotations

import pytest

from bench.memory import render_markdown as memory_markdown
from bench.scaleout import merge_metrics, speedups, timed_events


def test_counters_add_up_across_workers_and_a_gauge_comes_from_its_owner() -> None:
    processed = ("rampmon_events_processed_total", (("topic", "t"),))
    exposures = ("rampmon_exposures", (("variant", "control"),))
    merged = merge_metrics([{processed: 3.0, exposures: 7.0}, {processed: 4.0}])
    assert merged == {processed: 7.0, exposures: 7.0}


def _memory(rss_1m: float, rss_5m: float) -> dict:
    samples = [
        {"checkpoint": c, "processed": c, "rss_bytes": int(r * 2**20), "seconds": 1.0}
        for c, r in ((1_000_000, rss_1m), (5_000_000, rss_5m))
    ]
    return {
        "date": "2026-11-23T00:00:00+00:00",
        "command": "python -m bench.memory",
        "code": {"commit": "abc"},
        "parameters": {"units": 1, "telemetry_per_round": 1, "round_seconds": 60,
                       "windows_expires_seconds": 300, "envelope": 100, "events": 5_000_000},
        "samples": samples,
        "rss_growth_1m_to_last": (rss_5m - rss_1m) / rss_1m,
        "peak_rss_bytes": int(rss_5m * 2**20),
        "dead_letters": 0,
        "attributed": 1,
    }  # fmt: skip


def test_memory_verdict_follows_the_growth() -> None:
    assert "**+5.0%** (target < 10%: met)" in memory_markdown(_memory(200, 210))
    assert "**+15.0%** (target < 10%: not met)" in memory_markdown(_memory(200, 230))


def test_scaleout_speedups_pair_the_runs_of_each_round() -> None:
    runs = [
        {"round": 0, "workers": 1, "events_per_second": 100.0},
        {"round": 0, "workers": 2, "events_per_second": 150.0},
        {"round": 1, "workers": 1, "events_per_second": 80.0},
        {"round": 1, "workers": 2, "events_per_second": 160.0},
        {"round": 2, "workers": 1, "events_per_second": 90.0},  # its pair never ran
    ]
    assert speedups(runs) == [1.5, 2.0]
    # results written before rounds: one pair
    assert speedups([{"workers": 2, "events_per_second": 3.0},
                     {"workers": 1, "events_per_second": 2.0}]) == [1.5]  # fmt: skip


def test_scaleout_credits_no_event_processed_before_its_clock_started() -> None:
    # worker 0 first answered at 10.0 s having run 3,000 events, worker 1 at 10.1 s with
    # 6,000: the clock starts at 10.0 s and neither count is in the timed events (both
    # used to be, with no time for them: 3-8% of the events, more with 2 workers)
    assert timed_events([(10.1, 6000.0), (10.0, 3000.0)], 100_000) == (10.0, 91_000)
    assert timed_events([(2.0, 500.0)], 1_000) == (2.0, 500)
    with pytest.raises(ValueError):
        timed_events([None, None], 1_000)
