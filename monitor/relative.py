"""Relative (percent) treatment effects with a delta-method variance.

After

    A. Deng, U. Knoblich, J. Lu (2018), "Applying the delta method in metric analytics: a
    practical guide with novel ideas", KDD, section on percent change.

The relative effect is the treatment-minus-control difference as a fraction of the control
mean's magnitude::

    rel = (m_t - m_c) / |m_c|

which is Deng et al.'s percent change ``m_t / m_c - 1`` when ``m_c > 0``. For ``m_c < 0``
(net revenue after refunds, a profit that can be a loss) ``m_t / m_c - 1`` has the wrong sign:
-10 -> -20 is a fall of the metric, yet ``-20 / -10 - 1 = +1``. A relative margin is compared
with the effect in the metric's own direction (:mod:`monitor.guardrails`), and so are the
stage combination and every readout row, so ``rel`` is defined to have the sign of
``m_t - m_c`` whatever the sign of ``m_c``: -10 -> -20 is ``-1`` (-100% of control's
magnitude), -10 -> -5 is ``+0.5``.

With independent arms, sample means ``m_t, m_c``, per-unit (ddof=1) variances ``s2_t, s2_c``
and sizes ``n_t, n_c``: for ``m_c != 0`` ``rel = sign(m_c) (m_t / m_c - 1)``, whose gradient
in ``(m_t, m_c)`` is ``sign(m_c) (1 / m_c, -m_t / m_c**2)``. The sign squares away, so to
first order, as in Deng et al.::

    Var(rel) = s2_t / (n_t m_c**2) + m_t**2 s2_c / (n_c m_c**4)

(no covariance term: the arms are independent). The interval ``rel -/+ halfwidth`` is that
of ``m_t / m_c - 1`` negated, lower and upper swapped, when ``m_c < 0``.

The result is a :class:`~monitor.sequential.DiffEstimate` whose ``effect`` is ``rel``, so
any :class:`~monitor.sequential.SequentialTest` applies to it unchanged; for
:class:`~monitor.sequential.AsymptoticCS` the implied "per-unit variance" ``t * variance`` is
that of the linearised influence function. Its time-uniform coverage then rests on the same
CLT argument plus the delta method, which the tests check by simulation rather than by theorem.
The approximation needs the control mean well away from zero relative to its standard error
(then its sign is also settled; near zero a relative effect means little either way).
"""

from __future__ import annotations

import math

from monitor.sequential import DiffEstimate

__all__ = ["relative_diff"]


def relative_diff(
    mean_t: float, var_t: float, n_t: int, mean_c: float, var_c: float, n_c: int
) -> DiffEstimate:
    """Relative change ``(mean_t - mean_c) / |mean_c|`` (0.05 = +5%) and its delta-method
    variance.

    Equal to ``mean_t / mean_c - 1`` (computed so, bit for bit) when ``mean_c > 0``; its sign
    is always that of ``mean_t - mean_c``, so a negative control mean does not turn a fall of
    the metric into a positive effect (see the module docstring). ``var_t`` and ``var_c`` are
    per-unit sample variances (as :attr:`Moments.variance`), not variances of the means. The
    effect is NaN when ``mean_c == 0``; the variance is NaN then and also when an arm has fewer
    than two units (mirroring :func:`~monitor.sequential.diff_in_means`, which keeps the
    point estimate).
    """
    if mean_c == 0:
        return DiffEstimate(math.nan, math.nan, n_t, n_c)
    ratio = mean_t / mean_c
    # sign(m_c) (m_t / m_c - 1) == (m_t - m_c) / |m_c|, and for m_c > 0 exactly the old ratio - 1
    effect = 1.0 - ratio if mean_c < 0 else ratio - 1.0
    if n_t < 2 or n_c < 2:
        return DiffEstimate(effect, math.nan, n_t, n_c)
    # (1/m_c)^2 Var(m_t) + (m_t/m_c^2)^2 Var(m_c), via the ratio so that no m_c**4 is formed
    # (it under/overflows for |m_c| beyond about 1e+-77, long before the variance does); the
    # gradient's factor sign(m_c) squares away
    variance = (var_t / n_t + ratio * ratio * var_c / n_c) / (mean_c * mean_c)
    return DiffEstimate(effect, variance, n_t, n_c)
