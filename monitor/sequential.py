"""Anytime-valid inference for the treatment-minus-control difference in means.

A ramp monitor looks at the data after every batch, indefinitely. A fixed-horizon test
(z-test, t-test) run at every look inflates the false-alarm rate far above ``alpha`` -- with
hundreds of looks most A/A experiments would eventually "breach". A *confidence sequence*
covers the true effect at all times simultaneously with probability ``1 - alpha``, so it may
be checked as often as we like and acted on whenever it excludes a value.

The implementation here is the asymptotic confidence sequence (AsympCS) of

    I. Waudby-Smith, D. Arbour, R. Sinha, E. H. Kennedy, A. Ramdas (2023),
    "Time-uniform central limit theory and asymptotic confidence sequences",
    Annals of Statistics (to appear); arXiv:2103.06476,

Theorem 2.2, which uses Robbins' normal-mixture boundary with the sample standard deviation
plugged in. It needs only the CLT (finite variance), not bounded or Gaussian data, which
suits unit-level metrics such as revenue. The guarantee is asymptotic, hence the
``min_units_per_variant`` floor in :mod:`monitor.config`.

:class:`SequentialTest` is the seam for a second implementation (the mixture SPRT of
Johari, Pekelis & Walsh 2017/2022, "Always valid inference", Operations Research).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol, overload

import numpy as np
from numpy.typing import NDArray

from monitor.moments import Moments

__all__ = [
    "AsymptoticCS",
    "DiffEstimate",
    "Interval",
    "SequentialTest",
    "asymptotic_cs_halfwidth",
    "check_alpha",
    "diff_in_means",
    "optimal_rho2",
]


@dataclass(frozen=True, slots=True)
class DiffEstimate:
    """Treatment mean minus control mean, and the (Welch) variance of that estimator.

    ``variance = s_t**2 / n_t + s_c**2 / n_c`` with ddof=1 sample variances; NaN when an arm
    has fewer than two units.
    """

    effect: float
    variance: float
    n_treatment: int
    n_control: int

    @property
    def t(self) -> int:
        """Total units, the "time" of the confidence sequence."""
        return self.n_treatment + self.n_control

    @property
    def std_error(self) -> float:
        return math.sqrt(self.variance) if self.variance >= 0 else math.nan


def diff_in_means(treatment: Moments, control: Moments) -> DiffEstimate:
    """Unpooled difference in means from each arm's sufficient statistics."""
    variance = (
        treatment.variance / treatment.n + control.variance / control.n
        if treatment.n >= 2 and control.n >= 2
        else math.nan
    )
    return DiffEstimate(treatment.mean - control.mean, variance, treatment.n, control.n)


@dataclass(frozen=True, slots=True)
class Interval:
    lower: float
    upper: float

    def contains(self, x: float) -> bool:
        """Closed interval membership; always False for a NaN bound."""
        return self.lower <= x <= self.upper


def optimal_rho2(alpha: float, tuning_units: int | float) -> float:
    """Mixture variance ``rho**2`` that makes the boundary tightest near ``t* = tuning_units``.

    Waudby-Smith et al. (2023), the closed-form approximate minimiser of the normal-mixture
    boundary at ``t*`` (via an asymptotic expansion of the Lambert W function):
    ``rho**2 = (-2 log(alpha) + log(-2 log(alpha) + 1)) / t*``. The minimum is flat, so
    the approximation costs well under 1% of width at ``t*``.
    """
    check_alpha(alpha)
    if not tuning_units > 0:
        raise ValueError(f"tuning_units must be positive, got {tuning_units}")
    two_log = -2.0 * math.log(alpha)
    return (two_log + math.log(two_log + 1.0)) / float(tuning_units)


@overload
def asymptotic_cs_halfwidth(
    variance_of_estimate: float, t: int | float, alpha: float, rho2: float
) -> float: ...


@overload
def asymptotic_cs_halfwidth(
    variance_of_estimate: NDArray[np.floating],
    t: int | float | NDArray[np.integer] | NDArray[np.floating],
    alpha: float,
    rho2: float,
) -> NDArray[np.float64]: ...


@overload
def asymptotic_cs_halfwidth(
    variance_of_estimate: float,
    t: NDArray[np.integer] | NDArray[np.floating],
    alpha: float,
    rho2: float,
) -> NDArray[np.float64]: ...


def asymptotic_cs_halfwidth(
    variance_of_estimate: float | NDArray[np.floating],
    t: int | float | NDArray[np.integer] | NDArray[np.floating],
    alpha: float,
    rho2: float,
) -> float | NDArray[np.float64]:
    """Half-width of the two-sided ``1 - alpha`` AsympCS (Waudby-Smith et al. 2023, Thm 2.2).

    For a mean of ``t`` observations with per-observation standard deviation ``sigma``::

        sigma * sqrt( 2 (t rho2 + 1) / (t**2 rho2) * log( sqrt(t rho2 + 1) / alpha ) )

    Here the caller passes the variance of the *estimate*; ``sigma**2 = t * variance`` (for a
    difference in means, ``t = n_t + n_c`` and the Welch variance). Vectorised over arrays;
    NaN where ``t <= 0`` or the variance is NaN/negative.
    """
    check_alpha(alpha)
    if not rho2 > 0:
        raise ValueError(f"rho2 must be positive, got {rho2}")
    if isinstance(variance_of_estimate, float | int) and isinstance(t, float | int):
        # a readout calls this per guardrail and segment row: numpy's 0-d arrays and
        # errstate cost ~10 us a call, about a fifth of build_readout under py-spy. The
        # same operations in the same order, numpy's log1p included, so the same bits
        # (tested against the array path)
        try:
            return _halfwidth_scalar(float(variance_of_estimate), float(t), alpha, rho2)
        except (ZeroDivisionError, OverflowError, ValueError):
            pass  # numpy's inf/nan semantics below
    v = np.asarray(variance_of_estimate, np.float64)
    tt = np.asarray(t, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        trho = tt * rho2
        # log(sqrt(t rho2 + 1) / alpha), in a form that stays finite for tiny alpha
        log_term = 0.5 * np.log1p(trho) - math.log(alpha)
        radius = 2.0 * (trho + 1.0) / (tt * trho) * log_term
        out = np.sqrt(tt * v) * np.sqrt(radius)
    out = np.where((tt > 0) & (v >= 0), out, np.nan)
    if out.ndim == 0:
        return float(out)
    return out


def _halfwidth_scalar(v: float, t: float, alpha: float, rho2: float) -> float:
    if not (t > 0 and v >= 0):
        return math.nan
    trho = t * rho2
    # numpy's log1p, not libm's: they differ in the last bit for ~9% of inputs in (0, 5)
    # (test_regression_scalar_halfwidth_uses_numpys_log1p); sqrt is exactly rounded in both
    log_term = 0.5 * float(np.log1p(trho)) - math.log(alpha)
    radius = 2.0 * (trho + 1.0) / (t * trho) * log_term
    return math.sqrt(t * v) * math.sqrt(radius)


class SequentialTest(Protocol):
    """An anytime-valid test of a :class:`DiffEstimate`: CS plus always-valid p-value.

    Both are valid simultaneously over all looks, so they may be recomputed after every batch.
    """

    @property
    def alpha(self) -> float: ...

    def interval(self, est: DiffEstimate) -> Interval: ...

    def p_value(self, est: DiffEstimate, null: float = 0.0) -> float: ...


@dataclass(frozen=True)
class AsymptoticCS:
    """Waudby-Smith et al. (2023) asymptotic confidence sequence, tuned at ``tuning_units``.

    ``rho2`` is fixed by ``(alpha, tuning_units)`` at construction: the boundary must not be
    re-tuned from the data, or time-uniform coverage is lost.
    """

    alpha: float
    tuning_units: int
    rho2: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rho2", optimal_rho2(self.alpha, self.tuning_units))

    def halfwidth(self, est: DiffEstimate) -> float:
        return asymptotic_cs_halfwidth(est.variance, est.t, self.alpha, self.rho2)

    def halfwidths(
        self, variance: NDArray[np.floating], t: NDArray[np.integer]
    ) -> NDArray[np.float64]:
        """:meth:`halfwidth` of many estimates at once, with the same bits per estimate."""
        return np.asarray(asymptotic_cs_halfwidth(variance, t, self.alpha, self.rho2))

    def interval(self, est: DiffEstimate) -> Interval:
        hw = self.halfwidth(est)
        return Interval(est.effect - hw, est.effect + hw)

    def p_value(self, est: DiffEstimate, null: float = 0.0) -> float:
        """Smallest level whose CS excludes ``null``, from inverting the boundary in ``alpha``.

        With ``rho2`` held fixed the normal-mixture boundary inverts in closed form::

            p = min(1, sqrt(t rho2 + 1) * exp(-(t**2 rho2 / (2 (t rho2 + 1))) * d**2 / (t V)))

        where ``d = effect - null``. ``rho2`` stays at the value tuned for the *configured*
        alpha (re-tuning per candidate level would make the sets non-nested), so
        ``p <= alpha`` exactly when :meth:`interval` excludes ``null``. Each ``p_t`` is
        anytime-valid; so is its running minimum over looks, should a caller keep one.
        Zero variance gives the limit: 0 if ``d != 0`` else 1.
        """
        d = est.effect - null
        t, v = est.t, est.variance
        if not (t > 0 and math.isfinite(d) and v >= 0):
            return math.nan
        if v == 0:
            return 0.0 if d != 0 else 1.0
        trho = t * self.rho2
        log_p = 0.5 * math.log1p(trho) - (t * trho / (2.0 * (trho + 1.0))) * d * d / (t * v)
        return math.exp(min(log_p, 0.0))


def check_alpha(alpha: float) -> None:
    """Reject a level outside (0, 1) with a message naming it."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
