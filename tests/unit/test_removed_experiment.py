"""An experiment taken out of the config: the unit records keep its assignments.

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

from streams.runs import OneRecord
from tests.unit.test_crash_replay import CONFIG, EXPERIMENT, _homes, _ingest, _Table


def _with_second_experiment() -> Any:
    second = CONFIG.experiments[0].model_copy(update={"name": "second"})
    return CONFIG.model_copy(update={"experiments": [*CONFIG.experiments, second]})


def test_telemetry_of_a_unit_exposed_to_a_removed_experiment_counts_in_the_live_one() -> None:
    here, _ = _homes(2, 0)
    units = _Table()
    before = _ingest(units, _with_second_experiment())
    exposures = [
        {"event_id": f"x-{u}-{e}", "ts": 1e9, "experiment": e, "unit_id": u, "variant": "control"}
        for u in here for e in (EXPERIMENT, "second")
    ]  # fmt: skip
    assert not before.process_run("x", 0, [OneRecord(0, None, orjson.dumps(exposures))])

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
    here, _ = _homes(2, 0)
    units = _Table()
    before = _ingest(units, _with_second_experiment())
    exposures = [
        {"event_id": f"x-{u}-{e}", "ts": 1e9, "experiment": e, "unit_id": u, "variant": "control"}
        for u in here for e in (EXPERIMENT, "second")
    ]  # fmt: skip
    assert not before.process_run("x", 0, [OneRecord(0, None, orjson.dumps(exposures))])

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
