"""The lag of the source partitions a worker holds: what it exports as
``rampmon_consumer_lag_messages`` / ``rampmon_consumer_lag_unknown_partitions`` and what
its publish pacer reads (streams.pacing).

A partition's lag counts from the worker's last processed offset, else the group's
committed offset, else the log start offset, which is read by a short-lived client
every ``LOG_START_REFRESH_SECONDS`` for the partitions that have neither.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.metrics import Metrics
from streams.pacing import lags

__all__ = [
    "LOG_START_REFRESH_SECONDS",
    "LOG_START_TIMEOUT_SECONDS",
    "SourceLag",
    "log_start_reader",
]

log = logging.getLogger("rampmon")

#: how often the log start offsets are read of the held source partitions the group has
#: no offset on; RampmonLagUnknown waits 10 minutes, so a tick of this is no delay to it
LOG_START_REFRESH_SECONDS = 10.0
#: how long one read of them may take, connection included
LOG_START_TIMEOUT_SECONDS = 5.0

Partition = tuple[str, int]
LogStartReader = Callable[[list[Partition]], Awaitable[dict[Partition, int]]]


def log_start_reader(client_options: Callable[[], Mapping[str, Any]]) -> LogStartReader:
    """Reads partitions' log start offsets by a short-lived client of its own: not through
    Faust's consumer thread, whose queued calls can deadlock its fetcher when they land in
    a rebalance (the note in faust's ``AIOKafkaConsumerThread.getmany``), and a restart is
    one. ``client_options`` is called for each read, so that certificate files replaced on
    disk reach the next one."""

    async def read(partitions: list[Partition]) -> dict[Partition, int]:
        options = client_options()
        client = AIOKafkaConsumer(enable_auto_commit=False, group_id=None, **options)
        await client.start()
        try:
            offsets = await client.beginning_offsets([TopicPartition(*tp) for tp in partitions])
        finally:
            await client.stop()
        return {(tp.topic, tp.partition): int(o) for tp, o in offsets.items() if o is not None}

    return read


class SourceLag:
    """Per held source partition, the records the worker has yet to process."""

    def __init__(
        self,
        topics: tuple[str, str],
        processed: Mapping[Partition, int],
        metrics: Metrics,
        read_log_starts: LogStartReader,
    ) -> None:
        """``processed``: the last processed offset per source partition, a mapping its
        owner (streams.ingest.Ingest.last_offset) keeps up to date in place."""
        self.topics = topics
        self.processed = processed
        self.metrics = metrics
        self.read_log_starts = read_log_starts
        #: log start offsets of the held source partitions with no processed or committed
        #: offset, where their lag counts from (streams.pacing.lags)
        self.log_starts: dict[Partition, int] = {}

    def lag(self, consumer: Any) -> dict[Partition, int | None]:
        """Per source partition this worker holds (or has processed since its assignment),
        the records it has yet to process; None where unknown (streams.pacing.lags).
        ``consumer`` is Faust's, or None before it exists."""
        if consumer is None:
            return {}
        partitions = self._held(consumer) | set(self.processed)
        return lags(
            sorted(partitions),
            self.processed,
            _highwaters(consumer),
            _committed_offsets(consumer),
            lambda topic, partition: self.log_starts.get((topic, partition)),
        )

    async def refresh_log_starts(self, consumer: Any) -> None:
        """Read the log start offset of each held source partition that has neither a
        processed nor a committed offset: a new group's, whose consumer starts there.

        Without it such a partition's lag stays unknown until its first record is
        processed, and one whose records have all expired never gets one: a new
        ``RAMPMON_APP_ID`` paged RampmonLagUnknown until traffic reached it."""
        if consumer is None:
            return
        committed, highwater = _committed_offsets(consumer), _highwaters(consumer)
        without = [
            tp for tp in self._held(consumer) if tp not in self.processed and committed(*tp) is None
        ]
        self.log_starts = {tp: self.log_starts[tp] for tp in without if tp in self.log_starts}
        # re-read while a backlog waits (retention moves a log's start while nothing is
        # processed); not for an empty log (high watermark 0: lag 0 already), one not
        # fetched yet, or one whose start is its high watermark (all expired, lag 0 until a
        # record arrives): an idle new group would otherwise connect every tick, forever
        todo = sorted(
            tp for tp in without if (mark := highwater(*tp)) and self.log_starts.get(tp) != mark
        )
        if not todo:
            return
        try:
            starts = await asyncio.wait_for(self.read_log_starts(todo), LOG_START_TIMEOUT_SECONDS)
        except Exception as exc:  # the lag stays unknown, or as last read, until the next tick
            log.warning("could not read the log start offsets of %s: %r", todo, exc)
            return
        self.log_starts.update(starts)

    def export(self, lag: Mapping[Partition, int | None]) -> None:
        """Set the lag gauges from :meth:`lag`'s result."""
        # every source topic gets a value, 0 when this worker holds none of its partitions
        # any more: a revoked topic's last lag must not linger and page as "stalled"
        total, unknown = dict.fromkeys(self.topics, 0), dict.fromkeys(self.topics, 0)
        # the lag's keys are source partitions only (lag)
        for (topic, _), value in lag.items():
            if value is None:
                unknown[topic] += 1
            else:
                total[topic] += value
        for topic in self.topics:
            self.metrics.consumer_lag.labels(topic).set(total[topic])
            # a partition whose lag is unknown is in neither sum: without this count a
            # worker stuck before its first fetch would look idle (RampmonLagUnknown)
            self.metrics.consumer_lag_unknown.labels(topic).set(unknown[topic])

    def _held(self, consumer: Any) -> set[Partition]:
        try:
            assigned = [(tp.topic, tp.partition) for tp in consumer.assignment()]
        except Exception:
            assigned = []
        return {tp for tp in assigned if tp[0] in self.topics}


def _highwaters(consumer: Any) -> Callable[[str, int], int | None]:
    """The consumer's high watermark of a partition, None until it has fetched from it."""

    def highwater(topic: str, partition: int) -> int | None:
        try:
            mark = consumer.highwater(faust.types.TP(topic, partition))
        except Exception:
            return None
        return None if mark is None else int(mark)

    return highwater


def _committed_offsets(consumer: Any) -> Callable[[str, int], int | None]:
    """The group's committed offset of a partition, or None, from Faust's record of them
    (set on assignment and on every commit; it keeps 0 as None). Without it a partition
    held but not yet processed from, say one stuck since a restart, would count as no lag,
    and RampmonProcessingStalled could never fire for it."""
    commits: Any = getattr(consumer, "_committed_offset", {})

    def committed(topic: str, partition: int) -> int | None:
        offset = commits.get(faust.types.TP(topic, partition))
        return None if offset is None else int(offset)

    return committed
