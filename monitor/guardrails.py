"""Guardrail verdicts as plain data.

A guardrail tolerates a regression of ``margin`` in its harmful direction (absolute, or
relative to control). With the anytime-valid confidence sequence ``[lower, upper]`` of the
treatment-minus-control effect (:mod:`monitor.sequential`, :mod:`monitor.msprt`, or
:mod:`monitor.quantiles` for a quantile):

* harmful ``increase``: **breach** iff ``lower > +margin``; **pass** iff ``upper < +margin``;
* harmful ``decrease``: **breach** iff ``upper < -margin``; **pass** iff ``lower > -margin``;
* otherwise the interval straddles the margin: **inconclusive**.

A relative margin on ``(mean_t - mean_c) / |mean_c|`` is tested at the margin on linear
statistics of the means instead (:mod:`monitor.fieller`), whose reported interval agrees with
these rules for the control mean's settled sign.

Every outcome, including "not enough data yet", is a :class:`GuardrailResult` with a reason
code -- never an exception -- so a stream processor can publish it as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from monitor.config import GuardrailConfig, HarmfulDirection, MarginKind, Statistic
from monitor.moments import Moments
from monitor.sequential import AsymptoticCS, DiffEstimate, Interval, SequentialTest, diff_in_means

__all__ = [
    "GuardrailResult",
    "Reason",
    "Verdict",
    "evaluate_guardrail",
    "guardrail_result",
    "judge",
    "verdict_for",
]

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
    overflowed or held NaN), and for a relative guardrail whose control mean's sign is not
    settled (:mod:`monitor.fieller`: the bounds are NaN; at a control mean of 0, method
    ``zero_control_at_margin``, the effect is infinite too). ``p_value`` is the
    always-valid p-value for *no difference* (effect 0), shown for context; the verdict
    itself compares the interval with the margin.
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
    statistic: Statistic = "mean"
    margin_kind: MarginKind = "absolute"
    #: the sequential interval used: "asymptotic_cs", "msprt", "quantile_cs" or "fixed_horizon"
    method: str = "asymptotic_cs"


def verdict_for(
    direction: HarmfulDirection, margin: float, interval: Interval
) -> tuple[Verdict, Reason]:
    """Compare an interval of the effect with the margin on the harmful side."""
    if direction == "increase":
        breach, passed = interval.lower > margin, interval.upper < margin
    else:
        breach, passed = interval.upper < -margin, interval.lower > -margin
    if breach:
        return "breach", "breach"
    if passed:
        return "pass", "pass"
    return "inconclusive", "interval_straddles_margin"


def guardrail_result(
    cfg: GuardrailConfig,
    variant: str,
    verdict: Verdict,
    reason: Reason,
    interval: tuple[float, float, float],
    *,
    alpha: float,
    p_value: float,
    n_treatment: int,
    n_control: int,
    treatment_mean: float,
    control_mean: float,
    method: str,
) -> GuardrailResult:
    """A result with the guardrail's configured fields filled in; ``interval`` is
    ``(effect, lower, upper)``."""
    effect, lower, upper = interval
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
        alpha=alpha,
        p_value=p_value,
        n_treatment=n_treatment,
        n_control=n_control,
        treatment_mean=treatment_mean,
        control_mean=control_mean,
        statistic=cfg.statistic,
        margin_kind=cfg.margin_kind,
        method=method,
    )


def judge(
    cfg: GuardrailConfig,
    variant: str,
    est: DiffEstimate | None,
    test: SequentialTest,
    *,
    treatment_mean: float,
    control_mean: float,
    n_treatment: int,
    n_control: int,
    method: str,
) -> GuardrailResult:
    """Verdict from an estimate (``None``: no stage has enough units yet) and a test."""

    def result(
        verdict: Verdict, reason: Reason, effect: float, lower: float, upper: float, p: float
    ) -> GuardrailResult:
        return guardrail_result(
            cfg, variant, verdict, reason, (effect, lower, upper), alpha=test.alpha, p_value=p,
            n_treatment=n_treatment, n_control=n_control, treatment_mean=treatment_mean,
            control_mean=control_mean, method=method,
        )  # fmt: skip

    if est is None:
        return result("inconclusive", "insufficient_units", math.nan, math.nan, math.nan, math.nan)
    if not (math.isfinite(est.effect) and math.isfinite(est.variance)):
        return result("inconclusive", "non_finite", est.effect, math.nan, math.nan, math.nan)
    interval = test.interval(est)
    p = test.p_value(est)
    if est.variance == 0:
        # both arms constant: a zero-width "interval" says nothing about sampling noise
        return result("inconclusive", "no_variance", est.effect, interval.lower, interval.upper, p)
    verdict, reason = verdict_for(cfg.harmful_direction, cfg.margin, interval)
    return result(verdict, reason, est.effect, interval.lower, interval.upper, p)


def evaluate_guardrail(
    cfg: GuardrailConfig,
    variant: str,
    treatment: Moments,
    control: Moments,
    *,
    tuning_units: int,
    min_units_per_variant: int,
    alpha: float = 0.05,
) -> GuardrailResult:
    """Verdict for ``variant`` against control on an absolute mean guardrail, one stage,
    with the asymptotic confidence sequence at level ``alpha``."""
    # the CS is only asymptotically valid: below the floor its coverage is not trusted
    enough = min(treatment.n, control.n) >= max(min_units_per_variant, 2)
    return judge(
        cfg,
        variant,
        diff_in_means(treatment, control) if enough else None,
        AsymptoticCS(alpha, tuning_units),
        treatment_mean=treatment.mean,
        control_mean=control.mean,
        n_treatment=treatment.n,
        n_control=control.n,
        method="asymptotic_cs",
    )
