"""Guardrail verdicts as plain data.

A guardrail tolerates an absolute regression of ``margin`` in its harmful direction. With
the anytime-valid confidence sequence ``[lower, upper]`` of the treatment-minus-control
effect (:mod:`monitor.sequential`):

* harmful ``increase``: **breach** iff ``lower > +margin``; **pass** iff ``upper < +margin``;
* harmful ``decrease``: **breach** iff ``upper < -margin``; **pass** iff ``lower > -margin``;
* otherwise the interval straddles the margin: **inconclusive**.

Every outcome, including "not enough data yet", is a :class:`GuardrailResult` with a reason
code -- never an exception -- so a stream processor can publish it as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from monitor.config import GuardrailConfig, HarmfulDirection
from monitor.moments import Moments
from monitor.sequential import AsymptoticCS, diff_in_means

__all__ = ["GuardrailResult", "Reason", "Verdict", "evaluate_guardrail"]

Verdict = Literal["breach", "pass", "inconclusive"]
Reason = Literal[
    "breach",
    "pass",
    "insufficient_units",
    "no_variance",
    "non_finite",
    "interval_straddles_margin",
]


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    """One guardrail, one treatment variant against control, at one point in time.

    ``effect``/``lower``/``upper`` are treatment minus control. They are NaN only for the
    reasons ``insufficient_units`` (interval not computed) and ``non_finite`` (the inputs
    overflowed or held NaN). ``p_value`` is the always-valid p-value for *no difference*
    (effect 0), shown for context; the verdict itself compares the interval with the margin.
    """

    guardrail: str
    metric: str
    variant: str
    verdict: Verdict
    reason: Reason
    effect: float
    lower: float
    upper: float
    margin: float
    harmful_direction: HarmfulDirection
    alpha: float
    p_value: float
    n_treatment: int
    n_control: int
    treatment_mean: float
    control_mean: float


def evaluate_guardrail(
    cfg: GuardrailConfig,
    variant: str,
    treatment: Moments,
    control: Moments,
    *,
    tuning_units: int,
    min_units_per_variant: int,
) -> GuardrailResult:
    """Verdict for ``variant`` (treatment) against control on one guardrail metric."""

    def result(
        verdict: Verdict, reason: Reason, effect: float, lower: float, upper: float, p: float
    ) -> GuardrailResult:
        return GuardrailResult(
            guardrail=cfg.id,
            metric=cfg.metric,
            variant=variant,
            verdict=verdict,
            reason=reason,
            effect=effect,
            lower=lower,
            upper=upper,
            margin=cfg.margin,
            harmful_direction=cfg.harmful_direction,
            alpha=cfg.alpha,
            p_value=p,
            n_treatment=treatment.n,
            n_control=control.n,
            treatment_mean=treatment.mean,
            control_mean=control.mean,
        )

    # the CS is only asymptotically valid: below the floor its coverage is not trusted
    if min(treatment.n, control.n) < max(min_units_per_variant, 2):
        effect = treatment.mean - control.mean
        return result("inconclusive", "insufficient_units", effect, math.nan, math.nan, math.nan)

    est = diff_in_means(treatment, control)
    if not (math.isfinite(est.effect) and math.isfinite(est.variance)):
        return result("inconclusive", "non_finite", est.effect, math.nan, math.nan, math.nan)

    test = AsymptoticCS(cfg.alpha, tuning_units)
    interval = test.interval(est)
    p = test.p_value(est)
    if est.variance == 0:
        # both arms constant: a zero-width "interval" says nothing about sampling noise
        return result("inconclusive", "no_variance", est.effect, interval.lower, interval.upper, p)

    if cfg.harmful_direction == "increase":
        breach, passed = interval.lower > cfg.margin, interval.upper < cfg.margin
    else:
        breach, passed = interval.upper < -cfg.margin, interval.lower > -cfg.margin
    if breach:
        return result("breach", "breach", est.effect, interval.lower, interval.upper, p)
    if passed:
        return result("pass", "pass", est.effect, interval.lower, interval.upper, p)
    return result(
        "inconclusive", "interval_straddles_margin", est.effect, interval.lower, interval.upper, p
    )
