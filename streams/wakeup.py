"""A periodic loop's next tick, brought forward when the thing it waits for happens.

The worker's publish and evaluation loops tick every tenth of a second. Each tick that
waits for an event (a run that may have caught the worker up, a snapshot that arrived)
added half a tick or more to the time from an event to statistics that count it, and to
detection latency. A :class:`Wakeup` ends the wait at once when the event is signalled;
unsignalled, the loop still wakes at least every timeout, for what it checks by the clock
and for the stop flag.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["Wakeup"]


class Wakeup:
    """Set by one task, awaited by one loop; set while nobody waits, it is remembered."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout: float) -> bool:
        """Until set or ``timeout`` seconds pass; True if set. Clears it either way."""
        woke = False
        with contextlib.suppress(TimeoutError):
            woke = await asyncio.wait_for(self._event.wait(), timeout)
        self._event.clear()
        return woke
