"""The launch decision memo as Markdown, from the engine's readouts (seed 000's "Product
Launch Readout").

Pure: no I/O and no plotting. ``rampmon report`` (:mod:`streams.report`) replays the events,
takes one :class:`monitor.readout.Readout` at the end of every ramp stage, draws the figure
and writes the text this module builds. Every number in the memo is formatted from a
readout field -- nothing is recomputed here -- so the memo cannot disagree with the
dashboard, the webhook or ``rampmon replay``.

The helpers that pick and order the metric stack (:func:`stack_rows`) and put guardrails
on a common scale (:func:`in_margins`) are public because the figure must show exactly the
rows the memo tabulates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from monitor.config import ExperimentConfig
from monitor.guardrails import GuardrailResult
from monitor.readout import MetricRow, Readout, StageSRM

__all__ = [
    "Role",
    "StackRow",
    "build_memo",
    "fmt_duration",
    "fmt_num",
    "fmt_pct",
    "in_margins",
    "margin_text",
    "metric_role",
    "next_step",
    "rationale",
    "stack_rows",
    "stage_srm",
]

Role = Literal["primary", "secondary", "guardrail"]
_ROLE_ORDER: dict[Role, int] = {"primary": 0, "secondary": 1, "guardrail": 2}
_ESTIMATOR = {"mean": "difference in means", "cuped": "CUPED", "ratio": "ratio (delta method)"}
_REASON_TEXT = {
    "insufficient_units": "too few units",
    "no_variance": "no variance",
    "non_finite": "non-finite inputs",
    "interval_straddles_margin": "interval straddles the margin",
    "breach": "interval entirely past the margin",
    "pass": "interval entirely inside the margin",
}


# ---------------------------------------------------------------------------------------------
# Formatting: one place, so the tests can parse back what the memo prints
# ---------------------------------------------------------------------------------------------


def fmt_num(x: float, *, signed: bool = False) -> str:
    """Four significant digits: enough to act on, few enough to read; ``n/a`` for NaN."""
    if math.isnan(x):
        return "n/a"
    return f"{x:+.4g}" if signed else f"{x:.4g}"


def fmt_pct(fraction: float, *, signed: bool = True) -> str:
    """A fraction as a percentage with two decimals (relative effects, shares)."""
    if math.isnan(fraction):
        return "n/a"
    return f"{100 * fraction:+.2f}%" if signed else f"{100 * fraction:.2f}%"


def _fmt_interval(lower: float, upper: float, *, pct: bool = False) -> str:
    if math.isnan(lower) or math.isnan(upper):
        return "n/a"
    if pct:
        return f"[{fmt_pct(lower)}, {fmt_pct(upper)}]"
    return f"[{fmt_num(lower, signed=True)}, {fmt_num(upper, signed=True)}]"


def _fmt_p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else f"{p:.3g}"


def fmt_duration(seconds: float) -> str:
    """``2d 03h``, ``1h 05m`` or ``42s``: stage durations span seconds (demo) to weeks."""
    if not math.isfinite(seconds):
        return "n/a"
    s = round(max(seconds, 0.0))
    days, rest = divmod(s, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


# ---------------------------------------------------------------------------------------------
# What the memo and the figure show
# ---------------------------------------------------------------------------------------------


def metric_role(cfg: ExperimentConfig, name: str) -> Role:
    """The notebook's metric stack: the primary, guardrail metrics, and the rest secondary."""
    if name == cfg.primary:
        return "primary"
    if any(g.metric == name for g in cfg.guardrails):
        return "guardrail"
    return "secondary"


@dataclass(frozen=True, slots=True)
class StackRow:
    """One metric row of the stack: its absolute readout row and the matching relative one."""

    role: Role
    absolute: MetricRow
    relative: MetricRow | None

    def label(self, *, variant: bool = False) -> str:
        name = self.absolute.metric + (" (CUPED)" if self.absolute.kind == "cuped" else "")
        return f"{name} [{self.absolute.variant}]" if variant else name


def stack_rows(cfg: ExperimentConfig, readout: Readout) -> list[StackRow]:
    """Primary, secondary, then guardrail metrics, config order within each; CUPED rows
    follow their plain row so the variance reduction is visible side by side."""
    relative = {(r.metric, r.variant, r.kind): r for r in readout.metrics if r.scale == "relative"}
    rows = [
        StackRow(metric_role(cfg, r.metric), r, relative.get((r.metric, r.variant, r.kind)))
        for r in readout.metrics
        if r.scale == "absolute"
    ]
    # sorted() is stable: the readout's config order survives within a role
    return sorted(rows, key=lambda s: _ROLE_ORDER[s.role])


def in_margins(g: GuardrailResult) -> tuple[float, float, float]:
    """``(effect, lower, upper)`` in units of the margin, harmful side positive.

    Guardrails differ in units (ms, proportions, relative); divided by their margin they
    share one axis on which ``1`` is the margin: a breach lies wholly above it, a pass
    wholly below. A zero margin cannot be a unit, so its values are returned as they are.
    """
    sign = 1.0 if g.harmful_direction == "increase" else -1.0
    scale = g.margin if g.margin > 0 else 1.0
    a, b = sign * g.lower / scale, sign * g.upper / scale
    return sign * g.effect / scale, min(a, b), max(a, b)


def stage_srm(readout: Readout) -> StageSRM | None:
    """The SRM test of the readout's own stage (its exposure counts per variant)."""
    return next((s for s in readout.srm if s.stage == readout.stage), None)


def _guardrail_value(g: GuardrailResult, x: float) -> str:
    return fmt_pct(x) if g.margin_kind == "relative" else fmt_num(x, signed=True)


def _guardrail_interval(g: GuardrailResult) -> str:
    if g.method == "zero_control_at_margin":
        # no finite relative interval: the verdict is the margin's own linear test
        return "(control mean 0: tested as treatment against the margin times control)"
    # only a judged verdict has NaN bounds for an unsettled sign: "no_variance" (both arms
    # constant, e.g. every unit converting in both) is NaN with a control mean far from 0
    judged = g.reason in ("breach", "pass", "interval_straddles_margin")
    unsettled = judged and math.isnan(g.lower)
    if g.margin_kind == "relative" and unsettled:
        # monitor.fieller: no finite relative interval until the control's sign is settled
        return "(control mean within noise of 0: tested at the margin for either sign)"
    return _fmt_interval(g.lower, g.upper, pct=g.margin_kind == "relative")


def _reason_text(g: GuardrailResult) -> str:
    if g.reason in ("breach", "pass") and math.isnan(g.lower):
        # no finite interval (monitor.fieller): the verdict is the test at the margin
        return "past the margin" if g.reason == "breach" else "inside the margin"
    return _REASON_TEXT[g.reason]


def margin_text(g: GuardrailResult) -> str:
    """The tolerated regression, signed to the harmful side: ``+50``, ``+10% of control``."""
    side = "+" if g.harmful_direction == "increase" else "-"
    if g.margin_kind == "relative":
        return f"{side}{100 * g.margin:g}% of control"
    return f"{side}{g.margin:g}"


def _guardrail_label(g: GuardrailResult, multi: bool) -> str:
    return f"{g.guardrail} [{g.variant}]" if multi else g.guardrail


def rationale(cfg: ExperimentConfig, readout: Readout) -> str:
    """One sentence of evidence for the decision, built from its reason code."""
    multi = len(cfg.treatments) > 1
    p = readout.primary
    primary = (
        f"primary {p.metric} {fmt_num(p.effect, signed=True)} {_fmt_interval(p.lower, p.upper)}"
        if p is not None
        else "no primary metric"
    )
    reason = readout.reason
    if reason == "guardrail_breach":
        parts = [
            f"{_guardrail_label(g, multi)} {_guardrail_value(g, g.effect)} "
            f"{_guardrail_interval(g)} vs margin {margin_text(g)}"
            for g in readout.breaches
        ]
        # a relative guardrail whose control mean's sign is not settled has no finite interval
        # (monitor.fieller): its breach is the test at the margin, not an interval's position
        lead = (
            "the interval lies entirely past the margin"
            if not any(math.isnan(g.lower) for g in readout.breaches)
            else "past the margin"
        )
        return f"guardrail breached, {lead}: " + "; ".join(parts)
    if reason == "srm":
        bad = ", ".join(
            f"{s.stage:g}% (p {_fmt_p(s.result.p_value)})" for s in readout.srm if s.mismatch
        )
        return (
            f"sample-ratio mismatch at {bad}: the exposed units do not follow the allocation, "
            "so every effect estimate is suspect until assignment or logging is fixed"
        )
    if reason == "data_quality":
        return "a guardrail's inputs are not finite (NaN or infinite telemetry)"
    if reason == "stage_not_ready":
        pr = readout.progress
        return (
            f"the {readout.stage:g}% stage has {pr.min_units} units in its smaller arm and ran "
            f"{fmt_duration(pr.duration_seconds)}; it needs {pr.required_units} and "
            f"{fmt_duration(pr.required_seconds)}"
        )
    if reason == "no_guardrails":
        return "no guardrails are configured, so nothing can justify advancing"
    if reason == "inconclusive":
        open_ = ", ".join(
            f"{_guardrail_label(g, multi)} ({_reason_text(g)})"
            for g in readout.guardrails
            if g.verdict != "pass"
        )
        return f"not every guardrail is shown within its margin yet: {open_}; {primary}"
    if reason == "primary_improved":
        return f"every guardrail passes its margin and the {primary} excludes 0 (improved)"
    if reason == "primary_harmed":
        return f"the {primary} is proven worse than control"
    if reason == "primary_inconclusive":
        return f"every guardrail passes its margin, but the {primary} still includes 0"
    if reason == "primary_not_estimable":
        name = p.metric if p is not None else "metric"
        return (
            f"every guardrail passes its margin, but the primary {name} has no estimate (too "
            "few units in a stage, or a ratio without denominator): nothing shows it is not worse"
        )
    return "every guardrail passes its margin and the stage has its minimum units and duration"


def next_step(cfg: ExperimentConfig, readout: Readout) -> str:
    """What the decision means for the flag, in the ramp's own stages."""
    later = [pct for pct in cfg.stages if pct > readout.stage]
    decision = readout.decision
    if decision == "ship":
        return f"ramp to {later[-1]:g}%" if later else "keep the feature on for everyone"
    if decision == "advance":
        return f"advance to the {later[0]:g}% stage" if later else "hold: no later stage"
    if decision == "rollback":
        return "turn the treatment off (stage 0) and investigate before any new ramp"
    if decision == "pause":
        return "hold the ramp; fix assignment or logging before reading any effect"
    if decision == "iterate":
        return f"hold at {readout.stage:g}% and iterate on the feature; do not launch broadly"
    return f"stay at {readout.stage:g}% and keep collecting evidence"


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------


def _header(cfg: ExperimentConfig, overall: Readout, image: str | None) -> list[str]:
    interval = (
        "anytime-valid (valid at every look)"
        if overall.interval == "sequential"
        else "fixed-horizon z (valid at one planned look)"
    )
    n_g = len(cfg.guardrails) * len(cfg.treatments)
    variants = ", ".join(f"`{v}`" for v in cfg.variants)
    stages = ", ".join(f"{s:g}%" for s in cfg.stages)
    lines = [
        f"# Launch readout: {cfg.name}",
        "",
        f"**Decision: {overall.decision.upper()}** at the {overall.stage:g}% stage "
        f"(`{overall.reason}`): {rationale(cfg, overall)}.",
        "",
        f"**Next step:** {next_step(cfg, overall)}.",
        "",
        f"**Design:** unit-level randomized feature flag, variants {variants} (control arm "
        f"`{cfg.control}`), ramp stages {stages}; primary metric {cfg.primary or 'none'}.",
        "",
        f"**Intervals:** {interval}, {cfg.sequential.method}; guardrails share a family-wise "
        f"alpha {cfg.alpha:g} over {n_g} tests (weighted Bonferroni), metric rows use alpha "
        f"{cfg.primary_alpha:g}; stages are combined with unit-count weights "
        f"(pooling `{cfg.sequential.pooling}`).",
    ]
    if image:
        lines += ["", f"![Ramp monitor and metric stack for {cfg.name}]({image})"]
    return lines


def _metric_section(cfg: ExperimentConfig, overall: Readout) -> list[str]:
    multi = len(cfg.treatments) > 1
    rows = []
    for s in stack_rows(cfg, overall):
        a, r = s.absolute, s.relative
        estimator = _ESTIMATOR.get(a.kind, a.kind)
        if a.kind == "cuped" and math.isfinite(a.theta):
            estimator += f" (theta {a.theta:.3g})"
        rows.append(
            [
                s.role,
                s.label(variant=multi),
                estimator,
                fmt_num(a.control_mean),
                fmt_num(a.treatment_mean),
                fmt_num(a.effect, signed=True),
                fmt_num(a.std_error),
                _fmt_interval(a.lower, a.upper),
                fmt_pct(r.effect) if r else "n/a",
                _fmt_interval(r.lower, r.upper, pct=True) if r else "n/a",
                _fmt_p(a.p_value),
            ]
        )
    header = [
        "role",
        "metric",
        "estimator",
        "control",
        "treatment",
        "effect",
        "se",
        "interval",
        "relative",
        "relative interval",
        "p",
    ]
    return [
        "",
        "## Metric stack",
        "",
        f"Treatment minus control over all stages, at the {overall.stage:g}% stage's readout; "
        "relative: as a fraction of the control mean's magnitude.",
        "",
        *_table(header, rows),
    ]


def _guardrail_section(cfg: ExperimentConfig, overall: Readout) -> list[str]:
    multi = len(cfg.treatments) > 1
    rows = []
    for g in overall.guardrails:
        stat = "mean" if g.statistic == "mean" else f"p{100 * _quantile(cfg, g.guardrail):g}"
        worst = in_margins(g)[2]
        rows.append(
            [
                _guardrail_label(g, multi),
                g.metric,
                stat,
                _guardrail_value(g, g.effect),
                _guardrail_interval(g),
                margin_text(g),
                _share_of_margin(g, worst),
                f"**{g.verdict}**",
                _reason_text(g),
                f"{g.alpha:.4g}",
            ]
        )
    header = [
        "guardrail",
        "metric",
        "statistic",
        "effect",
        "interval",
        "margin",
        "worst case / margin",
        "verdict",
        "why",
        "alpha",
    ]
    return [
        "",
        "## Guardrails",
        "",
        "A guardrail passes when its whole interval is inside the tolerated regression "
        "(worst case below 100% of the margin) and breaches when the whole interval is past it.",
        "",
        *_table(header, rows),
    ]


def _share_of_margin(g: GuardrailResult, worst: float) -> str:
    if math.isnan(worst) or g.margin <= 0:
        return "n/a"
    return "unbounded" if math.isinf(worst) else f"{100 * worst:.0f}%"


def _quantile(cfg: ExperimentConfig, guardrail_id: str) -> float:
    q = next(g.quantile for g in cfg.guardrails if g.id == guardrail_id)
    return math.nan if q is None else q


def _split(counts: Sequence[int] | Sequence[float]) -> str:
    total = sum(counts)
    return " / ".join(fmt_pct(c / total, signed=False) if total else "n/a" for c in counts)


def _srm_section(cfg: ExperimentConfig, overall: Readout) -> list[str]:
    rows = [
        [
            f"{s.stage:g}%",
            *(str(c) for c in s.result.counts),
            _split(s.result.expected),
            _split(s.result.counts),
            _fmt_p(s.result.p_value),
            f"{s.result.alpha:.3g}",
            "**mismatch**" if s.mismatch else s.result.reason,
        ]
        for s in overall.srm
    ]
    header = [
        "stage",
        *(f"{v} units" for v in cfg.variants),
        "expected split",
        "observed split",
        "p",
        "alpha",
        "verdict",
    ]
    return [
        "",
        "## Sample-ratio mismatch",
        "",
        "Sequential Dirichlet-multinomial test of each stage's exposed units against the "
        "stage's allocation (split in variant order).",
        "",
        *_table(header, rows),
    ]


def _history_section(cfg: ExperimentConfig, stages: Sequence[Readout]) -> list[str]:
    rows = []
    for r in stages:
        srm = stage_srm(r)
        counts = [str(c) for c in srm.result.counts] if srm else ["0"] * len(cfg.variants)
        p = r.primary
        evidence = (
            f"{fmt_num(p.effect, signed=True)} {_fmt_interval(p.lower, p.upper)}"
            if p is not None and not math.isnan(p.effect)
            else "n/a"
        )
        rows.append(
            [
                f"{r.stage:g}%",
                *counts,
                fmt_duration(r.progress.duration_seconds),
                f"{r.progress.min_units} / {r.progress.required_units}",
                evidence,
                f"**{r.decision}**",
                f"`{r.reason}`",
            ]
        )
    primary = cfg.primary or "primary"
    header = [
        "stage",
        *(f"{v} units" for v in cfg.variants),
        "duration",
        "min arm / required",
        f"{primary} effect at stage end",
        "decision",
        "reason",
    ]
    return [
        "",
        "## Ramp history",
        "",
        "Each row is the readout at the end of its stage, on the data seen by then "
        "(what the live monitor decided at that moment).",
        "",
        *_table(header, rows),
    ]


def _segment_lines(cfg: ExperimentConfig, overall: Readout) -> list[str]:
    if not overall.segments:
        return ["- No segment effects (no segments configured, or too few units per cell)."]
    alpha = overall.segments[0].alpha
    lines = [
        f"- Segment effects are exploratory: Bonferroni-corrected over every segment x metric "
        f"cell (alpha {alpha:.3g} each) and never part of the decision."
    ]
    metric = cfg.primary if any(s.metric == cfg.primary for s in overall.segments) else None
    if metric is None:
        return lines
    multi = len(cfg.treatments) > 1
    rows = [
        [
            f"{s.attribute}={s.value}" + (f" [{s.variant}]" if multi else ""),
            str(s.n_control),
            str(s.n_treatment),
            fmt_num(s.effect, signed=True),
            _fmt_interval(s.lower, s.upper),
        ]
        for s in overall.segments
        if s.metric == metric
    ]
    header = ["segment", "control units", "treatment units", f"{metric} effect", "interval"]
    return [*lines, "", *_table(header, rows), ""]


def _novelty_line(cfg: ExperimentConfig, overall: Readout) -> str:
    """Early against late per-window effects: a fading lift is the classic novelty sign."""
    metric = cfg.primary
    windows = [w for w in overall.windows if w.metric == metric]
    if len(windows) < 4:
        return (
            f"- Novelty: too few event-time windows with {metric or 'a primary metric'} in both "
            "arms to look for decay."
        )
    half = len(windows) // 2
    early = sum(w.effect for w in windows[:half]) / half
    late = sum(w.effect for w in windows[half:]) / (len(windows) - half)
    return (
        f"- Novelty: across {len(windows)} event-time windows, the per-event {metric} effect "
        f"averages {fmt_num(early, signed=True)} in the earlier half and "
        f"{fmt_num(late, signed=True)} in the later half (event-level, exploratory; a fading "
        "effect suggests novelty, so keep a holdout through the ramp)."
    )


def _caveats(
    cfg: ExperimentConfig,
    overall: Readout,
    rejected: Mapping[str, int],
    notes: Sequence[str],
) -> list[str]:
    lines = ["", "## Caveats", ""]
    lines += _segment_lines(cfg, overall)
    lines.append(_novelty_line(cfg, overall))
    if overall.late_events:
        lines.append(
            f"- {overall.late_events} late events counted in the totals but not in windows."
        )
    if rejected:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))
        lines.append(f"- Rejected input records (dead letters): {shown}.")
    lines += [f"- {n}" for n in notes]
    return lines


def build_memo(
    cfg: ExperimentConfig,
    stages: Sequence[Readout],
    *,
    image: str | None = None,
    rejected: Mapping[str, int] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """The memo for the readouts taken at the end of each ramp stage, in ramp order.

    The last readout is the overall one (it holds every stage's data); ``image`` is the
    figure's path relative to the memo; ``notes`` are caveats only the caller knows (how
    exposures were assigned to stages, for instance).
    """
    if not stages:
        raise ValueError("build_memo needs at least one stage readout")
    overall = stages[-1]
    lines = [
        *_header(cfg, overall, image),
        *_metric_section(cfg, overall),
        *_guardrail_section(cfg, overall),
        *_srm_section(cfg, overall),
        *_history_section(cfg, stages),
        *_caveats(cfg, overall, rejected or {}, notes),
    ]
    return "\n".join(lines) + "\n"
