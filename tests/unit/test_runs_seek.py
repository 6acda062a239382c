"""Faust's post-recovery seek reaches streams.seeking through rampmon's consumer thread,
with the app's reset policy and its changelogs left alone.

The seek itself is tested on the real broker (tests/integration/test_seeking.py). This
checks the wiring, which a timing-dependent crash test would only catch by chance: a
stand-in for the aiokafka client records the seeks the consumer thread asks of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import TopicPartition

from streams.runs import RunApp, RunConsumerThread


class _Client:
    """What the seek uses of an ``AIOKafkaConsumer``: committed offsets in, seeks recorded."""

    def __init__(self, committed: dict[TopicPartition, int | None]) -> None:
        self.committed = committed
        self.seeks: list[tuple[str, TopicPartition, int | None]] = []

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        return dict(self.committed)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(("offset", tp, offset))

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.seeks.extend(("beginning", tp, None) for tp in tps)

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        self.seeks.extend(("end", tp, None) for tp in tps)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)  # no position known here, so the fresh ones are reset


def test_the_consumer_threads_seek_resets_uncommitted_partitions_but_not_changelogs() -> None:
    app = RunApp("seek-wiring", broker="kafka://127.0.0.1:1", run_topics=["telemetry"])
    app.Table("units", default=bytes)
    (changelog,) = app.tables.changelog_topics
    fresh, zero, committed = (TopicPartition("telemetry", p) for p in range(3))
    log = TopicPartition(changelog, 0)
    client = _Client({fresh: None, zero: 0, committed: 9, log: None})
    thread = app.consumer._thread
    assert isinstance(thread, RunConsumerThread)

    async def in_place(fun: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        return await fun(*args, **kwargs)  # the consumer thread's loop, without the thread

    thread._ensure_consumer = lambda: client  # type: ignore[method-assign]
    thread.call_thread = in_place  # type: ignore[method-assign]
    offsets = asyncio.run(app.consumer.seek_to_committed())
    assert offsets == client.committed  # what Faust's perform_seek reads back
    assert sorted(client.seeks) == [("beginning", fresh, None), ("offset", zero, 0)]
