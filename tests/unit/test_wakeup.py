"""A loop's tick brought forward (streams.wakeup)."""

from __future__ import annotations

import asyncio
import time

from streams.wakeup import Wakeup


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
