"""When a worker publishes its snapshots: every interval, and once more as soon as it has
worked off a backlog.

The wait for the next publish is a share of everything downstream of ingest: of detection
latency, and of the time from an event to statistics that count it (bench/throughput.py,
bench/detection.py). Publishing more often is not free: a publish costs the worker CPU
(about 1-2 us per event at 10,000 events/s at the half-second interval), and every
snapshot sets off a readout of its experiment in the evaluator (about 2 ms each). So a
worker publishes every ``interval``, and early only in one case: its last publish found it
behind its source partitions (a restart, a burst, a stall), and now it has caught up. While
it is behind, the worker checks at the end of every run as well as at each tick, so the
statistics count the backlog as soon as it is processed, not up to an interval later, and
a worker that keeps up, whose publishes find it caught up, publishes at the interval as
before. That bounds the extra publishes to one per interval.

"Caught up" is by the consumer's own high watermarks, the numbers behind the lag gauge. A
partition the worker holds but has processed nothing of since its assignment counts from
the group's committed offset, or, where the group has none, from the log's start offset:
the group resets to the earliest record, so that is where its consumer starts. A log
emptied by retention then counts as caught up (start = high watermark), as an empty one
does. Its lag is unknown (None: left out of the gauge, and never "caught up") while the
consumer has no high watermark for it (not fetched yet, e.g. during table recovery), or
when neither offset is known and its log is not empty. Until such a partition's lag is
known, the worker publishes at the interval only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

__all__ = ["PublishPacer", "caught_up", "lags"]


@dataclass
class PublishPacer:
    """Decides, at each check (a tick, or a run's end while behind), whether the snapshots
    are due."""

    #: seconds between publishes
    interval: float
    #: seconds between checks of a worker that was behind at its last publish; 0: no early
    #: publish, the timer ticks every interval
    catch_up_check: float = 0.0
    last: float = -math.inf
    #: whether the last publish found the worker behind its source partitions
    behind: bool = False

    @property
    def tick(self) -> float:
        """How often the loop asks :meth:`due` unprompted."""
        return self.catch_up_check if 0 < self.catch_up_check < self.interval else self.interval

    @property
    def awaiting_catch_up(self) -> bool:
        """Whether a check now could publish early: the last publish found the worker
        behind. The worker then checks at the end of every run, not only at ticks, so the
        statistics count a backlog as soon as it is processed."""
        return self.behind and self.catch_up_check > 0

    def due(self, now: float, caught_up: bool, *, on_tick: bool = True) -> bool:
        """Whether to publish now. ``on_tick``: the check is the timer's; False for one a
        run's end brought forward (:attr:`awaiting_catch_up`), which gets no slack."""
        # half a tick of slack: timer jitter must not push a publish to the next tick
        slack = self.tick / 2 if on_tick else 0.0
        if now - self.last + slack >= self.interval:
            return True
        return caught_up and self.awaiting_catch_up

    def published(self, now: float, caught_up: bool) -> None:
        self.last, self.behind = now, not caught_up


def lags(
    partitions: Iterable[tuple[str, int]],
    processed: Mapping[tuple[str, int], int],
    highwater: Callable[[str, int], int | None],
    committed: Callable[[str, int], int | None] = lambda topic, partition: None,
    log_start: Callable[[str, int], int | None] = lambda topic, partition: None,
) -> dict[tuple[str, int], int | None]:
    """Records not yet processed per (topic, partition): the consumer's high watermark less
    the next offset to process, which is the last processed one's successor or, for a
    partition nothing has been processed of since its assignment, the group's committed
    offset, or with no commit the log's start offset (the group's reset policy is
    "earliest"). None where that is unknown: no high watermark yet, or none of those
    offsets known on a partition whose log is not empty."""
    out: dict[tuple[str, int], int | None] = {}
    for tp in partitions:
        mark, offset = highwater(*tp), processed.get(tp)
        following = offset + 1 if offset is not None else committed(*tp)
        if following is None:
            following = log_start(*tp)
        if mark is None:
            out[tp] = None
        elif following is not None:
            out[tp] = max(int(mark) - following, 0)
        else:
            out[tp] = 0 if mark == 0 else None
    return out


def caught_up(lag: Mapping[tuple[str, int], int | None]) -> bool:
    """Every partition's records processed, by the consumer's own high watermarks; False
    with no partition, or while any partition's lag is unknown."""
    return bool(lag) and all(v == 0 for v in lag.values())
