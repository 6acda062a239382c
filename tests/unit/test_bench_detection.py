"""The detection benchmark's readout figures: read from the worker's counters, rendered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.detection import _labelled, render_markdown

RESULTS = Path(__file__).parents[2] / "bench" / "results"


def test_a_counter_is_read_for_its_trigger_only() -> None:
    metrics = {
        ("rampmon_readouts_total", frozenset({("trigger", "arrival")})): 90.0,
        ("rampmon_readouts_total", frozenset({("trigger", "periodic")})): 4.0,
        ("rampmon_readout_seconds_total", frozenset({("trigger", "arrival")})): 0.2,
    }
    assert _labelled(metrics, "rampmon_readouts_total", "arrival") == 90.0
    assert _labelled(metrics, "rampmon_readouts_total", "periodic") == 4.0
    assert _labelled(metrics, "rampmon_readout_seconds_total", "periodic") == 0.0


def test_results_with_readouts_render_their_share_and_older_ones_render_as_before() -> None:
    old = json.loads((RESULTS / "detection-2026-12-04.json").read_text())
    assert "Readouts" not in render_markdown(old)
    new = {
        **old,
        "readouts": {
            "arrival": {"per_second": 45.8, "share": 0.104},
            "periodic": {"per_second": 1.1, "share": 0.0024},
        },
        "readout_budget_wait_share": 0.0,
    }
    line = render_markdown(new).splitlines()[-1]
    assert line.startswith("- Readouts: 45.8/s on arrival, taking 10.4% of the worker's")
    assert "1.1/s periodic (0.2%)" in line and "budget 0.0% of the time" in line


@pytest.mark.parametrize("name", ["detection-2026-12-04.json", "detection-2026-12-03.json"])
def test_every_kept_result_still_renders(name: str) -> None:
    assert "p50 target" in render_markdown(json.loads((RESULTS / name).read_text()))
