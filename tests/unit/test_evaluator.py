"""The evaluator's exported decision: a fired rollback holds until the stage changes."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from alerts import keys
from monitor.aggregation import WindowMoments
from monitor.config import parse_config
from monitor.layout import ExperimentLayout
from monitor.moments import MomentArray
from monitor.unitstate import Assignment
from monitor.unitstats import ExperimentStats, UnitDeltas, UnitStatsAggregation
from streams.evaluator import Evaluator, rollback_causes
from streams.metrics import Metrics
from streams.partials import Partial
from streams.stagecache import StageCache

CONFIG = parse_config(
    """
experiments:
  - name: e
    variants: [control, treatment]
    control: control
    stages: [10, 50]
    metrics: [{name: err, aggregation: any}]
    guardrails: [{metric: err, harmful_direction: increase, margin: 0.005}]
    sequential: {tuning_units: 2000, min_units_per_variant: 100}
"""
)
LAYOUT = ExperimentLayout(CONFIG.experiments[0])


def stats(rate_t: float, n: int = 4000, seed: int = 0) -> ExperimentStats:
    rng = np.random.default_rng(seed)
    rows = [
        Assignment(v, 1, 0.0, [float(rng.random() < (rate_t if v else 0.02))])
        for v in (0, 1) for _ in range(n)
    ]  # fmt: skip
    agg = UnitStatsAggregation(LAYOUT)
    return agg.update(agg.initialize(), UnitDeltas.exposed(LAYOUT, rows))


def decision(registry: CollectorRegistry, d: str) -> float | None:
    return registry.get_sample_value("rampmon_experiment_decision", {"experiment": "e",
                                                                      "decision": d})  # fmt: skip


def test_a_rollback_holds_at_its_stage_and_clears_on_a_new_stage() -> None:
    registry = CollectorRegistry()
    stages = StageCache(CONFIG)
    stages.set_history("e", [(0.0, 50.0)])
    ev = Evaluator(CONFIG, Metrics(registry), stages, partitions=1)
    ev.accept(Partial("e", 0, 1, stats(0.10)))
    (first,) = ev.evaluate(now=100.0)
    assert first.decision == "rollback" and decision(registry, "rollback") == 1.0
    # the breach fades (e.g. the treatment was switched off): the verdict moves, the
    # exported decision does not
    ev.accept(Partial("e", 0, 2, stats(0.02, seed=1)))
    (second,) = ev.evaluate(now=101.0)
    assert second.decision != "rollback" and decision(registry, "rollback") == 1.0
    # a new stage is a new decision
    stages.set_history("e", [(0.0, 50.0), (102.0, 10.0)])
    (third,) = ev.evaluate(now=103.0)
    assert decision(registry, "rollback") == 0.0
    assert decision(registry, third.decision) == 1.0


def verdict(registry: CollectorRegistry, stage: str, v: str) -> float | None:
    labels = {"experiment": "e", "guardrail": "err", "metric": "err", "variant": "treatment",
              "stage": stage, "verdict": v}  # fmt: skip
    return registry.get_sample_value("rampmon_guardrail_verdict", labels)


def test_a_rollback_holds_while_the_ramp_is_off_and_its_breach_series_go() -> None:
    """Regression: after the automatic rollback to 0 the latch cleared (the stage "changed")
    and the stage-50 breach series stayed exported forever, keeping alert rules firing."""
    registry = CollectorRegistry()
    stages = StageCache(CONFIG)
    stages.set_history("e", [(0.0, 50.0)])
    ev = Evaluator(CONFIG, Metrics(registry), stages, partitions=1)
    ev.accept(Partial("e", 0, 1, stats(0.10)))
    (first,) = ev.evaluate(now=100.0)
    assert first.decision == "rollback" and verdict(registry, "50", "breach") == 1.0
    stages.set_history("e", [(0.0, 50.0), (100.5, 0.0)])  # the rollback turned the ramp off
    ev.evaluate(now=101.0)
    assert decision(registry, "rollback") == 1.0 and ev.status["e"].decision == "rollback"
    assert verdict(registry, "50", "breach") is None  # no stage in force: no guardrail series
    assert verdict(registry, "0", "breach") is None
    stages.set_history("e", [(0.0, 50.0), (100.5, 0.0), (200.0, 10.0)])
    (at_10,) = ev.evaluate(now=201.0)
    # the latch is gone; what remains is the engine's own verdict at 10% (with stages pooled,
    # the 50% breach still counts: a fixed feature is a new experiment, see README)
    assert ev.rolled_back.get("e") != 50.0 and ev.status["e"].decision == at_10.decision


def test_a_new_snapshot_is_due_at_once_and_the_timer_covers_the_rest() -> None:
    stages = StageCache(CONFIG)
    stages.set_history("e", [(0.0, 50.0)])
    ev = Evaluator(CONFIG, Metrics(CollectorRegistry()), stages, partitions=1)
    assert ev.take_changed() == set()
    ev.accept(Partial("e", 0, 2, stats(0.02)))
    assert ev.take_changed() == {"e"} and ev.take_changed() == set()
    ev.accept(Partial("e", 0, 1, stats(0.02)))  # older than the one held: not a change
    assert ev.take_changed() == set()
    # the periodic timer: experiments it (or a snapshot) has not read out for an interval
    assert ev.due(100.0, 1.0) == {"e"}
    (readout,) = ev.evaluate(100.0, only={"e"})
    assert readout.experiment == "e"
    assert ev.due(100.5, 1.0) == set() and ev.due(101.0, 1.0) == {"e"}
    assert ev.evaluate(101.0, only=set()) == []
    # an evaluation for any reason settles a pending change
    ev.accept(Partial("e", 0, 3, stats(0.02)))
    ev.evaluate(102.0)
    assert ev.take_changed() == set()
    ev.accept(Partial("e", 0, 4, stats(0.02)))
    ev.release([0])
    assert ev.take_changed() == set() and ev.due(200.0, 1.0) == set()


def test_a_snapshot_of_an_experiment_read_out_within_the_gap_waits_for_it() -> None:
    """Per experiment: one bound across experiments (2f7af56) held all but the first
    snapshot of a publish, one message per experiment, for the whole gap."""
    _, ev = at_fifty()
    ev.accept(Partial("e", 0, 2, stats(0.02)))
    assert ev.take_changed(100.0, 0.1) == {"e"}  # never evaluated: at once
    ev.evaluate(100.0, only={"e"})
    ev.accept(Partial("e", 0, 3, stats(0.02)))
    assert ev.take_changed(100.05, 0.1) == set()  # read out 0.05 s ago: kept for later
    assert ev.take_changed(100.15, 0.1) == {"e"}
    assert ev.take_changed(100.25, 0.1) == set()


def test_regression_a_wall_clock_stepped_back_does_not_stop_the_readouts() -> None:
    """Found in review of b8079bd: a readout stamped before a 60 s step back held every
    experiment (on arrival and on the periodic timer) until the clock passed the stamp."""
    _, ev = at_fifty()
    ev.accept(Partial("e", 0, 2, stats(0.02)))
    ev.evaluate(1000.0, only={"e"})
    ev.accept(Partial("e", 0, 3, stats(0.02)))
    assert ev.take_changed(940.0, 0.1) == {"e"}
    assert ev.due(940.0, 1.0) == {"e"}


@pytest.mark.parametrize(
    ("history", "token", "in_force", "read_out"),
    [
        ([], keys.NO_STAGE, 10.0, 10.0),  # never set: the first stage
        ([(0.0, 50.0)], "50.0", 50.0, 50.0),
        ([], "50.0", 50.0, 50.0),  # a hash without history (set by hand): the hash
        # a second writer's clock runs behind: the latest change by time is 50, the last
        # written (the hash) is 10 -- the stage in force is the hash, and the fence agrees
        ([(0.0, 10.0), (5.0, 50.0)], "10.0", 10.0, 10.0),
        # the worker's own rollback, stamped by a clock behind the operator's
        ([(990.0, 0.0), (1000.0, 50.0)], "0.0", 0.0, 50.0),
        ([(0.0, 50.0)], "junk", 50.0, 50.0),  # unreadable: the history; the fence refuses
        ([(0.0, 50.0)], "150", 50.0, 50.0),
        ([(0.0, 50.0)], "inf", 50.0, 50.0),
    ],
)
def test_the_stage_in_force_is_the_hash_as_read_with_the_history(
    history: list[tuple[float, float]], token: str, in_force: float, read_out: float
) -> None:
    """A decision's stage and its fence are one value: the stage hash, read with the
    history (streams.stagecache). Deciding on the history's latest change while fencing
    on the hash once let an advance at 50% through while the hash said 0 (review)."""
    stages = StageCache(CONFIG)
    stages.set_history("e", history, token)
    assert stages.current_percent("e") == in_force
    assert stages.evaluated_percent("e") == read_out
    assert stages.stage_token("e") == token


def at_fifty() -> tuple[CollectorRegistry, Evaluator]:
    """A fresh registry, and an evaluator of experiment ``e`` at its 50% stage."""
    registry = CollectorRegistry()
    stages = StageCache(CONFIG)
    stages.set_history("e", [(0.0, 50.0)])
    return registry, Evaluator(CONFIG, Metrics(registry), stages, partitions=1)


def test_series_come_back_after_a_release_and_a_new_assignment() -> None:
    """Series children are cached (streams.metrics.SeriesCache): a release clears the
    experiment's series, and a later evaluation must register them again, not set values
    on children the registry no longer holds."""
    registry, ev = at_fifty()
    units = {"experiment": "e", "variant": "treatment", "stage": "50", "metric": "err"}

    def exported() -> tuple[float | None, float | None, float | None]:
        return (
            registry.get_sample_value("rampmon_metric_units", units),
            decision(registry, "rollback"),
            verdict(registry, "50", "breach"),
        )

    ev.accept(Partial("e", 0, 1, stats(0.10)))
    ev.evaluate(now=100.0)
    assert exported() == (4000.0, 1.0, 1.0)
    ev.release([0])
    assert exported() == (None, None, None)
    ev.accept(Partial("e", 0, 2, stats(0.10, n=5000)))  # assigned back
    ev.evaluate(now=200.0)
    assert exported() == (5000.0, 1.0, 1.0)


def test_per_cell_series_are_the_cells_moments() -> None:
    registry, ev = at_fifty()
    s = stats(0.05)
    ev.accept(Partial("e", 0, 1, s))
    ev.evaluate(now=100.0)
    for si, stage in enumerate(("10", "50")):
        for vi, variant in enumerate(("control", "treatment")):
            labels = {"experiment": "e", "variant": variant, "stage": stage, "metric": "err"}
            cell = s.units.cell(si, vi).moments(0)
            mean = registry.get_sample_value("rampmon_metric_mean", labels)
            sd = registry.get_sample_value("rampmon_metric_stddev", labels)
            assert registry.get_sample_value("rampmon_metric_units", labels) == cell.n
            if cell.n < 2:  # the 10% stage has no units: NaN, as before
                assert cell.n == 0 and mean != mean and sd != sd
            else:
                assert (mean, sd) == (cell.mean, math.sqrt(cell.variance))


def test_a_guardrail_series_removed_at_a_stage_comes_back_with_the_stage() -> None:
    registry, ev = at_fifty()
    ev.accept(Partial("e", 0, 1, stats(0.02)))
    ev.evaluate(now=100.0)
    assert verdict(registry, "50", "breach") == 0.0
    ev.stages.set_history("e", [(0.0, 50.0), (100.5, 0.0)])  # turned off by hand
    ev.evaluate(now=101.0)
    assert verdict(registry, "50", "breach") is None
    ev.stages.set_history("e", [(0.0, 50.0), (100.5, 0.0), (102.0, 50.0)])  # and back on
    ev.evaluate(now=103.0)
    assert verdict(registry, "50", "breach") == 0.0


def rollback_info(registry: CollectorRegistry) -> dict[tuple[str, ...], float]:
    """(stage, guardrail, metric, variant) -> value of every rampmon_rollback_info series."""
    keys_ = ("stage", "guardrail", "metric", "variant")
    return {
        tuple(s.labels[k] for k in keys_): s.value
        for family in registry.collect()
        if family.name == "rampmon_rollback_info"
        for s in family.samples
    }


def stage_percent(registry: CollectorRegistry) -> float | None:
    return registry.get_sample_value("rampmon_experiment_stage_percent", {"experiment": "e"})


def test_the_rollback_in_force_is_exported_with_its_stage_and_cause_until_it_ends() -> None:
    """Regression: the RampmonRollbackDecision page read the stage from
    rampmon_experiment_stage_percent and the cause from the breach series, but the rollback
    sets the ramp to 0 and the next evaluation exports stage 0 and removes the stage's
    guardrail series: every page said "stage 0%" and "no guardrail breached".
    rampmon_rollback_info keeps the rolled-back stage and the breached guardrail while the
    rollback holds, and goes when it ends."""
    registry, ev = at_fifty()
    ev.accept(Partial("e", 0, 1, stats(0.02)))
    (ok,) = ev.evaluate(now=99.0)
    assert ok.decision != "rollback" and rollback_info(registry) == {}
    ev.accept(Partial("e", 0, 2, stats(0.10)))
    (first,) = ev.evaluate(now=100.0)
    assert first.decision == "rollback"
    assert rollback_info(registry) == {("50", "err", "err", "treatment"): 1.0}
    # the rollback turned the ramp off; the breach fades too: the stage reads 0, the breach
    # series are gone, the rollback with its stage and cause stays
    ev.stages.set_history("e", [(0.0, 50.0), (100.5, 0.0)])
    ev.accept(Partial("e", 0, 3, stats(0.02, seed=1)))
    (off,) = ev.evaluate(now=101.0)
    assert off.decision != "rollback" and decision(registry, "rollback") == 1.0
    assert stage_percent(registry) == 0.0 and verdict(registry, "50", "breach") is None
    assert rollback_info(registry) == {("50", "err", "err", "treatment"): 1.0}
    # a new stage ends the rollback: its series goes
    ev.stages.set_history("e", [(0.0, 50.0), (100.5, 0.0), (200.0, 10.0)])
    ev.evaluate(now=201.0)
    assert "e" not in ev.rolled_back and decision(registry, "rollback") == 0.0
    assert rollback_info(registry) == {}


def test_a_rollback_taken_over_takes_its_cause_from_the_readout_at_its_stage() -> None:
    """After a restart or a handover the rollback is known from Redis (streams.app._act sets
    ``rolled_back``), not from an evaluation here: the readout at the rolled-back stage
    (read out while the ramp is off) names the cause; with no breach left there, the
    series has no guardrail. A release drops the series with the experiment."""
    registry = CollectorRegistry()
    stages = StageCache(CONFIG)
    stages.set_history("e", [(0.0, 50.0), (100.5, 0.0)])  # rolled back before the restart
    ev = Evaluator(CONFIG, Metrics(registry), stages, partitions=1)
    ev.accept(Partial("e", 0, 1, stats(0.02, seed=1)))
    ev.evaluate(now=200.0)
    assert rollback_info(registry) == {}  # nothing known yet
    ev.rolled_back.setdefault("e", 50.0)  # what streams.app._act does after firer.step
    ev.evaluate(now=201.0)
    assert rollback_info(registry) == {("50", "", "", ""): 1.0}
    ev.accept(Partial("e", 0, 2, stats(0.10)))
    ev.evaluate(now=202.0)
    assert rollback_info(registry) == {("50", "err", "err", "treatment"): 1.0}
    ev.release([0])
    assert rollback_info(registry) == {}


def test_a_rollback_on_the_primary_metric_names_it() -> None:
    _, ev = at_fifty()
    ev.accept(Partial("e", 0, 1, stats(0.10)))
    (readout,) = ev.evaluate(now=100.0)
    row = readout.metrics[0]
    primary = replace(readout, guardrails=(), primary=row)
    assert rollback_causes(primary) == [(f"primary:{row.metric}", row.metric, row.variant)]
    assert rollback_causes(readout) == [("err", "err", "treatment")]


def test_a_decrease_guardrail_exports_its_margin_on_the_effect_scale() -> None:
    """rampmon_guardrail_margin is drawn against the effect and its interval (the
    dashboard's "effect vs margin" panel): a harmful decrease breaches below -margin, so
    the series is -margin. Every exported guardrail in these tests was an increase, so an
    export of +margin for both directions passed them."""
    cfg = parse_config(
        """
experiments:
  - name: e
    variants: [control, treatment]
    control: control
    stages: [10, 50]
    metrics: [{name: err, aggregation: any}]
    guardrails:
      - {metric: err, harmful_direction: increase, margin: 0.005}
      - {metric: err, harmful_direction: decrease, margin: 0.02, name: err_drop}
    sequential: {tuning_units: 2000, min_units_per_variant: 100}
"""
    )
    registry = CollectorRegistry()
    stages = StageCache(cfg)
    stages.set_history("e", [(0.0, 50.0)])
    ev = Evaluator(cfg, Metrics(registry), stages, partitions=1)
    ev.accept(Partial("e", 0, 1, stats(0.02)))
    ev.evaluate(now=100.0)

    def margin(guardrail: str) -> float | None:
        labels = {"experiment": "e", "guardrail": guardrail, "metric": "err",
                  "variant": "treatment", "stage": "50"}  # fmt: skip
        return registry.get_sample_value("rampmon_guardrail_margin", labels)

    assert (margin("err"), margin("err_drop")) == (0.005, -0.02)


def test_the_window_series_are_the_latest_complete_window() -> None:
    """Of the windows a snapshot holds, the exported one is the latest that has ended
    (60 s windows): not the earliest, and not the one still open. Snapshots held one
    window in these tests, so an export of the earliest passed them."""
    registry = CollectorRegistry()
    stages = StageCache(CONFIG)
    stages.set_history("e", [(0.0, 50.0)])
    ev = Evaluator(CONFIG, Metrics(registry), stages, partitions=1)

    def window(exposed: list[int], values: list[float]) -> WindowMoments:
        both = np.array(values * 2)  # the same events in control's and treatment's err cell
        events = MomentArray.zeros((2, 1)).scatter_add(
            np.repeat(np.arange(2, dtype=np.intp), len(values)),
            np.ones(both.size, np.int64),
            both,
            both * both,
        )
        return WindowMoments(events, np.array(exposed, np.int64))

    windows = {
        0.0: window([5, 6], [1.0, 0.0]),
        60.0: window([7, 8], [1.0, 1.0, 0.0, 0.0]),
        120.0: window([9, 10], [1.0]),  # ends at 180: still open at 179.9
    }
    ev.accept(Partial("e", 0, 1, stats(0.02), windows))
    (readout,) = ev.evaluate(now=179.9)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"experiment": "e", **labels})

    assert sample("rampmon_window_start_timestamp_seconds") == 60.0
    assert sample("rampmon_window_exposures", variant="control") == 7
    assert sample("rampmon_window_exposures", variant="treatment") == 8
    assert sample("rampmon_window_events", variant="treatment", metric="err") == 4
    assert sample("rampmon_window_event_mean", variant="treatment", metric="err") == 0.5
    assert [(w.start, w.events_treatment) for w in readout.windows] == [(60.0, 4)]
    # at 180 s the last window has ended, exactly: it is complete and shown
    (readout,) = ev.evaluate(now=180.0)
    assert sample("rampmon_window_start_timestamp_seconds") == 120.0
    assert sample("rampmon_window_events", variant="treatment", metric="err") == 1
    assert [w.start for w in readout.windows] == []  # one event per arm: no interval
