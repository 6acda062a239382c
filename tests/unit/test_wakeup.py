"""A loop's tick brought forward (streams.wakeup)."""

from __future__ import annotations

import asyncio
import time
from itertools import pairwise

from streams.wakeup import Wakeup, serve


def test_a_wait_with_nothing_set_lasts_its_timeout() -> None:
    async def waited() -> tuple[bool, float]:
        wakeup = Wakeup()
        start = time.monotonic()
        woke = await wakeup.wait(0.05)
        return woke, time.monotonic() - start

    woke, seconds = asyncio.run(waited())
    assert not woke
    assert seconds >= 0.045


def test_a_set_while_waiting_ends_the_wait_at_once() -> None:
    async def waited() -> tuple[bool, float]:
        wakeup = Wakeup()
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, wakeup.set)
        start = time.monotonic()
        woke = await wakeup.wait(30.0)
        return woke, time.monotonic() - start

    woke, seconds = asyncio.run(waited())
    assert woke
    assert seconds < 5.0


def test_a_set_before_the_wait_is_remembered_once() -> None:
    async def waited() -> tuple[bool, bool]:
        wakeup = Wakeup()
        wakeup.set()
        wakeup.set()
        first = await wakeup.wait(30.0)
        # cleared by the first wait: the second times out
        second = await wakeup.wait(0.01)
        return first, second

    assert asyncio.run(waited()) == (True, False)


def _serve_arrivals(arrive_every: float, arrivals: int, gap: float) -> list[tuple[float, float]]:
    """(arrival, pass start) of each pass of ``serve``, work arriving every
    ``arrive_every`` seconds."""

    async def run() -> list[tuple[float, float]]:
        wakeup, queued, passes = Wakeup(), [], []
        loop = asyncio.get_running_loop()
        start = time.monotonic()

        def arrive() -> None:
            queued.append(time.monotonic())
            wakeup.set()

        for i in range(arrivals):
            loop.call_later(0.01 + i * arrive_every, arrive)

        async def work() -> None:
            passes.append((queued[0], time.monotonic()))
            queued.clear()

        def stopping() -> bool:
            return time.monotonic() - start > 0.05 + arrivals * arrive_every

        await serve(wakeup, work, pending=lambda: bool(queued), gap=gap, stopping=stopping)
        return passes

    return asyncio.run(run())


def test_regression_serve_does_work_at_once_after_an_idle_gap() -> None:
    """Found by review of 25f00c9: the idle loop counted its timeouts as passes, so work
    arriving mid-tick waited for the next tick, as under the timer it replaced (a quarter
    of a second each here)."""
    passes = _serve_arrivals(arrive_every=0.75, arrivals=4, gap=0.5)
    assert len(passes) == 4
    assert max(started - arrived for arrived, started in passes) < 0.15, passes


def test_serve_runs_at_most_one_pass_per_gap() -> None:
    passes = _serve_arrivals(arrive_every=0.02, arrivals=40, gap=0.2)
    starts = [started for _, started in passes]
    assert 3 <= len(starts) <= 6, starts
    assert min(b - a for a, b in pairwise(starts)) >= 0.19, starts
