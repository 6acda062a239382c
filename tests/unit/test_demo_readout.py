"""The demo's live readout line, from a worker's parsed /metrics samples."""

from __future__ import annotations

from streams.demo import EXPERIMENT, _readout
from streams.workerproc import Sample


def _sample(name: str, **labels: str) -> Sample:
    return name, frozenset(labels.items())


EVENTS = {
    _sample("rampmon_events_processed_total", topic="exposures"): 1200.0,
    _sample("rampmon_events_processed_total", topic="telemetry"): 3400.0,
}


def test_regression_a_stage_before_its_first_readout_says_so_instead_of_nan() -> None:
    """The line printed ``units c/t=   nan/nan`` for the first seconds of each stage."""
    line = _readout(EVENTS, 5.0, 12.0)
    assert "nan" not in line and "waiting for the stage's first readout" in line
    assert "events=4,600" in line


def test_a_read_out_stage_shows_units_effect_interval_and_verdict() -> None:
    exp = {"experiment": EXPERIMENT, "stage": "5"}
    g = {**exp, "guardrail": "error_session", "variant": "treatment"}
    metrics = {
        **EVENTS,
        _sample("rampmon_exposures", **exp, variant="control"): 950.0,
        _sample("rampmon_exposures", **exp, variant="treatment"): 50.0,
        _sample("rampmon_guardrail_effect", **g): 0.0123,
        _sample("rampmon_guardrail_interval_lower", **g): 0.0061,
        _sample("rampmon_guardrail_interval_upper", **g): 0.0185,
        _sample("rampmon_guardrail_verdict", **g, verdict="breach"): 1.0,
        _sample("rampmon_guardrail_verdict", **g, verdict="pass"): 0.0,
    }
    line = _readout(metrics, 5.0, 12.0)
    assert "units c/t=   950/50" in line
    assert "effect=+0.0123 CS=[+0.0061, +0.0185]" in line and "-> breach" in line


def test_a_stage_below_the_estimation_floor_says_so_instead_of_nan() -> None:
    exp = {"experiment": EXPERIMENT, "stage": "1"}
    metrics = {
        **EVENTS,
        _sample("rampmon_exposures", **exp, variant="control"): 6729.0,
        _sample("rampmon_exposures", **exp, variant="treatment"): 64.0,
    }
    line = _readout(metrics, 1.0, 8.8)
    assert "nan" not in line and "effect not estimated yet (too few units)" in line
