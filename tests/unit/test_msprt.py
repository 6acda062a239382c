"""The mixture SPRT: the papers' statistic, its CS and p-value, tuning, and error rates."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import integrate, optimize, special, stats

from monitor.msprt import MixtureSPRT, mixture_tau2, msprt_halfwidth
from monitor.sequential import (
    AsymptoticCS,
    DiffEstimate,
    Interval,
    SequentialTest,
    optimal_rho2,
)


def paper_lambda(
    n: int, sigma: float, tau: float, y_bar: float, x_bar: float, theta_0: float
) -> float:
    """Johari, Koomen, Pekelis & Walsh (2017), two-sample mSPRT, transcribed symbol by symbol.

    ``n`` units per arm, known per-unit variance ``sigma**2``, mixture ``H = N(theta_0, tau**2)``.
    """
    return math.sqrt(2 * sigma**2 / (2 * sigma**2 + n * tau**2)) * math.exp(
        n**2
        * tau**2
        * (y_bar - x_bar - theta_0) ** 2
        / (4 * sigma**2 * (2 * sigma**2 + n * tau**2))
    )


# --- the statistic --------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 50, 1000, 20_000])
@pytest.mark.parametrize(("sigma", "tau"), [(1.0, 0.05), (3.0, 1.0), (0.1, 0.3)])
@pytest.mark.parametrize("theta_0", [0.0, 0.02])
def test_likelihood_ratio_is_the_papers_two_sample_formula(
    n: int, sigma: float, tau: float, theta_0: float
) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(0.0, sigma, n)
    y = rng.normal(0.05 * sigma, sigma, n)  # a modest true effect keeps exp() finite
    est = DiffEstimate(float(y.mean() - x.mean()), 2 * sigma**2 / n, n, n)
    test = MixtureSPRT(0.05, tau**2)
    expected = paper_lambda(n, sigma, tau, float(y.mean()), float(x.mean()), theta_0)
    assert math.exp(test.log_likelihood_ratio(est, theta_0)) == pytest.approx(expected, rel=1e-9)
    assert test.p_value(est, theta_0) == pytest.approx(min(1.0, 1.0 / expected), rel=1e-9)


@pytest.mark.parametrize(
    ("d", "v", "tau2", "null"), [(0.3, 0.01, 0.04, 0.0), (-1.0, 2.0, 0.5, 1.0)]
)
def test_likelihood_ratio_is_the_normal_mixture_integral(
    d: float, v: float, tau2: float, null: float
) -> None:
    """Derived afresh: integrate N(d; theta, v) over the N(null, tau2) mixture, divide by H0."""
    se, tau = math.sqrt(v), math.sqrt(tau2)
    mixed, _ = integrate.quad(
        lambda th: stats.norm.pdf(d, th, se) * stats.norm.pdf(th, null, tau),
        null - 40 * tau,
        null + 40 * tau,
        points=[d],
        epsabs=0,
        epsrel=1e-12,
    )
    llr = MixtureSPRT(0.05, tau2).log_likelihood_ratio(DiffEstimate(d, v, 10, 10), null)
    assert llr == pytest.approx(math.log(mixed / stats.norm.pdf(d, null, se)), rel=1e-9)


# --- the confidence sequence and the p-value ------------------------------------------------


@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.3])
@pytest.mark.parametrize(("v", "tau2"), [(1e-6, 1e-3), (0.01, 0.01), (4.0, 0.01)])
def test_interval_ends_are_the_nulls_where_lambda_reaches_one_over_alpha(
    alpha: float, v: float, tau2: float
) -> None:
    test = MixtureSPRT(alpha, tau2)
    est = DiffEstimate(0.123, v, 500, 700)
    interval = test.interval(est)
    for end in (interval.lower, interval.upper):
        assert test.log_likelihood_ratio(est, end) == pytest.approx(-math.log(alpha), rel=1e-9)
        assert test.p_value(est, end) == pytest.approx(alpha, rel=1e-9)
    assert interval.upper - est.effect == pytest.approx(est.effect - interval.lower, rel=1e-12)
    r = tau2 / v
    closed_form = math.sqrt(v * (1 + r) / r * (-2 * math.log(alpha) + math.log(1 + r)))
    assert test.halfwidth(est) == pytest.approx(closed_form, rel=1e-12)


@given(
    effect=st.floats(-1.0, 1.0),
    variance=st.floats(1e-9, 1.0),
    null=st.floats(-1.0, 1.0),
    tau2=st.floats(1e-6, 10.0),
    alpha=st.floats(1e-4, 0.5),
)
def test_p_value_at_most_alpha_iff_interval_excludes_null(
    effect: float, variance: float, null: float, tau2: float, alpha: float
) -> None:
    test = MixtureSPRT(alpha, tau2)
    est = DiffEstimate(effect, variance, 100, 100)
    llr = test.log_likelihood_ratio(est, null)
    # on the boundary itself the two sides round differently; it has probability zero
    assume(abs(llr + math.log(alpha)) > 1e-9 * max(1.0, abs(llr)))
    p = test.p_value(est, null)
    assert 0.0 <= p <= 1.0
    assert (p <= alpha) == (not test.interval(est).contains(null))


def test_degenerate_estimates() -> None:
    test = MixtureSPRT(0.05, 0.01)
    assert test.p_value(DiffEstimate(0.1, 0.0, 10, 10)) == 0.0
    assert test.p_value(DiffEstimate(0.0, 0.0, 10, 10)) == 1.0
    assert test.halfwidth(DiffEstimate(0.1, 0.0, 10, 10)) == 0.0
    nan_est = DiffEstimate(0.1, math.nan, 1, 10)
    assert math.isnan(test.p_value(nan_est)) and math.isnan(test.halfwidth(nan_est))
    assert math.isnan(test.p_value(DiffEstimate(math.nan, 1.0, 10, 10)))
    assert test.p_value(DiffEstimate(0.0, 1e-4, 500, 500)) == 1.0  # Lambda < 1 at d = null
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = msprt_halfwidth(np.array([1.0, 0.0, np.nan, -1.0, np.inf]), 0.05, 0.01)
    assert np.isfinite(out[0]) and out[1] == 0.0 and np.isnan(out[2:4]).all()
    assert out[4] == np.inf


def test_halfwidth_is_vectorised_elementwise() -> None:
    v = np.random.default_rng(3).exponential(1e-3, 40)
    vec = msprt_halfwidth(v, 0.05, 2e-3)
    assert isinstance(vec, np.ndarray) and vec.shape == (40,)
    np.testing.assert_allclose(vec, [msprt_halfwidth(float(x), 0.05, 2e-3) for x in v], rtol=1e-14)
    assert isinstance(msprt_halfwidth(1.0, 0.05, 1.0), float)


@pytest.mark.parametrize(("alpha", "tau2"), [(0.0, 1.0), (1.0, 1.0), (0.05, 0.0), (0.05, -1.0)])
def test_invalid_parameters_are_rejected(alpha: float, tau2: float) -> None:
    with pytest.raises(ValueError):
        MixtureSPRT(alpha, tau2)


@pytest.mark.parametrize(
    "args",
    [
        (0.0, 100, 1.0, 0.5),
        (0.05, 0, 1.0, 0.5),
        (0.05, 100, 0.0, 0.5),
        (0.05, 100, math.nan, 0.5),
        (0.05, 100, 1.0, 1.0),
    ],
)
def test_mixture_tau2_rejects_invalid_parameters(args: tuple[float, int, float, float]) -> None:
    with pytest.raises(ValueError):
        mixture_tau2(*args)


def test_msprt_satisfies_the_protocol() -> None:
    test: SequentialTest = MixtureSPRT(0.05, 1e-3)
    assert isinstance(test.interval(DiffEstimate(0.0, 1.0, 5, 5)), Interval)
    assert test.alpha == 0.05


# --- tuning the mixture, and the AsymptoticCS equivalence -----------------------------------


@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.3])
@pytest.mark.parametrize("expected_units", [50, 10_000, 10**7])
@pytest.mark.parametrize("share", [0.5, 0.1])
def test_mixture_tau2_nearly_minimises_the_width_at_the_expected_sample_size(
    alpha: float, expected_units: int, share: float
) -> None:
    sd = 2.5
    v_star = sd**2 / (expected_units * share) + sd**2 / (expected_units * (1 - share))

    def width(log_tau2: float) -> float:
        return msprt_halfwidth(v_star, alpha, math.exp(log_tau2))

    lv = math.log(v_star)
    best = optimize.minimize_scalar(width, bounds=(lv - 20, lv + 20), method="bounded")
    tau2 = mixture_tau2(alpha, expected_units, sd, share)
    assert best.fun <= width(math.log(tau2)) * (1 + 1e-12) <= 1.01 * best.fun * (1 + 1e-12)
    # the exact stationary point r = L + log(1 + r), via Lambert W, is the minimiser
    big_l = -2 * math.log(alpha)
    r_exact = -special.lambertw(-math.exp(-(big_l + 1)), -1).real - 1
    assert r_exact == pytest.approx(big_l + math.log1p(r_exact), rel=1e-12)
    assert width(math.log(r_exact * v_star)) == pytest.approx(best.fun, rel=1e-9)
    # tuning for 100x the units really costs width at v*, so the optimisation is not vacuous
    assert width(math.log(tau2 / 100)) > 1.1 * width(math.log(tau2))


@pytest.mark.parametrize("alpha", [0.01, 0.05, 0.2])
@pytest.mark.parametrize("tuning_units", [200, 20_000, 10**6])
def test_asymptotic_cs_is_the_msprt_with_a_data_scaled_mixture(
    alpha: float, tuning_units: int
) -> None:
    cs = AsymptoticCS(alpha, tuning_units)
    sigma2 = 7.3  # per-unit variance t * v, held fixed across looks
    # at the tuning time, with tau2 = rho2 * t * v ...
    est = DiffEstimate(0.4, sigma2 / tuning_units, tuning_units // 2, tuning_units // 2)
    msprt = MixtureSPRT(alpha, optimal_rho2(alpha, tuning_units) * (tuning_units * est.variance))
    assert msprt.halfwidth(est) == pytest.approx(cs.halfwidth(est), rel=1e-12)
    # ... and at every other t while t * v stays the same: the boundaries are identical
    for t in (2, 37, tuning_units * 3, 10**9):
        est_t = DiffEstimate(0.01, sigma2 / t, t // 2, t - t // 2)
        assert msprt.halfwidth(est_t) == pytest.approx(cs.halfwidth(est_t), rel=1e-12)
        for null in (0.0, 0.005, -0.3):
            assert msprt.p_value(est_t, null) == pytest.approx(
                cs.p_value(est_t, null), rel=1e-9, abs=1e-300
            )
    # and mixture_tau2 is that same tuning expressed in effect units
    for share in (0.5, 0.25):
        sd = 1.7
        v_star = sd**2 / (tuning_units * share) + sd**2 / (tuning_units * (1 - share))
        assert mixture_tau2(alpha, tuning_units, sd, share) == pytest.approx(
            optimal_rho2(alpha, tuning_units) * tuning_units * v_star, rel=1e-12
        )


# --- error rates under continuous monitoring ------------------------------------------------

# per arm: 100 units per look, 100 looks -> 10_000 per arm, t = 20_000 total units at the end
STREAMS, LOOKS, BATCH = 2000, 100, 100
ALPHA, HORIZON = 0.05, 2 * LOOKS * BATCH
P_CONVERT = 0.02
SD = {"normal": 1.0, "bernoulli": math.sqrt(P_CONVERT * (1 - P_CONVERT))}


def _monitor(
    kind: str, seed: int, shift: float, streams: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Effect and Welch variance after every look for many streams, and per-arm units.

    Per-unit draws, summed per batch; cumulative sums over batches give every look's moments
    without a Python loop over looks. Streams are drawn in chunks to bound memory.
    """
    rng = np.random.default_rng(seed)

    def arm(offset: float, m: int) -> tuple[np.ndarray, np.ndarray]:
        size = (m, LOOKS, BATCH)
        if kind == "normal":
            x = rng.normal(offset, SD["normal"], size)
        else:
            x = (rng.random(size) < P_CONVERT + offset).astype(np.float64)
        return np.cumsum(x.sum(axis=2), axis=1), np.cumsum((x * x).sum(axis=2), axis=1)

    n = BATCH * np.arange(1, LOOKS + 1)
    effects, variances = [], []
    for m in np.diff(np.r_[0:streams:250, streams]):
        (s_t, ss_t), (s_c, ss_c) = arm(shift, int(m)), arm(0.0, int(m))
        effects.append(s_t / n - s_c / n)
        # clipped like Moments.variance: cancellation can leave -0.0-ish values
        var_t = np.maximum(ss_t - s_t**2 / n, 0.0) / (n - 1)
        var_c = np.maximum(ss_c - s_c**2 / n, 0.0) / (n - 1)
        variances.append(var_t / n + var_c / n)
    return np.concatenate(effects), np.concatenate(variances), n


def _check_against_scalar_api(
    test: MixtureSPRT, effect: np.ndarray, variance: np.ndarray, n: np.ndarray, reject: np.ndarray
) -> None:
    rng = np.random.default_rng(0)
    for i, k in zip(rng.integers(len(effect), size=20), rng.integers(LOOKS, size=20), strict=True):
        est = DiffEstimate(float(effect[i, k]), float(variance[i, k]), int(n[k]), int(n[k]))
        assert (test.p_value(est) <= test.alpha) == bool(reject[i, k])


@pytest.mark.parametrize("kind", SD)
def test_aa_false_alarms_stay_below_alpha_under_continuous_monitoring(kind: str) -> None:
    test = MixtureSPRT(ALPHA, mixture_tau2(ALPHA, HORIZON, SD[kind]))
    effect, variance, n = _monitor(kind, seed=2017, shift=0.0, streams=STREAMS)
    reject = np.abs(effect) > msprt_halfwidth(variance, ALPHA, test.tau2)
    _check_against_scalar_api(test, effect, variance, n, reject)
    msprt_alarm = reject.any(axis=1).mean()
    z = stats.norm.ppf(1 - ALPHA / 2)
    naive_alarm = (np.abs(effect) > z * np.sqrt(variance)).any(axis=1).mean()
    mc_se = math.sqrt(ALPHA * (1 - ALPHA) / STREAMS)
    print(f"{kind}: mSPRT false-alarm rate {msprt_alarm:.4f}, naive z-test {naive_alarm:.4f}")
    assert msprt_alarm <= ALPHA + 3 * mc_se
    assert naive_alarm > 4 * ALPHA


def test_msprt_detects_a_tenth_of_an_sd_and_the_median_detection_time_is_as_derived() -> None:
    """Power for 0.1 sd, and bounds on the median detection time derived from the boundary.

    With ``se_k = sd sqrt(2 / n_k)`` and ``h_k`` the half-width at look ``k``, the estimate
    alone rejects at look ``k`` with probability ``q_k = Phi((delta - h_k)/se_k) +
    Phi((-delta - h_k)/se_k)`` (normal approximation, true variance). Then
    ``q_k <= P(T <= t_k) <= q_1 + ... + q_k`` (first: rejecting at ``k`` implies ``T <= t_k``;
    second: union bound). So the median of ``T`` is at most the first ``t_k`` with ``q_k >= 0.6``
    and more than the last ``t_k`` with ``sum q <= 0.4``; the 0.1 margins are ~4.5 Monte Carlo
    standard errors at 500 streams and also absorb the plug-in variance (vs the true one used
    for ``q``). Nothing here is fitted to the simulation.
    """
    streams, sd = 500, SD["normal"]
    delta = 0.1 * sd
    tau2 = mixture_tau2(ALPHA, HORIZON, sd)
    effect, variance, n = _monitor("normal", seed=22, shift=delta, streams=streams)
    hw = msprt_halfwidth(variance, ALPHA, tau2)
    detected_at = effect - hw > 0
    assert not (effect + hw < 0).any()  # never the wrong sign
    detected = detected_at.any(axis=1)
    assert detected.mean() >= 0.95
    t = 2 * n
    first = np.where(detected, t[np.argmax(detected_at, axis=1)], np.inf)
    median = float(np.median(first))

    se = sd * np.sqrt(2.0 / n)
    h = msprt_halfwidth(se**2, ALPHA, tau2)
    q = stats.norm.cdf((delta - h) / se) + stats.norm.cdf((-delta - h) / se)
    upper = t[np.argmax(q >= 0.6)]
    lower = t[np.flatnonzero(np.cumsum(q) <= 0.4)[-1]]
    print(
        f"0.1 sd detected in {detected.mean():.3f} of streams; median detection at {median:.0f}"
        f" total units (derived bounds ({lower}, {upper}]; fixed horizon {HORIZON})"
    )
    assert lower < median <= upper
