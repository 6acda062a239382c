"""Review (layout_changed, 0f66125/0f40f1a): ``ExperimentLayout.fits`` compares the
*number of segment attributes*, not the number of segment *slots*. A unit's assignment keeps
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


def test_review_a_segment_value_removed_moves_old_units_into_another_stage_s_cells() -> None:
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


def test_review_a_segment_value_removed_makes_the_last_stage_s_partition_unbuildable() -> None:
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
