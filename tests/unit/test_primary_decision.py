"""The final stage's primary decision: a primary proven worse rolls back at
``primary_alpha / 2``, so its interval rests on the guardrails' floored variances.

Found by an independent statistical review (2026-12-06, Monte Carlo through
``build_readout``): on Welch's variances, an A/A ramp to a 5% final stage with a
heavy-tailed primary rolled back 0.124 +- 0.010 of the time (1,000 ramps), and a rare
binary primary (0.2%) to a 10% final stage 0.094 +- 0.009, against 0.025: the small arm,
with few events or none of the large values, understates its own variance (Agresti &
Caffo 2000 on the Wald interval). On the floored variances: 0.000 in both.
"""

from __future__ import annotations

import math

import numpy as np

from monitor.config import ExperimentConfig, parse_config
from monitor.layout import ExperimentLayout
from monitor.readout import build_readout
from monitor.unitstats import ExperimentStats, UnitDeltas, UnitStatsAggregation


def _config() -> ExperimentConfig:
    return parse_config(
        """
experiments:
  - name: conv
    variants: [control, treatment]
    control: control
    stages: [1, 5, 100]
    primary: revenue
    metrics: [{name: revenue}]
    primary_alpha: 0.05
    sequential: {tuning_units: 10000, min_units_per_variant: 100}
    advance: {min_units_per_variant: 1000, min_duration_seconds: 0}
"""
    ).experiments[0]


def _batch(stage: int, treated: np.ndarray, values: np.ndarray) -> UnitDeltas:
    n = len(values)
    return UnitDeltas(np.full(n, stage, np.intp), treated.astype(np.intp), np.ones(n, bool),
                      values, values, np.empty((n, 0), np.intp))  # fmt: skip


def _revenue(rng: np.random.Generator, n: int) -> np.ndarray:
    """30% buyers, lognormal(0.5, 2) spend: heavy-tailed."""
    return np.where(rng.random((n, 1)) < 0.3, np.exp(rng.normal(0.5, 2.0, (n, 1))), 0.0)


def test_a_heavy_tailed_primary_rolls_back_an_aa_ramp_at_most_at_its_level() -> None:
    """A/A ramp 1% (40,000 units) then 5%, the final stage (ready at 1,000 units an arm),
    read out after every 1,000 units, 300 ramps. Welch's variances rolled back 0.12."""
    cfg = _config()
    layout = ExperimentLayout(cfg)
    ramps, rolled = 300, 0
    for i in range(ramps):
        rng = np.random.default_rng(40_000_000 + i)
        agg = UnitStatsAggregation(layout)
        stats = agg.initialize()
        hit = False
        for stage, n in ((0, 40_000), (1, 100_000)):
            for _ in range(n // 1000):
                treated = rng.random(1000) < cfg.stages[stage] / 100
                stats = agg.update(stats, _batch(stage, treated, _revenue(rng, 1000)))
                hit |= build_readout(cfg, stats, stage).decision == "rollback"
        rolled += hit
    level = cfg.primary_alpha / 2
    assert rolled / ramps <= level + 3 * math.sqrt(level * (1 - level) / ramps)


def _final_stage_stats(cfg: ExperimentConfig) -> ExperimentStats:
    layout = ExperimentLayout(cfg)
    agg = UnitStatsAggregation(layout)
    rng = np.random.default_rng(3)
    treated = rng.random(20_000) < 0.05
    return agg.update(agg.initialize(), _batch(1, treated, _revenue(rng, 20_000)))


def test_the_primary_row_is_the_floored_one_and_the_metric_table_keeps_welchs() -> None:
    cfg = _config()
    readout = build_readout(cfg, _final_stage_stats(cfg), 1)
    welch = next(
        r for r in readout.metrics
        if r.metric == "revenue" and r.kind == "mean" and r.scale == "absolute"
    )  # fmt: skip
    primary = readout.primary
    assert primary is not None and primary.metric == "revenue"
    assert primary.effect == welch.effect and primary.n_treatment == welch.n_treatment
    # the floor binds here: the small arm's own variance is below the pooled one
    assert primary.std_error > welch.std_error
    assert primary.lower < welch.lower and primary.upper > welch.upper
