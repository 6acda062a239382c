"""streams.seeking with a stand-in client whose committed offsets and positions the test
sets: the cases the real broker cannot stage on demand (a position not known yet, a failed
offset lookup, a fetch handing records out during the lookup), and the wiring through
rampmon's consumer thread, which a timing-dependent crash test would only catch by chance.

The real client is tested in tests/integration/test_seeking.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from streams.runs import RunApp, RunConsumerThread
from streams.seeking import seek_to_committed_or_reset

TP = TopicPartition("telemetry", 0)
#: the partition's first offset still held (retention removed the ones before)
START = 5
#: the partition's end offset
END = 40


class _State:
    def __init__(self, position: int | None) -> None:
        self.position = position

    @property
    def has_valid_position(self) -> bool:
        return self.position is not None


class _Client:
    """An ``AIOKafkaConsumer`` as the seek sees it: its committed offsets, each partition's
    position (missing or None: not known yet), and the seeks it is asked for."""

    def __init__(
        self,
        committed: dict[TopicPartition, int | None],
        positions: dict[TopicPartition, int | None] | None = None,
        *,
        lookup_fails: bool = False,
    ) -> None:
        self.committed = committed
        self.positions = dict(positions or {})
        assignment = SimpleNamespace(state_value=lambda tp: _State(self.positions.get(tp)))
        self._subscription = SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))
        self.lookup_fails = lookup_fails
        #: a fetch that hands records out while the lookup awaits: the positions it leaves
        self.handed_out_during_lookup: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[str, TopicPartition, int | None]] = []

    @property
    def resets(self) -> list[str]:
        return [kind for kind, _, _ in self.seeks if kind != "offset"]

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        return dict(self.committed)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append(("offset", tp, offset))

    async def _lookup(self, tps: list[TopicPartition], at: int) -> dict[TopicPartition, int]:
        await asyncio.sleep(0)
        if self.lookup_fails:
            raise KafkaTimeoutError("ListOffsets timed out")
        self.positions.update(self.handed_out_during_lookup)
        return dict.fromkeys(tps, at)

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._lookup(tps, START)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return await self._lookup(tps, END)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.seeks.extend(("beginning", tp, None) for tp in tps)

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        self.seeks.extend(("end", tp, None) for tp in tps)


@pytest.mark.parametrize(
    ("position", "reset", "resets"),
    [
        (START, "earliest", []),  # at its start: nothing handed out, nothing to undo
        (START + 3, "earliest", ["beginning"]),  # past it: records Faust dropped
        (None, "earliest", ["beginning"]),  # not known yet: reset, as before
        (END, "latest", []),
        (12, "latest", ["end"]),
    ],
)
def test_a_fresh_partition_is_reset_unless_it_is_at_the_edge(
    position: int | None, reset: str, resets: list[str]
) -> None:
    client = _Client({TP: None}, {TP: position})
    asyncio.run(seek_to_committed_or_reset(client, reset))
    assert client.resets == resets


def test_regression_a_failed_offset_lookup_resets_every_fresh_partition() -> None:
    """The old seek always reset; a lookup that fails must not leave a partition past the
    records Faust dropped (helper review of 5c74190)."""
    client = _Client({TP: None}, {TP: START}, lookup_fails=True)
    asyncio.run(seek_to_committed_or_reset(client, "earliest"))
    assert client.resets == ["beginning"]


def test_regression_records_handed_out_during_the_lookup_are_read_again() -> None:
    """A fetch started before the flow stopped can hand records out while the seek awaits
    the offset lookup; the position is read after the lookup, so the partition is reset
    (helper review of 5c74190: 5c74190 read it before)."""
    client = _Client({TP: None}, {TP: START})
    client.handed_out_during_lookup = {TP: START + 7}
    asyncio.run(seek_to_committed_or_reset(client, "earliest"))
    assert client.resets == ["beginning"]


def test_the_consumer_threads_seek_resets_uncommitted_partitions_but_not_changelogs() -> None:
    """Faust's post-recovery seek reaches streams.seeking through rampmon's consumer
    thread, with the app's reset policy and its changelogs left alone."""
    app = RunApp("seek-wiring", broker="kafka://127.0.0.1:1", run_topics=["telemetry"])
    app.Table("units", default=bytes)
    (changelog,) = app.tables.changelog_topics
    fresh, zero, committed = (TopicPartition("telemetry", p) for p in range(3))
    log = TopicPartition(changelog, 0)
    # no position known, so the fresh partition is reset
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
