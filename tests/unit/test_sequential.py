"""The anytime-valid test: estimator, boundary, p-value, and its error rates by simulation."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats
from statsmodels.stats.weightstats import CompareMeans

from monitor.moments import Moments
from monitor.sequential import (
    AsymptoticCS,
    DiffEstimate,
    Interval,
    SequentialTest,
    asymptotic_cs_halfwidth,
    diff_in_means,
    optimal_rho2,
)


def paper_halfwidth(sigma_hat: float, t: float, alpha: float, rho: float) -> float:
    """Waudby-Smith et al. (2023), Theorem 2.2, transcribed symbol by symbol."""
    return sigma_hat * math.sqrt(
        (2 * (t * rho**2 + 1)) / (t**2 * rho**2) * math.log(math.sqrt(t * rho**2 + 1) / alpha)
    )


# --- the estimator --------------------------------------------------------------------------

SAMPLES: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "normal": lambda rng, n: rng.normal(3.0, 2.0, n),
    "lognormal": lambda rng, n: rng.lognormal(0.0, 1.5, n),
    "bernoulli": lambda rng, n: (rng.random(n) < 0.04).astype(float),
}


@pytest.mark.parametrize("kind", SAMPLES)
@pytest.mark.parametrize(("n_t", "n_c"), [(2, 3), (40, 25), (1000, 3000)])
def test_diff_in_means_matches_welch_in_scipy_and_statsmodels(
    kind: str, n_t: int, n_c: int
) -> None:
    rng = np.random.default_rng(n_t * 7 + n_c)
    x, y = SAMPLES[kind](rng, n_t), SAMPLES[kind](rng, n_c)
    x[0] += 1.0  # keep degenerate all-zero Bernoulli draws from giving 0/0
    est = diff_in_means(Moments.of(x), Moments.of(y))
    welch = stats.ttest_ind(x, y, equal_var=False)
    assert est.effect == pytest.approx(x.mean() - y.mean(), rel=1e-9, abs=1e-12)
    assert est.std_error == pytest.approx(est.effect / welch.statistic, rel=1e-8)
    sm = CompareMeans.from_data(x, y)
    assert est.std_error == pytest.approx(sm.std_meandiff_separatevar, rel=1e-8)
    assert (est.n_treatment, est.n_control, est.t) == (n_t, n_c, n_t + n_c)


def test_diff_in_means_needs_two_units_per_arm() -> None:
    est = diff_in_means(Moments.of([1.0]), Moments.of([1.0, 2.0, 3.0]))
    assert est.effect == -1.0
    assert math.isnan(est.variance) and math.isnan(est.std_error)
    assert math.isnan(diff_in_means(Moments(), Moments()).effect)


# --- the boundary -----------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("t", [2, 17, 1000, 123_456])
def test_halfwidth_matches_the_paper_for_one_sample(alpha: float, t: int) -> None:
    x = np.random.default_rng(t).gamma(0.5, 4.0, t)
    sigma_hat = float(np.std(x, ddof=1))
    rho2 = optimal_rho2(alpha, 5_000)
    expected = paper_halfwidth(sigma_hat, t, alpha, math.sqrt(rho2))
    assert asymptotic_cs_halfwidth(sigma_hat**2 / t, t, alpha, rho2) == pytest.approx(expected)


def test_two_sample_interval_uses_total_units_and_pooled_per_unit_variance() -> None:
    rng = np.random.default_rng(11)
    x, y = rng.normal(1.0, 1.0, 700), rng.normal(0.8, 3.0, 300)
    est = diff_in_means(Moments.of(x), Moments.of(y))
    cs = AsymptoticCS(0.05, 2_000)
    t = 1000
    sigma_hat = math.sqrt(t * (x.var(ddof=1) / 700 + y.var(ddof=1) / 300))
    hw = paper_halfwidth(sigma_hat, t, 0.05, math.sqrt(cs.rho2))
    interval = cs.interval(est)
    assert interval.lower == pytest.approx(x.mean() - y.mean() - hw, rel=1e-9)
    assert interval.upper == pytest.approx(x.mean() - y.mean() + hw, rel=1e-9)
    assert interval.contains(est.effect) and not interval.contains(interval.upper + 1e-9)


def test_halfwidth_is_vectorised_elementwise() -> None:
    rng = np.random.default_rng(5)
    v, t = rng.exponential(1.0, 50), rng.integers(1, 10**6, 50)
    rho2 = optimal_rho2(0.05, 10_000)
    vec = asymptotic_cs_halfwidth(v, t, 0.05, rho2)
    assert isinstance(vec, np.ndarray) and vec.shape == (50,)
    scalar = [
        asymptotic_cs_halfwidth(float(a), int(b), 0.05, rho2) for a, b in zip(v, t, strict=True)
    ]
    np.testing.assert_allclose(vec, scalar, rtol=1e-14)
    assert isinstance(asymptotic_cs_halfwidth(1.0, 10, 0.05, rho2), float)


@given(
    st.floats(0, 1e12, allow_nan=False) | st.just(math.nan) | st.floats(-1e3, -1e-300),
    st.integers(-3, 10**9) | st.floats(1e-6, 1e12),
    st.sampled_from([1e-6, 0.0125, 0.05, 0.5]),
    st.floats(1e-12, 1.0),
)
@settings(max_examples=500, deadline=None)
def test_scalar_halfwidth_is_bit_identical_to_the_array_path(
    variance: float, t: float, alpha: float, rho2: float
) -> None:
    """Scalars skip numpy (math, same operations, same order): a verdict at a boundary
    must not depend on which path computed it -- the calibration test compares the two."""
    scalar = asymptotic_cs_halfwidth(variance, t, alpha, rho2)
    array = asymptotic_cs_halfwidth(np.array([variance]), np.array([t]), alpha, rho2)
    assert isinstance(scalar, float)
    assert (math.isnan(scalar) and math.isnan(array[0])) or scalar == array[0]


def test_regression_scalar_halfwidth_uses_numpys_log1p() -> None:
    """Found by the test above: with ``math.log1p`` the scalar path was one ulp off the
    array path (2.239752959997588 against 2.2397529599975874), since numpy's log1p is not
    libm's."""
    args = (1.0, 581615928811.981, 0.5, 1e-12)
    array = asymptotic_cs_halfwidth(np.array([args[0]]), np.array([args[1]]), *args[2:])
    assert asymptotic_cs_halfwidth(*args) == array[0]


def test_halfwidth_is_nan_not_a_warning_for_degenerate_input() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        variance, t = np.array([1.0, np.nan, -1.0, 1.0]), np.array([0, 5, 5, 5])
        out = asymptotic_cs_halfwidth(variance, t, 0.05, 1e-3)
    assert np.isnan(out[:3]).all() and np.isfinite(out[3])
    assert asymptotic_cs_halfwidth(0.0, 10, 0.05, 1e-3) == 0.0
    for v, t in ((1.0, 0), (math.nan, 5), (-1.0, 5), (1.0, -2.0)):
        assert math.isnan(asymptotic_cs_halfwidth(v, t, 0.05, 1e-3))
    assert asymptotic_cs_halfwidth(math.inf, 5, 0.05, 1e-3) == math.inf
    # t * rho2 underflows to 0: numpy's division semantics (inf), not a ZeroDivisionError
    tiny = asymptotic_cs_halfwidth(np.array([1.0]), np.array([1e-200]), 0.05, 1e-200)
    assert asymptotic_cs_halfwidth(1.0, 1e-200, 0.05, 1e-200) == tiny[0] == math.inf


@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.3])
@pytest.mark.parametrize("tuning_units", [50, 10_000, 10**7])
def test_optimal_rho2_nearly_minimises_the_boundary_at_the_tuning_time(
    alpha: float, tuning_units: int
) -> None:
    def width(log_rho2: float) -> float:
        return asymptotic_cs_halfwidth(1.0 / tuning_units, tuning_units, alpha, math.exp(log_rho2))

    best = optimize.minimize_scalar(width, bracket=(-30.0, 0.0), tol=1e-10)
    tuned = width(math.log(optimal_rho2(alpha, tuning_units)))
    assert best.fun <= tuned <= 1.01 * best.fun
    # tuning elsewhere really costs width at t*, so the optimisation is not vacuous
    assert width(math.log(optimal_rho2(alpha, 100 * tuning_units))) > 1.1 * tuned


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.1])
@pytest.mark.parametrize("tuning_units", [100, 10_000, 10**6])
def test_cs_is_wider_than_the_fixed_horizon_interval_at_every_t(
    alpha: float, tuning_units: int
) -> None:
    t = np.unique(np.logspace(0, 12, 400).astype(np.int64))
    hw = asymptotic_cs_halfwidth(1.0 / t, t, alpha, optimal_rho2(alpha, tuning_units))
    z = stats.norm.ppf(1 - alpha / 2) * np.sqrt(1.0 / t)
    assert (hw > z).all()


def test_cs_shrinks_at_rate_sqrt_log_t_over_t() -> None:
    rho2 = optimal_rho2(0.05, 10_000)
    t = np.logspace(5, 16, 12)
    hw = asymptotic_cs_halfwidth(1.0 / t, t, 0.05, rho2)
    # the price of uniformity over time: width / (sigma/sqrt(t)) keeps growing, like sqrt(log t)
    assert (np.diff(hw * np.sqrt(t)) > 0).all()
    ratio = hw / np.sqrt(np.log(t) / t)
    assert np.all(np.abs(ratio - 1) < 0.1)
    assert abs(ratio[-1] - 1) < abs(ratio[0] - 1)


# --- the p-value ----------------------------------------------------------------------------


def test_p_value_is_the_level_at_which_the_cs_starts_to_exclude_the_null() -> None:
    rng = np.random.default_rng(2)
    cs = AsymptoticCS(0.05, 10_000)
    checked = 0
    for _ in range(400):
        n_t, n_c = (int(k) for k in rng.integers(100, 50_000, 2))
        est = DiffEstimate(float(rng.normal(0, 0.05)), float(rng.exponential(1e-4)), n_t, n_c)
        null = float(rng.normal(0, 0.02))
        p = cs.p_value(est, null)
        assert 0 <= p <= 1  # exp underflows to 0 for estimates far from the null
        assert (p <= cs.alpha) == (not cs.interval(est).contains(null))
        if 1e-250 < p < 1:  # subnormal p carries too few digits to invert back
            # same rho2 at level p: the boundary passes exactly through the null
            hw = asymptotic_cs_halfwidth(est.variance, est.t, p, cs.rho2)
            assert hw == pytest.approx(abs(est.effect - null), rel=1e-9)
            checked += 1
    assert checked > 100
    assert cs.p_value(DiffEstimate(0.0, 1e-4, 500, 500)) == 1.0


def test_p_value_degenerate_cases() -> None:
    cs = AsymptoticCS(0.05, 10_000)
    assert cs.p_value(DiffEstimate(0.1, 0.0, 10, 10)) == 0.0
    assert cs.p_value(DiffEstimate(0.0, 0.0, 10, 10)) == 1.0
    assert math.isnan(cs.p_value(DiffEstimate(0.1, math.nan, 1, 10)))


@pytest.mark.parametrize(("alpha", "tuning_units"), [(0.0, 10), (1.0, 10), (0.05, 0)])
def test_invalid_parameters_are_rejected(alpha: float, tuning_units: int) -> None:
    with pytest.raises(ValueError):
        AsymptoticCS(alpha, tuning_units)


def test_asymptotic_cs_satisfies_the_protocol() -> None:
    test: SequentialTest = AsymptoticCS(0.05, 1_000)
    assert isinstance(test.interval(DiffEstimate(0.0, 1.0, 5, 5)), Interval)
    assert test.alpha == 0.05


# --- error rates under continuous monitoring ---------------------------------------------

STREAMS, LOOKS, BATCH = 400, 100, 100  # per arm: 100 units per look, 10_000 at the end
ALPHA, TUNING = 0.05, 10_000


def _monitor(
    kind: str, seed: int, shift: float, streams: int = STREAMS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Effect, Welch variance and CS half-width after every batch, for many streams at once.

    Cumulative sums over batches give each look's moments without a Python loop over looks.
    """
    rng = np.random.default_rng(seed)

    def arm(offset: float) -> tuple[np.ndarray, np.ndarray]:
        x = SAMPLES[kind](rng, streams * LOOKS * BATCH).reshape(streams, LOOKS, BATCH) + offset
        return np.cumsum(x.sum(axis=2), axis=1), np.cumsum((x * x).sum(axis=2), axis=1)

    (s_t, ss_t), (s_c, ss_c) = arm(shift), arm(0.0)
    n = BATCH * np.arange(1, LOOKS + 1)
    effect = s_t / n - s_c / n
    variance = (ss_t - s_t**2 / n) / (n - 1) / n + (ss_c - s_c**2 / n) / (n - 1) / n
    hw = asymptotic_cs_halfwidth(variance, 2 * n, ALPHA, optimal_rho2(ALPHA, TUNING))

    # the vectorised path agrees with the scalar public API at sampled looks
    cs = AsymptoticCS(ALPHA, TUNING)
    for i, k in zip(rng.integers(streams, size=5), rng.integers(LOOKS, size=5), strict=True):
        est = diff_in_means(
            Moments(int(n[k]), s_t[i, k], ss_t[i, k]), Moments(int(n[k]), s_c[i, k], ss_c[i, k])
        )
        assert cs.interval(est).upper == pytest.approx(effect[i, k] + hw[i, k], rel=1e-9)
    return effect, variance, hw, n


@pytest.mark.parametrize("kind", SAMPLES)
def test_aa_false_alarms_stay_below_alpha_under_continuous_monitoring(kind: str) -> None:
    effect, variance, hw, _ = _monitor(kind, seed=42, shift=0.0)
    cs_alarm = (np.abs(effect) > hw).any(axis=1).mean()
    z = stats.norm.ppf(1 - ALPHA / 2)
    naive_alarm = (np.abs(effect) > z * np.sqrt(variance)).any(axis=1).mean()
    mc_se = math.sqrt(ALPHA * (1 - ALPHA) / STREAMS)
    print(f"{kind}: CS false-alarm rate {cs_alarm:.4f}, naive repeated z-test {naive_alarm:.4f}")
    assert cs_alarm <= ALPHA + 3 * mc_se
    assert naive_alarm > 2 * ALPHA


def test_cs_detects_a_real_shift_and_keeps_covering_it() -> None:
    shift = 0.25  # 0.125 sd of the normal sample: 8.8 standard errors at 10_000 units/arm
    effect, _, hw, n = _monitor("normal", seed=7, shift=shift, streams=200)
    detected = (effect - hw > 0).any(axis=1)
    wrong_sign = (effect + hw < 0).any(axis=1)
    assert detected.mean() >= 0.95
    assert not wrong_sign.any()
    first = np.argmax(effect - hw > 0, axis=1)[detected]
    print(f"shift detected in {detected.mean():.3f} of streams, median {np.median(n[first])}/arm")
    # coverage of the true (non-zero) effect is time-uniform too
    miss = (np.abs(effect - shift) > hw).any(axis=1).mean()
    assert miss <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / 200)
