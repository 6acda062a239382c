"""When the evaluating worker reads experiments out, and how much of its event loop that takes.

A readout (partials merged, every guardrail tested, series exported: 2-3 ms for seed
000's experiment; in bench/detection.py 46 a second took 10% of the loop) runs on the
worker's event loop, so ingest waits while it computes. A new snapshot is read out as soon
as it arrives, each experiment at most once per gap
(:meth:`streams.evaluator.Evaluator.take_changed`). That bound is per experiment: an
evaluator of E experiments fed by W workers, each publishing every half second, faces up
to ``min(2W, 1/gap) * E`` readouts a second -- 20 experiments and 4 workers, some 160 a
second, over a third of a core taken from ingest; 50 experiments and 5 workers, more than
all of it. :class:`ReadoutBudget` bounds the loop's share of time in readouts whatever E
and W are; past it, readouts of new snapshots wait (the longest-unread experiment first)
and each one covers more of the data that arrived. The periodic readout (every
experiment about once a second, for what moves with the clock: stage durations,
staleness, dwell) does not wait, but spends the budget.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from streams.evaluator import Evaluator
from streams.metrics import Metrics, SeriesCache
from streams.wakeup import Wakeup

__all__ = ["READOUT_BURST_SECONDS", "ReadoutBudget", "ReadoutSchedule", "Trigger"]

#: readout time the budget allows at once after a quiet spell: a pass over some 100
#: experiments, so a breach or a handful of changed experiments never wait for the budget
READOUT_BURST_SECONDS = 0.25

Trigger = Literal["arrival", "periodic"]


class ReadoutBudget:
    """A token bucket (Turner, "New directions in communications", IEEE Communications
    Magazine 24(10), 1986) on readout time: each readout spends its duration, and the
    balance refills at ``share`` seconds per second up to ``burst``. A readout that waits
    for a non-negative balance starts only while the readouts so far took at most
    ``share * T + burst`` of the span T since the budget was full; the last one may
    overdraw it by its own duration.

    Readouts that do not wait (the periodic ones) may overdraw it further, but the debt is
    floored at ``burst``: however much they took, a waiting readout waits at most
    ``burst / share``. ``share`` 1 leaves readouts unbounded. Times are a monotonic
    clock's."""

    def __init__(self, share: float, burst: float, now: float) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], not {share}")
        if burst <= 0:
            raise ValueError(f"burst must be positive, not {burst}")
        self.share = share
        self.burst = burst
        self._balance = burst
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._balance = min(self.burst, self._balance + (now - self._at) * self.share)
            self._at = now

    def rest(self, now: float) -> float:
        """Seconds from ``now`` until the budget allows a readout (0: at once)."""
        self._refill(now)
        if self.share >= 1 or self._balance >= 0:
            return 0.0
        return -self._balance / self.share

    def spend(self, now: float, seconds: float) -> None:
        """A readout that ended at ``now`` took ``seconds``."""
        self._refill(now)
        self._balance = max(self._balance - seconds, -self.burst)


class ReadoutSchedule:
    """Reads experiments out as their snapshots arrive, and on the clock, within a budget.

    ``act`` fires what a readout decided (:meth:`streams.app.Rampmon._act`); it may wait on
    Redis, and its time is not the budget's, because other tasks run meanwhile. The two
    loops interleave at those waits: each skips an experiment the other read out since its
    pass began (its snapshots are in that readout)."""

    def __init__(
        self,
        evaluator: Evaluator,
        act: Callable[[str, float], Awaitable[None]],
        metrics: Metrics,
        budget: ReadoutBudget,
        gap: float,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.evaluator = evaluator
        self.act = act
        self.metrics = metrics
        self.budget = budget
        self.gap = gap
        self.clock = clock
        self.monotonic = monotonic
        self._series = SeriesCache()

    async def run(self, arrived: Wakeup, should_stop: Callable[[], bool]) -> None:
        """Until ``should_stop()``: after each arrival (or ``gap`` without one), read out
        the experiments with new snapshots that the gap and the budget allow."""
        timeout = self.gap
        while not should_stop():
            rest = self.budget.rest(self.monotonic())
            if rest > 0 and self.evaluator.changed:
                # arrivals meanwhile stay in Evaluator.changed: none is lost, each readout
                # then covers all of them
                started = self.monotonic()
                await asyncio.sleep(rest)
                self.metrics.readout_budget_wait.inc(self.monotonic() - started)
            else:
                await arrived.wait(timeout)
            if should_stop():
                return
            await self.read_out_changed()
            timeout = self.next_wait()

    async def read_out_changed(self) -> None:
        """One pass: each changed experiment not read out within the gap, the longest
        unread first, until the budget runs out; the rest stay changed for the next pass."""
        ev = self.evaluator
        began = self.clock()
        ready = ev.take_changed(began, self.gap)
        # the longest unread first: a pass the budget cuts short, and the next, must not
        # serve the same experiments again and again
        order = sorted(ready, key=lambda e: (ev.evaluated_at.get(e, -math.inf), e))
        for i, experiment in enumerate(order):
            if self.budget.rest(self.monotonic()) > 0:
                ev.changed.update(order[i:])
                return
            if not self._read_since(experiment, began):
                await self.read_out(experiment, "arrival")

    async def read_out_due(self, interval: float) -> None:
        """The periodic pass: every experiment not read out for half ``interval`` (timer
        jitter must not skip one for a whole tick). Not held by the budget."""
        began = self.clock()
        for experiment in sorted(self.evaluator.due(began, interval / 2)):
            if not self._read_since(experiment, began):
                await self.read_out(experiment, "periodic")
        # every tick, experiments or none: RampmonEvaluationStalled pages on a worker whose
        # evaluation loop stops, and a worker that evaluates no experiment is not stalled
        self.metrics.last_evaluation.set(self.clock())

    def _read_since(self, experiment: str, began: float) -> bool:
        # by the other loop, while this one waited on an action (a later clock step back
        # makes it look older, and then it is read out again: harmless)
        return self.evaluator.evaluated_at.get(experiment, -math.inf) > began

    async def read_out(self, experiment: str, trigger: Trigger) -> None:
        """One readout, then its action: a rollback does not wait for other experiments'
        readouts. Stamped with its own time, from which its gap counts."""
        now = self.clock()
        started = self.monotonic()
        readouts = self.evaluator.evaluate(now, only={experiment})
        ended = self.monotonic()
        self.budget.spend(ended, ended - started)
        if readouts:
            self._series(self.metrics.readouts, trigger).inc(len(readouts))
            self._series(self.metrics.readout_seconds, trigger).inc(ended - started)
        for readout in readouts:
            await self.act(readout.experiment, now)

    def next_wait(self) -> float:
        """How long to wait for an arrival: the gap, or less if an experiment held back by
        its gap becomes ready sooner (otherwise it would wait up to two gaps)."""
        held = self.evaluator.held_until(self.clock(), self.gap)
        return self.gap if held is None else min(self.gap, held)
