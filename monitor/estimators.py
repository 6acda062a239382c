"""Treatment-minus-control estimates from co-moments: means, ratios, CUPED, stage pooling.

Every estimator returns per-arm means with the variance *of that mean*, so absolute and
relative differences and the stage combination treat all metric kinds alike.

* ``mean``: the unit-level mean; variance ``s^2 / n``.
* ``ratio``: ``sum(num) / sum(den)`` over units, e.g. errors per request. Randomisation is
  by unit, so a unit's requests are correlated; the variance comes from the delta method on
  per-unit sums (Deng, Knoblich & Lu 2018, "Applying the delta method in metric analytics:
  a practical guide with novel ideas", KDD, section 3):
  ``Var(R) ~ (s_n^2 - 2 R s_nd + R^2 s_d^2) / (n mu_d^2)``.
* ``cuped``: ``y - theta (x - mean(x))`` with a pre-exposure covariate ``x`` and ``theta =
  cov(y, x) / var(x)`` from the stage's pooled data (Deng, Xu, Kohavi & Walker 2013,
  "Improving the sensitivity of online controlled experiments by utilizing pre-experiment
  data", WSDM). All of it follows from ``sum x``, ``sum x^2`` and ``sum xy``, so it is exact
  and incremental, and the adjusted difference is an ordinary difference in means that the
  sequential tests take as is (the regression-adjusted route of Lindon, Ham, Tingley & Bojinov,
  "Anytime-valid linear models and regression adjusted causal inference", 2022). Both arms
  are centred on the pooled covariate mean, which cancels in the difference but correlates
  the arms' adjusted means: the linear statistics of a relative margin carry its term
  (``PairEstimate.extra_variance``).
* :func:`conservative`, for guardrail verdicts: **each arm's variance at least the pooled
  within-arm one**, what the null hypothesis of no difference implies for both arms. A
  rare binary metric in the small arm of a ramp (200 units at the 1% stage, an event rate
  of 0.5 to 2%) has 0 to 4 events, and its own variance estimate is often far below the
  truth: exactly 0 about a third of the time at 0.5%. The confidence sequence's width then
  came from the large arm alone (its "time" counts both arms' units), and A/A streams
  breached at rates of 0.37 (0.5%), 0.19 (1%) and 0.11 (2%) where alpha was 0.05 (a 1%/5%
  ramp, absolute margin 0, 1,000 streams each); replacing only a zero variance left 0.04,
  0.09 and 0.10; this rule, 0.001 to 0.003. It is the small-count failure of unpooled
  Wald intervals (Agresti & Caffo 2000, "Simple and effective confidence intervals for
  proportions and differences of proportions result from adding two successes and two
  failures", The American Statistician 54(4)), and the pooled variance is the
  two-sample test's under the null (Agresti, *Categorical Data Analysis*, 3rd ed. 2013,
  section 3.1.1). An interval is never narrower than the unpooled (Welch) one the
  confidence sequence is built on, so coverage does not get worse under any alternative;
  a harmed arm's larger variance stays its own. When both arms are constant the pooled
  within-arm variance is 0 and all units' variance (then only the arms' difference) is
  used: a total breakage, every treatment unit failing and no control unit, is a breach,
  not "no variance". Metric rows keep the Welch estimate, the notebook's and the usual
  readout's: on balanced, well-filled arms the two differ by about 1% (seed 000's CUPED
  run: se 0.013701 against 0.013831).
* :func:`combine_stages`: ramp stages change the treatment share, so pooling units across
  stages confounds the effect with any time trend (Simpson's paradox; Kohavi, Tang & Xu 2020,
  ch. 21). Each stage is estimated on its own and the stages are combined with weights
  fixed by their unit counts, which assumes only that the effect, not the baseline, is
  stable across stages.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from monitor.comoments import CoMomentCell
from monitor.relative import relative_diff
from monitor.sequential import DiffEstimate

__all__ = [
    "ArmEstimate",
    "MetricKind",
    "MetricSpec",
    "PairEstimate",
    "absolute_difference",
    "combine_stages",
    "conservative",
    "estimate_pair",
    "relative_difference",
]

MetricKind = Literal["mean", "ratio", "cuped"]

_EPS = sys.float_info.epsilon


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """What to estimate: ``columns`` are (y,) for mean, (num, den) for ratio, (y, x) for cuped."""

    name: str
    kind: MetricKind
    columns: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ArmEstimate:
    mean: float
    variance: float  # of the mean
    n: int


@dataclass(frozen=True, slots=True)
class PairEstimate:
    treatment: ArmEstimate
    control: ArmEstimate
    #: CUPED's theta (NaN for other kinds)
    theta: float = math.nan
    #: CUPED only: ``Var(m_t - k m_c)`` beyond ``v_t + k**2 v_c``, as the coefficients of
    #: ``(1, k, k**2)`` (see :func:`_cuped_extra`); 0 at ``k = 1``, a difference
    extra_variance: tuple[float, float, float] = (0.0, 0.0, 0.0)


def _mean_arm(cell: CoMomentCell, y: int) -> ArmEstimate:
    m = cell.moments(y)
    return ArmEstimate(m.mean, m.variance / m.n if m.n >= 2 else math.nan, m.n)


def _ratio_arm(cell: CoMomentCell, num: int, den: int) -> ArmEstimate:
    n = cell.n
    if n < 2 or cell.sum[den] == 0:
        return ArmEstimate(math.nan, math.nan, n)
    cov = cell.covariance
    ratio = float(cell.sum[num] / cell.sum[den])
    mu_d = float(cell.sum[den]) / n
    var = (cov[num, num] - 2 * ratio * cov[num, den] + ratio * ratio * cov[den, den]) / (
        n * mu_d * mu_d
    )
    return ArmEstimate(ratio, max(float(var), 0.0), n)


def _cuped_arms(t: CoMomentCell, c: CoMomentCell, y: int, x: int) -> PairEstimate:
    pooled = t + c
    if t.n < 2 or c.n < 2:
        return PairEstimate(_mean_arm(t, y), _mean_arm(c, y))
    pooled_cov = pooled.covariance
    var_x = pooled_cov[x, x]
    # theta = cov / var is noise over noise when x is constant up to rounding: its power
    # sums, added over n units, carry an error up to ~3 n eps sum(x^2) (recursive summation,
    # N. J. Higham 2002, "Accuracy and Stability of Numerical Algorithms", section 4.2),
    # far above the few ulps CoMomentCell.covariance clips. A constant 0.1 covariate showed
    # theta 128. Such a covariate carries no information: theta 0, the plain mean
    rounding = 3 * pooled.n * _EPS * float(pooled.gram[x, x]) / (pooled.n - 1)
    theta = float(pooled_cov[y, x] / var_x) if var_x > rounding else 0.0
    x_bar = float(pooled.sum[x]) / pooled.n

    def arm(cell: CoMomentCell) -> ArmEstimate:
        cov = cell.covariance
        mean = float(cell.sum[y] / cell.n - theta * (cell.sum[x] / cell.n - x_bar))
        var = cov[y, y] - 2 * theta * cov[y, x] + theta * theta * cov[x, x]
        return ArmEstimate(mean, max(float(var), 0.0) / cell.n, cell.n)

    return PairEstimate(arm(t), arm(c), theta, _cuped_extra(t, c, y, x, theta))


def _cuped_extra(
    t: CoMomentCell, c: CoMomentCell, y: int, x: int, theta: float
) -> tuple[float, float, float]:
    """What ``v_t + k**2 v_c`` leaves out of ``Var(a_t - k a_c)`` for CUPED's adjusted means.

    Both arms are centred on the pooled covariate mean ``x_bar = p_t x_t + p_c x_c``
    (``p = n / N``), which cancels in a difference (``k = 1``) but not in the linear
    statistics of a relative margin (:mod:`monitor.fieller`): with ``theta`` held fixed, as
    for the difference, ``a_t - k a_c = (y_t - g x_t) - (k y_c - g x_c)`` with
    ``g = theta (p_c + p_t k)``, whose variance is each arm's ``V_y - 2 g C + g**2 V_x`` (the
    variances and covariance of the arm's means). The excess over ``v_t + k**2 v_c`` is a
    quadratic in ``k``, returned as its coefficients of ``(1, k, k**2)``; it is 0 at
    ``k = 1``. Without it a relative CUPED guardrail's variance was 1.9x too small at a
    margin of 100% (covariate correlation 0.95), 1.03x at 10%.
    """
    n = t.n + c.n
    u, w = theta * c.n / n, theta * t.n / n  # g = u + w k, u + w = theta
    ct, cc = t.covariance, c.covariance
    vx_t, cxy_t = float(ct[x, x]) / t.n, float(ct[y, x]) / t.n
    vx_c, cxy_c = float(cc[x, x]) / c.n, float(cc[y, x]) / c.n
    e0 = 2 * w * cxy_t + (u * u - theta * theta) * vx_t + u * u * vx_c
    e1 = -2 * w * cxy_t + 2 * u * w * vx_t - 2 * u * cxy_c + 2 * u * w * vx_c
    e2 = w * w * vx_t + 2 * u * cxy_c + (w * w - theta * theta) * vx_c
    return e0, e1, e2


def estimate_pair(spec: MetricSpec, t: CoMomentCell, c: CoMomentCell) -> PairEstimate:
    """Per-arm estimates of one metric in one stage."""
    if spec.kind == "mean":
        return PairEstimate(_mean_arm(t, spec.columns[0]), _mean_arm(c, spec.columns[0]))
    if spec.kind == "ratio":
        num, den = spec.columns
        return PairEstimate(_ratio_arm(t, num, den), _ratio_arm(c, num, den))
    y, x = spec.columns
    return _cuped_arms(t, c, y, x)


def conservative(pair: PairEstimate) -> PairEstimate:
    """``pair`` with each arm's variance at least the pooled within-arm one (module
    docstring): what guardrail verdicts are judged on."""
    floor = _pooled_unit_variance(pair.treatment, pair.control)
    if not floor > 0:
        return pair
    return PairEstimate(_floored(pair.treatment, floor), _floored(pair.control, floor),
                        pair.theta, pair.extra_variance)  # fmt: skip


def _pooled_unit_variance(t: ArmEstimate, c: ArmEstimate) -> float:
    """The per-unit variance both arms share under the null: the pooled within-arm one; if
    both arms are constant, that of all units together (then only the arms' difference).
    NaN when an arm has no variance estimate."""
    n = t.n + c.n
    within = ((t.n - 1) * t.variance * t.n + (c.n - 1) * c.variance * c.n) / (n - 2)
    if within != 0:
        return within
    return t.n * c.n * (t.mean - c.mean) ** 2 / (n * (n - 1))


def _floored(arm: ArmEstimate, per_unit: float) -> ArmEstimate:
    """``arm`` with the variance of its mean at least ``per_unit / n``."""
    at_least = per_unit / arm.n
    return ArmEstimate(arm.mean, at_least, arm.n) if arm.variance < at_least else arm


def absolute_difference(pair: PairEstimate) -> DiffEstimate:
    t, c = pair.treatment, pair.control
    return DiffEstimate(t.mean - c.mean, t.variance + c.variance, t.n, c.n)


def relative_difference(pair: PairEstimate) -> DiffEstimate:
    """``(mean_t - mean_c) / |mean_c|`` (``mean_t / mean_c - 1`` for a positive control mean)
    with its delta-method variance; its sign is that of ``mean_t - mean_c`` even when the
    control mean is negative (see :mod:`monitor.relative`)."""
    t, c = pair.treatment, pair.control
    est = relative_diff(t.mean, t.variance * t.n, t.n, c.mean, c.variance * c.n, c.n)
    e0, e1, e2 = pair.extra_variance
    if (e0, e1, e2) == (0.0, 0.0, 0.0) or c.mean == 0:
        return est
    # the delta method's variance is Var(m_t - rho m_c) / m_c**2 at rho = m_t / m_c: CUPED's
    # correlated arms add their term there
    rho = t.mean / c.mean
    extra = (e0 + e1 * rho + e2 * rho * rho) / (c.mean * c.mean)
    return DiffEstimate(est.effect, est.variance + extra, est.n_treatment, est.n_control)


def combine_stages(estimates: Sequence[DiffEstimate]) -> DiffEstimate | None:
    """Combine per-stage estimates with weights ``1 / (1/n_t + 1/n_c)`` fixed by unit counts.

    These are the inverse-variance weights when the per-unit variance is the same in every
    stage and arm, but they do not look at the outcomes. Weights from *estimated* variances
    do, and for a rare binary metric they are biased: a small stage whose treatment arm had
    no events yet estimates a near-zero variance and drowns out the big stages that show the
    harm (the Mantel-Haenszel argument for design-based weights; Greenland & Robins 1985,
    "Estimation of a common effect parameter from sparse follow-up data", Biometrics). The
    variance of the weighted mean is ``sum(w_s^2 v_s) / (sum w_s)^2``.

    Relative estimates (:func:`relative_difference`) are on one scale in every stage, the
    difference as a fraction of ``|control mean|`` with the sign of the difference, so a stage
    whose control mean is negative is combined with the others like any stage.

    Stages whose estimate or variance is not finite (or negative) are left out (a stage below
    the floor of units should be left out by the caller). ``None`` when nothing is left. Unit
    counts add up, so ``t`` of the combined estimate is the total number of units behind it,
    the clock of the sequential tests.
    """
    usable = [
        e for e in estimates if math.isfinite(e.effect) and math.isfinite(e.variance)
        and e.variance >= 0 and e.n_treatment > 0 and e.n_control > 0
    ]  # fmt: skip
    if not usable:
        return None
    if len(usable) == 1:
        return usable[0]
    weights = [1.0 / (1.0 / e.n_treatment + 1.0 / e.n_control) for e in usable]
    total = math.fsum(weights)
    effect = math.fsum(w * e.effect for w, e in zip(weights, usable, strict=True)) / total
    variance = math.fsum(w * w * e.variance for w, e in zip(weights, usable, strict=True))
    return DiffEstimate(
        effect,
        variance / (total * total),
        sum(e.n_treatment for e in usable),
        sum(e.n_control for e in usable),
    )
