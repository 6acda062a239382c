"""The worker's garbage-collector tuning (streams.gctune)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from streams import gctune
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


def test_the_setting_defaults_to_50000_and_rejects_negatives(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().gc_gen0_threshold == 50_000
    monkeypatch.setenv("RAMPMON_GC_GEN0_THRESHOLD", "-1")
    with pytest.raises(ValueError, match="gc_gen0_threshold"):
        Settings()
