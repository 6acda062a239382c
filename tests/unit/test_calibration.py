"""The engine's calibration on seed 000's model, at CI size (the full run: bench/calibration.py).

A/A: 500 streams of 20,000 control-model units split 50/50, read out after every batch of
200 (100 looks), the same streams and looks as ``python -m bench.calibration``. Reading them
all out with ``build_readout`` takes minutes, so the acceptance test uses the vectorised
verdicts (the engine's own interval, verdict and SRM functions on cumulative sums), and a
separate test replays streams through ``build_readout`` look by look to show that the
vectorised verdicts are the engine's, exactly, including streams that breach.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from statsmodels.stats.power import NormalIndPower

from bench.calibration import (
    aa_engine_stream,
    aa_vectorised,
    cuped_figures,
    decision_stage,
    exposed_deltas,
    fixed_horizon_units,
    look_ends,
    seed_config,
    stream_data,
    treated_variant,
)
from monitor.layout import ExperimentLayout
from monitor.unitstate import Assignment
from monitor.unitstats import UnitDeltas, UnitStatsAggregation
from monitor.workload import SEED_EFFECTS, simulate_units

STREAMS, UNITS, BATCH = 500, 20_000, 200


@pytest.fixture(scope="module")
def aa() -> dict[str, Any]:
    return aa_vectorised(range(STREAMS), UNITS, BATCH)


def test_streams_enter_the_engine_as_the_worker_would_feed_them() -> None:
    """Bench unit vectors and slots = Assignment rows through UnitDeltas.exposed."""
    cfg = seed_config()
    layout = ExperimentLayout(cfg)
    stage = decision_stage(cfg)
    units = simulate_units(300, seed=7)
    data = stream_data(layout, units, treated_variant(cfg, units))
    m = len(layout.metrics)
    assignments = [
        Assignment(
            int(data.variant[i]),
            stage,
            0.0,
            [float(getattr(units, name)[i]) for name in layout.metrics],
            [float(getattr(units, name)[i]) for name in layout.covariates],
            layout.segment_codes(
                {"segment": str(units.segment[i]), "device": str(units.device[i])}
            ),
        )
        for i in range(len(units))
    ]
    assert [a.segments for a in assignments] == data.segments.tolist()
    assert [a.values for a in assignments] == data.values[:, :m].tolist()
    agg = UnitStatsAggregation(layout)
    via_assignments = agg.update(agg.initialize(), UnitDeltas.exposed(layout, assignments))
    via_bench = agg.update(agg.initialize(), exposed_deltas(stage, data))
    assert via_bench == via_assignments


def test_looks_after_every_batch_and_at_the_end() -> None:
    assert look_ends(1000, 200).tolist() == [200, 400, 600, 800, 1000]
    assert look_ends(1050, 200).tolist() == [200, 400, 600, 800, 1000, 1050]


def test_aa_false_rollbacks_within_alpha_and_naive_z_tests_far_above(aa: dict[str, Any]) -> None:
    cfg = seed_config()
    alpha = cfg.alpha
    assert (aa["streams"], aa["looks"]) == (STREAMS, UNITS // BATCH)
    mc_bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / STREAMS)
    rates = aa["rates"]
    # the hard case: every margin 0, so a breach only needs the CS to exclude 0
    assert rates["seq_zero"] <= mc_bound
    # positive margins can only make a breach harder
    assert rates["seq_seed"] <= rates["seq_zero"]
    # the same streams, the same looks, the same per-guardrail alphas, fixed-horizon z
    # intervals: the false-rollback rate is a multiple of alpha, not within it
    assert rates["naive_zero"] > 2 * alpha
    assert rates["naive_zero"] > 5 * max(rates["seq_zero"], 1 / STREAMS)
    # SRM: a 50/50 split never trips the sequential test at its alpha of 0.001 / 5 stages
    srm_alpha = cfg.srm_alpha / len(cfg.stages)
    assert rates["srm"] <= srm_alpha + 3 * math.sqrt(srm_alpha * (1 - srm_alpha) / STREAMS)


def test_vectorised_verdicts_are_the_engines_look_by_look(aa: dict[str, Any]) -> None:
    """build_readout after every batch on streams that do and do not breach."""
    which = aa["which"]
    assert which["naive_zero"] and which["seq_zero"], "pick streams that breach"
    picks = sorted({0, which["naive_zero"][0], which["seq_zero"][0]})
    for stream in picks:
        r = aa_engine_stream(stream, UNITS, BATCH)
        looks = UNITS // BATCH
        # 3 modes x 4 guardrails, and the SRM test, at every look
        assert r["xcheck"] == {"compared": looks * (3 * 4 + 1), "disagree": 0}
        for mode in ("seq_seed", "seq_zero", "naive_zero"):
            # and the engine's decision rolls back exactly when a guardrail breaches
            assert r[mode]["rollback_guardrail"] == (stream in which[mode]), (stream, mode)


def test_fixed_horizon_sample_size_is_the_textbook_one() -> None:
    alpha, sd, delta = 0.0125, 50.0, 5.0
    per_arm = NormalIndPower().solve_power(effect_size=delta / sd, alpha=alpha, power=0.8)
    # statsmodels also counts the (negligible) far tail of the two-sided test
    assert fixed_horizon_units(alpha, sd**2, sd**2, delta) == pytest.approx(2 * per_arm, rel=1e-3)


def test_cuped_on_the_notebook_run_reduces_the_tasks_se_by_26_percent() -> None:
    """seed 501, 80,000 users, through the engine; the targets are the notebook's printout."""
    f = cuped_figures(SEED_EFFECTS["seed"], SEED_EFFECTS["n"])
    published = SEED_EFFECTS["cuped"]
    assert f["se"] == pytest.approx(SEED_EFFECTS["metrics"]["tasks"]["se"], abs=5e-7)
    assert f["se_reduction"] == pytest.approx(published["se_reduction"], abs=0.005)
    assert f["theta"] == pytest.approx(published["theta"], abs=0.001)
    assert f["effect_cuped"] == pytest.approx(published["effect"], abs=5e-4)
    assert np.isclose(f["se_cuped"], published["se"], atol=5e-4)
