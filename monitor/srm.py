"""Anytime-valid sequential sample-ratio-mismatch (SRM) test.

An SRM -- the observed split of exposed units across variants drifting from the configured
allocation -- means assignment or logging is broken and every metric comparison is suspect.
A ramp monitor re-checks the split after every batch, forever, so a fixed-horizon chi-square
test is unusable: re-run at every look it almost surely alarms eventually on a healthy
experiment. This module implements the sequential multinomial test of

    M. Lindon, A. Malek (2022), "Anytime-valid inference for multinomial count data",
    NeurIPS 2022; arXiv:2011.03567,

a Bayes factor of a Dirichlet-multinomial alternative against the null allocation ``p0``::

    BF_n = [ Gamma(sum a) / Gamma(sum a + n) * prod_i Gamma(a_i + x_i) / Gamma(a_i) ]
           / prod_i p0_i ** x_i,          a = concentration * p0,  n = sum_i x_i.

Under H0 (units assigned i.i.d. with probabilities ``p0``) ``BF_n`` is a nonnegative
martingale with mean 1, so by Ville's inequality ``P(exists n: BF_n >= 1/alpha) <= alpha``:
rejecting the first time ``BF_n >= 1/alpha`` controls the type I error at ``alpha`` however
often, and whenever, the counts are inspected. ``min(1, 1/BF_n)`` is the anytime-valid
p-value; a caller may keep its running minimum over looks (as savvi does) without losing
validity. Everything is computed in log space (``gammaln``), so counts in the millions or
billions neither overflow nor underflow.

Prior. The Dirichlet prior is centred on the null, ``a = k * p0``, with concentration
``k = 100`` by default: the default of the reference implementation in the ``savvi`` package
(``savvi.multinomial.Multinomial(alpha, theta_0, k=100)``, "Sample ratio mismatch test from
Lindon & Malek 2022"), so that with defaults the two agree to rounding. Centring on ``p0``
puts the alternative's mass on small imbalances, which is what SRM bugs look like; ``k`` sets
how small: the prior standard deviation of cell ``i`` is ``sqrt(p0_i (1 - p0_i) / (k + 1))``,
about 5 percentage points for a 50/50 split at ``k = 100``. Larger ``k`` detects tiny
imbalances sooner and gross ones later; any fixed ``k`` keeps the type I guarantee, but ``k``
must be chosen before seeing the data, never tuned on it.

Cells with ``p0_i = 0`` (e.g. no control left at a 100% stage) carry no prior mass: an empty
one is dropped, and a unit in one is impossible under H0, so it is an immediate mismatch
(``log BF = +inf``, p-value 0).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import gammaln, xlogy

from monitor.sequential import check_alpha

__all__ = [
    "DEFAULT_CONCENTRATION",
    "SRMReason",
    "SRMResult",
    "expected_allocation",
    "log_bayes_factor",
    "log_bayes_factors",
    "srm_test",
]

DEFAULT_CONCENTRATION = 100.0
"""Dirichlet prior concentration ``k`` in ``a = k * p0``; savvi 0.3.1's default."""

_SUM_TOLERANCE = 1e-9

SRMReason = Literal["ok", "mismatch", "too_few_units"]


@dataclass(frozen=True, slots=True)
class SRMResult:
    """One look of the SRM test.

    ``p_value`` is valid at this look whatever happened at earlier ones; ``mismatch`` is
    ``p_value <= alpha``, forced False while the total is below ``min_units`` (reason
    ``"too_few_units"``) unless a unit landed in a zero-probability variant.
    """

    counts: tuple[int, ...]
    expected: tuple[float, ...]
    log_bayes_factor: float
    p_value: float
    alpha: float
    mismatch: bool
    reason: SRMReason


def _counts_array(counts: ArrayLike) -> NDArray[np.float64]:
    x = np.asarray(counts)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"counts must have at least one variant, got shape {x.shape}")
    if x.dtype.kind == "f":
        if not np.all(np.isfinite(x)) or not np.all(x == np.floor(x)):
            raise ValueError("counts must be whole numbers")
    elif x.dtype.kind not in "iu":
        raise ValueError(f"counts must be integers, got dtype {x.dtype}")
    if np.any(x < 0):
        raise ValueError(f"counts must be non-negative, got {x.min()}")
    # float64 holds every count below 2**53 exactly, and gammaln needs floats anyway
    return x.astype(np.float64)


def _probabilities(expected: ArrayLike, n_variants: int) -> NDArray[np.float64]:
    p = np.asarray(expected, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"expected must be one-dimensional, got shape {p.shape}")
    if p.size != n_variants:
        raise ValueError(
            f"length mismatch: counts has {n_variants} variants, expected has {p.size}"
        )
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError(f"expected probabilities must be finite and non-negative: {p}")
    # fsum is exactly rounded, hence independent of variant order
    total = math.fsum(p.tolist())
    if abs(total - 1.0) > _SUM_TOLERANCE:
        raise ValueError(
            f"expected probabilities must sum to 1 (tolerance {_SUM_TOLERANCE:g}), "
            f"they sum to {total!r}"
        )
    # renormalise so that the null is an exact probability vector and BF an exact martingale
    return p / total


def _concentration(concentration: float | None) -> float:
    k = DEFAULT_CONCENTRATION if concentration is None else float(concentration)
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"concentration must be positive and finite, got {concentration}")
    return k


def _log_bf(x: NDArray[np.float64], p: NDArray[np.float64], k: float) -> NDArray[np.float64]:
    support = p > 0
    a = k * p[support]
    xs = x[..., support]
    # difference per cell first: the gammaln terms are ~n log n, their differences much
    # smaller, so this loses fewer digits than four big sums subtracted at the end
    per_cell = gammaln(a + xs) - gammaln(a) - xlogy(xs, p[support])
    a_total = a.sum()
    log_bf = per_cell.sum(axis=-1) - (gammaln(a_total + xs.sum(axis=-1)) - gammaln(a_total))
    impossible = np.any(x[..., ~support] > 0, axis=-1)
    return np.where(impossible, np.inf, log_bf)


def log_bayes_factors(
    counts: ArrayLike, expected: ArrayLike, concentration: float | None = None
) -> NDArray[np.float64]:
    """Log Bayes factors for a stack of count vectors, shape ``(..., n_variants)`` -> ``(...)``.

    Vectorised form of :func:`log_bayes_factor`, e.g. for the cumulative counts of many
    streams at many looks at once.
    """
    x = _counts_array(counts)
    return _log_bf(x, _probabilities(expected, x.shape[-1]), _concentration(concentration))


def log_bayes_factor(
    counts: Sequence[int] | NDArray[np.integer],
    expected: Sequence[float] | NDArray[np.floating],
    concentration: float | None = None,
) -> float:
    """``log BF_n`` of Lindon & Malek (2022) for one vector of per-variant unit counts.

    ``+inf`` when a unit sits in a variant whose expected probability is 0.
    """
    x = _counts_array(counts)
    if x.ndim != 1:
        raise ValueError(f"counts must be one-dimensional, got shape {x.shape}")
    return float(log_bayes_factors(x, expected, concentration))


def srm_test(
    counts: Sequence[int] | NDArray[np.integer],
    expected: Sequence[float] | NDArray[np.floating],
    *,
    alpha: float = 0.001,
    concentration: float | None = None,
    min_units: int = 0,
) -> SRMResult:
    """Anytime-valid SRM test of observed ``counts`` against allocation ``expected``.

    ``alpha`` defaults to 0.001 because an SRM alarm halts a ramp: false alarms are costly and
    real SRMs are usually large. ``min_units`` suppresses a statistical verdict on tiny totals;
    a unit in a zero-probability variant still reports a mismatch, since that is proof of a
    bug rather than evidence.
    """
    check_alpha(alpha)
    if min_units < 0:
        raise ValueError(f"min_units must be non-negative, got {min_units}")
    x = _counts_array(counts)
    if x.ndim != 1:
        raise ValueError(f"counts must be one-dimensional, got shape {x.shape}")
    p = _probabilities(expected, x.size)
    log_bf = float(_log_bf(x, p, _concentration(concentration)))
    # max() first: exp of a large positive -log_bf would overflow, and p is capped at 1 anyway
    p_value = math.exp(-max(log_bf, 0.0))
    reject = p_value <= alpha
    reason: SRMReason
    if x.sum() < min_units and not math.isinf(log_bf):
        reason, mismatch = "too_few_units", False
    else:
        reason, mismatch = ("mismatch", True) if reject else ("ok", False)
    return SRMResult(
        counts=tuple(int(c) for c in x),
        expected=tuple(float(q) for q in p),
        log_bayes_factor=log_bf,
        p_value=p_value,
        alpha=alpha,
        mismatch=mismatch,
        reason=reason,
    )


def expected_allocation(
    n_variants: int, treatment_percent: float, control_index: int = 0
) -> tuple[float, ...]:
    """Allocation probabilities at a ramp stage with ``treatment_percent`` % in treatment.

    The control gets ``1 - treatment_percent / 100`` and the ``n_variants - 1`` treatments
    share the rest equally; at 100% the control's probability is 0.
    """
    if n_variants < 2:
        raise ValueError(f"n_variants must be at least 2 (control + treatment), got {n_variants}")
    if not 0.0 <= treatment_percent <= 100.0:
        raise ValueError(f"treatment_percent must be in [0, 100], got {treatment_percent}")
    if not 0 <= control_index < n_variants:
        raise ValueError(f"control_index must be in [0, {n_variants}), got {control_index}")
    treated = treatment_percent / 100.0
    each = treated / (n_variants - 1)
    return tuple(1.0 - treated if i == control_index else each for i in range(n_variants))
