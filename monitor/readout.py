"""The engine: an experiment's statistics in, its full readout and decision out.

The live evaluator (:mod:`streams.evaluator`) and ``rampmon replay`` both call
:func:`build_readout`, so a verdict seen on a dashboard can be reproduced offline from the
same events with the same code.

Per treatment variant against control it produces:

* the metric table: every metric and ratio, absolute and relative (delta method), with
  CUPED rows for metrics that declare a covariate; intervals are anytime-valid by default,
  or fixed-horizon z intervals (the notebook's) with ``fixed_horizon=True``;
* guardrail verdicts at their share of the experiment's alpha (:mod:`monitor.alpha`);
* the sequential SRM test of every stage's exposure counts (:mod:`monitor.srm`);
* exploratory per-segment effects, Bonferroni-corrected, and per-window effects;
* the decision (:mod:`monitor.decision`).

Stages are estimated separately and combined with unit-count weights
(:func:`monitor.estimators.combine_stages`) unless ``sequential.pooling`` is
``current_stage``. Quantile guardrails always use the current stage, whose units share one
allocation, and always the anytime-valid quantile interval: there is no fixed-horizon
quantile interval here, so ``fixed_horizon=True`` changes every other interval only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from monitor.aggregation import WindowMoments
from monitor.alpha import guardrail_alpha, segment_alpha
from monitor.comoments import CoMomentCell, CoMoments
from monitor.config import Direction, ExperimentConfig, GuardrailConfig
from monitor.decision import Decision, DecisionReason, StageProgress, decide
from monitor.errors import ShapeMismatch
from monitor.estimators import (
    ArmEstimate,
    MetricSpec,
    PairEstimate,
    absolute_difference,
    combine_stages,
    conservative,
    estimate_pair,
    relative_difference,
)
from monitor.fieller import relative_verdict
from monitor.guardrails import (
    GuardrailResult,
    guardrail_result,
    judge,
    verdict_for,
)
from monitor.layout import ExperimentLayout
from monitor.moments import MomentArray
from monitor.msprt import MixtureSPRT, mixture_tau2
from monitor.quantiles import quantile_difference_cs, sketch_quantile
from monitor.segments import segment_effects
from monitor.sequential import (
    AsymptoticCS,
    DiffEstimate,
    Interval,
    SequentialTest,
    diff_in_means,
)
from monitor.srm import SRMResult, expected_allocation, srm_test
from monitor.unitstats import ExperimentStats, sketch_spec

__all__ = [
    "FixedHorizon",
    "MetricRow",
    "Readout",
    "SegmentRow",
    "StageSRM",
    "WindowRow",
    "build_readout",
    "metric_specs",
]

Scale = Literal["absolute", "relative"]
_SCALES: tuple[Scale, ...] = ("absolute", "relative")


#: the standard normal; stdlib rather than scipy.stats, which costs the worker ~45 MiB RSS
_NORMAL = NormalDist()


@dataclass(frozen=True)
class FixedHorizon:
    """A fixed-sample z interval: valid at one pre-planned look only (the notebook's)."""

    alpha: float

    @property
    def z(self) -> float:
        return _NORMAL.inv_cdf(1 - self.alpha / 2)

    def interval(self, est: DiffEstimate) -> Interval:
        hw = self.z * est.std_error
        return Interval(est.effect - hw, est.effect + hw)

    def halfwidths(
        self, variance: NDArray[np.floating], t: NDArray[np.integer]
    ) -> NDArray[np.float64]:
        """The half-widths of many estimates at once (``t`` is not used: no clock here)."""
        with np.errstate(invalid="ignore"):
            return self.z * np.sqrt(variance)

    def p_value(self, est: DiffEstimate, null: float = 0.0) -> float:
        if not est.variance > 0:
            return math.nan
        return 2 * _NORMAL.cdf(-abs(est.effect - null) / est.std_error)


@dataclass(frozen=True, slots=True)
class MetricRow:
    metric: str
    variant: str
    kind: str  # mean | ratio | cuped
    scale: Scale
    control_mean: float
    treatment_mean: float
    effect: float
    std_error: float
    lower: float
    upper: float
    p_value: float
    alpha: float
    n_treatment: int
    n_control: int
    theta: float = math.nan


@dataclass(frozen=True, slots=True)
class SegmentRow:
    """An exploratory per-segment effect: Bonferroni-corrected over all segment rows."""

    attribute: str
    value: str
    metric: str
    variant: str
    effect: float
    lower: float
    upper: float
    alpha: float
    n_treatment: int
    n_control: int
    exploratory: bool = True


@dataclass(frozen=True, slots=True)
class WindowRow:
    """Per-window effect on event-level means (novelty decay), exploratory.

    The unit of analysis is the event, so the fixed-horizon interval ignores the
    correlation of one unit's events; use it to see a trend, not to decide.
    """

    start: float
    metric: str
    variant: str
    effect: float
    lower: float
    upper: float
    events_treatment: int
    events_control: int
    exposures_treatment: int
    exposures_control: int
    exploratory: bool = True


@dataclass(frozen=True, slots=True)
class StageSRM:
    """The sequential SRM test of one stage's exposure counts."""

    stage: float
    result: SRMResult

    @property
    def mismatch(self) -> bool:
        return self.result.mismatch


@dataclass(frozen=True)
class Readout:
    experiment: str
    stage: float
    stage_index: int
    decision: Decision
    reason: DecisionReason
    guardrails: tuple[GuardrailResult, ...]
    metrics: tuple[MetricRow, ...]
    primary: MetricRow | None
    srm: tuple[StageSRM, ...]
    progress: StageProgress
    segments: tuple[SegmentRow, ...] = ()
    windows: tuple[WindowRow, ...] = ()
    late_events: int = 0
    interval: Literal["sequential", "fixed_horizon"] = "sequential"

    @property
    def breaches(self) -> tuple[GuardrailResult, ...]:
        return tuple(r for r in self.guardrails if r.verdict == "breach")

    @property
    def srm_mismatch(self) -> bool:
        return any(r.mismatch for r in self.srm)


def metric_specs(layout: ExperimentLayout, name: str) -> tuple[MetricSpec, Direction]:
    """How to estimate a metric or ratio by name (CUPED where the metric declares it)."""
    cfg = layout.config
    ratio = cfg.ratio(name)
    if ratio is not None:
        cols = (layout.column(ratio.numerator), layout.column(ratio.denominator))
        return MetricSpec(name, "ratio", cols), ratio.improve_direction
    metric = next(m for m in cfg.metrics if m.name == name)
    if metric.cuped_covariate is not None:
        cols = (layout.column(name), layout.column(metric.cuped_covariate))
        return MetricSpec(name, "cuped", cols), metric.improve_direction
    return MetricSpec(name, "mean", (layout.column(name),)), metric.improve_direction


class _Engine:
    def __init__(
        self,
        cfg: ExperimentConfig,
        units: CoMoments,
        stage_index: int,
        fixed_horizon: bool,
    ) -> None:
        self.cfg = cfg
        self.layout = ExperimentLayout(cfg)
        self.units = units
        self.stage_index = stage_index
        self.fixed_horizon = fixed_horizon
        self.control = cfg.variant_index(cfg.control)
        self.floor = max(cfg.sequential.min_units_per_variant, 2)
        # a readout asks for the same stage cells and per-stage estimates many times (both
        # scales, the plain and CUPED rows, the guardrails): each is computed once
        self._cells: dict[tuple[int, int], CoMomentCell] = {}
        self._pairs: dict[tuple[MetricSpec, int, bool], tuple[PairEstimate, ...]] = {}

    def stages(self) -> list[int]:
        if self.cfg.sequential.pooling == "current_stage":
            return [self.stage_index]
        return list(range(len(self.cfg.stages)))

    def cell(self, stage: int, variant: int) -> CoMomentCell:
        cell = self._cells.get((stage, variant))
        if cell is None:
            cell = self._cells[stage, variant] = self.units.cell(stage, variant)
        return cell

    def pairs(
        self, spec: MetricSpec, variant: int, guarded: bool = False
    ) -> tuple[PairEstimate, ...]:
        """Per-stage estimates, for the stages where both arms reach the unit floor;
        ``guarded``: with the guardrails' variance floor (:func:`conservative`)."""
        out = self._pairs.get((spec, variant, guarded))
        if out is None:
            if guarded:
                out = tuple(conservative(p) for p in self.pairs(spec, variant))
            else:
                cells = ((self.cell(s, variant), self.cell(s, self.control))
                         for s in self.stages())  # fmt: skip
                out = tuple(
                    estimate_pair(spec, t, c) for t, c in cells if min(t.n, c.n) >= self.floor
                )
            self._pairs[spec, variant, guarded] = out
        return out

    def combined(
        self, spec: MetricSpec, variant: int, scale: Scale, guarded: bool = False
    ) -> tuple[DiffEstimate | None, float, float, float]:
        """Combined estimate, the arms' (unit-weighted) means, and CUPED's theta of the
        latest stage that has enough units (theta is estimated per stage)."""
        pairs = self.pairs(spec, variant, guarded)
        diff = absolute_difference if scale == "absolute" else relative_difference
        est = combine_stages([diff(p) for p in pairs])
        t_mean = _unit_weighted([p.treatment for p in pairs])
        c_mean = _unit_weighted([p.control for p in pairs])
        theta = pairs[-1].theta if pairs else math.nan
        return est, t_mean, c_mean, theta

    def test(self, alpha: float, guardrail: GuardrailConfig | None = None) -> SequentialTest:
        seq = self.cfg.sequential
        mixture = seq.method == "msprt" and not self.fixed_horizon
        if mixture and guardrail is not None and guardrail.expected_sd:
            # the mixture must be fixed before the data for the whole sequence it tests
            # (Johari, Pekelis & Walsh 2022): under `combined` pooling that sequence spans
            # every stage, so tune at the decision stage's share, not the share of the stage
            # in force (which moved the interval of the same data at each stage change);
            # under `current_stage` each stage starts a fresh sequence of its own share
            index = (
                self.stage_index
                if self.cfg.sequential.pooling == "current_stage"
                else self.cfg.final_stage_index
            )
            share = self.cfg.stages[index] / 100.0
            share = min(max(share, 0.01), 0.99)
            tau2 = mixture_tau2(alpha, seq.tuning_units, guardrail.expected_sd, share)
            return MixtureSPRT(alpha, tau2)
        return self.plain_test(alpha)

    def plain_test(self, alpha: float) -> AsymptoticCS | FixedHorizon:
        """The test of rows that are not a guardrail with an mSPRT prior."""
        if self.fixed_horizon:
            return FixedHorizon(alpha)
        return AsymptoticCS(alpha, self.cfg.sequential.tuning_units)

    def method(self, guardrail: GuardrailConfig | None = None) -> str:
        if self.fixed_horizon:
            return "fixed_horizon"
        if self.cfg.sequential.method == "msprt" and guardrail and guardrail.expected_sd:
            return "msprt"
        return "asymptotic_cs"

    def row(
        self, spec: MetricSpec, variant: int, scale: Scale, alpha: float, guarded: bool = False
    ) -> MetricRow:
        """A metric row; ``guarded``: on the floored variances (:func:`conservative`), as the
        primary's decision row is."""
        est, t_mean, c_mean, theta = self.combined(spec, variant, scale, guarded)
        name = self.cfg.variants[variant]
        if est is None:
            nan = math.nan
            return MetricRow(spec.name, name, spec.kind, scale, c_mean, t_mean,
                             nan, nan, nan, nan, nan, alpha, 0, 0, theta)  # fmt: skip
        test = self.test(alpha)
        ci = test.interval(est)
        return MetricRow(
            spec.name, name, spec.kind, scale, c_mean, t_mean, est.effect, est.std_error,
            ci.lower, ci.upper, test.p_value(est), alpha, est.n_treatment, est.n_control,
            theta if spec.kind == "cuped" else math.nan,
        )  # fmt: skip

    def guardrail(
        self, g: GuardrailConfig, variant: int, stats: ExperimentStats
    ) -> GuardrailResult:
        alpha = guardrail_alpha(self.cfg, g.id)
        name = self.cfg.variants[variant]
        if g.statistic == "quantile":
            return self.quantile_guardrail(g, variant, stats, alpha)
        spec, _ = metric_specs(self.layout, g.metric)
        test = self.test(alpha, g)
        # a guardrail verdict can roll back: judged on the floored variances
        pairs = self.pairs(spec, variant, guarded=True)
        if g.margin_kind == "relative":
            return self.relative_guardrail(g, name, pairs, test)
        est, t_mean, c_mean, _ = self.combined(spec, variant, "absolute", guarded=True)
        # no estimate with units on hand (a rare ratio's denominator not seen yet) stays
        # "insufficient_units", which waits, not "non_finite", which pauses the ramp; the
        # counts are the units there are, not 0. With an estimate they are the units behind it
        if est is not None:
            n_t, n_c = est.n_treatment, est.n_control
        else:
            n_t, n_c = sum(p.treatment.n for p in pairs), sum(p.control.n for p in pairs)
        return judge(
            g, name, est, test, treatment_mean=t_mean, control_mean=c_mean,
            n_treatment=n_t, n_control=n_c, method=self.method(g),
        )  # fmt: skip

    def relative_guardrail(
        self,
        g: GuardrailConfig,
        name: str,
        pairs: tuple[PairEstimate, ...],
        test: SequentialTest,
    ) -> GuardrailResult:
        """A relative guardrail, judged on the margin's linear statistics (:mod:`monitor.fieller`).

        Each arm's stage means are combined with the unit-count weights of
        :func:`combine_stages`, so a linear statistic ``m_t - k m_c`` of the combined means is
        exactly the combination of the per-stage ones. A stage whose control mean is 0 counts
        like any other: its units are evidence, not a division by zero. Stages with a mean that
        is not finite (a ratio whose denominator an arm has not seen) are left out, and
        without any the verdict waits (``insufficient_units``, with the units there are).
        A control mean of 0 at every stage is labelled ``zero_control_at_margin``: the effect
        is infinite and only the tests at the margin speak.
        """
        usable = [p for p in pairs if _finite_pair(p)]
        n_t = sum(p.treatment.n for p in (usable or pairs))
        n_c = sum(p.control.n for p in (usable or pairs))
        nan = math.nan
        zero_control = pairs and all(p.control.mean == 0 for p in (usable or pairs))
        method = "zero_control_at_margin" if zero_control else self.method(g)
        if not usable:
            t_mean = _unit_weighted([p.treatment for p in pairs])
            return guardrail_result(
                g, name, "inconclusive", "insufficient_units", (nan, nan, nan), alpha=test.alpha,
                p_value=nan, n_treatment=n_t, n_control=n_c, treatment_mean=t_mean,
                control_mean=_unit_weighted([p.control for p in pairs]), method=method,
            )  # fmt: skip
        treatment, control, extra = _stage_combined(usable)
        v = relative_verdict(treatment, control, margin=g.margin, direction=g.harmful_direction,
                             test=test, extra_variance=extra)  # fmt: skip
        return guardrail_result(
            g, name, v.verdict, v.reason, (v.effect, v.lower, v.upper), alpha=test.alpha,
            p_value=v.p_value, n_treatment=n_t, n_control=n_c,
            treatment_mean=_unit_weighted([p.treatment for p in usable]),
            control_mean=_unit_weighted([p.control for p in usable]), method=method,
        )  # fmt: skip

    def quantile_guardrail(
        self, g: GuardrailConfig, variant: int, stats: ExperimentStats, alpha: float
    ) -> GuardrailResult:
        q = self.layout.quantile_metrics.index(g.metric)
        spec = sketch_spec(self.layout, g.metric)
        sketch = stats.sketches[q]
        t = sketch.cell(self.stage_index, variant)
        c = sketch.cell(self.stage_index, self.control)
        n_t, n_c = int(t.sum()), int(c.sum())
        assert g.quantile is not None  # validated by the config
        name = self.cfg.variants[variant]
        nan = math.nan
        if min(n_t, n_c) < self.floor:
            return guardrail_result(
                g, name, "inconclusive", "insufficient_units", (nan, nan, nan), alpha=alpha,
                p_value=nan, n_treatment=n_t, n_control=n_c, treatment_mean=nan,
                control_mean=nan, method="quantile_cs",
            )  # fmt: skip
        ci = quantile_difference_cs(spec, t, c, g.quantile, alpha)
        verdict, reason = verdict_for(g.harmful_direction, g.margin, Interval(ci.lower, ci.upper))
        return guardrail_result(
            g, name, verdict, reason, (ci.estimate, ci.lower, ci.upper), alpha=alpha,
            p_value=nan, n_treatment=n_t, n_control=n_c,
            treatment_mean=sketch_quantile(spec, t, g.quantile),
            control_mean=sketch_quantile(spec, c, g.quantile), method="quantile_cs",
        )  # fmt: skip


def _finite_pair(p: PairEstimate) -> bool:
    arms = (p.treatment, p.control)
    return all(math.isfinite(a.mean) and math.isfinite(a.variance) and a.n > 0 for a in arms)


def _unit_weighted(arms: list[ArmEstimate]) -> float:
    """Arm means weighted by units: the mean shown next to a guardrail."""
    n = sum(a.n for a in arms)
    return math.fsum(a.mean * a.n for a in arms) / n if n else math.nan


def _stage_combined(
    pairs: list[PairEstimate],
) -> tuple[ArmEstimate, ArmEstimate, tuple[float, float, float]]:
    """Each arm's stage means combined with :func:`combine_stages`' weights, the variances of
    those combinations, and CUPED's variance terms (``PairEstimate.extra_variance``) the same
    way: so ``m_t - k m_c`` of the result is the weighted sum of the stages' statistics."""
    weights = [1.0 / (1.0 / p.treatment.n + 1.0 / p.control.n) for p in pairs]
    total = math.fsum(weights)
    shares = [w / total for w in weights]

    def arm(arms: list[ArmEstimate]) -> ArmEstimate:
        mean = math.fsum(s * a.mean for s, a in zip(shares, arms, strict=True))
        variance = math.fsum(s * s * a.variance for s, a in zip(shares, arms, strict=True))
        return ArmEstimate(mean, variance, sum(a.n for a in arms))

    e0, e1, e2 = (
        math.fsum(s * s * p.extra_variance[i] for s, p in zip(shares, pairs, strict=True))
        for i in range(3)
    )
    return arm([p.treatment for p in pairs]), arm([p.control for p in pairs]), (e0, e1, e2)


def _srm(cfg: ExperimentConfig, units: CoMoments) -> tuple[StageSRM, ...]:
    """One sequential SRM test per stage with units; the SRM alpha is split over stages."""
    control = cfg.variant_index(cfg.control)
    alpha = cfg.srm_alpha / len(cfg.stages)
    out = []
    for s, pct in enumerate(cfg.stages):
        counts = units.n[s]
        if counts.sum() == 0:
            continue
        expected = expected_allocation(len(cfg.variants), pct, control)
        out.append(StageSRM(pct, srm_test(counts, expected, alpha=alpha)))
    return tuple(out)


def _segments(
    engine: _Engine, cfg: ExperimentConfig, segments: MomentArray
) -> tuple[SegmentRow, ...]:
    layout = engine.layout
    slots = layout.segment_slots
    if not slots:
        return ()
    comparisons = len(slots) * len(layout.metrics) * len(cfg.treatments)
    alpha = segment_alpha(cfg, comparisons)
    test = engine.plain_test(alpha)
    rows = []
    for v in (cfg.variant_index(t) for t in cfg.treatments):
        fx = segment_effects(segments, engine.stages(), v, engine.control, engine.floor)
        hw = test.halfwidths(fx.variance, fx.t)
        lower, upper = fx.effect - hw, fx.effect + hw
        for si, mi in zip(*np.nonzero(fx.ok), strict=True):
            attribute, value = slots[si]
            rows.append(SegmentRow(attribute, value, layout.metrics[mi], cfg.variants[v],
                                   float(fx.effect[si, mi]), float(lower[si, mi]),
                                   float(upper[si, mi]), alpha, int(fx.n_treatment[si, mi]),
                                   int(fx.n_control[si, mi])))  # fmt: skip
    return tuple(rows)


def _windows(
    cfg: ExperimentConfig, windows: Mapping[float, WindowMoments], alpha: float
) -> tuple[WindowRow, ...]:
    control = cfg.variant_index(cfg.control)
    fixed = FixedHorizon(alpha)
    rows = []
    for start in sorted(windows):
        w = windows[start]
        for v in (cfg.variant_index(t) for t in cfg.treatments):
            for mi, metric in enumerate(cfg.metrics):
                t, c = w.events.cell(v, mi), w.events.cell(control, mi)
                if min(t.n, c.n) < 2:
                    continue
                est = diff_in_means(t, c)
                ci = fixed.interval(est)
                rows.append(WindowRow(start, metric.name, cfg.variants[v], est.effect, ci.lower,
                                      ci.upper, t.n, c.n, int(w.exposures[v]),
                                      int(w.exposures[control])))  # fmt: skip
    return tuple(rows)


def build_readout(
    cfg: ExperimentConfig,
    stats: ExperimentStats,
    stage_index: int,
    *,
    stage_duration_seconds: float = 0.0,
    windows: Mapping[float, WindowMoments] | None = None,
    late_events: int = 0,
    fixed_horizon: bool = False,
) -> Readout:
    """The readout at ``stage_index`` (the stage the experiment is in now).

    ``stage_duration_seconds`` is how long the current stage has been running; it counts
    towards :class:`monitor.config.AdvanceConfig`.
    """
    layout = ExperimentLayout(cfg)
    if stats.units.shape != (layout.stages, layout.variants) or (
        stats.units.columns != layout.columns
    ):
        raise ShapeMismatch(
            f"experiment {cfg.name!r} expects {(layout.stages, layout.variants)}x"
            f"{layout.columns}, got {stats.units.shape}x{stats.units.columns}"
        )
    if not 0 <= stage_index < len(cfg.stages):
        raise IndexError(f"stage index {stage_index} out of range for {cfg.stages}")
    engine = _Engine(cfg, stats.units, stage_index, fixed_horizon)
    treatments = [cfg.variant_index(t) for t in cfg.treatments]

    guardrails = tuple(engine.guardrail(g, v, stats) for g in cfg.guardrails for v in treatments)
    rows: list[MetricRow] = []
    names = [m.name for m in cfg.metrics] + [r.name for r in cfg.ratios]
    for name in names:
        spec, _ = metric_specs(layout, name)
        plain = MetricSpec(name, "mean", spec.columns[:1]) if spec.kind == "cuped" else spec
        for v in treatments:
            for scale in _SCALES:
                rows.append(engine.row(plain, v, scale, cfg.primary_alpha))
                if spec.kind == "cuped":
                    rows.append(engine.row(spec, v, scale, cfg.primary_alpha))

    primary_row: MetricRow | None = None
    primary_interval: Interval | None = None
    direction: Direction = "increase"
    if cfg.primary is not None:
        spec, direction = metric_specs(layout, cfg.primary)
        # the primary decision uses the most precise estimate (CUPED-adjusted where
        # declared) of the first treatment, on the guardrails' floored variances: it can
        # roll back, and a small final stage's arm with few events or no large values
        # understates its own variance (Welch's; the metric table keeps it). An A/A ramp
        # to a 5% final stage with a heavy-tailed primary rolled back 0.124 of the time on
        # Welch's, against primary_alpha / 2 = 0.025 (tests/unit/test_primary_decision.py)
        primary_row = engine.row(spec, treatments[0], "absolute", cfg.primary_alpha, guarded=True)
        # NaN bounds when it has no estimate: decide() must not read that as "no primary"
        primary_interval = Interval(primary_row.lower, primary_row.upper)

    srm = _srm(cfg, stats.units)
    counts = stats.units.n[stage_index]
    progress = StageProgress(
        min_units=int(min(counts[v] for v in [*treatments, engine.control])),
        duration_seconds=stage_duration_seconds,
        required_units=cfg.advance.min_units_per_variant,
        required_seconds=cfg.advance.min_duration_seconds,
        final=stage_index >= cfg.final_stage_index,
    )
    decision, reason = decide(
        guardrails,
        srm_mismatch=any(r.mismatch for r in srm),
        progress=progress,
        primary=primary_interval,
        primary_direction=direction,
    )
    return Readout(
        experiment=cfg.name,
        stage=cfg.stages[stage_index],
        stage_index=stage_index,
        decision=decision,
        reason=reason,
        guardrails=guardrails,
        metrics=tuple(rows),
        primary=primary_row,
        srm=srm,
        progress=progress,
        segments=_segments(engine, cfg, stats.segments),
        windows=_windows(cfg, windows or {}, cfg.primary_alpha),
        late_events=late_events,
        interval="fixed_horizon" if fixed_horizon else "sequential",
    )
