"""The report's figure: seed 000's four ramp panels over the metric-stack forest plot.

Units per arm, the primary lift with its anytime-valid interval, every guardrail as effect /
margin against the margin line, and the SRM p-value, one point per stage; below them the
metric stack as relative effects with their intervals. Drawn on a bare matplotlib
``Figure`` with the Agg canvas (no pyplot, no global backend switch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from monitor.config import ExperimentConfig
from monitor.memo import fmt_num, fmt_pct, in_margins, margin_text, stack_rows, stage_srm
from monitor.readout import Readout

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["DPI", "FIGSIZE", "PANELS", "draw_figure"]

#: figure size in inches at :data:`DPI`: the PNG is 1400 x 1300 pixels
FIGSIZE = (14.0, 13.0)
DPI = 100
#: four ramp panels and the forest plot
PANELS = 5

_CONTROL = "#9CA3AF"
_TREATMENTS = ("#2F80ED", "#8E44AD", "#16A085", "#D35400")
_ROLE_COLOR = {"primary": "#2F80ED", "secondary": "#27AE60", "guardrail": "#C0392B"}
_GUARDRAIL_COLORS = ("#C0392B", "#F2994A", "#8E44AD", "#16A085", "#2C3E50", "#D35400")
_VERDICT_COLOR = {"breach": "#C0392B", "pass": "#27AE60", "inconclusive": "#F2994A"}
_DECISION_COLOR = {
    "rollback": "#C0392B",
    "pause": "#F2994A",
    "iterate": "#F2994A",
    "continue": "#6B7280",
    "advance": "#2F80ED",
    "ship": "#27AE60",
}
_FIG_BACKGROUND = "#F3F4F6"
#: the guardrail panel's y range is clipped to [-3, 4] margins; unbounded sides are drawn to
_CLIP = 10.0
#: behind labels that sit on lines (SRM stems)
_LABEL_BOX = {"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "none"}
#: the SRM panel's lowest p-value (gross mismatches reach 1e-300)
_P_FLOOR = 1e-12


# ---------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------


def _stage_axis(ax: Axes, stages: Sequence[Readout]) -> None:
    ax.set_xticks(range(len(stages)))
    ax.set_xticklabels([f"{r.stage:g}%\n{r.decision}" for r in stages])
    for label, r in zip(ax.get_xticklabels(), stages, strict=True):
        label.set_color(_DECISION_COLOR.get(r.decision, "#111827"))
    ax.set_xlim(-0.6, len(stages) - 0.4)
    ax.set_xlabel("ramp stage (treatment %) and the decision at its end")
    ax.grid(axis="y", color="#E5E7EB", linewidth=0.8)
    ax.set_axisbelow(True)


def _traffic_panel(ax: Axes, cfg: ExperimentConfig, stages: Sequence[Readout]) -> None:
    """Exposed units per arm and stage (log scale: 1% of traffic is two decades down)."""
    width = 0.8 / len(cfg.variants)
    top = 1.0
    for v, name in enumerate(cfg.variants):
        counts = []
        for r in stages:
            srm = stage_srm(r)
            counts.append(srm.result.counts[v] if srm else 0)
        xs = [k + (v - (len(cfg.variants) - 1) / 2) * width for k in range(len(stages))]
        if name == cfg.control:
            color = _CONTROL
        else:
            color = _TREATMENTS[cfg.treatments.index(name) % len(_TREATMENTS)]
        bars = ax.bar(xs, [max(c, 0.8) for c in counts], width, color=color, label=name)
        ax.bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize=8, padding=2)
        top = max(top, *counts)
    ax.set_yscale("log")
    ax.set_ylim(0.8, top * 20)
    ax.set_ylabel("exposed units (log scale)")
    ax.set_title("Ramp schedule: exposed units per arm")
    ax.legend(loc="upper left", fontsize=8, ncols=len(cfg.variants))
    _stage_axis(ax, stages)


def _mark_missing(ax: Axes, n_stages: int, present: set[int], *, y: float) -> None:
    """Say why a stage has no point, rather than leave a gap that looks like a bug."""
    for k in sorted(set(range(n_stages)) - present):
        ax.text(k, y, "too few units\nfor an interval", transform=ax.get_xaxis_transform(),
                ha="center", va="center", fontsize=8, color="#6B7280")  # fmt: skip


def _primary_panel(ax: Axes, cfg: ExperimentConfig, stages: Sequence[Readout]) -> None:
    """The primary row the decision uses (CUPED where declared), at each stage's end."""
    rows = [(k, r.primary) for k, r in enumerate(stages) if r.primary is not None]
    shown = [(k, p) for k, p in rows if math.isfinite(p.lower)]
    if shown:
        xs = [k for k, _ in shown]
        ys = [p.effect for _, p in shown]
        err = [[p.effect - p.lower for _, p in shown], [p.upper - p.effect for _, p in shown]]
        ax.errorbar(
            xs, ys, yerr=err, fmt="o-", color=_ROLE_COLOR["primary"], capsize=5, linewidth=1.5
        )
        for x, (_, p) in zip(xs, shown, strict=True):
            ax.annotate(
                f"{p.effect:+.3g}",
                (x, p.effect),
                textcoords="offset points",
                xytext=(8, 0),
                va="center",
                fontsize=8,
            )
    _mark_missing(ax, len(stages), {k for k, _ in shown}, y=0.5)
    ax.axhline(0, color="#6B7280", linewidth=1)
    kind = next((p.kind for _, p in rows), "")
    name = f"{cfg.primary} ({'CUPED' if kind == 'cuped' else kind})" if cfg.primary else "none"
    ax.set_title(f"Primary metric during ramp: {name}")
    ax.set_ylabel("effect, anytime-valid interval\n(treatment - control, stages so far)")
    _stage_axis(ax, stages)


def _guardrail_panel(ax: Axes, stages: Sequence[Readout]) -> None:
    """Every guardrail on one axis: effect and interval in units of its margin."""
    names = [(g.guardrail, g.variant) for g in stages[-1].guardrails]
    step = 0.6 / max(len(names), 1)
    effects: list[float] = []
    present: set[int] = set()
    for i, key in enumerate(names):
        xs, ys, lo, hi = [], [], [], []
        for k, r in enumerate(stages):
            g = next((g for g in r.guardrails if (g.guardrail, g.variant) == key), None)
            if g is None or not (math.isfinite(g.effect) and g.lower <= g.upper):
                continue
            effect, lower, upper = in_margins(g)
            # an unbounded side (a quantile CS early on) is drawn past the clipped y range
            lower, upper = max(lower, -_CLIP), min(upper, _CLIP)
            xs.append(k + (i - (len(names) - 1) / 2) * step)
            ys.append(effect)
            effects.append(effect)
            present.add(k)
            lo.append(effect - lower)
            hi.append(upper - effect)
        final = stages[-1].guardrails[i]
        label = f"{key[0]} (margin {margin_text(final)}): {final.verdict}"
        color = _GUARDRAIL_COLORS[i % len(_GUARDRAIL_COLORS)]
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", color=color, capsize=4, label=label)
    ax.axhline(1, color="#111827", linestyle="--", linewidth=1.2)
    ax.text(
        0.01,
        1,
        "margin",
        transform=ax.get_yaxis_transform(),
        ha="left",
        va="bottom",
        fontsize=8,
        color="#111827",
    )
    ax.axhline(0, color="#6B7280", linewidth=1)
    _mark_missing(ax, len(stages), present, y=0.25)
    # every point stays in view; only the whiskers of early, wide intervals are cut
    # a list, not min(-2.0, *...): with no finite effect to show (every guardrail without an
    # estimate, or judged with no finite interval) that was min(-2.0), a TypeError
    ax.set_ylim(min([-2.0, *(e - 0.5 for e in effects)]), max([3.0, *(e + 0.5 for e in effects)]))
    ax.set_title("Guardrails vs their margins (wide intervals cut at the frame)")
    ax.set_ylabel("effect / margin (harmful side up)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=8, ncols=2, frameon=False)
    _stage_axis(ax, stages)


def _srm_panel(ax: Axes, cfg: ExperimentConfig, stages: Sequence[Readout]) -> None:
    """Always-valid SRM p-value per stage against its alpha (log scale: alarms are tiny),
    labelled with the observed treated share against the stage's plan."""
    final = {s.stage: s for s in stages[-1].srm}
    control = cfg.variant_index(cfg.control)
    alpha = next(iter(final.values())).result.alpha if final else math.nan
    for k, r in enumerate(stages):
        s = final.get(r.stage)
        if s is None:
            continue
        # a gross mismatch has p ~ 1e-300: floored, so the frame keeps a readable range
        p = max(s.result.p_value, _P_FLOOR)
        color = _VERDICT_COLOR["breach"] if s.mismatch else _VERDICT_COLOR["pass"]
        ax.vlines(k, p, 1.0, colors=color, linewidth=3)
        ax.scatter([k], [p], color=color, s=60, zorder=3)
        total = sum(s.result.counts)
        treated = 1 - s.result.counts[control] / total if total else math.nan
        shown = f"p {s.result.p_value:.2g}" if p > _P_FLOOR else f"p < {_P_FLOOR:g}"
        # below a healthy point near 1, above an alarm near the bottom of the frame
        up = s.mismatch
        ax.annotate(
            f"{shown}\ntreated {fmt_pct(treated, signed=False)}\nplan {r.stage:g}%",
            (k, p),
            textcoords="offset points",
            xytext=(0, 10 if up else -10),
            ha="center",
            va="bottom" if up else "top",
            fontsize=8,
            color="#374151",
            bbox=_LABEL_BOX,
        )
    if math.isfinite(alpha):
        ax.axhline(alpha, color="#111827", linestyle="--", linewidth=1.2)
        ax.text(
            0.01,
            alpha,
            f"alpha {alpha:.2g}: mismatch below",
            ha="left",
            va="top",
            transform=ax.get_yaxis_transform(),
            fontsize=8,
            bbox=_LABEL_BOX,
        )
    ax.set_yscale("log")
    ax.set_ylim(min(_P_FLOOR, alpha if math.isfinite(alpha) else 1e-3) / 30, 3.0)
    ax.set_title("Sample-ratio mismatch per stage")
    ax.set_ylabel("always-valid SRM p-value (log scale)")
    _stage_axis(ax, stages)


def _forest_panel(ax: Axes, cfg: ExperimentConfig, overall: Readout) -> None:
    """The metric stack on one relative (%) scale, with the absolute effect beside it."""
    rows = [s for s in stack_rows(cfg, overall) if s.relative is not None]
    multi = len(cfg.treatments) > 1
    ys = list(range(len(rows)))[::-1]  # primary on top
    for y, s in zip(ys, rows, strict=True):
        r = s.relative
        assert r is not None
        color = _ROLE_COLOR[s.role]
        if math.isfinite(r.lower):
            ax.errorbar(
                [100 * r.effect],
                [y],
                xerr=[[100 * (r.effect - r.lower)], [100 * (r.upper - r.effect)]],
                fmt="o",
                color=color,
                capsize=4,
                markersize=7,
            )
            ax.annotate(
                fmt_pct(r.effect),
                (100 * r.effect, y),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=8,
                color=color,
            )
        a = s.absolute
        ax.text(
            1.01,
            y,
            f"{fmt_num(a.effect, signed=True)} [{fmt_num(a.lower, signed=True)}, "
            f"{fmt_num(a.upper, signed=True)}]",
            transform=ax.get_yaxis_transform(),
            va="center",
            fontsize=8,
        )
    ax.axvline(0, color="#6B7280", linewidth=1)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{s.role.capitalize()}: {s.label(variant=multi)}" for s in rows])
    for label, s in zip(ax.get_yticklabels(), rows, strict=True):
        label.set_color(_ROLE_COLOR[s.role])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.grid(axis="x", color="#E5E7EB", linewidth=0.8)
    ax.set_axisbelow(True)
    level = f"{100 * (1 - rows[0].absolute.alpha):g}% " if rows else ""
    ax.set_xlabel(f"relative effect, treatment vs control (%), {level}anytime-valid interval")
    ax.set_title(
        f"Metric stack at the {overall.stage:g}% readout (right: absolute effect and interval)"
    )


def draw_figure(cfg: ExperimentConfig, stages: Sequence[Readout]) -> Figure:
    """The report's figure: 2 x 2 ramp panels above the forest plot, titled with the decision.

    Built on a bare :class:`~matplotlib.figure.Figure` with the Agg canvas: no pyplot, no
    global backend switch, nothing left open in the caller's process.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained", facecolor=_FIG_BACKGROUND)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 2, height_ratios=[1.0, 1.0, 1.1])
    _traffic_panel(fig.add_subplot(grid[0, 0]), cfg, stages)
    _primary_panel(fig.add_subplot(grid[0, 1]), cfg, stages)
    _guardrail_panel(fig.add_subplot(grid[1, 0]), stages)
    _srm_panel(fig.add_subplot(grid[1, 1]), cfg, stages)
    _forest_panel(fig.add_subplot(grid[2, :]), cfg, stages[-1])
    overall = stages[-1]
    fig.suptitle(
        f"{cfg.name}: {overall.decision.upper()} at the {overall.stage:g}% stage "
        f"({overall.reason.replace('_', ' ')})",
        fontsize=16,
        fontweight="bold",
        color=_DECISION_COLOR.get(overall.decision, "#111827"),
    )
    return fig
