"""Batched envelopes give the same statistics as one event per message."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.config import parse_config
from monitor.events import Exposure, Telemetry
from monitor.replayer import Replayer
from monitor.workload import simulate_units, to_events
from streams.cli import DEFAULT_CONFIG

CONFIG = parse_config(DEFAULT_CONFIG.read_text())
EXPERIMENT = "workflow_assistant"


def _events() -> list[Exposure | Telemetry]:
    units = simulate_units(1_500, seed=5)
    exposures, telemetry = to_events(
        units, experiment=EXPERIMENT, start_ts=1e9, duration_s=600.0, seed=5
    )
    events: list[Exposure | Telemetry] = [Exposure(**e) for e in exposures]
    events += [Telemetry(**t) for t in telemetry]
    events.sort(key=lambda e: (e.ts, isinstance(e, Telemetry)))
    return events


@pytest.mark.parametrize("envelope", [100, 1000])
def test_envelopes_equal_single_event_messages(envelope: int) -> None:
    events = _events()
    runs = []
    for chunk in (1, envelope):
        r = Replayer(CONFIG, lambda _e, _ts: 3, chunk=chunk)
        r.feed(events)
        runs.append(r)
    single, batched = runs
    # every unit record is identical, value for value
    assert single.store.units.keys() == batched.store.units.keys()
    for uid, state in single.store.units.items():
        assert state.assignments == batched.store.units[uid].assignments
    a, b = single.stats[EXPERIMENT], batched.stats[EXPERIMENT]
    assert np.array_equal(a.units.n, b.units.n)
    assert np.array_equal(a.segments.n, b.segments.n)
    assert all(x == y for x, y in zip(a.sketches, b.sketches, strict=True))
    # sums agree up to the order of float additions across messages
    np.testing.assert_allclose(a.units.sum, b.units.sum, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(a.units.gram, b.units.gram, rtol=1e-12, atol=1e-6)
    assert single.outcomes == batched.outcomes
