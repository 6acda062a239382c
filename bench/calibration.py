"""Calibration of the statistics engine on seed 000's generative model.

Three questions, answered with the engine itself (:func:`monitor.readout.build_readout` on
:class:`monitor.unitstats.ExperimentStats` kept by :class:`UnitStatsAggregation`, updated
after every batch exactly as the live worker does):

1. **A/A calibration.** Streams of control-model units (``simulate_units(..., treatment_share
   =0.0)``) split 50/50 at random, read out after every batch at the seed config's 50% stage.
   How often does the decision *ever* become ``rollback`` (a false rollback) or ``pause``
   (a false SRM alarm)? With the seed's margins, and with every margin set to 0 (a breach
   then only needs the interval to exclude 0 on the harmful side: the hard case). The naive
   comparison re-reads the same streams at the same looks with fixed-horizon z intervals
   (``build_readout(..., fixed_horizon=True)``) at the same per-guardrail alphas.
2. **Power.** Streams with the model's real treatment effects (``treatment_share=0.5``), margin
   0: units (both arms) until the latency-mean and error-session guardrails first breach,
   against the fixed-horizon sample size of a z-test at the same alpha and 80% power.
3. **CUPED.** The standard error of ``tasks`` with and without the ``pre_tasks_28``
   adjustment, from the engine's ``cuped`` and ``mean`` rows.

Alongside the engine, :func:`vector_verdicts` and :func:`vector_srm` recompute the same
verdicts for all looks of a stream at once from cumulative sums, with the engine's own
functions (:func:`monitor.sequential.asymptotic_cs_halfwidth`, :func:`monitor.alpha.
guardrail_alpha`, :func:`monitor.quantiles.quantile_difference_cs`,
:func:`monitor.guardrails.verdict_for`, :func:`monitor.srm.log_bayes_factors`). The benchmark
cross-checks them against the engine on every look of every A/A stream; the CI test
(``tests/unit/test_calibration.py``) uses them to afford 500 streams in seconds.

Run (3 to 6 minutes on 2 cores)::

    .venv/bin/python -m bench.calibration [--streams 500] [--units 20000] [--batch 200]
        [--out bench/results/calibration.json] [--readme bench/README.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import scipy
from numpy.typing import NDArray
from scipy import stats as sps

from bench.readme import replace_block
from monitor.alpha import guardrail_alpha
from monitor.config import ExperimentConfig, GuardrailConfig, parse_config
from monitor.guardrails import Verdict, verdict_for
from monitor.layout import OTHER, ExperimentLayout
from monitor.quantiles import quantile_difference_cs
from monitor.readout import FixedHorizon, MetricRow, Readout, build_readout, metric_specs
from monitor.sequential import DiffEstimate, Interval, asymptotic_cs_halfwidth, optimal_rho2
from monitor.srm import expected_allocation, log_bayes_factors
from monitor.unitstats import ExperimentStats, UnitDeltas, UnitStatsAggregation, sketch_spec
from monitor.workload import SEED_EFFECTS, UnitData, simulate_units

__all__ = [
    "StreamData",
    "aa_data",
    "aa_engine_stream",
    "aa_vectorised",
    "cuped_figures",
    "exposed_deltas",
    "fixed_horizon_units",
    "look_ends",
    "main",
    "monitor_looks",
    "power_stream",
    "seed_config",
    "stream_data",
    "vector_srm",
    "vector_verdicts",
    "with_margin",
]

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PATH = ROOT / "deploy" / "experiments.yaml"
EXPERIMENT = "workflow_assistant"
#: the seed config's decision stage (percent in treatment); its SRM test expects 50/50
DECISION_STAGE = 50.0

# Seeds: stream i of each study uses BASE + i, so studies never share units.
AA_SEED = 100_000
POWER_SEED = 200_000
TRUTH_SEED = 300_000
#: extra key of the A/A arm assignment generator, separate from the units' generator
ASSIGN_KEY = 7

#: guardrails whose power is measured, with the metric's name in seed 000
POWER_GUARDRAILS = ("latency_ms", "error_session")

MODES = ("seq_seed", "seq_zero", "naive_zero")

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


@cache
def seed_config() -> ExperimentConfig:
    """The seed experiment exactly as ``deploy/experiments.yaml`` declares it."""
    text = CONFIG_PATH.read_text()
    return parse_config(text, source=str(CONFIG_PATH)).experiment(EXPERIMENT)


@cache
def zero_margin_config() -> ExperimentConfig:
    return with_margin(seed_config(), 0.0)


def with_margin(cfg: ExperimentConfig, margin: float) -> ExperimentConfig:
    """A copy of ``cfg`` with every guardrail's margin set to ``margin`` (alphas unchanged)."""
    guardrails = [g.model_copy(update={"margin": margin}) for g in cfg.guardrails]
    return cfg.model_copy(update={"guardrails": guardrails})


def decision_stage(cfg: ExperimentConfig) -> int:
    return cfg.stage_index(DECISION_STAGE)


# ---------------------------------------------------------------------------------------------
# Streams as the engine's unit vectors
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class StreamData:
    """A stream's units in arrival order: unit vectors (metrics, then covariates, in layout
    column order), segment slots, and variant index."""

    values: NDArray[np.float64]
    segments: NDArray[np.intp]
    variant: NDArray[np.intp]

    def __len__(self) -> int:
        return int(self.variant.shape[0])

    def slice(self, start: int, end: int) -> StreamData:
        return StreamData(self.values[start:end], self.segments[start:end], self.variant[start:end])


def stream_data(
    layout: ExperimentLayout, units: UnitData, variant: NDArray[np.integer]
) -> StreamData:
    """The engine's view of simulated units (the slots are those of
    :meth:`ExperimentLayout.segment_codes`; the tests check the two agree)."""
    n = len(units)
    columns = [getattr(units, name) for name in (*layout.metrics, *layout.covariates)]
    values = np.column_stack(columns).astype(np.float64) if columns else np.empty((n, 0))
    slot = {s: i for i, s in enumerate(layout.segment_slots)}
    segments = np.empty((n, len(layout.config.segments)), np.intp)
    for d, seg in enumerate(layout.config.segments):
        attr = np.asarray(getattr(units, seg.attribute)).astype(str)
        codes = np.full(n, slot[(seg.attribute, OTHER)], np.intp)
        for value in seg.values:
            codes[attr == value] = slot[(seg.attribute, value)]
        segments[:, d] = codes
    return StreamData(values, segments, np.asarray(variant, np.intp))


def exposed_deltas(stage: int, data: StreamData) -> UnitDeltas:
    """Newly exposed units entering with their final values (= ``UnitDeltas.exposed``)."""
    n = len(data)
    return UnitDeltas(
        stage=np.full(n, stage, np.intp),
        variant=data.variant,
        new=np.ones(n, bool),
        before=data.values,
        after=data.values,
        segments=data.segments,
    )


def look_ends(n: int, batch: int) -> NDArray[np.intp]:
    """Units seen at each look: after every ``batch`` units, and after the last one."""
    if batch <= 0:
        raise ValueError(f"batch must be positive, got {batch}")
    ends = np.arange(batch, n + 1, batch, dtype=np.intp)
    if ends.size == 0 or ends[-1] != n:
        ends = np.append(ends, np.intp(n))
    return ends


def monitor_looks(
    layout: ExperimentLayout, stage: int, chunks: Iterable[StreamData], batch: int
) -> Iterator[tuple[int, ExperimentStats]]:
    """Feed a stream to :class:`UnitStatsAggregation` in batches; yield (units so far, stats)
    after every batch. A chunk's tail shorter than ``batch`` is a look of its own."""
    agg = UnitStatsAggregation(layout)
    stats = agg.initialize()
    total = 0
    for chunk in chunks:
        for start in range(0, len(chunk), batch):
            part = chunk.slice(start, start + batch)
            stats = agg.update(stats, exposed_deltas(stage, part))
            total += len(part)
            yield total, agg.result(stats)


def aa_data(layout: ExperimentLayout, stream: int, n_units: int) -> StreamData:
    """A/A stream ``stream``: control-model units, arms drawn i.i.d. with the stage's
    allocation (50/50 at the decision stage)."""
    cfg = layout.config
    seed = AA_SEED + stream
    units = simulate_units(n_units, seed=seed, treatment_share=0.0)
    allocation = expected_allocation(
        len(cfg.variants), DECISION_STAGE, cfg.variant_index(cfg.control)
    )
    rng = np.random.default_rng([seed, ASSIGN_KEY])
    variant = rng.choice(len(cfg.variants), size=n_units, p=allocation)
    return stream_data(layout, units, variant)


def treated_variant(cfg: ExperimentConfig, units: UnitData) -> NDArray[np.intp]:
    """The variant index of simulated units (``treatment`` 1 = the config's one treatment)."""
    (treatment,) = cfg.treatments
    return np.where(
        units.treatment == 1, cfg.variant_index(treatment), cfg.variant_index(cfg.control)
    ).astype(np.intp)


# ---------------------------------------------------------------------------------------------
# Vectorised verdicts: the engine's functions on cumulative sums, all looks at once
# ---------------------------------------------------------------------------------------------

GuardrailKey = tuple[str, str]  # (guardrail id, treatment variant)


def _arm_sums(
    data: StreamData, column: int, variant: int, ends: NDArray[np.intp]
) -> tuple[NDArray[np.int64], NDArray[np.float64], NDArray[np.float64]]:
    mask = data.variant == variant
    y = np.where(mask, data.values[:, column], 0.0)
    n = np.cumsum(mask, dtype=np.int64)[ends - 1]
    return n, np.cumsum(y)[ends - 1], np.cumsum(y * y)[ends - 1]


def _mean_bounds(
    cfg: ExperimentConfig,
    g: GuardrailConfig,
    data: StreamData,
    variant: int,
    ends: NDArray[np.intp],
    fixed_horizon: bool,
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Per look: the guardrail's interval as the engine computes it, and whether it exists."""
    layout = ExperimentLayout(cfg)
    spec, _ = metric_specs(layout, g.metric)
    if spec.kind != "mean" or g.margin_kind != "absolute":
        raise NotImplementedError(f"vectorised verdicts cover absolute mean guardrails: {g.id}")
    alpha = guardrail_alpha(cfg, g.id)
    floor = max(cfg.sequential.min_units_per_variant, 2)
    (column,) = spec.columns
    n_t, s_t, q_t = _arm_sums(data, column, variant, ends)
    n_c, s_c, q_c = _arm_sums(data, column, cfg.variant_index(cfg.control), ends)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Moments.variance (ddof=1, clipped at 0) over n: the variance of each arm's mean
        v_t = np.maximum(q_t - s_t * s_t / n_t, 0.0) / (n_t - 1) / n_t
        v_c = np.maximum(q_c - s_c * s_c / n_c, 0.0) / (n_c - 1) / n_c
        effect = s_t / n_t - s_c / n_c
        # guardrails floor each arm's variance at the pooled within-arm one, or with both
        # arms constant at all units' (monitor.estimators.conservative)
        n = n_t + n_c
        pooled = ((n_t - 1) * v_t * n_t + (n_c - 1) * v_c * n_c) / (n - 2)
        pooled = np.where(pooled == 0, n_t * n_c * effect * effect / (n * (n - 1)), pooled)
        v_t = np.where(v_t < pooled / n_t, pooled / n_t, v_t)
        v_c = np.where(v_c < pooled / n_c, pooled / n_c, v_c)
        variance = v_t + v_c
    # below the floor no stage is estimated; combine_stages drops non-positive variances
    ok = (np.minimum(n_t, n_c) >= floor) & np.isfinite(effect) & np.isfinite(variance)
    ok &= variance > 0
    if fixed_horizon:
        # the engine's own z: FixedHorizon's half-width at a standard error of 1
        z = FixedHorizon(alpha).interval(DiffEstimate(0.0, 1.0, 1, 1)).upper
        halfwidth = z * np.sqrt(variance)
    else:
        rho2 = optimal_rho2(alpha, cfg.sequential.tuning_units)
        halfwidth = asymptotic_cs_halfwidth(variance, n_t + n_c, alpha, rho2)
    return effect - halfwidth, effect + halfwidth, ok


def _quantile_bounds(
    cfg: ExperimentConfig,
    g: GuardrailConfig,
    data: StreamData,
    variant: int,
    ends: NDArray[np.intp],
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Per look: the quantile CS from the sketch counts (the same in fixed-horizon mode)."""
    layout = ExperimentLayout(cfg)
    spec = sketch_spec(layout, g.metric)
    assert g.quantile is not None
    alpha = guardrail_alpha(cfg, g.id)
    floor = max(cfg.sequential.min_units_per_variant, 2)
    bins = spec.index(data.values[:, layout.column(g.metric)])
    control = cfg.variant_index(cfg.control)
    counts = {v: np.zeros(spec.n_bins, np.int64) for v in (variant, control)}
    lower, upper = np.full(ends.size, np.nan), np.full(ends.size, np.nan)
    ok = np.zeros(ends.size, bool)
    start = 0
    for i, end in enumerate(ends.tolist()):
        for v, c in counts.items():
            c += np.bincount(bins[start:end][data.variant[start:end] == v], minlength=spec.n_bins)
        start = end
        t, c = counts[variant], counts[control]
        if min(int(t.sum()), int(c.sum())) < floor:
            continue
        ci = quantile_difference_cs(spec, t, c, g.quantile, alpha)
        lower[i], upper[i], ok[i] = ci.lower, ci.upper, True
    return lower, upper, ok


def vector_verdicts(
    cfg: ExperimentConfig,
    data: StreamData,
    batch: int,
    *,
    fixed_horizon: bool = False,
    quantile_cache: dict[GuardrailKey, Any] | None = None,
) -> dict[GuardrailKey, list[Verdict]]:
    """Every guardrail's verdict at every look of a single-stage stream, as
    :func:`build_readout` gives them (asymptotic CS, or fixed-horizon z with
    ``fixed_horizon``; quantile guardrails use their CS in both, as the engine does).

    Limited to what the seed config needs: ``asymptotic_cs``, absolute margins, mean
    guardrails on metrics without CUPED, and quantile guardrails. ``quantile_cache`` lets a
    caller reuse the quantile intervals between the sequential and the fixed-horizon call.
    """
    if cfg.sequential.method != "asymptotic_cs":
        raise NotImplementedError("vectorised verdicts cover method asymptotic_cs")
    ends = look_ends(len(data), batch)
    out: dict[GuardrailKey, list[Verdict]] = {}
    for g in cfg.guardrails:
        for name in cfg.treatments:
            v = cfg.variant_index(name)
            if g.statistic == "quantile":
                key = (g.id, name)
                if quantile_cache is not None and key in quantile_cache:
                    bounds = quantile_cache[key]
                else:
                    bounds = _quantile_bounds(cfg, g, data, v, ends)
                    if quantile_cache is not None:
                        quantile_cache[key] = bounds
                lower, upper, ok = bounds
            else:
                lower, upper, ok = _mean_bounds(cfg, g, data, v, ends, fixed_horizon)
            out[(g.id, name)] = [
                verdict_for(g.harmful_direction, g.margin, Interval(lo, hi))[0]
                if good
                else "inconclusive"
                for lo, hi, good in zip(lower.tolist(), upper.tolist(), ok.tolist(), strict=True)
            ]
    return out


def vector_srm(cfg: ExperimentConfig, data: StreamData, batch: int) -> NDArray[np.bool_]:
    """The SRM alarm at every look, as ``build_readout``'s test of the decision stage."""
    ends = look_ends(len(data), batch)
    onehot = data.variant[:, None] == np.arange(len(cfg.variants))[None, :]
    counts = np.cumsum(onehot, axis=0, dtype=np.int64)[ends - 1]
    expected = expected_allocation(
        len(cfg.variants), DECISION_STAGE, cfg.variant_index(cfg.control)
    )
    alpha = cfg.srm_alpha / len(cfg.stages)
    log_bf = log_bayes_factors(counts, expected)
    mismatch: NDArray[np.bool_] = np.exp(-np.maximum(log_bf, 0.0)) <= alpha
    return mismatch


def aa_vectorised(streams: Iterable[int], n_units: int, batch: int) -> dict[str, Any]:
    """A/A false-rollback and SRM rates over ``streams`` from the vectorised verdicts.

    Per stream: ever a guardrail breach with the seed's margins (sequential), with margins 0
    (sequential, and naive fixed-horizon), ever an SRM alarm; ``which`` lists the streams.
    """
    cfg, cfg0 = seed_config(), zero_margin_config()
    layout = ExperimentLayout(cfg)
    ever: dict[str, list[bool]] = {m: [] for m in (*MODES, "srm")}
    streams_seen: list[int] = []
    for stream in streams:
        streams_seen.append(stream)
        data = aa_data(layout, stream, n_units)
        cache_: dict[GuardrailKey, Any] = {}  # quantile intervals: margins do not move them
        runs = {
            "seq_seed": vector_verdicts(cfg, data, batch, quantile_cache=cache_),
            "seq_zero": vector_verdicts(cfg0, data, batch, quantile_cache=cache_),
            "naive_zero": vector_verdicts(
                cfg0, data, batch, fixed_horizon=True, quantile_cache=cache_
            ),
        }
        for mode, verdicts in runs.items():
            ever[mode].append(any("breach" in vs for vs in verdicts.values()))
        ever["srm"].append(bool(vector_srm(cfg, data, batch).any()))
    ids = list(streams_seen)
    n = len(ids)
    return {
        "streams": n,
        "looks": int(look_ends(n_units, batch).size),
        "rates": {k: sum(v) / n for k, v in ever.items()},
        "counts": {k: int(sum(v)) for k, v in ever.items()},
        "which": {k: [s for s, hit in zip(ids, v, strict=True) if hit] for k, v in ever.items()},
    }


# ---------------------------------------------------------------------------------------------
# A/A through the engine, look by look
# ---------------------------------------------------------------------------------------------


def _key(r: Any) -> str:
    return f"{r.guardrail}:{r.variant}"


def aa_engine_stream(stream: int, n_units: int, batch: int) -> dict[str, Any]:
    """One A/A stream read out by :func:`build_readout` after every batch.

    Modes: ``seq_seed`` (the seed config as deployed), ``seq_zero`` (every margin 0) and
    ``naive_zero`` (margins 0, fixed-horizon z intervals at the same per-guardrail alphas).
    ``naive_seed`` applies the seed's margins to the naive intervals with
    :func:`verdict_for` (margins do not change intervals). The vectorised verdicts are
    compared with the engine's at every look.
    """
    cfg, cfg0 = seed_config(), zero_margin_config()
    layout = ExperimentLayout(cfg)
    stage = decision_stage(cfg)
    data = aa_data(layout, stream, n_units)
    margins = {g.id: g.margin for g in cfg.guardrails}
    runs = {"seq_seed": (cfg, False), "seq_zero": (cfg0, False), "naive_zero": (cfg0, True)}

    decisions: dict[str, list[tuple[str, str]]] = {m: [] for m in runs}
    verdicts: dict[str, dict[str, list[str]]] = {m: {} for m in (*runs, "naive_seed")}
    srm: list[bool] = []
    seconds = dict.fromkeys(runs, 0.0)
    units: list[int] = []
    for total, stats in monitor_looks(layout, stage, [data], batch):
        units.append(total)
        readouts: dict[str, Readout] = {}
        for mode, (c, fixed) in runs.items():
            t0 = time.perf_counter()
            readouts[mode] = r = build_readout(c, stats, stage, fixed_horizon=fixed)
            seconds[mode] += time.perf_counter() - t0
            decisions[mode].append((r.decision, r.reason))
            for g in r.guardrails:
                verdicts[mode].setdefault(_key(g), []).append(g.verdict)
        for g in readouts["naive_zero"].guardrails:
            v = (
                verdict_for(g.harmful_direction, margins[g.guardrail], Interval(g.lower, g.upper))[
                    0
                ]
                if g.reason not in ("insufficient_units", "no_variance", "non_finite")
                else g.verdict
            )
            verdicts["naive_seed"].setdefault(_key(g), []).append(v)
        srm.append(readouts["seq_seed"].srm_mismatch)

    out: dict[str, Any] = {"stream": stream, "looks": len(units), "units": n_units}
    for mode in runs:
        rollbacks = [
            (u, why) for u, (d, why) in zip(units, decisions[mode], strict=True) if d == "rollback"
        ]
        guardrail = [u for u, why in rollbacks if why == "guardrail_breach"]
        out[mode] = {
            "rollback": bool(rollbacks),
            "rollback_guardrail": bool(guardrail),
            "rollback_primary": any(why == "primary_harmed" for _, why in rollbacks),
            "first_guardrail_rollback_units": guardrail[0] if guardrail else None,
            "pause_srm": any(d == ("pause", "srm") for d in decisions[mode]),
            "breach": {k: "breach" in vs for k, vs in verdicts[mode].items()},
        }
    out["naive_seed"] = {
        "rollback_guardrail": any("breach" in vs for vs in verdicts["naive_seed"].values()),
        "breach": {k: "breach" in vs for k, vs in verdicts["naive_seed"].items()},
    }
    out["srm_mismatch"] = any(srm)
    out["readout_seconds"] = seconds

    # cross-check: the vectorised verdicts must equal the engine's at every look
    cache_: dict[GuardrailKey, Any] = {}
    vector = {
        "seq_seed": vector_verdicts(cfg, data, batch, quantile_cache=cache_),
        "seq_zero": vector_verdicts(cfg0, data, batch, quantile_cache=cache_),
        "naive_zero": vector_verdicts(cfg0, data, batch, fixed_horizon=True, quantile_cache=cache_),
    }
    compared = disagree = 0
    for mode, per_key in vector.items():
        for (gid, variant), vs in per_key.items():
            engine = verdicts[mode][f"{gid}:{variant}"]
            compared += len(vs)
            disagree += sum(a != b for a, b in zip(vs, engine, strict=True))
    srm_vec = vector_srm(cfg, data, batch).tolist()
    compared += len(srm_vec)
    disagree += sum(a != b for a, b in zip(srm_vec, srm, strict=True))
    out["xcheck"] = {"compared": compared, "disagree": disagree}
    return out


# ---------------------------------------------------------------------------------------------
# Power
# ---------------------------------------------------------------------------------------------


def power_chunks(
    layout: ExperimentLayout, stream: int, max_units: int, chunk: int
) -> Iterator[StreamData]:
    """Units with the model's treatment effects, 50/50, drawn lazily in chunks from one
    generator (units are i.i.d., so a stream may stop at its first breach)."""
    cfg = layout.config
    rng = np.random.default_rng(POWER_SEED + stream)
    drawn = 0
    while drawn < max_units:
        n = min(chunk, max_units - drawn)
        units = simulate_units(n, seed=rng, treatment_share=DECISION_STAGE / 100.0)
        drawn += n
        yield stream_data(layout, units, treated_variant(cfg, units))


def power_stream(stream: int, guardrail: str, max_units: int, batch: int) -> dict[str, Any]:
    """Units (both arms) at the first look where ``guardrail`` breaches with margin 0."""
    cfg0 = zero_margin_config()
    layout = ExperimentLayout(cfg0)
    stage = decision_stage(cfg0)
    chunk = batch * max(1, 20_000 // batch)
    looks = 0
    for total, stats in monitor_looks(
        layout, stage, power_chunks(layout, stream, max_units, chunk), batch
    ):
        looks += 1
        r = build_readout(cfg0, stats, stage)
        g = next(x for x in r.guardrails if x.guardrail == guardrail)
        if g.verdict == "breach":
            return {"stream": stream, "units": total, "looks": looks}
    return {"stream": stream, "units": None, "looks": looks}


def fixed_horizon_units(
    alpha: float, var_t: float, var_c: float, delta: float, power: float = 0.8
) -> float:
    """Total units (both arms, 50/50) for a two-sided z-test at ``alpha`` to reach ``power``:
    ``2 (z_{1-alpha/2} + z_power)**2 (var_t + var_c) / delta**2`` (the engine's
    :class:`FixedHorizon` interval, one look)."""
    z = float(sps.norm.ppf(1 - alpha / 2) + sps.norm.ppf(power))
    return 2.0 * z * z * (var_t + var_c) / (delta * delta)


def truth(n_units: int, chunk: int = 1_000_000) -> dict[str, dict[str, float]]:
    """Per-unit variances and the effect of each power metric from a large 50/50 draw."""
    rng = np.random.default_rng(TRUTH_SEED)
    acc = {m: np.zeros((2, 3)) for m in POWER_GUARDRAILS}  # arm x (n, sum, sum of squares)
    for start in range(0, n_units, chunk):
        units = simulate_units(min(chunk, n_units - start), seed=rng, treatment_share=0.5)
        for m in POWER_GUARDRAILS:
            y = units.outcome(m)
            for arm in (0, 1):
                ya = y[units.treatment == arm]
                acc[m][arm] += (ya.size, ya.sum(), np.square(ya).sum())
    out = {}
    for m, a in acc.items():
        n, s, q = a[:, 0], a[:, 1], a[:, 2]
        mean = s / n
        var = (q - s * s / n) / (n - 1)
        out[m] = {
            "n": float(n.sum()),
            "var_control": float(var[0]),
            "var_treatment": float(var[1]),
            "delta": float(mean[1] - mean[0]),
            "delta_se": float(math.sqrt(var[0] / n[0] + var[1] / n[1])),
        }
    return out


# ---------------------------------------------------------------------------------------------
# CUPED
# ---------------------------------------------------------------------------------------------


def _row(readout: Readout, metric: str, kind: str) -> MetricRow:
    return next(
        r
        for r in readout.metrics
        if r.metric == metric and r.kind == kind and r.scale == "absolute"
    )


def cuped_figures(seed: int, n_units: int = 80_000, metric: str = "tasks") -> dict[str, float]:
    """The engine's fixed-horizon ``mean`` and ``cuped`` rows of ``metric`` for
    ``simulate_units(n_units, seed=seed)`` (seed 501 at 80,000 is the notebook's run)."""
    cfg = seed_config()
    layout = ExperimentLayout(cfg)
    stage = decision_stage(cfg)
    units = simulate_units(n_units, seed=seed)
    data = stream_data(layout, units, treated_variant(cfg, units))
    *_, (_, stats) = monitor_looks(layout, stage, [data], 20_000)
    readout = build_readout(cfg, stats, stage, fixed_horizon=True)
    plain, cuped = _row(readout, metric, "mean"), _row(readout, metric, "cuped")
    return {
        "seed": seed,
        "n": n_units,
        "effect": plain.effect,
        "se": plain.std_error,
        "effect_cuped": cuped.effect,
        "se_cuped": cuped.std_error,
        "theta": cuped.theta,
        "se_reduction": 1.0 - cuped.std_error / plain.std_error,
    }


# ---------------------------------------------------------------------------------------------
# Running and reporting
# ---------------------------------------------------------------------------------------------


def _call(job: tuple[Callable[..., T], tuple[Any, ...]]) -> T:
    fn, args = job
    return fn(*args)


def run_parallel(
    fn: Callable[..., T], jobs: Sequence[tuple[Any, ...]], workers: int, label: str
) -> list[T]:
    """``fn(*args)`` for every job, in job order, printing progress about every 10%."""
    out: dict[int, T] = {}
    t0 = time.perf_counter()
    step = max(1, len(jobs) // 10)

    def progress() -> None:
        done = len(out)
        elapsed = time.perf_counter() - t0
        eta = elapsed / done * (len(jobs) - done)
        if done % step == 0 or done == len(jobs):
            print(
                f"  {label}: {done}/{len(jobs)}  {elapsed:6.1f}s elapsed, ~{eta:4.0f}s to go",
                flush=True,
            )

    if workers <= 1:
        for i, args in enumerate(jobs):
            out[i] = fn(*args)
            progress()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(_call, (fn, args)): i for i, args in enumerate(jobs)}
            for fut in as_completed(futures):
                out[futures[fut]] = fut.result()
                progress()
    return [out[i] for i in range(len(jobs))]


def _rate(k: int, n: int) -> dict[str, float]:
    p = k / n if n else math.nan
    return {
        "count": k,
        "streams": n,
        "rate": p,
        "mc_se": math.sqrt(p * (1 - p) / n) if n else math.nan,
    }


def summarise_aa(rows: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    n = len(rows)
    out: dict[str, Any] = {
        "streams": n,
        "looks_per_stream": rows[0]["looks"] if rows else 0,
        "alpha": alpha,
        "alpha_plus_3_mc_se": alpha + 3 * math.sqrt(alpha * (1 - alpha) / n),
    }
    for mode in (*MODES, "naive_seed"):
        rs = [r[mode] for r in rows]
        block: dict[str, Any] = {
            "guardrail_rollback": _rate(sum(r["rollback_guardrail"] for r in rs), n),
            "per_guardrail": {
                k: _rate(sum(r["breach"][k] for r in rs), n) for k in rs[0]["breach"]
            },
        }
        if mode != "naive_seed":
            block["any_rollback"] = _rate(sum(r["rollback"] for r in rs), n)
            block["primary_harmed_rollback"] = _rate(sum(r["rollback_primary"] for r in rs), n)
            block["srm_pause"] = _rate(sum(r["pause_srm"] for r in rs), n)
            firsts = [
                r["first_guardrail_rollback_units"]
                for r in rs
                if r["first_guardrail_rollback_units"] is not None
            ]
            block["first_guardrail_rollback_units"] = sorted(firsts)
        out[mode] = block
    out["srm_mismatch"] = _rate(sum(r["srm_mismatch"] for r in rows), n)
    seconds = {m: sum(r["readout_seconds"][m] for r in rows) for m in MODES}
    looks = sum(r["looks"] for r in rows)
    out["ms_per_readout"] = {m: 1000 * s / looks for m, s in seconds.items()}
    out["xcheck"] = {
        "compared": sum(r["xcheck"]["compared"] for r in rows),
        "disagree": sum(r["xcheck"]["disagree"] for r in rows),
    }
    return out


def summarise_power(
    rows: list[dict[str, Any]],
    max_units: int,
    batch: int,
    alpha: float,
    true: dict[str, float],
    seed_delta: float,
) -> dict[str, Any]:
    hit = np.array([r["units"] if r["units"] is not None else np.inf for r in rows], float)
    n_fixed = fixed_horizon_units(alpha, true["var_treatment"], true["var_control"], true["delta"])
    lo = fixed_horizon_units(
        alpha, true["var_treatment"], true["var_control"], true["delta"] + 2 * true["delta_se"]
    )
    hi = fixed_horizon_units(
        alpha, true["var_treatment"], true["var_control"], true["delta"] - 2 * true["delta_se"]
    )
    n_seed = fixed_horizon_units(alpha, true["var_treatment"], true["var_control"], seed_delta)
    median = float(np.quantile(hit, 0.5, method="inverted_cdf"))
    p80 = float(np.quantile(hit, 0.8, method="inverted_cdf"))
    return {
        "streams": len(rows),
        "max_units": max_units,
        "batch": batch,
        "alpha": alpha,
        "detected_by_max_units": float(np.isfinite(hit).mean()),
        # None: fewer than half (80%) of the streams detected by max_units
        "median_units_to_detection": _finite(median),
        "p80_units_to_detection": _finite(p80),
        "quartiles_units_to_detection": [
            _finite(float(np.quantile(hit, q, method="inverted_cdf"))) for q in (0.25, 0.5, 0.75)
        ],
        "truth": true,
        "fixed_horizon_units_80pct_power": n_fixed,
        "fixed_horizon_units_2se_range": [lo, hi],
        "seed_published_delta": seed_delta,
        "fixed_horizon_units_at_seed_delta": n_seed,
        "median_over_fixed": _finite(median / n_fixed),
        "p80_over_fixed": _finite(p80 / n_fixed),
    }


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def summarise_cuped(notebook: dict[str, float], seeds: list[dict[str, float]]) -> dict[str, Any]:
    red = np.array([s["se_reduction"] for s in seeds])
    theta = np.array([s["theta"] for s in seeds])
    published = SEED_EFFECTS["cuped"]
    return {
        "notebook_run": notebook,
        "published": {
            "theta": published["theta"],
            "se_reduction": published["se_reduction"],
            "se": SEED_EFFECTS["metrics"]["tasks"]["se"],
            "se_cuped": published["se"],
        },
        "seeds": {
            "count": len(seeds),
            "first_seed": seeds[0]["seed"] if seeds else None,
            "n": seeds[0]["n"] if seeds else None,
            "se_reduction_mean": float(red.mean()),
            "se_reduction_sd": float(red.std(ddof=1)) if red.size > 1 else math.nan,
            "se_reduction_min": float(red.min()),
            "se_reduction_max": float(red.max()),
            "theta_mean": float(theta.mean()),
        },
    }


def pct(x: float, digits: int = 1) -> str:
    return f"{100 * x:.{digits}f}%"


def render_markdown(results: dict[str, Any]) -> str:
    """The Calibration tables for bench/README.md."""
    p = results["parameters"]
    runtime = results["runtime_seconds"]
    lines = [
        f"Command: `{results['command']}` ({results['date']}; {runtime['total']:.0f} s "
        f"with {results['workers']} worker processes).",
        "",
    ]
    aa = results.get("aa")
    if aa:
        lines += [
            f"**A/A** ({runtime['aa']:.0f} s): {aa['streams']} streams of {p['units']:,} "
            f"units, `build_readout` after every batch of {p['batch']} ({aa['looks_per_stream']}"
            f" looks; the engine estimates nothing below 200 units per arm). Family-wise alpha "
            f"{aa['alpha']:g}; acceptance bound alpha + 3 MC s.e. = "
            f"{pct(aa['alpha_plus_3_mc_se'])}.",
            "",
            "| intervals, same streams and looks | margins | false rollback (any guardrail) "
            "| MC s.e. |",
            "|---|---|---|---|",
        ]
        table = [
            ("engine: anytime-valid (asymptotic CS)", "seed", "seq_seed"),
            ("engine: anytime-valid (asymptotic CS)", "0", "seq_zero"),
            ("naive: fixed-horizon z at every look", "seed", "naive_seed"),
            ("naive: fixed-horizon z at every look", "0", "naive_zero"),
        ]
        for label, margin, mode in table:
            r = aa[mode]["guardrail_rollback"]
            lines.append(
                f"| {label} | {margin} | {pct(r['rate'])} ({r['count']}/{r['streams']}) "
                f"| {pct(r['mc_se'])} |"
            )
        zero, naive = aa["seq_zero"]["per_guardrail"], aa["naive_zero"]["per_guardrail"]
        per_guardrail = ", ".join(
            f"{k.split(':')[0]} {pct(zero[k]['rate'])} vs {pct(naive[k]['rate'])}" for k in zero
        )
        xc = aa["xcheck"]
        ms = ", ".join(f"{m} {v:.1f} ms" for m, v in aa["ms_per_readout"].items())
        lines += [
            "",
            f"- Per guardrail at margins 0, engine vs naive: {per_guardrail} (each guardrail's "
            f"share of alpha: {results['guardrail_alpha']['latency_ms']:g}).",
            f"- Rollbacks for any reason: {pct(aa['seq_seed']['any_rollback']['rate'])} with "
            f"the seed's margins, {pct(aa['seq_zero']['any_rollback']['rate'])} at margins 0; "
            f"the difference from the guardrail column is the final stage's \"primary proven "
            f'worse" rule ({pct(aa["seq_zero"]["primary_harmed_rollback"]["rate"])}), which '
            f"spends primary_alpha, not the guardrails' alpha.",
            f"- False SRM pause: {pct(aa['seq_seed']['srm_pause']['rate'])} (an SRM alarm at "
            f"any look: {pct(aa['srm_mismatch']['rate'])}; SRM alpha "
            f"{results['srm_alpha_per_stage']:g} at each stage).",
            f"- Vectorised verdicts (the CI test's) equal the engine's on "
            f"{xc['compared'] - xc['disagree']:,} of {xc['compared']:,} (look, guardrail or "
            f"SRM) pairs. `build_readout` per look: {ms}.",
            "",
        ]
    power = results.get("power")
    if power:
        lines += [
            f"**Power** ({runtime['power']:.0f} s): margin 0, the model's true effects, "
            "50/50 at the 50% stage; units are both arms. Fixed-horizon n: two-sided z at the "
            "same alpha, 80% power, from a "
            f"{next(iter(power.values()))['truth']['n']:,.0f}-unit draw.",
            "",
            "| guardrail (alpha) | true effect | streams, batch | detected by N | median units "
            "| 80th pct units | fixed-horizon n | median / n, 80th pct / n |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for gid, s in power.items():
            eff = s["truth"]["delta"]
            eff_s = f"+{eff:.2f} ms" if gid.startswith("latency") else f"+{100 * eff:.3f} pp"
            med, p80 = s["median_units_to_detection"], s["p80_units_to_detection"]
            lines.append(
                f"| {gid} ({s['alpha']:g}) | {eff_s} | {s['streams']}, {s['batch']:,} | "
                f"{pct(s['detected_by_max_units'])} by {s['max_units']:,} | "
                f"{_num(med)} | {_num(p80)} | "
                f"{s['fixed_horizon_units_80pct_power']:,.0f} | "
                f"{_ratio(s['median_over_fixed'])}, {_ratio(s['p80_over_fixed'])} |"
            )
        lines.append("")
    cuped = results.get("cuped")
    if cuped:
        nb, sd = cuped["notebook_run"], cuped["seeds"]
        lines += [
            f"**CUPED** on tasks with pre_tasks_28, the engine's fixed-horizon `mean` and "
            f"`cuped` rows. Seed 501, 80,000 users (the notebook's run): se {nb['se']:.6f} -> "
            f"{nb['se_cuped']:.6f}, **{pct(nb['se_reduction'])} smaller**, theta "
            f"{nb['theta']:.3f} (notebook: 26.2%, 0.238). Seeds 0-{sd['count'] - 1}, "
            f"{sd['n']:,} users each: mean reduction {pct(sd['se_reduction_mean'])} "
            f"(sd {pct(sd['se_reduction_sd'])}, range {pct(sd['se_reduction_min'])} to "
            f"{pct(sd['se_reduction_max'])}).",
            "",
        ]
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def _ratio(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.calibration",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--streams", type=int, default=500, help="A/A streams")
    parser.add_argument("--units", type=int, default=20_000, help="units per A/A stream")
    parser.add_argument("--batch", type=int, default=200, help="units per batch (A/A)")
    parser.add_argument("--power-streams", type=int, default=200)
    parser.add_argument("--latency-units", type=int, default=5_000)
    parser.add_argument("--latency-batch", type=int, default=50)
    parser.add_argument("--error-units", type=int, default=400_000)
    parser.add_argument("--error-batch", type=int, default=1_000)
    parser.add_argument(
        "--truth-units",
        type=int,
        default=4_000_000,
        help="units of the large draw giving the fixed-horizon n's inputs",
    )
    parser.add_argument("--cuped-seeds", type=int, default=50)
    parser.add_argument("--sections", default="aa,power,cuped")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calibration.json")
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="also rewrite the calibration block of this README",
    )
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="JSON",
        help="compute nothing: print (and --readme) the tables of a results file",
    )
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    if args.render is not None:
        markdown = render_markdown(json.loads(args.render.read_text()))
        print(markdown)
        if args.readme is not None:
            replace_block(args.readme, "calibration", markdown)
        return 0

    cfg = seed_config()
    command = ".venv/bin/python -m bench.calibration " + " ".join(
        sys.argv[1:] if argv is None else list(argv)
    )
    results: dict[str, Any] = {
        "command": command.strip(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "workers": args.workers,
        "versions": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "machine": platform.machine(),
        },
        "config": str(CONFIG_PATH.relative_to(ROOT)),
        "alpha": cfg.alpha,
        "guardrail_alpha": {g.id: guardrail_alpha(cfg, g.id) for g in cfg.guardrails},
        "srm_alpha_per_stage": cfg.srm_alpha / len(cfg.stages),
        "tuning_units": cfg.sequential.tuning_units,
        "runtime_seconds": {},
    }
    t_all = time.perf_counter()

    if "aa" in sections:
        print(f"A/A: {args.streams} streams x {args.units} units, batch {args.batch}", flush=True)
        t0 = time.perf_counter()
        jobs = [(s, args.units, args.batch) for s in range(args.streams)]
        rows = run_parallel(aa_engine_stream, jobs, args.workers, "A/A")
        results["aa"] = summarise_aa(rows, cfg.alpha)
        results["runtime_seconds"]["aa"] = time.perf_counter() - t0

    if "power" in sections:
        t0 = time.perf_counter()
        print(f"truth: a {args.truth_units:,}-unit draw", flush=True)
        true = truth(args.truth_units)
        results["power"] = {}
        plan = {
            "latency_ms": (args.latency_units, args.latency_batch),
            "error_session": (args.error_units, args.error_batch),
        }
        for gid, (max_units, batch) in plan.items():
            print(
                f"power {gid}: {args.power_streams} streams, up to {max_units:,} units, "
                f"batch {batch}",
                flush=True,
            )
            power_jobs = [(s, gid, max_units, batch) for s in range(args.power_streams)]
            rows = run_parallel(power_stream, power_jobs, args.workers, f"power {gid}")
            metric = next(g.metric for g in cfg.guardrails if g.id == gid)
            results["power"][gid] = summarise_power(
                rows,
                max_units,
                batch,
                guardrail_alpha(cfg, gid),
                true[metric],
                SEED_EFFECTS["metrics"][metric]["effect"],
            )
        results["runtime_seconds"]["power"] = time.perf_counter() - t0

    if "cuped" in sections:
        t0 = time.perf_counter()
        print(f"CUPED: seed 501 and {args.cuped_seeds} seeds of 80,000", flush=True)
        notebook = cuped_figures(SEED_EFFECTS["seed"], SEED_EFFECTS["n"])
        seeds = run_parallel(
            cuped_figures, [(s, 80_000) for s in range(args.cuped_seeds)], args.workers, "CUPED"
        )
        results["cuped"] = summarise_cuped(notebook, seeds)
        results["runtime_seconds"]["cuped"] = time.perf_counter() - t0

    results["runtime_seconds"]["total"] = time.perf_counter() - t_all
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
    markdown = render_markdown(results)
    print()
    print(markdown)
    print(f"wrote {args.out}")
    if args.readme is not None:
        replace_block(args.readme, "calibration", markdown)
        print(f"updated {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
