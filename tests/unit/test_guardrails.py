"""Guardrail verdicts around the margin, and the experiment-level decision."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.config import GuardrailConfig
from monitor.guardrails import GuardrailResult, evaluate_guardrail
from monitor.moments import Moments
from monitor.sequential import AsymptoticCS, diff_in_means

TUNING, MIN_UNITS = 10_000, 100


def moments(n: int, mean: float, variance: float) -> Moments:
    """Moments of a sample with exactly this size, mean and (ddof=1) variance."""
    return Moments(n, n * mean, (n - 1) * variance + n * mean * mean)


def evaluate(cfg: GuardrailConfig, treatment: Moments, control: Moments) -> GuardrailResult:
    return evaluate_guardrail(
        cfg, "treatment", treatment, control, tuning_units=TUNING, min_units_per_variant=MIN_UNITS
    )


N, SD, BASE = 2_000, 1.0, 5.0
HALFWIDTH = AsymptoticCS(0.05, TUNING).halfwidth(
    diff_in_means(moments(N, 0.0, SD**2), moments(N, 0.0, SD**2))
)


# effect placed at margin_side * margin + offset * halfwidth; expected verdict follows from
# the rule, stated once per direction: harmful side beyond the margin -> breach
@pytest.mark.parametrize("margin", [0.0, 0.05])
@pytest.mark.parametrize(
    ("direction", "offset", "verdict", "reason"),
    [
        ("increase", 1.5, "breach", "breach"),
        ("increase", 1.01, "breach", "breach"),
        ("increase", 0.99, "inconclusive", "interval_straddles_margin"),
        ("increase", 0.0, "inconclusive", "interval_straddles_margin"),
        ("increase", -0.99, "inconclusive", "interval_straddles_margin"),
        ("increase", -1.01, "pass", "pass"),
        ("increase", -3.0, "pass", "pass"),
        ("decrease", -1.5, "breach", "breach"),
        ("decrease", -1.01, "breach", "breach"),
        ("decrease", -0.99, "inconclusive", "interval_straddles_margin"),
        ("decrease", 0.99, "inconclusive", "interval_straddles_margin"),
        ("decrease", 1.01, "pass", "pass"),
    ],
)
def test_verdict_around_the_margin(
    margin: float, direction: str, offset: float, verdict: str, reason: str
) -> None:
    cfg = GuardrailConfig(metric="m", harmful_direction=direction, margin=margin, name="g")
    signed_margin = margin if direction == "increase" else -margin
    effect = signed_margin + offset * HALFWIDTH
    r = evaluate(cfg, moments(N, BASE + effect, SD**2), moments(N, BASE, SD**2))
    assert (r.verdict, r.reason) == (verdict, reason)
    assert r.effect == pytest.approx(effect, abs=1e-12)
    assert r.lower == pytest.approx(effect - HALFWIDTH, abs=1e-9)
    assert r.upper == pytest.approx(effect + HALFWIDTH, abs=1e-9)
    assert (r.guardrail, r.metric, r.variant, r.margin, r.harmful_direction) == (
        "g",
        "m",
        "treatment",
        margin,
        direction,
    )
    assert (r.n_treatment, r.n_control, r.alpha) == (N, N, 0.05)
    assert r.treatment_mean == pytest.approx(BASE + effect) and r.control_mean == BASE
    assert (r.p_value <= r.alpha) == (not r.lower <= 0 <= r.upper)


@pytest.mark.parametrize(("n_t", "n_c"), [(MIN_UNITS - 1, 5_000), (5_000, MIN_UNITS - 1), (0, 0)])
def test_too_few_units_is_inconclusive_whatever_the_data(n_t: int, n_c: int) -> None:
    cfg = GuardrailConfig(metric="m", harmful_direction="increase", margin=0.0)
    r = evaluate(cfg, moments(n_t, 100.0, 1.0), moments(n_c, 0.0, 1.0))
    assert (r.verdict, r.reason) == ("inconclusive", "insufficient_units")
    assert math.isnan(r.lower) and math.isnan(r.upper) and math.isnan(r.p_value)
    assert r.guardrail == "m"


def test_exactly_the_minimum_units_is_enough() -> None:
    cfg = GuardrailConfig(metric="m", harmful_direction="increase", margin=0.0)
    r = evaluate(cfg, moments(MIN_UNITS, 100.0, 1.0), moments(MIN_UNITS, 0.0, 1.0))
    assert r.verdict == "breach"


@pytest.mark.parametrize("treatment_mean", [0.0, 1.0])
def test_constant_arms_are_inconclusive_with_a_finite_interval(treatment_mean: float) -> None:
    cfg = GuardrailConfig(metric="m", harmful_direction="increase", margin=0.0)
    r = evaluate(cfg, moments(500, treatment_mean, 0.0), moments(500, 0.0, 0.0))
    assert (r.verdict, r.reason) == ("inconclusive", "no_variance")
    assert r.lower == r.upper == r.effect == treatment_mean


def test_non_finite_statistics_do_not_produce_a_verdict() -> None:
    cfg = GuardrailConfig(metric="m", harmful_direction="decrease", margin=0.0)
    r = evaluate(cfg, Moments(500, math.inf, math.inf), moments(500, 0.0, 1.0))
    assert (r.verdict, r.reason) == ("inconclusive", "non_finite")


finite = st.floats(-1e3, 1e3, allow_nan=False)
positive = st.floats(1e-6, 1e3, allow_nan=False)


@settings(max_examples=200, deadline=None)
@given(
    n_t=st.integers(MIN_UNITS, 10**6),
    n_c=st.integers(MIN_UNITS, 10**6),
    mean_t=finite,
    mean_c=finite,
    var_t=positive,
    var_c=positive,
    margin=st.floats(0, 10),
)
def test_mirrored_data_with_mirrored_direction_gives_the_same_verdict(
    n_t: int, n_c: int, mean_t: float, mean_c: float, var_t: float, var_c: float, margin: float
) -> None:
    t, c = moments(n_t, mean_t, var_t), moments(n_c, mean_c, var_c)
    up = evaluate(GuardrailConfig(metric="m", harmful_direction="increase", margin=margin), t, c)
    mirrored_t, mirrored_c = moments(n_t, -mean_t, var_t), moments(n_c, -mean_c, var_c)
    down = evaluate(
        GuardrailConfig(metric="m", harmful_direction="decrease", margin=margin),
        mirrored_t,
        mirrored_c,
    )
    assert up.verdict == down.verdict
    assert not any(math.isnan(x) for x in (up.effect, up.lower, up.upper, up.p_value))
    if up.verdict == "breach":
        assert up.lower > margin
    elif up.verdict == "pass":
        assert up.upper < margin
    else:
        assert up.lower <= margin <= up.upper or up.reason == "no_variance"
