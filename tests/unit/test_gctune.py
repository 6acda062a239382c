"""The worker's garbage-collector tuning (streams.gctune)."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from bench.hotpath import dict_ingest
from monitor.workload import simulate_units, to_events
from streams import gctune
from streams.cli import DEFAULT_CONFIG, load_config
from streams.runs import OneRecord
from streams.settings import Settings


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restore_gc")
def test_tune_raises_gen0_and_freezes_what_is_alive() -> None:
    _, gen1, gen2 = gc.get_threshold()
    alive = [object(), [1, 2]]  # noqa: F841 - alive across the call
    gctune.tune(12_345)
    assert gc.get_threshold() == (12_345, gen1, gen2)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restore_gc")
def test_zero_leaves_the_collector_alone() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    gctune.tune(0)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


def test_the_setting_defaults_to_1000000_and_rejects_negatives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().gc_gen0_threshold == 1_000_000
    monkeypatch.setenv("RAMPMON_GC_GEN0_THRESHOLD", "-1")
    with pytest.raises(ValueError, match="gc_gen0_threshold"):
        Settings()


def test_paused_stops_collection_inside_and_restores_it() -> None:
    assert gc.isenabled()
    with gctune.paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gctune.paused():
        raise RuntimeError("a run that fails")
    assert gc.isenabled()


def test_paused_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with gctune.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


def _collections() -> int:
    return sum(s["collections"] for s in gc.get_stats())


@pytest.mark.usefixtures("restore_gc")
def test_no_collection_runs_inside_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ingest.process_run keeps the collector out of the run's work (the attribution here),
    and collection resumes after it. With a generation-0 threshold of 1, the attribution of
    400 units' telemetry would otherwise collect at almost every allocation (2,177 times
    when the pause was taken out)."""
    units = simulate_units(400, seed=3)
    exposures, telemetry = to_events(
        units, experiment="workflow_assistant", start_ts=1e9, duration_s=300.0, seed=3
    )
    ingest = dict_ingest(load_config(DEFAULT_CONFIG), partitions=1)
    during: list[int] = []
    apply_telemetry = ingest.attributor.apply_telemetry

    def spy(*args: Any, **kwargs: Any) -> Any:
        before = _collections()
        try:
            return apply_telemetry(*args, **kwargs)
        finally:
            during.append(_collections() - before)

    monkeypatch.setattr(ingest.attributor, "apply_telemetry", spy)
    gc.set_threshold(1)
    for topic, events in (("x", exposures), ("t", telemetry)):
        records = [OneRecord(i, None, orjson.dumps(e)) for i, e in enumerate(events)]
        assert ingest.process_run(topic, 0, records) == []
    after = _collections()
    lists = [[] for _ in range(100)]  # container objects: each one counts towards a collection
    assert during == [0]
    assert _collections() > after, lists
