"""The notebook workload: published seed-501 readout, regression injection, event contract."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from monitor.workload import (
    METRICS,
    SEED_EFFECTS,
    RampTraffic,
    UnitData,
    simulate_units,
    to_events,
    unit_totals,
)


def _diff_in_means(y: np.ndarray, treated: np.ndarray) -> tuple[float, float, float, float]:
    """Notebook section 5: (effect, se, treatment mean, control mean), ddof=1."""
    y_t, y_c = y[treated], y[~treated]
    se = np.sqrt(y_t.var(ddof=1) / y_t.size + y_c.var(ddof=1) / y_c.size)
    return float(y_t.mean() - y_c.mean()), float(se), float(y_t.mean()), float(y_c.mean())


@pytest.fixture(scope="module")
def seed_units() -> UnitData:
    return simulate_units(80_000, seed=501)


# --- notebook reproduction ---------------------------------------------------------------


def test_assignment_counts_and_share(seed_units: UnitData) -> None:
    treated = seed_units.treatment == 1
    assert len(seed_units) == SEED_EFFECTS["n"]
    assert int(treated.sum()) == SEED_EFFECTS["n_treatment"] == 39_937
    assert int((~treated).sum()) == SEED_EFFECTS["n_control"] == 40_063
    assert f"{treated.mean():.1%}" == "49.9%"


@pytest.mark.parametrize("metric", METRICS)
def test_published_metric_readout(seed_units: UnitData, metric: str) -> None:
    effect, se, treat_mean, control_mean = _diff_in_means(
        seed_units.outcome(metric), seed_units.treatment == 1
    )
    published = SEED_EFFECTS["metrics"][metric]
    # published values are printed to 6 decimals: agree to half a unit in the last place
    assert effect == pytest.approx(published["effect"], abs=5e-7)
    assert se == pytest.approx(published["se"], abs=5e-7)
    assert treat_mean == pytest.approx(published["treatment_mean"], abs=5e-7)
    assert control_mean == pytest.approx(published["control_mean"], abs=5e-7)


def test_published_cuped_readout(seed_units: UnitData) -> None:
    x, y = seed_units.pre_tasks_28, seed_units.tasks
    treated = seed_units.treatment == 1
    theta = np.cov(y, x, ddof=1)[0, 1] / np.var(x, ddof=1)
    adjusted = y - theta * (x - x.mean())
    effect, se, _, _ = _diff_in_means(adjusted, treated)
    _, se_unadj, _, _ = _diff_in_means(y, treated)
    cuped = SEED_EFFECTS["cuped"]
    assert f"{theta:.3f}" == f"{cuped['theta']:.3f}" == "0.238"
    assert f"{effect:.3f}" == f"{cuped['effect']:.3f}" == "0.286"
    assert f"{se:.3f}" == f"{cuped['se']:.3f}" == "0.010"
    assert f"{1 - se / se_unadj:.1%}" == "26.2%"


def test_generator_seed_matches_int_seed(seed_units: UnitData) -> None:
    again = simulate_units(80_000, seed=np.random.default_rng(501))
    for name in ("segment", "pre_revenue_28", "treatment", "tasks", "support_ticket"):
        np.testing.assert_array_equal(getattr(again, name), getattr(seed_units, name))


def test_unitdata_len_and_take(seed_units: UnitData) -> None:
    mask = seed_units.segment == "enterprise"
    sub = seed_units.take(mask)
    assert len(sub) == int(mask.sum())
    np.testing.assert_array_equal(sub.tasks, seed_units.tasks[mask])
    assert set(sub.segment.tolist()) == {"enterprise"}


def test_treatment_share_parameter() -> None:
    units = simulate_units(20_000, seed=3, treatment_share=0.1)
    share = units.treatment.mean()
    assert abs(share - 0.1) < 5 * np.sqrt(0.1 * 0.9 / 20_000)


# --- regression injection ----------------------------------------------------------------


def test_no_regression_is_identical(seed_units: UnitData) -> None:
    for regression in (None, {}, {"error_session": 0.0}):
        units = simulate_units(80_000, seed=501, regression=regression)
        for name in ("tasks", "revenue", "latency_ms", "error_session", "support_ticket"):
            np.testing.assert_array_equal(getattr(units, name), getattr(seed_units, name))


def test_error_regression_moves_treated_rate_by_delta(seed_units: UnitData) -> None:
    delta = 0.02
    hurt = simulate_units(80_000, seed=501, regression={"error_session": delta})
    treated = seed_units.treatment == 1
    np.testing.assert_array_equal(hurt.treatment, seed_units.treatment)
    # control and every other column untouched
    np.testing.assert_array_equal(hurt.error_session[~treated], seed_units.error_session[~treated])
    for name in ("tasks", "revenue", "latency_ms", "support_ticket", "pre_tasks_28"):
        np.testing.assert_array_equal(getattr(hurt, name), getattr(seed_units, name))
    # only upward flips, so units with an error keep it
    assert np.all(hurt.error_session >= seed_units.error_session)
    # true treated rate is p1 + delta: the extra flips are Binomial-like with mean n_t * delta
    n_t = int(treated.sum())
    flips = float((hurt.error_session - seed_units.error_session)[treated].sum())
    assert abs(flips - n_t * delta) < 5 * np.sqrt(n_t * delta * (1 - delta))
    effect, _, _, _ = _diff_in_means(hurt.error_session, treated)
    baseline = SEED_EFFECTS["metrics"]["error_session"]["effect"]
    assert abs(effect - (baseline + delta)) < 5 * np.sqrt(delta * (1 - delta) / n_t)


def test_binary_regression_nests_in_delta() -> None:
    small = simulate_units(30_000, seed=11, regression={"support_ticket": 0.01})
    large = simulate_units(30_000, seed=11, regression={"support_ticket": 0.03})
    assert np.all(large.support_ticket >= small.support_ticket)
    assert large.support_ticket.sum() > small.support_ticket.sum()


def test_continuous_regressions_shift_treated_exactly(seed_units: UnitData) -> None:
    shifts = {"latency_ms": 25.0, "tasks": -0.3, "revenue": -2.0}
    hurt = simulate_units(80_000, seed=501, regression=shifts)
    treated = seed_units.treatment == 1
    for metric, shift in shifts.items():
        base, new = seed_units.outcome(metric), hurt.outcome(metric)
        np.testing.assert_array_equal(new[~treated], base[~treated])
        np.testing.assert_allclose(new[treated] - base[treated], shift, atol=1e-9)
    np.testing.assert_array_equal(hurt.error_session, seed_units.error_session)


def test_unknown_regression_key_rejected() -> None:
    with pytest.raises(ValueError, match="unknown regression"):
        simulate_units(10, seed=1, regression={"crashes": 0.1})


# --- event contract ----------------------------------------------------------------------


def test_events_reproduce_unit_values_exactly(seed_units: UnitData) -> None:
    """Exact (==, not approximate) for every metric: sum metrics are split so that the
    in-order float sum from 0.0 equals the value; binary metrics emit 1.0 only for ones."""
    units = seed_units.take(np.arange(20_000))
    start, duration = 1_700_000_000.0, 14 * 86_400.0
    exposures, telemetry = to_events(
        units, experiment="workflow_assistant", start_ts=start, duration_s=duration, seed=7
    )
    assert len(exposures) == len(units)
    totals = unit_totals(exposures, telemetry)
    assert totals.unit_id == [f"u{i}" for i in range(len(units))]
    np.testing.assert_array_equal(
        totals.variant, np.where(units.treatment == 1, "treatment", "control")
    )
    for metric in METRICS:
        np.testing.assert_array_equal(totals.values[metric], units.outcome(metric))
    # per-metric numpy means per variant then match the UnitData means exactly
    treated = totals.variant == "treatment"
    assert totals.values["tasks"][treated].mean() == units.tasks[units.treatment == 1].mean()

    # splitting actually happens: tasks uses up to 3 events, revenue up to 2
    per_unit = Counter((e["unit_id"], e["metric"]) for e in telemetry)
    assert max(c for (_, m), c in per_unit.items() if m == "tasks") == 3
    assert max(c for (_, m), c in per_unit.items() if m == "revenue") == 2
    assert all(c == 1 for (_, m), c in per_unit.items() if m not in ("tasks", "revenue"))
    assert all(e["value"] == 1.0 for e in telemetry if e["metric"] == "error_session")


def test_event_timing_ids_and_shape(seed_units: UnitData) -> None:
    units = seed_units.take(np.arange(5_000))
    start, duration = 1_700_000_000.0, 3_600.0
    exposures, telemetry = to_events(
        units, experiment="wa", start_ts=start, duration_s=duration, seed=3
    )
    exposure_ts = {e["unit_id"]: e["ts"] for e in exposures}
    assert all(start <= ts <= start + duration * 0.5 for ts in exposure_ts.values())
    assert all(exposure_ts[e["unit_id"]] < e["ts"] <= start + duration for e in telemetry)
    stamps = [e["ts"] for e in telemetry]
    assert stamps == sorted(stamps)
    ids = [e["event_id"] for e in exposures] + [e["event_id"] for e in telemetry]
    assert len(ids) == len(set(ids))
    first = exposures[0]
    assert set(first) == {
        "event_id",
        "ts",
        "experiment",
        "unit_id",
        "variant",
        "attributes",
        "covariates",
    }
    assert set(first["attributes"]) == {"segment", "device", "region"}
    assert set(first["covariates"]) == {
        "pre_tasks_28",
        "pre_revenue_28",
        "pre_workflow_entries",
        "tenure_days",
    }
    assert all(type(v) is float for v in first["covariates"].values())
    assert set(telemetry[0]) == {"event_id", "ts", "unit_id", "metric", "value"}
    assert type(telemetry[0]["value"]) is float and type(telemetry[0]["ts"]) is float
    # deterministic
    again = to_events(units, experiment="wa", start_ts=start, duration_s=duration, seed=3)
    assert again == (exposures, telemetry)


def test_unit_totals_counts_unexposed_and_any() -> None:
    exposures = [
        {"unit_id": "a", "variant": "control"},
        {"unit_id": "b", "variant": "treatment"},
        {"unit_id": "a", "variant": "treatment"},  # duplicate exposure: first wins
    ]
    telemetry = [
        {"unit_id": "b", "metric": "error_session", "value": 1.0},
        {"unit_id": "b", "metric": "error_session", "value": 1.0},
        {"unit_id": "a", "metric": "tasks", "value": 0.5},
        {"unit_id": "a", "metric": "tasks", "value": 0.25},
        {"unit_id": "zz", "metric": "tasks", "value": 9.0},  # never exposed: ignored
    ]
    totals = unit_totals(exposures, telemetry, ["tasks", "error_session"])
    assert totals.unit_id == ["a", "b"]
    assert totals.variant.tolist() == ["control", "treatment"]
    assert totals.values["tasks"].tolist() == [0.75, 0.0]
    assert totals.values["error_session"].tolist() == [0.0, 1.0]


# --- streaming traffic -------------------------------------------------------------------


def test_ramp_traffic_batches() -> None:
    traffic = RampTraffic("wa", seed=9, start_user_id=100)
    exposures_1, telemetry_1 = traffic.next_batch(4_000, 0.05, now=1_000.0)
    exposures_2, telemetry_2 = traffic.next_batch(4_000, 0.5, now=2_000.0)
    ids = [e["unit_id"] for e in exposures_1 + exposures_2]
    assert len(ids) == len(set(ids)) == 8_000
    assert ids[0] == "u100"
    for exposures, share in ((exposures_1, 0.05), (exposures_2, 0.5)):
        observed = np.mean([e["variant"] == "treatment" for e in exposures])
        assert abs(observed - share) < 5 * np.sqrt(share * (1 - share) / len(exposures))
    assert all(e["ts"] == 1_000.0 for e in exposures_1)
    assert all(1_000.0 < e["ts"] < 1_001.0 for e in telemetry_1)
    assert all(2_000.0 < e["ts"] < 2_001.0 for e in telemetry_2)
    event_ids = [e["event_id"] for e in telemetry_1 + telemetry_2]
    assert len(event_ids) == len(set(event_ids))
    assert traffic.next_batch(0, 0.5, now=3_000.0) == ([], [])


def test_ramp_traffic_regression_changes_only_treated_errors() -> None:
    clean = RampTraffic("wa", seed=4)
    hurt = RampTraffic("wa", seed=4, regression={"error_session": 0.2})
    totals = []
    for traffic in (clean, hurt):
        exposures, telemetry = [], []
        for now in (0.0, 10.0):
            e, t = traffic.next_batch(3_000, 0.5, now=now)
            exposures += e
            telemetry += t
        totals.append(unit_totals(exposures, telemetry))
    base, bad = totals
    assert base.unit_id == bad.unit_id
    np.testing.assert_array_equal(base.variant, bad.variant)
    np.testing.assert_array_equal(base.values["tasks"], bad.values["tasks"])
    control = base.variant == "control"
    err_base, err_bad = base.values["error_session"], bad.values["error_session"]
    np.testing.assert_array_equal(err_base[control], err_bad[control])
    n_t = int((~control).sum())
    increase = err_bad[~control].mean() - err_base[~control].mean()
    assert abs(increase - 0.2) < 5 * np.sqrt(0.2 * 0.8 / n_t)
