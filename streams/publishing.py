"""When a worker publishes its per-partition snapshots to the evaluator.

Every ``interval`` while events keep coming, as before; and as soon as ingest has been
quiet for ``quiet`` after a run, so the last events before a lull (a drained backlog, a
quiet hour) reach the readout without waiting out the interval. Publishing is never more
frequent than once per ``quiet``: a snapshot costs the same however few events it adds.
"""

from __future__ import annotations

import math

__all__ = ["PublishSchedule"]


class PublishSchedule:
    def __init__(self, interval: float, quiet: float) -> None:
        if not 0 < quiet <= interval:
            raise ValueError(f"need 0 < quiet ({quiet}) <= interval ({interval})")
        self.interval = interval
        self.quiet = quiet
        self._published = -math.inf
        self._last_run = -math.inf

    @property
    def tick(self) -> float:
        """How often to ask :meth:`due`."""
        return self.quiet

    def ran(self, now: float) -> None:
        """Ingest finished a run at ``now``."""
        self._last_run = now

    def due(self, now: float) -> bool:
        since = now - self._published
        # half a tick of slack: timer jitter must not push a publish a whole tick late
        if since >= self.interval - self.tick / 2:
            return True
        return self._last_run > self._published and now - self._last_run >= self.quiet

    def published(self, now: float) -> None:
        self._published = now
