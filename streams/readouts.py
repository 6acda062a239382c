"""When the evaluating worker reads experiments out, and how much of its event loop that takes.

A readout (partials merged, every guardrail tested, series exported: ~5 ms for seed 000's
experiment) runs on the worker's event loop, so ingest waits while it computes. A new
snapshot is read out as soon as it arrives, each experiment at most once per gap
(:meth:`streams.evaluator.Evaluator.take_changed`). That bound is per experiment: an
evaluator of E experiments fed by W workers, each publishing every half second, faces
up to ``min(2W, 1/gap) * E`` readouts a second -- 20 experiments and 4 workers, some 160
a second, most of a core taken from ingest. :class:`ReadoutBudget` bounds the loop's share
of time in readouts whatever E and W are; past it, readouts of new snapshots wait (the
longest-unread experiment first) and each one covers more of the data that arrived.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Literal

from streams.evaluator import Evaluator
from streams.metrics import Metrics
from streams.wakeup import Wakeup

__all__ = ["READOUT_BURST_SECONDS", "ArrivalReadouts", "ReadoutBudget", "Trigger"]

#: readout time the budget allows at once after a quiet spell: a pass over 50 experiments of
#: ~5 ms, so one breach or a handful of changed experiments never wait for the budget
READOUT_BURST_SECONDS = 0.25

Trigger = Literal["arrival", "periodic"]


class ReadoutBudget:
    """A token bucket (Turner, "New directions in communications", IEEE Communications
    Magazine 24(10), 1986) on readout time: each readout spends its duration, and the
    balance refills at ``share`` seconds per second up to ``burst``. Over any span T the
    readouts that waited for the budget took at most ``share * T + burst``.

    ``share`` 1 leaves readouts unbounded. Times are a monotonic clock's."""

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
        self._balance -= seconds


class ArrivalReadouts:
    """Reads experiments out as their snapshots arrive, and on the clock, within a budget.

    ``act`` fires what a readout decided (:meth:`streams.app.Rampmon._act`); it may wait on
    Redis, and its time is not the budget's, because other tasks run meanwhile."""

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

    async def run(self, arrived: Wakeup, should_stop: Callable[[], bool]) -> None:
        """Until ``should_stop()``: after each arrival (or ``gap`` without one), read out
        the experiments with new snapshots that the gap and the budget allow."""
        timeout = self.gap
        while not should_stop():
            rest = self.budget.rest(self.monotonic())
            if rest > 0:
                # arrivals meanwhile stay in Evaluator.changed: none is lost, each readout
                # then covers all of them
                self.metrics.readout_budget_wait.inc(rest)
                await asyncio.sleep(rest)
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
        ready = ev.take_changed(self.clock(), self.gap)
        # the longest unread first: a pass the budget cuts short, and the next, must not
        # serve the same experiments again and again
        order = sorted(ready, key=lambda e: (ev.evaluated_at.get(e, -math.inf), e))
        for i, experiment in enumerate(order):
            if self.budget.rest(self.monotonic()) > 0:
                ev.changed.update(order[i:])
                return
            await self.read_out(experiment, "arrival")

    async def read_out(self, experiment: str, trigger: Trigger) -> None:
        """One readout, then its action: a rollback does not wait for other experiments'
        readouts. Stamped with its own time, from which its gap counts."""
        now = self.clock()
        started = self.monotonic()
        readouts = self.evaluator.evaluate(now, only={experiment})
        ended = self.monotonic()
        self.budget.spend(ended, ended - started)
        if readouts:
            self.metrics.readouts.labels(trigger).inc(len(readouts))
            self.metrics.readout_seconds.labels(trigger).inc(ended - started)
        for readout in readouts:
            await self.act(readout.experiment, now)

    def next_wait(self) -> float:
        """How long to wait for an arrival: the gap, or less if an experiment held back by
        its gap becomes ready sooner (otherwise it would wait up to two gaps)."""
        held = self.evaluator.held_until(self.clock(), self.gap)
        return self.gap if held is None else min(self.gap, held)
