"""Relative (percent) treatment effects with a delta-method variance.

After

    A. Deng, U. Knoblich, J. Lu (2018), "Applying the delta method in metric analytics: a
    practical guide with novel ideas", KDD, section on percent change.

With independent arms, sample means ``m_t, m_c``, per-unit (ddof=1) variances ``s2_t, s2_c``
and sizes ``n_t, n_c``, the relative change ``rel = m_t / m_c - 1`` has gradient
``(1 / m_c, -m_t / m_c**2)`` in ``(m_t, m_c)``, so to first order::

    Var(rel) = s2_t / (n_t m_c**2) + m_t**2 s2_c / (n_c m_c**4)

(no covariance term: the arms are independent). The result is a
:class:`~monitor.sequential.DiffEstimate` whose ``effect`` is the relative change, so any
:class:`~monitor.sequential.SequentialTest` applies to it unchanged; for
:class:`~monitor.sequential.AsymptoticCS` the implied "per-unit variance" ``t * variance`` is
that of the linearised influence function. Its time-uniform coverage then rests on the same
CLT argument plus the delta method, which the tests check by simulation rather than by theorem.
The approximation needs the control mean well away from zero relative to its standard error.
"""

from __future__ import annotations

import math

from monitor.sequential import DiffEstimate

__all__ = ["relative_diff"]


def relative_diff(
    mean_t: float, var_t: float, n_t: int, mean_c: float, var_c: float, n_c: int
) -> DiffEstimate:
    """Relative change ``mean_t / mean_c - 1`` (0.05 = +5%) and its delta-method variance.

    ``var_t`` and ``var_c`` are per-unit sample variances (as :attr:`Moments.variance`), not
    variances of the means. The effect is NaN when ``mean_c == 0``; the variance is NaN then
    and also when an arm has fewer than two units (mirroring
    :func:`~monitor.sequential.diff_in_means`, which keeps the point estimate). Negative means
    are allowed; with a negative control mean, ``rel > 0`` means the treatment mean is further
    below zero.
    """
    if mean_c == 0:
        return DiffEstimate(math.nan, math.nan, n_t, n_c)
    effect = mean_t / mean_c - 1.0
    if n_t < 2 or n_c < 2:
        return DiffEstimate(effect, math.nan, n_t, n_c)
    ratio = mean_t / mean_c
    # (1/m_c)^2 Var(m_t) + (m_t/m_c^2)^2 Var(m_c), via the ratio so that no m_c**4 is formed
    # (it under/overflows for |m_c| beyond about 1e+-77, long before the variance does)
    variance = (var_t / n_t + ratio * ratio * var_c / n_c) / (mean_c * mean_c)
    return DiffEstimate(effect, variance, n_t, n_c)
