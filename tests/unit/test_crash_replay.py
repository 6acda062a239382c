"""Ingest after a crash, in-process: a recovered unit table plus redelivery is exact.

The worker dies after its unit records reached the changelog but before its offsets were
committed; the next worker recovers the table, rebuilds its partition statistics from
the records, and is redelivered messages it already absorbed. The per-unit applied
offsets must make the result identical to an uninterrupted run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from monitor.events import Exposure, Telemetry
from monitor.replayer import Replayer
from monitor.workload import simulate_units, to_events
from streams.cli import DEFAULT_CONFIG, load_config
from streams.ingest import Ingest
from streams.metrics import Metrics
from streams.producer import partition_of

CONFIG = load_config(DEFAULT_CONFIG)
EXPERIMENT = "workflow_assistant"
PARTITIONS = 4


class _Table:
    """The part of a Faust table Ingest uses here: its store."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


class _Windows:
    def __init__(self) -> None:
        self.table = _Table()

    def __setitem__(self, key: Any, value: bytes) -> None:
        pass


def _ingest(units: _Table) -> Ingest:
    return Ingest(
        CONFIG, units=units, windows=_Windows(), metrics=Metrics(CollectorRegistry()),
        stage_index=lambda _e, _ts: 3, topics={"exposures": "x", "telemetry": "t"},
        partitions=PARTITIONS, max_message_bytes=10**7, max_pending=64,
    )  # fmt: skip


def _messages() -> list[tuple[str, int, int, bytes]]:
    units = simulate_units(3_000, seed=21)
    exposures, telemetry = to_events(
        units, experiment=EXPERIMENT, start_ts=1e9, duration_s=300.0, seed=21
    )
    out, offsets = [], {}
    # telemetry interleaved with exposures, so some of it waits as pending in unit records
    for topic, events in (("t", telemetry[:2000]), ("x", exposures), ("t", telemetry[2000:])):
        by_partition: dict[int, list[dict]] = {}
        for e in events:
            by_partition.setdefault(partition_of(e["unit_id"], PARTITIONS), []).append(e)
        for p, evs in by_partition.items():
            for i in range(0, len(evs), 100):
                off = offsets[(topic, p)] = offsets.get((topic, p), -1) + 1
                out.append((topic, p, off, orjson.dumps(evs[i : i + 100])))
    return out


@pytest.mark.parametrize(("crash", "redeliver_from"), [(0.7, 0.6), (0.5, 0.1), (0.9, 0.0)])
def test_recovered_table_plus_redelivery_is_exact(crash: float, redeliver_from: float) -> None:
    messages = _messages()
    whole = _ingest(_Table())
    for m in messages:
        whole.process(*m[:3], None, m[3])

    table = _Table()
    first = _ingest(table)
    for m in messages[: int(len(messages) * crash)]:
        first.process(*m[:3], None, m[3])
    second = _ingest(table)  # a new worker over the recovered table
    for m in messages[int(len(messages) * redeliver_from) :]:
        second.process(*m[:3], None, m[3])

    for p in range(PARTITIONS):
        a = whole.partition_stats(p).stats(EXPERIMENT, whole.aggs[EXPERIMENT]).units
        b = second.partition_stats(p).stats(EXPERIMENT, second.aggs[EXPERIMENT]).units
        assert np.array_equal(a.n, b.n)
        np.testing.assert_allclose(b.sum, a.sum, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(b.gram, a.gram, rtol=1e-12, atol=1e-6)


def test_deferred_statistics_equal_the_offline_engine() -> None:
    """Ingest folds delta rows in at publish time; the result equals Replayer's, which
    applies them message by message."""
    messages = _messages()
    ingest = _ingest(_Table())
    for m in messages:
        ingest.process(*m[:3], None, m[3])
    merged = None
    for p in range(PARTITIONS):
        s = ingest.partition_stats(p).stats(EXPERIMENT, ingest.aggs[EXPERIMENT])
        merged = s if merged is None else merged + s
    assert merged is not None
    replayer = Replayer(CONFIG, lambda _e, _ts: 3, chunk=100)
    replayer.feed([
        (Exposure if topic == "x" else Telemetry)(**e)
        for topic, _p, _o, raw in messages for e in orjson.loads(raw)
    ])  # fmt: skip
    offline = replayer.stats[EXPERIMENT]
    assert np.array_equal(merged.units.n, offline.units.n)
    np.testing.assert_allclose(merged.units.sum, offline.units.sum, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(merged.units.gram, offline.units.gram, rtol=1e-12, atol=1e-6)
    assert all(a == b for a, b in zip(merged.sketches, offline.sketches, strict=True))
