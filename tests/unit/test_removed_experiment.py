"""An experiment taken out of the config, or changed: the unit records keep its assignments.

``Ingest.rebuild`` skips assignments of experiments the config no longer has. Telemetry
must too: an untagged event of a unit exposed to a removed experiment and to a live one
counts in the live one (as it would had the removed experiment never been configured),
not a KeyError that dead-letters the whole message, with every other event in it, as a
``processing_error``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from monitor.config import parse_config
from monitor.layout import ExperimentLayout
from monitor.unitstate import Assignment
from streams.runs import OneRecord
from tests.unit.test_crash_replay import CONFIG, EXPERIMENT, _homes, _ingest, _Table


def _with_second_experiment() -> Any:
    second = CONFIG.experiments[0].model_copy(update={"name": "second"})
    return CONFIG.model_copy(update={"experiments": [*CONFIG.experiments, second]})


def _exposed_to_both(units: _Table) -> list[str]:
    """Two units of partition 0, exposed to the config's experiment and to "second"."""
    here, _ = _homes(2, 0)
    before = _ingest(units, _with_second_experiment())
    exposures = [
        {"event_id": f"x-{u}-{e}", "ts": 1e9, "experiment": e, "unit_id": u, "variant": "control"}
        for u in here for e in (EXPERIMENT, "second")
    ]  # fmt: skip
    assert not before.process_run("x", 0, [OneRecord(0, None, orjson.dumps(exposures))])
    return list(here)


def test_telemetry_of_a_unit_exposed_to_a_removed_experiment_counts_in_the_live_one() -> None:
    units = _Table()
    here = _exposed_to_both(units)

    after = _ingest(units)  # the config without "second", on the same table
    telemetry = [
        {"event_id": f"t-{u}", "ts": 1e9 + 1, "unit_id": u, "metric": "tasks", "value": 2.0}
        for u in here
    ]
    rejected = after.process_run("t", 0, [OneRecord(0, None, orjson.dumps(telemetry))])
    assert rejected == []
    stats = after.partition_stats(0).stats(EXPERIMENT, after.aggs[EXPERIMENT])
    assert int(stats.units.n.sum()) == 2
    np.testing.assert_allclose(stats.units.sum[:, :, 0].sum(), 4.0)  # tasks: 2 + 2


def test_a_metric_added_to_one_experiment_loses_no_event_of_another() -> None:
    """Found by review: the unit records keep each assignment's metric values by position.
    Once the config adds a metric to an experiment, a rebuild of any partition holding a
    unit exposed to it raises ShapeMismatch: the partition's statistics `cannot be built`,
    and every later message of the partition, of every experiment, is a
    ``processing_error`` dead letter (deploy/RUNBOOK.md). A config edit to one experiment
    must at least not take the others' events with it."""
    units = _Table()
    here = _exposed_to_both(units)

    config = _with_second_experiment()
    second = config.experiments[1]
    extra = second.metrics[0].model_copy(update={"name": "new_metric"})
    edited = config.model_copy(
        update={
            "experiments": [
                config.experiments[0],
                second.model_copy(update={"metrics": [*second.metrics, extra]}),
            ]
        }
    )
    after = _ingest(units, edited)  # a rolling restart with the edited config
    telemetry = [
        {"event_id": f"t-{u}", "ts": 1e9 + 1, "unit_id": u, "metric": "tasks", "value": 2.0}
        for u in here
    ]
    run = [OneRecord(0, None, orjson.dumps(telemetry))]
    try:
        rejected = after.process_run("t", 0, run)
    except Exception:  # as the agent does (streams.ingestrun)
        rejected = after.isolate("t", 0, run)
    assert rejected == []
    stats = after.partition_stats(0).stats(EXPERIMENT, after.aggs[EXPERIMENT])
    assert int(stats.units.n.sum()) == 2
    np.testing.assert_allclose(stats.units.sum[:, :, 0].sum(), 4.0)


def _edited(**changes: Any) -> Any:
    """The config with its experiment changed."""
    exp = CONFIG.experiments[0]
    return CONFIG.model_copy(update={"experiments": [exp.model_copy(update=changes)]})


@pytest.mark.parametrize(
    "assignment",
    [
        Assignment(0, 0, 0.0, [0.0], [1.0], [0]),  # a metric short
        Assignment(0, 0, 0.0, [0.0, 0.0, 0.0], [], [0]),  # a covariate short
        Assignment(0, 0, 0.0, [0.0, 0.0], [1.0], []),  # a segment attribute short
        Assignment(2, 0, 0.0, [0.0, 0.0], [1.0], [0]),  # a variant past the config's
        Assignment(0, 5, 0.0, [0.0, 0.0], [1.0], [0]),  # a stage past the config's
        Assignment(-1, 0, 0.0, [0.0, 0.0], [1.0], [0]),
    ],
)
def test_an_assignment_of_another_shape_does_not_fit_the_layout(assignment: Assignment) -> None:
    exp = parse_config(_SMALL).experiments[0]
    layout = ExperimentLayout(exp)
    assert layout.fits(Assignment(1, 1, 0.0, [0.0, 0.0], [1.0], [0]))
    assert not layout.fits(assignment)


_SMALL = """
experiments:
  - name: e
    variants: [c, t]
    control: c
    stages: [5, 50]
    metrics: [{name: m1}, {name: m2}]
    covariates: [x]
    segments: [{attribute: a, values: [v]}]
"""


def test_a_changed_experiment_counts_its_new_units_and_none_of_its_old() -> None:
    """After a metric is added, a unit exposed before the change counts nowhere in the
    experiment (``layout_changed``, per event), one exposed after it counts, and a rebuild
    of the partition agrees with the live statistics."""
    old, new = _homes(4, 0)[0][:2], _homes(4, 0)[0][2:]
    units = _Table()
    before = _ingest(units)
    x = [{"event_id": f"x-{u}", "ts": 1e9, "experiment": EXPERIMENT, "unit_id": u,
          "variant": "control"} for u in old]  # fmt: skip
    assert not before.process_run("x", 0, [OneRecord(0, None, orjson.dumps(x))])

    exp = CONFIG.experiments[0]
    extra = exp.metrics[0].model_copy(update={"name": "new_metric"})
    after = _ingest(units, _edited(metrics=[*exp.metrics, extra]))
    x = [{**x[0], "event_id": f"x-{u}", "unit_id": u} for u in new]
    assert not after.process_run("x", 0, [OneRecord(1, None, orjson.dumps(x))])
    t = [{"event_id": f"t-{u}", "ts": 1e9 + 1, "unit_id": u, "metric": "tasks", "value": 2.0}
         for u in [*old, *new]]  # fmt: skip
    assert not after.process_run("t", 0, [OneRecord(0, None, orjson.dumps(t))])
    live = after.partition_stats(0).stats(EXPERIMENT, after.aggs[EXPERIMENT])
    assert int(live.units.n.sum()) == len(new)
    np.testing.assert_allclose(live.units.sum[:, :, 0].sum(), 2.0 * len(new))
    counted = {
        s.labels["outcome"]: s.value
        for metric in after.metrics.attribution.collect()
        for s in metric.samples
        if s.name.endswith("_total") and s.labels["experiment"] == EXPERIMENT
    }
    assert counted["layout_changed"] == len(old) and counted["attributed"] == len(new)
    rebuilt = _ingest(units, _edited(metrics=[*exp.metrics, extra]))
    again = rebuilt.partition_stats(0).stats(EXPERIMENT, rebuilt.aggs[EXPERIMENT])
    np.testing.assert_array_equal(again.units.n, live.units.n)
    np.testing.assert_allclose(again.units.gram, live.units.gram)
