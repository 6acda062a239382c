"""Arm estimates and differences (monitor.estimators) against scipy, statsmodels and simulation.

* mean: Welch's difference in means (scipy, statsmodels) and the relative difference of
  :mod:`monitor.relative`;
* CUPED: theta and the adjusted difference recomputed in numpy on the raw units, a cross-check
  against statsmodels OLS, and the variance reduction ``~ 1 - corr(x, y)**2``;
* ratio (delta method): against a bootstrap over units and a large-sample simulation, and the
  A/A false-alarm rate of a z-test using it versus the naive per-request binomial test;
* combine_stages: its formula, its edge cases, and Simpson's paradox in a ramp whose treatment
  share and baseline both change across stages.

Simulations use fixed seeds; every rate or bias is compared with a bound derived from its
Monte Carlo standard error, not with a number copied from a previous run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.weightstats import CompareMeans

from monitor.comoments import CoMomentCell
from monitor.estimators import (
    ArmEstimate,
    MetricSpec,
    PairEstimate,
    absolute_difference,
    combine_stages,
    conservative,
    estimate_pair,
    relative_difference,
)
from monitor.relative import relative_diff
from monitor.sequential import DiffEstimate

Z975 = float(stats.norm.ppf(0.975))


def _cells(z: np.ndarray) -> list[CoMomentCell]:
    """CoMomentCells of a stack of samples ``(reps, units, k)``, statistics vectorised."""
    s = z.sum(axis=1)
    g = np.einsum("rni,rnj->rij", z, z)
    return [CoMomentCell(z.shape[1], s[r], g[r]) for r in range(z.shape[0])]


# --- mean -----------------------------------------------------------------------------------

SAMPLES = {
    "normal": lambda rng, n: rng.normal(3.0, 2.0, n),
    "lognormal": lambda rng, n: rng.lognormal(0.0, 1.5, n),
    "bernoulli": lambda rng, n: (rng.random(n) < 0.04).astype(float),
    "negative_mean": lambda rng, n: rng.normal(-5.0, 1.0, n),
}
MEAN = MetricSpec("y", "mean", (1,))  # column 1: column 0 is noise the estimate must ignore


def _with_noise_column(rng: np.random.Generator, y: np.ndarray) -> CoMomentCell:
    return CoMomentCell.of(np.column_stack([rng.normal(100, 50, y.size), y]))


@pytest.mark.parametrize("kind", SAMPLES)
@pytest.mark.parametrize(("n_t", "n_c"), [(2, 3), (40, 25), (1000, 3000)])
def test_mean_difference_matches_welch_in_scipy_and_statsmodels(
    kind: str, n_t: int, n_c: int
) -> None:
    rng = np.random.default_rng(n_t * 31 + n_c)
    x, y = SAMPLES[kind](rng, n_t), SAMPLES[kind](rng, n_c)
    x[0] += 1.0  # keep all-zero Bernoulli draws from a 0/0
    pair = estimate_pair(MEAN, _with_noise_column(rng, x), _with_noise_column(rng, y))
    assert math.isnan(pair.theta)
    assert (pair.treatment.n, pair.control.n) == (n_t, n_c)
    assert pair.treatment.variance == pytest.approx(np.var(x, ddof=1) / n_t, rel=1e-9)
    est = absolute_difference(pair)
    assert est.effect == pytest.approx(x.mean() - y.mean(), rel=1e-9, abs=1e-12)
    welch = stats.ttest_ind(x, y, equal_var=False)
    assert est.std_error == pytest.approx(est.effect / welch.statistic, rel=1e-8)
    cm = CompareMeans.from_data(x, y)
    assert est.std_error == pytest.approx(cm.std_meandiff_separatevar, rel=1e-8)
    assert (est.n_treatment, est.n_control) == (n_t, n_c)


@pytest.mark.parametrize("kind", SAMPLES)
def test_mean_relative_difference_equals_relative_diff(kind: str) -> None:
    rng = np.random.default_rng(len(kind))
    x, y = SAMPLES[kind](rng, 800), SAMPLES[kind](rng, 1200)
    y[0] += 1.0
    rel = relative_difference(estimate_pair(MEAN, _with_noise_column(rng, x),
                                            _with_noise_column(rng, y)))  # fmt: skip
    expected = relative_diff(
        x.mean(), np.var(x, ddof=1), x.size, y.mean(), np.var(y, ddof=1), y.size
    )
    # (m_t - m_c) / |m_c|: m_t / m_c - 1 for a positive control mean (negative_mean: negated)
    assert rel.effect == pytest.approx((x.mean() - y.mean()) / abs(y.mean()), rel=1e-9)
    assert rel.effect == pytest.approx(expected.effect, rel=1e-12)
    assert rel.variance == pytest.approx(expected.variance, rel=1e-9)
    assert (rel.n_treatment, rel.n_control) == (800, 1200)


def test_mean_with_one_unit_keeps_the_point_estimate_and_has_no_variance() -> None:
    t = CoMomentCell.of(np.array([[0.0, 4.0]]))
    c = CoMomentCell.of(np.array([[0.0, 1.0], [0.0, 3.0]]))
    est = absolute_difference(estimate_pair(MEAN, t, c))
    assert est.effect == 2.0 and math.isnan(est.variance)
    assert combine_stages([est]) is None


# --- CUPED ----------------------------------------------------------------------------------

CUPED = MetricSpec("y", "cuped", (0, 1))


def _cuped_data(
    rng: np.random.Generator, n_t: int, n_c: int, corr: float, effect: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, x, treated): x pre-exposure (skewed), y with correlation ~corr to x."""
    n = n_t + n_c
    x = rng.gamma(2.0, 5.0, n)
    xs = (x - 10.0) / math.sqrt(50.0)
    y = 20.0 + 3.0 * (corr * xs + math.sqrt(1 - corr**2) * rng.normal(size=n))
    treated = np.zeros(n, bool)
    treated[rng.permutation(n)[:n_t]] = True
    return y + effect * treated, x, treated


def _cuped_pair(y: np.ndarray, x: np.ndarray, treated: np.ndarray) -> PairEstimate:
    z = np.column_stack([y, x])
    return estimate_pair(CUPED, CoMomentCell.of(z[treated]), CoMomentCell.of(z[~treated]))


@pytest.mark.parametrize("corr", [0.0, 0.5, 0.9])
@pytest.mark.parametrize(("n_t", "n_c"), [(500, 500), (150, 2000)])
def test_cuped_equals_welch_on_the_adjusted_outcome(corr: float, n_t: int, n_c: int) -> None:
    rng = np.random.default_rng(int(corr * 10) + n_t)
    y, x, treated = _cuped_data(rng, n_t, n_c, corr, effect=0.4)
    pair = _cuped_pair(y, x, treated)
    theta = np.cov(y, x)[0, 1] / np.var(x, ddof=1)  # pooled over both arms
    assert pair.theta == pytest.approx(theta, rel=1e-9, abs=1e-12)
    y_adj = y - theta * (x - x.mean())
    assert pair.treatment.mean == pytest.approx(y_adj[treated].mean(), rel=1e-9)
    assert pair.control.mean == pytest.approx(y_adj[~treated].mean(), rel=1e-9)
    est = absolute_difference(pair)
    cm = CompareMeans.from_data(y_adj[treated], y_adj[~treated])
    assert est.effect == pytest.approx(cm.d1.mean - cm.d2.mean, rel=1e-9)
    assert est.std_error == pytest.approx(cm.std_meandiff_separatevar, rel=1e-8)
    welch = stats.ttest_ind(y_adj[treated], y_adj[~treated], equal_var=False)
    assert est.std_error == pytest.approx(est.effect / welch.statistic, rel=1e-8)


def test_cuped_nearly_equals_ols_with_the_centred_covariate() -> None:
    """OLS ``y ~ 1 + treated + (x - xbar)`` fits its slope *within* arms; CUPED's theta is the
    slope of the pooled data, which also picks up the between-arm difference in ``y`` times
    the chance imbalance in ``x``. Both estimates equal ``dy - slope * dx`` (``d`` = treatment
    minus control means), so they differ by exactly ``(theta_ols - theta) * dx``: a product of
    two ``O(1/sqrt(n))`` terms, negligible against the ``O(1/sqrt(n))`` standard error.
    """
    rng = np.random.default_rng(2013)
    y, x, treated = _cuped_data(rng, 1500, 1500, corr=0.8, effect=0.5)
    est = absolute_difference(pair := _cuped_pair(y, x, treated))
    design = sm.add_constant(np.column_stack([treated.astype(float), x - x.mean()]))
    fit = sm.OLS(y, design).fit(cov_type="HC2")
    b_ols, theta_ols = float(fit.params[1]), float(fit.params[2])
    dx = x[treated].mean() - x[~treated].mean()
    # the exact identity, to rounding
    assert est.effect - b_ols == pytest.approx((theta_ols - pair.theta) * dx, abs=1e-9)
    # and the practical statement: the two effects agree to well within 5% of a standard error
    assert abs(est.effect - b_ols) < 0.05 * est.std_error
    assert pair.theta != theta_ols  # they are different slopes, the test is not vacuous
    # heteroskedasticity-robust OLS standard error: same to ~1% (HC2 vs per-arm variances)
    assert est.std_error == pytest.approx(float(fit.bse[1]), rel=0.02)


@pytest.mark.parametrize("corr", [0.0, 0.5, 0.9, -0.9])
def test_cuped_reduces_the_standard_error_by_sqrt_one_minus_corr_squared(corr: float) -> None:
    rng = np.random.default_rng(77 + int(corr * 10))
    y, x, treated = _cuped_data(rng, 2000, 2000, corr, effect=0.3)
    cuped = absolute_difference(_cuped_pair(y, x, treated))
    plain = absolute_difference(
        estimate_pair(MetricSpec("y", "mean", (0,)),
                      CoMomentCell.of(y[treated, None]), CoMomentCell.of(y[~treated, None]))
    )  # fmt: skip
    r = np.corrcoef(x, y)[0, 1]
    assert cuped.std_error == pytest.approx(plain.std_error * math.sqrt(1 - r * r), rel=0.02)
    if abs(corr) >= 0.5:
        assert cuped.std_error < plain.std_error
    if abs(corr) >= 0.9:
        assert cuped.std_error < 0.5 * plain.std_error


def test_cuped_is_unbiased_and_its_standard_error_matches_the_spread() -> None:
    rng = np.random.default_rng(4)
    effect, reps = 0.25, 400
    estimates, ses = [], []
    for _ in range(reps):
        y, x, treated = _cuped_data(rng, 300, 300, corr=0.8, effect=effect)
        est = absolute_difference(_cuped_pair(y, x, treated))
        estimates.append(est.effect)
        ses.append(est.std_error)
    e = np.array(estimates)
    mc_se = e.std(ddof=1) / math.sqrt(reps)
    assert abs(e.mean() - effect) < 3 * mc_se
    # the sd of a sample sd over 400 reps is ~3.5% of it: 12% is > 3 MC standard errors
    assert np.mean(ses) == pytest.approx(e.std(ddof=1), rel=0.12)


def _linear_variance(pair: PairEstimate, k: float) -> float:
    """The engine's ``Var(a_t - k a_c)``: the arms' variances plus the CUPED term."""
    e0, e1, e2 = pair.extra_variance
    return pair.treatment.variance + k * k * pair.control.variance + e0 + e1 * k + e2 * k * k


@pytest.mark.parametrize("k", [0.0, 0.5, 1.0, 1.1, 2.0, 3.0])
@pytest.mark.parametrize(("n_t", "n_c"), [(500, 500), (150, 2000)])
def test_cuped_linear_statistic_variance_matches_its_unit_contributions(
    k: float, n_t: int, n_c: int
) -> None:
    """With theta held fixed, ``a_t - k a_c`` (each arm centred on the pooled covariate mean)
    is linear in the units' (y, x): differentiating the explicit formula gives each unit's
    coefficients, and its variance is each arm's n * var(a y + b x). Without the extra term
    the engine matched this at k = 1 only."""
    rng = np.random.default_rng(31)
    y, x, treated = _cuped_data(rng, n_t, n_c, corr=0.9, effect=0.3)
    pair = _cuped_pair(y, x, treated)
    theta, n = pair.theta, n_t + n_c
    # L = mean(y_t) - theta (mean(x_t) - mean(x)) - k (mean(y_c) - theta (mean(x_c) - mean(x)))
    b_t = -theta / n_t + theta * (1 - k) / n
    b_c = k * theta / n_c + theta * (1 - k) / n
    t_part = y[treated] / n_t + b_t * x[treated]
    c_part = -k * y[~treated] / n_c + b_c * x[~treated]
    oracle = n_t * t_part.var(ddof=1) + n_c * c_part.var(ddof=1)
    assert _linear_variance(pair, k) == pytest.approx(oracle, rel=1e-9)
    if k == 1.0:
        assert pair.extra_variance[0] + pair.extra_variance[1] + pair.extra_variance[2] == (
            pytest.approx(0.0, abs=1e-15)
        )


def test_cuped_relative_difference_is_the_delta_method_on_correlated_arms() -> None:
    """The relative row ``a_t / a_c - 1`` linearises to ``(a_t - rho a_c) / a_c`` at
    ``rho = a_t / a_c``: its variance is that statistic's, from the units' coefficients,
    over ``a_c**2``. Treating CUPED's arms as independent left out the pooled covariate
    mean's term."""
    rng = np.random.default_rng(33)
    y, x, treated = _cuped_data(rng, 400, 1600, corr=0.9, effect=4.0)
    pair = _cuped_pair(y, x, treated)
    est = relative_difference(pair)
    theta, n, n_t, n_c = pair.theta, 2000, 400, 1600
    a_t, a_c = pair.treatment.mean, pair.control.mean
    rho = a_t / a_c
    b_t = -theta / n_t + theta * (1 - rho) / n
    b_c = rho * theta / n_c + theta * (1 - rho) / n
    t_part = y[treated] / n_t + b_t * x[treated]
    c_part = -rho * y[~treated] / n_c + b_c * x[~treated]
    oracle = (n_t * t_part.var(ddof=1) + n_c * c_part.var(ddof=1)) / a_c**2
    assert est.effect == pytest.approx(rho - 1, rel=1e-12)
    assert est.variance == pytest.approx(oracle, rel=1e-9)


def test_regression_cuped_linear_statistic_variance_matches_the_spread_at_a_large_margin() -> None:
    """Simulation with known truth (an independent review, 2026-12-05): at ``k = 2`` (a
    relative margin of 100%), covariate correlation 0.95, the engine's variance of
    ``a_t - k a_c`` was 1.9x too small; with the pooled covariate mean's term it matches the
    spread of the statistic over 1,000 replicates."""
    rng = np.random.default_rng(32)
    k, reps = 2.0, 1000
    values, variances = [], []
    for _ in range(reps):
        y, x, treated = _cuped_data(rng, 1000, 1000, corr=0.95, effect=0.0)
        pair = _cuped_pair(y, x, treated)
        values.append(pair.treatment.mean - k * pair.control.mean)
        variances.append(_linear_variance(pair, k))
    # the sd of a sample variance over 1,000 reps is ~4.5% of it: 15% is > 3 MC errors
    assert np.mean(variances) == pytest.approx(np.var(values, ddof=1), rel=0.15)


@pytest.mark.parametrize(
    "constant",
    [
        7.0,
        # regression: 0.1 is not a binary fraction: sum(x^2) - sum(x)^2 / n leaves about
        # 5e-15 here, above CoMomentCell.covariance's clip of a few ulps, so var(x) > 0 and
        # theta was noise / noise = 128. The estimate itself was unharmed (theta multiplies
        # x - mean(x), ~1e-17), the theta rows and the memo show was not; 7.0 cancels
        # exactly, so it never reached the case. Found by the test audit, 2026-12-05
        0.1,
    ],
)
def test_cuped_with_a_constant_covariate_is_the_plain_mean(constant: float) -> None:
    rng = np.random.default_rng(5)
    y, _, treated = _cuped_data(rng, 50, 60, corr=0.5, effect=1.0)
    x = np.full(y.size, constant)
    pair = _cuped_pair(y, x, treated)
    assert pair.theta == 0.0
    est = absolute_difference(pair)
    assert est.effect == pytest.approx(y[treated].mean() - y[~treated].mean(), rel=1e-9)
    assert est.std_error == pytest.approx(
        CompareMeans.from_data(y[treated], y[~treated]).std_meandiff_separatevar, rel=1e-8
    )


def test_cuped_with_one_unit_in_an_arm_falls_back_to_the_mean() -> None:
    z_t, z_c = np.array([[5.0, 1.0]]), np.array([[1.0, 2.0], [3.0, 4.0], [2.0, 0.0]])
    pair = estimate_pair(CUPED, CoMomentCell.of(z_t), CoMomentCell.of(z_c))
    assert math.isnan(pair.theta)
    assert pair.treatment.mean == 5.0 and math.isnan(pair.treatment.variance)
    assert pair.control.mean == 2.0
    assert pair.control.variance == pytest.approx(np.var([1.0, 3.0, 2.0], ddof=1) / 3)


# --- ratio (delta method) -------------------------------------------------------------------

RATIO = MetricSpec("error_rate", "ratio", (0, 1))


def _ratio_units(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Per-unit (errors, requests), ``shape + (2,)``.

    Requests are Poisson with a unit-level Gamma rate (heavy and light users) and errors are
    binomial with a unit-level Beta error probability (mean 5%): a unit's requests share its
    error rate, so they are correlated, as with real users.
    """
    requests = rng.poisson(rng.gamma(2.0, 10.0, shape))
    errors = rng.binomial(requests, rng.beta(0.5, 9.5, shape))
    return np.stack([errors, requests], axis=-1).astype(float)


def test_ratio_delta_variance_equals_the_linearised_residual_variance() -> None:
    z = _ratio_units(np.random.default_rng(6), (3000,))
    arm = estimate_pair(RATIO, CoMomentCell.of(z), CoMomentCell.of(z)).treatment
    num, den = z[:, 0], z[:, 1]
    r = num.sum() / den.sum()
    assert arm.mean == pytest.approx(r, rel=1e-12)
    # Deng et al. (2018): Var(R) = Var(num - R den) / (n mean(den)^2)
    expected = np.var(num - r * den, ddof=1) / (num.size * den.mean() ** 2)
    assert arm.variance == pytest.approx(expected, rel=1e-9)
    assert arm.n == 3000


def test_ratio_delta_variance_matches_a_bootstrap_over_units() -> None:
    rng = np.random.default_rng(7)
    n, boot = 2000, 2000
    z = _ratio_units(rng, (n,))
    arm = estimate_pair(RATIO, CoMomentCell.of(z), CoMomentCell.of(z)).treatment
    idx = rng.integers(0, n, (boot, n))
    ratios = z[idx, 0].sum(axis=1) / z[idx, 1].sum(axis=1)
    # a variance from B draws has relative sd sqrt(2 / B) = 3%: 10% is > 3 of them
    assert arm.variance == pytest.approx(np.var(ratios, ddof=1), rel=0.10)


def test_ratio_delta_variance_matches_the_variance_over_repeated_samples() -> None:
    rng = np.random.default_rng(8)
    reps, n = 4000, 400
    z = _ratio_units(rng, (reps, n))
    ratios = z[:, :, 0].sum(axis=1) / z[:, :, 1].sum(axis=1)
    delta = np.array([estimate_pair(RATIO, c, c).treatment.variance for c in _cells(z)])
    # the empirical variance over 4000 samples has relative sd 2.2%; 10% is > 4 of them
    assert delta.mean() == pytest.approx(np.var(ratios, ddof=1), rel=0.10)


def test_ratio_aa_false_alarms_delta_method_versus_naive_binomial() -> None:
    """THE issue's test: per-request binomial variance ignores that requests cluster in units.

    A/A: both arms from one distribution, so every rejection is a false alarm. The delta-method
    z-test rejects at about alpha; the naive test, with ``p (1 - p) / total requests`` per arm,
    treats every request as an independent Bernoulli trial and rejects far more often.
    """
    rng = np.random.default_rng(2018)
    reps, n, alpha = 2000, 500, 0.05
    z = _ratio_units(rng, (reps, 2, n))
    cells_t, cells_c = _cells(z[:, 0]), _cells(z[:, 1])
    delta_z = np.empty(reps)
    for r in range(reps):
        est = absolute_difference(estimate_pair(RATIO, cells_t[r], cells_c[r]))
        delta_z[r] = est.effect / est.std_error
    sums = z.sum(axis=2)  # (reps, arm, [errors, requests])
    p = sums[..., 0] / sums[..., 1]
    naive_z = (p[:, 0] - p[:, 1]) / np.sqrt((p * (1 - p) / sums[..., 1]).sum(axis=1))
    crit = float(stats.norm.ppf(1 - alpha / 2))
    delta_rate = float(np.mean(np.abs(delta_z) > crit))
    naive_rate = float(np.mean(np.abs(naive_z) > crit))
    mc_se = math.sqrt(alpha * (1 - alpha) / reps)  # 0.0049
    print(f"A/A false-alarm rate: delta method {delta_rate:.4f}, naive binomial {naive_rate:.4f}")
    assert abs(delta_rate - alpha) < 3 * mc_se
    assert naive_rate > 2 * alpha
    # the delta z-statistics are standard normal, not just right in the tail
    assert np.std(delta_z) == pytest.approx(1.0, abs=0.05)
    assert np.std(naive_z) > 1.4


def test_ratio_without_denominator_or_units_is_nan() -> None:
    no_requests = CoMomentCell.of(np.zeros((10, 2)))
    one_unit = CoMomentCell.of(np.array([[1.0, 10.0]]))
    ok = CoMomentCell.of(np.array([[1.0, 10.0], [0.0, 5.0], [2.0, 8.0]]))
    for bad in (no_requests, one_unit):
        pair = estimate_pair(RATIO, bad, ok)
        assert math.isnan(pair.treatment.mean) and math.isnan(pair.treatment.variance)
        assert pair.control.mean == pytest.approx(3.0 / 23.0)
        assert combine_stages([absolute_difference(pair)]) is None


def test_ratio_relative_difference_uses_the_delta_variances() -> None:
    rng = np.random.default_rng(9)
    t, c = _ratio_units(rng, (1500,)), _ratio_units(rng, (1500,))
    pair = estimate_pair(RATIO, CoMomentCell.of(t), CoMomentCell.of(c))
    rel = relative_difference(pair)
    rt, rc = pair.treatment.mean, pair.control.mean
    assert rel.effect == pytest.approx(rt / rc - 1, rel=1e-12)
    # first order: Var(rt / rc) = (Var(rt) + (rt / rc)^2 Var(rc)) / rc^2
    expected = (pair.treatment.variance + (rt / rc) ** 2 * pair.control.variance) / rc**2
    assert rel.variance == pytest.approx(expected, rel=1e-9)


# --- combine_stages -------------------------------------------------------------------------


def test_combine_stages_is_the_unit_count_weighted_mean() -> None:
    rng = np.random.default_rng(10)
    effects, variances = rng.normal(0, 1, 5), rng.exponential(0.1, 5)
    n_t, n_c = rng.integers(2, 1000, 5), rng.integers(2, 1000, 5)
    ests = [
        DiffEstimate(float(e), float(v), int(a), int(b))
        for e, v, a, b in zip(effects, variances, n_t, n_c, strict=True)
    ]
    out = combine_stages(ests)
    assert out is not None
    w = 1 / (1 / n_t + 1 / n_c)
    assert out.effect == pytest.approx(np.average(effects, weights=w), rel=1e-12)
    assert out.variance == pytest.approx((w**2 * variances).sum() / w.sum() ** 2, rel=1e-12)
    assert (out.n_treatment, out.n_control) == (int(n_t.sum()), int(n_c.sum()))
    shuffled = combine_stages([ests[i] for i in rng.permutation(5)])
    assert shuffled is not None and shuffled.effect == pytest.approx(out.effect, rel=1e-12)


@pytest.mark.parametrize(
    "bad",
    [
        DiffEstimate(math.nan, 0.1, 10, 10),
        DiffEstimate(1.0, math.nan, 10, 10),
        DiffEstimate(1.0, -0.1, 10, 10),
        DiffEstimate(1.0, 0.1, 0, 10),
        DiffEstimate(1.0, math.inf, 10, 10),
        DiffEstimate(math.inf, 0.1, 10, 10),
    ],
    ids=["nan_effect", "nan_variance", "negative_variance", "empty_arm", "inf_variance",
         "inf_effect"],
)  # fmt: skip
def test_combine_stages_ignores_unusable_stages(bad: DiffEstimate) -> None:
    good = [DiffEstimate(1.0, 0.5, 100, 100), DiffEstimate(3.0, 0.5, 50, 50)]
    out = combine_stages([good[0], bad, good[1]])
    assert out == combine_stages(good)
    # weights 50 and 25 (1 / (1/n_t + 1/n_c))
    assert out is not None and out.effect == pytest.approx(5 / 3) and out.n_treatment == 150
    assert combine_stages([bad]) is None


def test_combine_stages_edge_cases() -> None:
    assert combine_stages([]) is None
    single = DiffEstimate(0.7, 0.04, 30, 20)
    assert combine_stages([single]) is single
    assert combine_stages([single, DiffEstimate(math.nan, math.nan, 1, 1)]) is single
    # equal unit counts: the plain mean; equal variances halve
    pair = combine_stages([DiffEstimate(1.0, 0.2, 5, 5), DiffEstimate(2.0, 0.2, 5, 5)])
    assert pair is not None and pair.effect == 1.5 and pair.variance == pytest.approx(0.1)


def test_regression_a_zero_event_stage_does_not_outweigh_the_stages_that_show_harm() -> None:
    """Found by the report's ramp plot: with weights 1/estimated variance, a 1% stage whose
    20 treatment units had no error session yet (variance from control only, tiny) turned a
    +1.3 pp regression at 50% into a "pass" at -1.2 pp. Count-based weights keep it +."""
    rng = np.random.default_rng(7)
    p_c, p_t = 0.015, 0.028
    small_c = rng.random(1980) < p_c
    small_t = np.zeros(20, dtype=bool)  # no event yet in the small arm
    big_c, big_t = rng.random(6000) < p_c, rng.random(6000) < p_t

    def diff(t: np.ndarray, c: np.ndarray) -> DiffEstimate:
        return DiffEstimate(
            float(t.mean() - c.mean()),
            float(t.var(ddof=1) / len(t) + c.var(ddof=1) / len(c)),
            len(t),
            len(c),
        )

    small, big = diff(small_t, small_c), diff(big_t, big_c)
    ivw = (small.effect / small.variance + big.effect / big.variance) / (
        1 / small.variance + 1 / big.variance
    )
    assert ivw < 0 < big.effect  # the bug: estimated-variance weights flip the sign
    out = combine_stages([small, big])
    assert out is not None and out.effect > 0.5 * big.effect


# --- Simpson's paradox in a ramp -------------------------------------------------------------

SHARES = (0.01, 0.05, 0.25, 0.50)  # treatment share per stage
BASELINE = (10.0, 11.0, 12.0, 13.0)  # the outcome's time trend: grows by stage
UNITS_PER_STAGE = 4000
TRUE_EFFECT = 0.3
SD = 2.0


def test_stage_combination_avoids_simpsons_paradox_that_pooling_falls_into() -> None:
    """Later stages have both more treatment and a higher baseline, so pooling all units
    attributes the time trend to the treatment; estimating within stages does not."""
    rng = np.random.default_rng(2020)
    reps = 400
    mean = MetricSpec("y", "mean", (0,))
    combined, combined_se, pooled, pooled_se = [], [], [], []
    stage_cells = []
    for share, base in zip(SHARES, BASELINE, strict=True):
        n_t = round(UNITS_PER_STAGE * share)
        y_t = rng.normal(base + TRUE_EFFECT, SD, (reps, n_t, 1))
        y_c = rng.normal(base, SD, (reps, UNITS_PER_STAGE - n_t, 1))
        stage_cells.append((_cells(y_t), _cells(y_c)))
    for r in range(reps):
        per_stage = [absolute_difference(estimate_pair(mean, t[r], c[r])) for t, c in stage_cells]
        est = combine_stages(per_stage)
        assert est is not None
        combined.append(est.effect)
        combined_se.append(est.std_error)
        # naive: pool every unit of each arm across stages (CoMomentCell merge), then compare
        t_all = sum((t[r] for t, _ in stage_cells[1:]), stage_cells[0][0][r])
        c_all = sum((c[r] for _, c in stage_cells[1:]), stage_cells[0][1][r])
        naive = absolute_difference(estimate_pair(mean, t_all, c_all))
        pooled.append(naive.effect)
        pooled_se.append(naive.std_error)
        assert (naive.n_treatment, naive.n_control) == (est.n_treatment, est.n_control)

    combined_a, pooled_a = np.array(combined), np.array(pooled)
    bias_pooled = pooled_a.mean() - TRUE_EFFECT
    bias_combined = combined_a.mean() - TRUE_EFFECT
    print(
        f"pooled bias {bias_pooled:.4f} ({bias_pooled / np.mean(pooled_se):.1f} se), "
        f"combined bias {bias_combined:.5f} "
        f"({bias_combined / (combined_a.std(ddof=1) / math.sqrt(reps)):.2f} MC se)"
    )
    # the pooled estimate is off by many of its own standard errors, in every replication
    assert abs(bias_pooled) > 5 * np.mean(pooled_se)
    assert np.all(pooled_a - TRUE_EFFECT > 5 * np.array(pooled_se))
    # and its bias is the one Simpson predicts: baseline weighted by each arm's units
    units_t = np.array([round(UNITS_PER_STAGE * s) for s in SHARES])
    units_c = UNITS_PER_STAGE - units_t
    predicted = np.average(BASELINE, weights=units_t) - np.average(BASELINE, weights=units_c)
    assert bias_pooled == pytest.approx(predicted, abs=4 * pooled_a.std(ddof=1) / math.sqrt(reps))
    # the stage combination is unbiased ...
    assert abs(bias_combined) < 3 * combined_a.std(ddof=1) / math.sqrt(reps)
    # ... its standard error is right ...
    assert np.mean(combined_se) == pytest.approx(combined_a.std(ddof=1), rel=0.12)
    # ... and the fixed 95% z interval covers at about the nominal rate
    covered = np.abs(combined_a - TRUE_EFFECT) <= Z975 * np.array(combined_se)
    print(f"95% z-interval coverage of the stage combination: {covered.mean():.4f}")
    assert abs(covered.mean() - 0.95) < 3 * math.sqrt(0.95 * 0.05 / reps)


def test_arm_estimate_and_pair_are_plain_values() -> None:
    a = ArmEstimate(1.0, 0.1, 10)
    assert PairEstimate(a, a) == PairEstimate(a, a)
    assert math.isnan(PairEstimate(a, a).theta)
    d = absolute_difference(PairEstimate(a, ArmEstimate(0.25, 0.05, 20)))
    assert (d.effect, d.n_treatment, d.n_control, d.t) == (0.75, 10, 20, 30)
    assert d.variance == pytest.approx(0.15, rel=1e-12)


def test_rare_event_stage_combination_is_unbiased_where_estimated_weights_are_not() -> None:
    """Simulation with known truth: a 1% stage (20 treated units) and a 50% stage, error
    rates 1.5% vs 2.8% (true effect +1.3 pp). Count weights average to the truth; weights
    from estimated variances are pulled towards "no harm" by the stages that saw no event."""
    rng = np.random.default_rng(11)
    reps, p_c, p_t = 4000, 0.015, 0.028
    stages = ((20, 1980), (6000, 6000))  # (treated, control) units
    combined, ivw = np.empty(reps), np.empty(reps)
    for r in range(reps):
        ests = []
        for n_t, n_c in stages:
            m_t, m_c = rng.binomial(n_t, p_t) / n_t, rng.binomial(n_c, p_c) / n_c
            var = m_t * (1 - m_t) / (n_t - 1) + m_c * (1 - m_c) / (n_c - 1)
            ests.append(DiffEstimate(m_t - m_c, var, n_t, n_c))
        out = combine_stages(ests)
        assert out is not None
        combined[r] = out.effect
        w = np.array([1 / e.variance for e in ests])
        ivw[r] = np.average([e.effect for e in ests], weights=w)
    truth, mc_se = p_t - p_c, combined.std(ddof=1) / math.sqrt(reps)
    assert abs(combined.mean() - truth) < 3 * mc_se
    assert ivw.mean() < truth - 10 * ivw.std(ddof=1) / math.sqrt(reps)


# --- the guardrails' variance floor ------------------------------------------------------


@pytest.mark.parametrize("kind", SAMPLES)
@pytest.mark.parametrize(("n_t", "n_c"), [(2, 3), (40, 25), (200, 20000)])
def test_conservative_floors_each_arm_at_the_pooled_within_arm_variance(
    kind: str, n_t: int, n_c: int
) -> None:
    rng = np.random.default_rng(n_t * 7 + n_c)
    x, y = SAMPLES[kind](rng, n_t), SAMPLES[kind](rng, n_c)
    x[0] += 1.0
    pair = estimate_pair(MEAN, _with_noise_column(rng, x), _with_noise_column(rng, y))
    floored = conservative(pair)
    v_x, v_y = np.var(x, ddof=1), np.var(y, ddof=1)
    pooled = ((n_t - 1) * v_x + (n_c - 1) * v_y) / (n_t + n_c - 2)
    assert floored.treatment.variance == pytest.approx(max(v_x, pooled) / n_t, rel=1e-9)
    assert floored.control.variance == pytest.approx(max(v_y, pooled) / n_c, rel=1e-9)
    # never narrower than Welch; means untouched
    assert floored.treatment.variance >= pair.treatment.variance
    assert floored.control.variance >= pair.control.variance
    assert floored.treatment.mean == pair.treatment.mean == pytest.approx(x.mean(), rel=1e-12)
    assert floored.control.mean == pair.control.mean


def test_conservative_gives_an_arm_without_events_the_pooled_variance() -> None:
    rng = np.random.default_rng(3)
    x = np.zeros(210)
    y = (rng.random(20790) < 0.005).astype(float)
    floored = conservative(estimate_pair(MEAN, _with_noise_column(rng, x),
                                         _with_noise_column(rng, y)))  # fmt: skip
    pooled = (209 * 0.0 + 20789 * np.var(y, ddof=1)) / (210 + 20790 - 2)
    assert floored.treatment.variance == pytest.approx(pooled / 210, rel=1e-9)


@pytest.mark.parametrize(("a", "b", "expected"), [(1.0, 0.0, "all units"), (2.0, 2.0, "none")])
def test_conservative_with_both_arms_constant(a: float, b: float, expected: str) -> None:
    rng = np.random.default_rng(4)
    x, y = np.full(210, a), np.full(20790, b)
    pair = estimate_pair(MEAN, _with_noise_column(rng, x), _with_noise_column(rng, y))
    floored = conservative(pair)
    if expected == "none":  # the same constant: nothing to say, the variance stays 0
        assert floored == pair and pair.treatment.variance == 0
        return
    every = np.var(np.concatenate([x, y]), ddof=1)
    assert floored.treatment.variance == pytest.approx(every / 210, rel=1e-9)
    assert floored.control.variance == pytest.approx(every / 20790, rel=1e-9)
