"""Garbage-collector tuning for the worker process.

CPython's cyclic collector runs generation 0 after every 700 net new container objects.
The worker allocates several per event (decoded events, unit records, batch lists) and
keeps some of them a while, so the collector ran ~10 times per 1,000 events and took about
a fifth of the in-process hot path (``bench/README.md``, throughput). Almost all of the
worker's garbage is freed by reference counting; cycles are rare (asyncio tasks, closed
connections), so collecting them less often costs little memory: the memory benchmark's
worker RSS was the same with thresholds 700 and 50,000 (``bench/README.md``, memory).

``tune`` raises the generation-0 threshold and moves every object alive after start-up
(imported modules, Faust's app, the config) to the permanent generation with
``gc.freeze()``, so full collections no longer traverse them.
"""

from __future__ import annotations

import gc

__all__ = ["tune"]


def tune(gen0_threshold: int) -> None:
    """Collect once, freeze what survives, then collect young objects every
    ``gen0_threshold`` net allocations (0 leaves the collector as it is)."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)
