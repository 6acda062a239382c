"""The normal-mixture sequential probability ratio test (mSPRT) for a difference in means.

A second :class:`~monitor.sequential.SequentialTest`, after

    R. Johari, P. Koomen, L. Pekelis, D. Walsh (2017), "Peeking at A/B tests: why it matters,
    and what to do about it", KDD, and
    R. Johari, L. Pekelis, D. Walsh (2022), "Always valid inference: continuous monitoring of
    A/B tests", Operations Research 70(3).

For an asymptotically normal estimate ``d`` with variance ``v`` and a ``N(null, tau2)`` mixture
over the effect, the mixture likelihood ratio against ``H0: effect = null`` is::

    Lambda = sqrt(v / (v + tau2)) * exp(tau2 * (d - null)**2 / (2 v (v + tau2)))

Under ``H0`` it is a nonnegative martingale with mean one, so by Ville's inequality it ever
reaches ``1/alpha`` with probability at most ``alpha``: rejecting the first time
``Lambda >= 1/alpha`` is valid under continuous monitoring. ``p = min(1, 1/Lambda)`` is the
always-valid p-value and the nulls not rejected form the confidence sequence ``d +- h``::

    h**2 = v (v + tau2) / tau2 * (2 log(1/alpha) + log((v + tau2) / v))

With two arms of ``n`` units each and known per-unit variance ``sigma**2`` (``v = 2 sigma**2/n``)
this is the papers' two-sample statistic; the tests check the transcription.

Relation to :class:`~monitor.sequential.AsymptoticCS`: writing ``sigma_hat**2 = t v`` for the
per-unit variance at ``t`` total units, the AsympCS half-width of Waudby-Smith et al. (2023) is
exactly ``h`` with ``tau2 = rho2 * sigma_hat**2``. AsympCS is therefore the mSPRT with a
*data-scaled* mixture (fixed in standard-deviation units), whereas :class:`MixtureSPRT` fixes
``tau2`` in effect units before the data. The two coincide whenever ``sigma_hat`` is constant,
and :func:`mixture_tau2` picks the same tuning as :func:`~monitor.sequential.optimal_rho2`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import overload

import numpy as np
from numpy.typing import NDArray

from monitor.sequential import DiffEstimate, Interval, check_alpha

__all__ = ["MixtureSPRT", "mixture_tau2", "msprt_halfwidth"]


def mixture_tau2(
    alpha: float, expected_units: int | float, sd: float, treatment_share: float = 0.5
) -> float:
    """Mixing variance that makes the confidence sequence tightest at ``expected_units``.

    At ``expected_units`` total units split ``treatment_share : 1 - treatment_share`` with
    per-unit standard deviation ``sd`` in both arms, the estimate's variance is
    ``v* = sd**2 / (N share) + sd**2 / (N (1 - share))``. With ``r = tau2 / v`` and
    ``L = 2 log(1/alpha)`` the half-width satisfies ``h**2 / v = (1 + r) / r * (L + log(1 + r))``,
    whose derivative in ``r`` vanishes where ``r = L + log(1 + r)`` (exactly
    ``r = -W_{-1}(-exp(-(L + 1))) - 1``, Lambert W). One fixed-point step from ``r = L`` gives
    ``r* = L + log(L + 1)``, the expansion Waudby-Smith et al. (2023) use for ``optimal_rho2``;
    the minimum is flat, so it costs well under 1% of width. Returns ``tau2 = r* v*``, which
    equals ``optimal_rho2(alpha, N) * N * v*``: the AsympCS tuning in effect units.

    ``tau2`` must be fixed before the data (here from a planned sample size and a prior guess
    of ``sd``); re-tuning it from the running estimate voids the always-valid guarantee.
    """
    check_alpha(alpha)
    if not expected_units > 0:
        raise ValueError(f"expected_units must be positive, got {expected_units}")
    if not (sd > 0 and math.isfinite(sd)):
        raise ValueError(f"sd must be positive and finite, got {sd}")
    if not 0 < treatment_share < 1:
        raise ValueError(f"treatment_share must be in (0, 1), got {treatment_share}")
    n = float(expected_units)
    v_star = sd * sd / (n * treatment_share) + sd * sd / (n * (1.0 - treatment_share))
    two_log = -2.0 * math.log(alpha)
    return (two_log + math.log(two_log + 1.0)) * v_star


@overload
def msprt_halfwidth(variance_of_estimate: float, alpha: float, tau2: float) -> float: ...


@overload
def msprt_halfwidth(
    variance_of_estimate: NDArray[np.floating], alpha: float, tau2: float
) -> NDArray[np.float64]: ...


def msprt_halfwidth(
    variance_of_estimate: float | NDArray[np.floating], alpha: float, tau2: float
) -> float | NDArray[np.float64]:
    """Half-width of the mSPRT confidence sequence (Johari, Pekelis & Walsh 2022)::

        sqrt( v (v + tau2) / tau2 * (2 log(1/alpha) + log((v + tau2) / v)) )

    the distance from the estimate at which ``Lambda`` reaches ``1/alpha``. Vectorised over
    ``v``; 0 for ``v == 0`` (the limit), NaN for NaN or negative ``v``.
    """
    check_alpha(alpha)
    _check_tau2(tau2)
    v = np.asarray(variance_of_estimate, np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # log1p(tau2/v) rather than log((v+tau2)/v): accurate when v >> tau2 (early looks)
        radius = (v + v * v / tau2) * (-2.0 * math.log(alpha) + np.log1p(tau2 / v))
        out = np.sqrt(radius)
    # v -> 0 gives 0 * inf above; the limit v log(1/v) -> 0 is the right answer
    out = np.where(v > 0, out, np.where(v == 0, 0.0, np.nan))
    if out.ndim == 0:
        return float(out)
    return out


@dataclass(frozen=True)
class MixtureSPRT:
    """Johari et al. (2017, 2022) normal-mixture SPRT with a ``N(null, tau2)`` mixture.

    Implements :class:`~monitor.sequential.SequentialTest`. ``tau2`` is in squared effect
    units (squared relative units for a relative :class:`DiffEstimate`) and, like
    ``AsymptoticCS.rho2``, must be fixed before the data; see :func:`mixture_tau2`.
    """

    alpha: float
    tau2: float

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        _check_tau2(self.tau2)

    def halfwidth(self, est: DiffEstimate) -> float:
        return msprt_halfwidth(est.variance, self.alpha, self.tau2)

    def interval(self, est: DiffEstimate) -> Interval:
        hw = self.halfwidth(est)
        return Interval(est.effect - hw, est.effect + hw)

    def log_likelihood_ratio(self, est: DiffEstimate, null: float = 0.0) -> float:
        """``log Lambda`` for ``H0: effect = null``; logs keep it finite far from the null.

        Zero variance gives the limits: ``+inf`` if the estimate differs from the null, else
        ``-inf``. NaN when the effect or variance is NaN or the variance is negative.
        """
        d = est.effect - null
        v = est.variance
        if not (math.isfinite(d) and v >= 0):
            return math.nan
        if v == 0:
            return math.inf if d != 0 else -math.inf
        return -0.5 * math.log1p(self.tau2 / v) + self.tau2 * d * d / (2.0 * v * (v + self.tau2))

    def p_value(self, est: DiffEstimate, null: float = 0.0) -> float:
        """Always-valid p-value ``min(1, 1/Lambda)`` at this look.

        ``tau2`` does not depend on the level, so the rejection regions are nested and
        ``p <= alpha`` exactly when :meth:`interval` excludes ``null`` (up to rounding at the
        boundary itself). Johari et al. report the running minimum over looks,
        ``p_n = min(p_{n-1}, 1/Lambda_n)``; each ``p_n`` here is already valid, so a caller
        may keep that minimum if it wants a monotone p-value.
        """
        llr = self.log_likelihood_ratio(est, null)
        if math.isnan(llr):
            return math.nan
        return math.exp(-max(llr, 0.0))


def _check_tau2(tau2: float) -> None:
    if not (tau2 > 0 and math.isfinite(tau2)):
        raise ValueError(f"tau2 must be positive and finite, got {tau2}")
