"""Relative effects: the delta-method variance, its coverage, and the edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from monitor.moments import Moments
from monitor.msprt import MixtureSPRT
from monitor.readout import FixedHorizon
from monitor.relative import relative_diff
from monitor.sequential import AsymptoticCS, DiffEstimate, asymptotic_cs_halfwidth

CASES = [
    # mean_t, var_t, n_t, mean_c, var_c, n_c
    (10.5, 4.0, 1000, 10.0, 3.0, 1200),
    (0.021, 0.021 * 0.979, 50_000, 0.020, 0.020 * 0.980, 50_000),
    (3.0, 100.0, 2, 1.0, 0.5, 3),
    (-3.0, 2.0, 40, -2.0, 1.0, 60),  # negative means
    (1.0, 1.0, 100, -0.5, 1.0, 100),  # opposite signs
    (2.5e-6, 2.5e-6, 10**7, 2e-6, 2e-6, 10**7),  # a rare event
]


# --- the estimator --------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_relative_diff_matches_deng_et_al_and_a_numerical_delta_method(
    case: tuple[float, float, int, float, float, int],
) -> None:
    m_t, s2_t, n_t, m_c, s2_c, n_c = case
    est = relative_diff(*case)
    assert isinstance(est, DiffEstimate) and (est.n_treatment, est.n_control) == (n_t, n_c)
    assert est.effect == pytest.approx((m_t - m_c) / abs(m_c), rel=1e-12)
    if m_c > 0:  # Deng et al.'s percent change, bit for bit
        assert est.effect == m_t / m_c - 1
    # Deng, Knoblich & Lu (2018), percent change with independent arms, as written there
    direct = s2_t / (n_t * m_c**2) + m_t**2 * s2_c / (n_c * m_c**4)
    assert est.variance == pytest.approx(direct, rel=1e-12)

    # the delta method done numerically: central-difference gradient of f times the diagonal
    # covariance of the two independent means
    def f(a: float, b: float) -> float:
        return (a - b) / abs(b)

    h_t, h_c = 1e-6 * abs(m_t), 1e-6 * abs(m_c)
    g_t = (f(m_t + h_t, m_c) - f(m_t - h_t, m_c)) / (2 * h_t)
    g_c = (f(m_t, m_c + h_c) - f(m_t, m_c - h_c)) / (2 * h_c)
    numerical = g_t**2 * s2_t / n_t + g_c**2 * s2_c / n_c
    assert est.variance == pytest.approx(numerical, rel=1e-6)


def test_relative_diff_from_moments_of_raw_data() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.lognormal(0.1, 1.0, 700), rng.lognormal(0.0, 1.0, 900)
    t, c = Moments.of(x), Moments.of(y)
    est = relative_diff(t.mean, t.variance, t.n, c.mean, c.variance, c.n)
    ratio = x.mean() / y.mean()
    assert est.effect == pytest.approx(ratio - 1, rel=1e-12)
    var_means = np.array([x.var(ddof=1) / x.size, y.var(ddof=1) / y.size])
    grad = np.array([1 / y.mean(), -ratio / y.mean()])
    assert est.variance == pytest.approx(float(grad**2 @ var_means), rel=1e-9)


# --- edge cases -----------------------------------------------------------------------------


def test_zero_control_mean_gives_nan_effect_and_variance() -> None:
    for mean_c in (0.0, -0.0):
        est = relative_diff(1.0, 1.0, 100, mean_c, 1.0, 100)
        assert math.isnan(est.effect) and math.isnan(est.variance)
        assert math.isnan(AsymptoticCS(0.05, 1000).p_value(est))
        assert math.isnan(MixtureSPRT(0.05, 0.01).p_value(est))


def test_fewer_than_two_units_gives_nan_variance_like_diff_in_means() -> None:
    one = Moments.of([2.0])
    for n_t, n_c in ((1, 50), (50, 1), (0, 0)):
        var_t = one.variance if n_t < 2 else 1.0
        var_c = one.variance if n_c < 2 else 1.0
        est = relative_diff(2.0, var_t, n_t, 1.0, var_c, n_c)
        assert est.effect == 1.0  # the point estimate is kept, as diff_in_means does
        assert math.isnan(est.variance) and math.isnan(est.std_error)
    # an empty arm's Moments has a NaN mean, and that propagates
    assert math.isnan(relative_diff(1.0, 1.0, 10, Moments().mean, math.nan, 0).effect)


def test_negative_means_are_fine() -> None:
    est = relative_diff(-3.0, 2.0, 40, -2.0, 1.0, 60)
    # the metric fell by half of the control mean's magnitude: -50%, not -3 / -2 - 1 = +50%
    assert est.effect == pytest.approx(-0.5)
    assert math.isfinite(est.variance) and est.variance > 0
    # negating every outcome in both arms negates rel and keeps its variance
    mirror = relative_diff(3.0, 2.0, 40, 2.0, 1.0, 60)
    assert (mirror.effect, mirror.variance) == (-est.effect, est.variance)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("test", [AsymptoticCS(0.05, 5000), FixedHorizon(0.05)])
def test_a_negative_control_mean_mirrors_the_positive_one(
    case: tuple[float, float, int, float, float, int], test: AsymptoticCS | FixedHorizon
) -> None:
    """Negating every outcome negates the relative effect and mirrors its interval: lower
    and upper swap sides, the width and the variance stay (the delta method's gradient only
    changes sign). So the sign of the effect always follows the metric, whatever the sign of
    the control mean."""
    m_t, s2_t, n_t, m_c, s2_c, n_c = case
    est = relative_diff(*case)
    mirror = relative_diff(-m_t, s2_t, n_t, -m_c, s2_c, n_c)
    assert mirror.effect == pytest.approx(-est.effect, rel=1e-12)
    assert mirror.variance == est.variance
    assert math.copysign(1.0, est.effect) == math.copysign(1.0, m_t - m_c)
    ci, mirror_ci = test.interval(est), test.interval(mirror)
    assert mirror_ci.lower == pytest.approx(-ci.upper, rel=1e-9)
    assert mirror_ci.upper == pytest.approx(-ci.lower, rel=1e-9)


# --- coverage by simulation -----------------------------------------------------------------

ALPHA = 0.05


def _mu_for_lift(lift: float, sigma_t: float, sigma_c: float) -> float:
    """Log-scale location of a lognormal(., sigma_t) treatment whose mean is (1 + lift) times
    that of a lognormal(0, sigma_c) control (means are exp(mu + sigma**2 / 2)).

    A different shape, not a rescaling: scaling one arm by (1 + lift) would scale ``rel - lift``
    and its standard error by exactly (1 + lift), an A/A test in disguise.
    """
    return math.log1p(lift) + (sigma_c**2 - sigma_t**2) / 2


def _replicated(treatment: np.ndarray, control: np.ndarray) -> list[DiffEstimate]:
    """``relative_diff`` of each replication (a row) of per-unit values."""
    n_t, n_c = treatment.shape[1], control.shape[1]
    m_t, m_c = treatment.mean(axis=1), control.mean(axis=1)
    v_t, v_c = treatment.var(axis=1, ddof=1), control.var(axis=1, ddof=1)
    return [
        relative_diff(float(a), float(b), n_t, float(c), float(d), n_c)
        for a, b, c, d in zip(m_t, v_t, m_c, v_c, strict=True)
    ]


def test_fixed_horizon_delta_interval_covers_the_relative_effect_at_95_percent() -> None:
    replications, n, lift = 2000, 2000, 0.05
    rng = np.random.default_rng(2018)
    # lognormal, skewness 6.2 (control) and 12 (treatment): revenue-like per-unit metrics
    control = rng.lognormal(0.0, 1.0, (replications, n))
    treatment = rng.lognormal(_mu_for_lift(lift, 1.2, 1.0), 1.2, (replications, n))
    ests = _replicated(treatment, control)
    effect = np.array([e.effect for e in ests])
    se = np.array([e.std_error for e in ests])
    z = stats.norm.ppf(1 - ALPHA / 2)
    coverage = (np.abs(effect - lift) <= z * se).mean()
    mc_se = math.sqrt(ALPHA * (1 - ALPHA) / replications)
    print(f"fixed-horizon 95% delta-method interval: coverage {coverage:.4f}")
    assert abs(coverage - (1 - ALPHA)) <= 3 * mc_se


@pytest.mark.parametrize(("lift", "sigma_t"), [(0.0, 1.5), (0.05, 1.3)])
def test_asymptotic_cs_on_the_relative_estimate_covers_over_all_looks(
    lift: float, sigma_t: float
) -> None:
    """Time-uniform coverage of AsymptoticCS applied to the delta-method estimate.

    A/A, and +5% with a lighter-tailed treatment. Heavier tails than above (control
    lognormal(0, 1.5), skewness 33) and looks from 100 units per arm, where both the CLT and
    the linearisation are at their weakest.
    """
    streams, looks, batch = 500, 100, 100
    rng = np.random.default_rng(int(lift * 100) + 7)

    def arm(mu: float, sigma: float) -> tuple[np.ndarray, np.ndarray]:
        x = rng.lognormal(mu, sigma, (streams, looks, batch))
        return np.cumsum(x.sum(axis=2), axis=1), np.cumsum((x * x).sum(axis=2), axis=1)

    (s_t, ss_t), (s_c, ss_c) = arm(_mu_for_lift(lift, sigma_t, 1.5), sigma_t), arm(0.0, 1.5)
    n = batch * np.arange(1, looks + 1)
    m_t, m_c = s_t / n, s_c / n
    v_t, v_c = (ss_t - s_t**2 / n) / (n - 1), (ss_c - s_c**2 / n) / (n - 1)
    effect, variance = np.empty_like(m_t), np.empty_like(m_t)
    for (i, k), _ in np.ndenumerate(m_t):  # the public API at every look of every stream
        nk = int(n[k])
        est = relative_diff(
            float(m_t[i, k]), float(v_t[i, k]), nk, float(m_c[i, k]), float(v_c[i, k]), nk
        )
        effect[i, k], variance[i, k] = est.effect, est.variance

    cs = AsymptoticCS(ALPHA, tuning_units=2 * looks * batch)
    hw = asymptotic_cs_halfwidth(variance, 2 * n, ALPHA, cs.rho2)
    for i, k in zip(rng.integers(streams, size=5), rng.integers(looks, size=5), strict=True):
        est = DiffEstimate(float(effect[i, k]), float(variance[i, k]), int(n[k]), int(n[k]))
        assert cs.interval(est).lower == pytest.approx(effect[i, k] - hw[i, k], rel=1e-12)

    miss = (np.abs(effect - lift) > hw).any(axis=1).mean()
    z = stats.norm.ppf(1 - ALPHA / 2)
    naive_miss = (np.abs(effect - lift) > z * np.sqrt(variance)).any(axis=1).mean()
    print(f"lift {lift}: CS misses in {miss:.4f} of streams, naive z-interval {naive_miss:.4f}")
    assert miss <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / streams)
    assert naive_miss > 4 * ALPHA  # the looks are many enough for peeking to matter


def test_negative_control_mean_against_numpy_and_monte_carlo() -> None:
    """Net revenue per user after refunds, both arms below zero: treatment -12 against
    control -10, a fall of 20% of the control mean's magnitude (true rel -0.2).

    Every replication's estimate is recomputed in numpy from the raw units -- the effect as
    ``(mean_t - mean_c) / |mean_c|``, the variance as the squared gradient of that function
    (by central differences) times the variances of the two means -- and compared with its
    mirror image, the same units negated (control mean +10), for which ``relative_diff`` is
    Deng et al.'s ``mean_t / mean_c - 1``. Over the replications, the mean effect is the
    truth, the delta-method standard error is the spread of the estimates, and the 95%
    fixed-horizon interval covers -0.2 at its nominal rate.
    """
    replications, n, truth = 2000, 1000, -0.2
    rng = np.random.default_rng(2024)
    control = rng.normal(-10.0, 5.0, (replications, n))
    treatment = rng.normal(-12.0, 6.0, (replications, n))
    ests = _replicated(treatment, control)
    m_t, m_c = treatment.mean(axis=1), control.mean(axis=1)
    v_t, v_c = treatment.var(axis=1, ddof=1), control.var(axis=1, ddof=1)
    effect = np.array([e.effect for e in ests])
    variance = np.array([e.variance for e in ests])

    def f(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a - b) / np.abs(b)

    np.testing.assert_allclose(effect, f(m_t, m_c), rtol=1e-12)
    h = 1e-6
    g_t = (f(m_t + h, m_c) - f(m_t - h, m_c)) / (2 * h)
    g_c = (f(m_t, m_c + h) - f(m_t, m_c - h)) / (2 * h)
    np.testing.assert_allclose(variance, g_t**2 * v_t / n + g_c**2 * v_c / n, rtol=1e-6)

    fixed = FixedHorizon(ALPHA)
    for i in range(0, replications, 200):  # the mirror image, with a positive control mean
        mirror = relative_diff(-float(m_t[i]), float(v_t[i]), n, -float(m_c[i]), float(v_c[i]), n)
        assert mirror.effect == m_t[i] / m_c[i] - 1  # Deng et al., negated data
        assert mirror.effect == pytest.approx(-effect[i], rel=1e-12)
        ci, mirror_ci = fixed.interval(ests[i]), fixed.interval(mirror)
        assert (mirror_ci.lower, mirror_ci.upper) == (
            pytest.approx(-ci.upper, rel=1e-12),
            pytest.approx(-ci.lower, rel=1e-12),
        )

    se = np.sqrt(variance)
    mc_se = effect.std(ddof=1) / math.sqrt(replications)
    assert abs(effect.mean() - truth) <= 4 * mc_se  # the bias is O(1/n), far below mc_se
    # the delta-method standard error is the spread of the estimates (within 5%; the spread
    # of a standard deviation over 2000 replications is about 1.6%)
    assert se.mean() == pytest.approx(effect.std(ddof=1), rel=0.05)
    z = stats.norm.ppf(1 - ALPHA / 2)
    coverage = (np.abs(effect - truth) <= z * se).mean()
    print(f"negative control mean: coverage {coverage:.4f}, mean rel {effect.mean():+.4f}")
    assert abs(coverage - (1 - ALPHA)) <= 3 * math.sqrt(ALPHA * (1 - ALPHA) / replications)
    # and every estimate has the sign of the fall: none reads as an increase
    assert (effect + z * se < 0).all()
