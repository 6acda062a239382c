"""A config change under records written before it (found by review, 2026-12-06).

``ExperimentLayout.fits`` compared the *number of segment attributes*, not each code
against its attribute's *slots*. A unit's assignment keeps
its segment slot codes, global indices into ``segment_slots``; a segment value removed
from (or added to) the config keeps the attribute count, so an old unit "fits", and its
stale codes index another slot -- and, past the last slot of its attribute, another
attribute's, another variant's or another stage's cell (the flat index is
``(cell * slots + code) * m + k``).
"""

from __future__ import annotations

from typing import Any

import orjson

from streams.runs import OneRecord
from tests.unit.test_crash_replay import CONFIG, EXPERIMENT, _homes, _ingest, _Table


def _without_enterprise() -> Any:
    exp = CONFIG.experiments[0]
    segments = [
        s.model_copy(update={"values": [v for v in s.values if v != "enterprise"]})
        for s in exp.segments
    ]
    changed = exp.model_copy(update={"segments": segments})
    return CONFIG.model_copy(update={"experiments": [changed, *CONFIG.experiments[1:]]})


def test_regression_a_segment_value_removed_moves_old_units_into_another_stage_s_cells() -> None:
    old = _homes(4, 0)[0][:3]
    units = _Table()
    before = _ingest(units)  # every exposure at stage index 3 (50%), as _ingest's stage_index
    x = [{"event_id": f"x-{u}", "ts": 1e9, "experiment": EXPERIMENT, "unit_id": u,
          "variant": "treatment", "attributes": {"segment": "casual", "device": "tablet"}}
         for u in old]  # fmt: skip
    assert not before.process_run("x", 0, [OneRecord(0, None, orjson.dumps(x))])

    config = _without_enterprise()
    after = _ingest(units, config)
    t = [{"event_id": f"t-{u}", "ts": 1e9 + 1, "unit_id": u, "metric": "tasks", "value": 2.0}
         for u in old]  # fmt: skip
    assert not after.process_run("t", 0, [OneRecord(0, None, orjson.dumps(t))])
    live = after.partition_stats(0).stats(EXPERIMENT, after.aggs[EXPERIMENT])
    # no unit was ever exposed at stage index 4 (100%): its segment cells must be empty;
    # and README: "a unit exposed before the change counts nowhere in that experiment"
    assert int(live.segments.n[4].sum()) == 0, live.segments.n[4]
    assert int(live.units.n.sum()) == 0


def test_regression_a_segment_value_removed_makes_the_last_stage_s_partition_unbuildable() -> None:
    """The same change with the units exposed at the last stage, in the last variant: the
    stale slot code runs past the segment array, and the rebuild of the partition raises
    (the failure 0f66125 set out to end: every later message of the partition, of every
    experiment, a processing_error)."""
    from prometheus_client import CollectorRegistry

    from streams.ingest import Ingest
    from streams.metrics import Metrics

    def ingest(units: _Table, config: Any) -> Ingest:
        return Ingest(
            config, units=units, metrics=Metrics(CollectorRegistry()),
            stage_index=lambda _e, _ts: 4, topics={"exposures": "x", "telemetry": "t"},
            partitions=4, max_message_bytes=10**7, max_pending=64,
        )  # fmt: skip

    old = _homes(4, 0)[0][:3]
    units = _Table()
    x = [{"event_id": f"x-{u}", "ts": 1e9, "experiment": EXPERIMENT, "unit_id": u,
          "variant": "treatment", "attributes": {"segment": "casual", "device": "tablet"}}
         for u in old]  # fmt: skip
    assert not ingest(units, CONFIG).process_run("x", 0, [OneRecord(0, None, orjson.dumps(x))])
    rebuilt = ingest(units, _without_enterprise())
    rebuilt.partition_stats(0).stats(EXPERIMENT, rebuilt.aggs[EXPERIMENT])


def test_regression_a_metric_added_leaves_no_window_record_of_the_old_shape_to_raise() -> None:
    """Review (0f66125): ``fits`` keeps unit records of another shape out, but the window
    records beside them in the units table (``WindowMoments.events`` is variants x metrics)
    are read back as written. After a metric is added, the first event that lands in a
    window the old config wrote (a backlog after the deploy's restart, a late event within
    ``allowed_lateness_seconds``) indexes the old array with the new width: a treatment
    event runs past it and the run raises (processing_error: the whole message, every
    experiment's events in it, dead-lettered), a control one silently lands under another
    metric. Every live window of the experiment stays a trap until it expires."""
    old, new = _homes(4, 0)[0][:2], _homes(4, 0)[0][2:4]
    units = _Table()
    before = _ingest(units)
    x = [{"event_id": f"x-{u}", "ts": 1e9, "experiment": EXPERIMENT, "unit_id": u,
          "variant": "treatment"} for u in old]  # fmt: skip
    assert not before.process_run("x", 0, [OneRecord(0, None, orjson.dumps(x))])
    t = [{"event_id": f"t0-{u}", "ts": 1e9 + 1, "unit_id": u, "metric": "tasks", "value": 2.0}
         for u in old]  # fmt: skip
    assert not before.process_run("t", 0, [OneRecord(0, None, orjson.dumps(t))])

    exp = CONFIG.experiments[0]
    extra = exp.metrics[0].model_copy(update={"name": "new_metric"})
    changed = exp.model_copy(update={"metrics": [*exp.metrics, extra]})
    config = CONFIG.model_copy(update={"experiments": [changed, *CONFIG.experiments[1:]]})
    after = _ingest(units, config)  # the worker restarted with the new config
    x = [{**x[0], "event_id": f"x-{u}", "unit_id": u} for u in new]
    assert not after.process_run("x", 0, [OneRecord(1, None, orjson.dumps(x))])
    t = [{"event_id": f"t-{u}", "ts": 1e9 + 2, "unit_id": u, "metric": "support_ticket",
          "value": 1.0} for u in new]  # fmt: skip
    assert not after.process_run("t", 0, [OneRecord(1, None, orjson.dumps(t))])
    stats = after.partition_stats(0)
    window = stats.windows[EXPERIMENT][1e9]
    assert window.events.shape == after.window_aggs[EXPERIMENT].shape
