"""Garbage-collector tuning for the worker process.

CPython's cyclic collector runs generation 0 after every 700 net new container objects.
The worker allocates several per event (decoded events, unit records, batch lists) and
keeps some of them a while, so the collector ran ~10 times per 1,000 events and took about
a fifth of the in-process hot path (``bench/README.md``, throughput). Almost all of the
worker's garbage is freed by reference counting; cycles are rare (asyncio tasks, closed
connections), so collecting them less often costs little memory (``bench/README.md``,
memory).

``tune`` raises the generation-0 threshold and moves every object alive after start-up
(imported modules, Faust's app, the config) to the permanent generation with
``gc.freeze()``, so full collections no longer traverse them.

The threshold has to sit above the records in flight, not just above a run's garbage: a
collection traverses every young object still alive, and a draining worker holds the
fetched records Faust buffers (up to 16 runs of thousands of records, a few objects each)
and the run being processed. At 50,000 a drain of the throughput benchmark's backlog ran
at least 17 generation-0 collections of about 6 ms each, which freed almost nothing: 0.9
µs of an 11 µs event. :func:`paused` keeps the collector out of a run's processing, whose
objects all live until the run ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused", "tune"]


def tune(gen0_threshold: int) -> None:
    """Collect once, freeze what survives, then collect young objects every
    ``gen0_threshold`` net allocations (0 leaves the collector as it is)."""
    if gen0_threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, gen1, gen2)


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collection inside the block; the collector as it was after it.

    For work whose objects all stay alive until it ends, then go by reference counting: a
    collection in the middle would traverse them all and free nothing. CPython counts net
    allocations, so what the block frees on the way out also takes its allocations off the
    count; a cycle made inside is collected later. The switch is the interpreter's, so
    only one thread may use this (the worker's event loop).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
