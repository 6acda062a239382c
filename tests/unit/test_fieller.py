"""Relative guardrails at the margin (monitor.fieller) against independent references:
Fieller's interval found by root-finding (scipy.optimize.brentq) on its defining equation,
scipy's normal quantile, and simulations with known truth."""

from __future__ import annotations

import math
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from monitor.estimators import ArmEstimate
from monitor.fieller import relative_verdict
from monitor.guardrails import verdict_for
from monitor.readout import FixedHorizon
from monitor.sequential import AsymptoticCS, DiffEstimate, Interval, SequentialTest


def _brentq_fieller(
    m_t: float, v_t: float, m_c: float, v_c: float, z: float, cov: float = 0.0
) -> tuple[float, float]:
    """The relative-effect bounds: the roots in rho of ``(m_t - rho m_c)^2 = z^2 (v_t +
    rho^2 v_c - 2 rho cov)`` either side of ``m_t / m_c``, mapped to
    ``(mu_t - mu_c) / |mu_c|``."""

    def f(rho: float) -> float:
        return (m_t - rho * m_c) ** 2 - z * z * (v_t + rho * rho * v_c - 2 * rho * cov)

    centre, far = m_t / m_c, 1e6 * (1 + abs(m_t / m_c))
    lo = optimize.brentq(f, centre - far, centre, xtol=1e-14, rtol=1e-13)
    hi = optimize.brentq(f, centre, centre + far, xtol=1e-14, rtol=1e-13)
    return (lo - 1, hi - 1) if m_c > 0 else (1 - hi, 1 - lo)


@pytest.mark.parametrize(
    ("m_t", "m_c", "v_t", "v_c"),
    [
        (1.2, 1.0, 0.01, 0.01),  # a clear 20% increase
        (0.01, 0.0005, 1e-6, 2.5e-8),  # a rare control rate, treatment 20x
        (-20.0, -10.0, 0.02, 0.03),  # net revenue falling below a negative control
        (-5.0, -10.0, 0.02, 0.03),  # and rising towards 0
        (3.0, 1.0, 4.0, 0.2),  # the control barely settled: a long upper arm
    ],
)
def test_fixed_horizon_bounds_are_fiellers(m_t: float, m_c: float, v_t: float, v_c: float) -> None:
    alpha = 0.05
    z = stats.norm.ppf(1 - alpha / 2)
    assert m_c**2 > z * z * v_c  # the bounded case
    v = relative_verdict(
        ArmEstimate(m_t, v_t, 1000), ArmEstimate(m_c, v_c, 1000), margin=0.1,
        direction="increase", test=FixedHorizon(alpha),
    )  # fmt: skip
    assert v.control_sign == (1 if m_c > 0 else -1)
    assert (v.lower, v.upper) == pytest.approx(_brentq_fieller(m_t, v_t, m_c, v_c, z), rel=1e-9)
    assert v.effect == pytest.approx((m_t - m_c) / abs(m_c))
    # the p-value is the test's for no difference, which needs no sign
    assert v.p_value == pytest.approx(2 * stats.norm.sf(abs(m_t - m_c) / math.sqrt(v_t + v_c)))


@pytest.mark.parametrize("cov", [0.004, -0.004])
def test_correlated_arm_means_give_fiellers_general_bounds(cov: float) -> None:
    """Arm means correlated (CUPED's, through the pooled covariate mean): the variance of
    ``m_t - rho m_c`` gains ``-2 rho cov``, passed as the ``k`` coefficient of the extra
    variance; the bounds are Fieller's general ones (brentq on the defining equation)."""
    z = stats.norm.ppf(0.975)
    m_t, m_c, v_t, v_c = 1.3, 1.0, 0.01, 0.008
    v = relative_verdict(
        ArmEstimate(m_t, v_t, 1000), ArmEstimate(m_c, v_c, 1000), margin=0.1,
        direction="increase", test=FixedHorizon(0.05), extra_variance=(0.0, -2 * cov, 0.0),
    )  # fmt: skip
    assert (v.lower, v.upper) == pytest.approx(
        _brentq_fieller(m_t, v_t, m_c, v_c, z, cov), rel=1e-9
    )
    assert (v.lower, v.upper) != pytest.approx(_brentq_fieller(m_t, v_t, m_c, v_c, z), rel=1e-3)


def test_positively_correlated_arms_a_pass_of_l_plus_need_not_settle_the_sign() -> None:
    """The module doc's limit: with arm means correlated as CUPED's are (0.8; 0.82 at a
    covariate correlation of 0.95, balanced), ``m_t = 0`` and a control mean inside its
    Fieller bound, ``L_+`` at a margin of 100% passes on its own, yet the sign is not
    settled and ``L_-`` (here ``m_t`` alone) does not pass: inconclusive. With independent
    arms that ``L_+`` pass would imply a settled sign."""
    z = stats.norm.ppf(0.975)
    m_c, cov = 1.6, 0.8
    assert m_c * m_c < z * z  # not settled: Var(m_c) = 1
    assert 2 * m_c - 0.0 > z * math.sqrt(1 - 2 * cov * 2 + 4)  # L_+ at k = 2 passes alone
    assert 2 * m_c - 0.0 < z * math.sqrt(1 + 4)  # independent arms: it would not
    v = relative_verdict(
        ArmEstimate(0.0, 1.0, 1000), ArmEstimate(m_c, 1.0, 1000), margin=1.0,
        direction="increase", test=FixedHorizon(0.05), extra_variance=(0.0, -2 * cov, 0.0),
    )  # fmt: skip
    assert (v.verdict, v.control_sign) == ("inconclusive", 0)


_finite = st.floats(-50, 50, allow_nan=False).filter(lambda x: abs(x) > 1e-3)
_variance = st.floats(1e-6, 5.0)


@settings(max_examples=300, deadline=None)
@given(
    m_t=st.floats(-50, 50), m_c=_finite, v_t=_variance, v_c=_variance,
    margin=st.floats(0, 2), direction=st.sampled_from(["increase", "decrease"]),
    n=st.integers(200, 200_000), fixed=st.booleans(),
)  # fmt: skip
def test_at_the_margin_the_interval_is_the_test(
    m_t: float, m_c: float, v_t: float, v_c: float, margin: float, direction: str, n: int,
    fixed: bool,
) -> None:  # fmt: skip
    """With the control's sign settled, the margin lies outside the reported interval on the
    harmful (safe) side exactly when the linear statistic for that sign breaches (passes)
    through the guardrail's own sequential test, and the verdict is the interval's. A breach
    asks both signs, but with a critical value that depends on the units alone the other
    sign's statistic breaches whenever the settled one does."""
    test: SequentialTest = FixedHorizon(0.05) if fixed else AsymptoticCS(0.05, 10_000)
    t, c = ArmEstimate(m_t, v_t, n), ArmEstimate(m_c, v_c, n)
    v = relative_verdict(t, c, margin=margin, direction=direction, test=test)  # type: ignore[arg-type]
    if v.control_sign == 0:
        assert math.isnan(v.lower) and math.isnan(v.upper)
        return
    s = v.control_sign
    assert s == (1 if m_c > 0 else -1)
    d = margin if direction == "increase" else -margin
    k = 1 + s * d
    own = test.interval(DiffEstimate(m_t - k * m_c, v_t + k * k * v_c, n, n))
    by_test = verdict_for(direction, 0.0, own)[0]  # type: ignore[arg-type]
    by_interval = verdict_for(direction, margin, Interval(v.lower, v.upper))[0]  # type: ignore[arg-type]
    # a margin within rounding of a bound may fall either way: skip those
    scale = max(1.0, abs(v.lower), abs(v.upper))
    if min(abs(v.lower - d), abs(v.upper - d)) > 1e-9 * scale:
        assert v.verdict == by_interval == by_test
    assert v.lower <= v.effect <= v.upper


def test_an_unsettled_control_sign_has_no_interval_and_asks_both_signs() -> None:
    """A control mean within noise of 0 (here 0.01 with a standard error of 0.1): no finite
    relative interval; a treatment clearly above 0 still breaches a harmful increase, since
    it is beyond the margin whichever the control's sign; nothing passes."""
    test = FixedHorizon(0.05)
    c = ArmEstimate(0.01, 0.01, 5000)
    up = relative_verdict(ArmEstimate(2.0, 0.01, 5000), c, margin=0.1, direction="increase",
                          test=test)  # fmt: skip
    assert (up.verdict, up.control_sign) == ("breach", 0)
    assert math.isnan(up.lower) and math.isnan(up.upper)
    down = relative_verdict(ArmEstimate(-2.0, 0.01, 5000), c, margin=0.1, direction="increase",
                            test=test)  # fmt: skip
    # below 0 against a control of either sign is a fall relative to it: both signs pass
    assert down.verdict == "pass"
    same = relative_verdict(ArmEstimate(0.01, 0.01, 5000), c, margin=0.1, direction="increase",
                            test=test)  # fmt: skip
    assert same.verdict == "inconclusive"


def test_both_arms_constant_is_no_variance_and_overflow_is_non_finite() -> None:
    test = FixedHorizon(0.05)
    v = relative_verdict(ArmEstimate(2.0, 0.0, 500), ArmEstimate(1.0, 0.0, 500), margin=0.1,
                         direction="increase", test=test)  # fmt: skip
    assert (v.verdict, v.reason, v.effect) == ("inconclusive", "no_variance", 1.0)
    v = relative_verdict(ArmEstimate(1e308, 1e300, 500), ArmEstimate(-1e308, 1.0, 500),
                         margin=0.5, direction="increase", test=test)  # fmt: skip
    assert (v.verdict, v.reason) == ("inconclusive", "non_finite")


@pytest.mark.parametrize("ratio", [0.5, 1.0, 3.0])
def test_fixed_horizon_interval_covers_the_true_relative_effect(ratio: float) -> None:
    """Simulation with known truth: normal arm means with known variances, a control mean of
    2 with a standard error of 0.3, treatment at ``ratio`` times it. Fieller's interval is
    exact for normal means, so it covers the true relative effect in 95% of draws."""
    rng = np.random.default_rng(11)
    mu_c, se, draws = 2.0, 0.3, 4000
    truth = ratio - 1.0
    test = FixedHorizon(0.05)
    covered = 0
    for m_t, m_c in zip(
        rng.normal(ratio * mu_c, se, draws), rng.normal(mu_c, se, draws), strict=True
    ):
        v = relative_verdict(ArmEstimate(m_t, se**2, 100), ArmEstimate(m_c, se**2, 100),
                             margin=0.1, direction="increase", test=test)  # fmt: skip
        assert v.control_sign == 1
        covered += v.lower <= truth <= v.upper
    assert covered / draws == pytest.approx(0.95, abs=3 * math.sqrt(0.05 * 0.95 / draws))


@pytest.mark.parametrize(("rate", "margin"), [(0.005, 0.0), (0.005, 0.1), (0.02, 0.5), (0.2, 0.1)])
def test_errors_at_the_margin_stay_within_half_alpha_on_each_side(
    rate: float, margin: float
) -> None:
    """Simulation with known truth: Bernoulli arms of 2,000 units, treatment exactly at the
    margin (``(1 + margin)`` times the control rate), each arm's variance floored at the
    pooled one as guardrails do, a fixed-horizon test at alpha 0.05. A breach and a pass are
    each wrong here, and each must stay within alpha / 2. The delta-method interval this
    replaced passed 6-7% of such streams at a 0.5% rate (the engine's readout on the same
    design, 2,000 streams, 2026-12-05): a regression at the margin advanced."""
    rng = np.random.default_rng(21)
    n, draws, alpha = 2000, 4000, 0.05
    test = FixedHorizon(alpha)
    breaches = passes = 0
    for x_t, x_c in zip(
        rng.binomial(n, rate * (1 + margin), draws), rng.binomial(n, rate, draws), strict=True
    ):
        m_t, m_c = x_t / n, x_c / n
        s2_t, s2_c = m_t * (1 - m_t) * n / (n - 1), m_c * (1 - m_c) * n / (n - 1)
        pooled = (s2_t + s2_c) / 2
        v = relative_verdict(ArmEstimate(m_t, max(s2_t, pooled) / n, n),
                             ArmEstimate(m_c, max(s2_c, pooled) / n, n), margin=margin,
                             direction="increase", test=test)  # fmt: skip
        breaches += v.verdict == "breach"
        passes += v.verdict == "pass"
    bound = alpha / 2 + 3 * math.sqrt(alpha / 2 * (1 - alpha / 2) / draws)
    assert breaches / draws <= bound and passes / draws <= bound


def test_regression_fiellers_bounds_keep_their_precision_for_highly_correlated_arms() -> None:
    """Arm means correlated at 0.999999 (CUPED's can be), the control barely settled
    (``a / m_c**2 ~ 2e-7``): the textbook discriminant ``b**2 - a c`` cancelled and moved a
    bound by 8.8e-5 of the interval's width (independent review, 2026-12-05). Against the
    roots from an exact rational discriminant and a 60-digit square root."""
    v, corr, z = 1e-4, 0.999999, 2.0
    m_c = z * math.sqrt(v) * 1.0000001
    m_t = m_c * corr  # rho_hat at the regression coefficient, where Var(L) is least
    test = FixedHorizon(2 * stats.norm.sf(z))
    v_out = relative_verdict(ArmEstimate(m_t, v, 1000), ArmEstimate(m_c, v, 1000), margin=0.1,
                             direction="increase", test=test,
                             extra_variance=(0.0, -2 * corr * v, 0.0))  # fmt: skip
    assert v_out.control_sign == 1
    mt, mc, z2 = Fraction(m_t), Fraction(m_c), Fraction(test.z) ** 2
    k0, k1, k2 = Fraction(v), Fraction(-2 * corr * v), Fraction(v)
    a, b, c = mc * mc - z2 * k2, mt * mc + z2 * k1 / 2, mt * mt - z2 * k0

    def dec(x: Fraction) -> Decimal:
        return Decimal(x.numerator) / Decimal(x.denominator)

    with localcontext() as ctx:
        ctx.prec = 60
        half = dec(b * b - a * c).sqrt()
        lo, hi = float((dec(b) - half) / dec(a)) - 1, float((dec(b) + half) / dec(a)) - 1
    width = hi - lo
    assert abs(v_out.lower - lo) < 1e-8 * width and abs(v_out.upper - hi) < 1e-8 * width
