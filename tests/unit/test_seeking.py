"""streams.seeking's choice of the fresh partitions to reset, with a stand-in client whose
positions the test sets: the cases the real broker cannot stage on demand (a position not
known yet, a failed offset lookup, a fetch handing records out during the lookup).

The real client is tested in tests/integration/test_seeking.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaTimeoutError

from streams.seeking import seek_to_committed_or_reset

TP = TopicPartition("telemetry", 0)
#: the partition's first offset still held (retention removed the ones before)
START = 5


class _State:
    def __init__(self, position: int | None) -> None:
        self.position = position

    @property
    def has_valid_position(self) -> bool:
        return self.position is not None


class _Client:
    """An ``AIOKafkaConsumer`` as the seek sees it: no committed offsets, one partition
    whose position is ``position`` (None: not known yet), the resets it is asked for."""

    def __init__(self, position: int | None, *, lookup_fails: bool = False) -> None:
        self.state = _State(position)
        assignment = SimpleNamespace(state_value=lambda tp: self.state)
        self._subscription = SimpleNamespace(subscription=SimpleNamespace(assignment=assignment))
        self.lookup_fails = lookup_fails
        #: a fetch that hands records out while the lookup awaits: the position it leaves
        self.handed_out_during_lookup: int | None = None
        self.resets: list[str] = []

    async def seek_to_committed(self) -> dict[TopicPartition, int | None]:
        return {TP: None}

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        await asyncio.sleep(0)
        if self.lookup_fails:
            raise KafkaTimeoutError("ListOffsets timed out")
        if self.handed_out_during_lookup is not None:
            self.state.position = self.handed_out_during_lookup
        return dict.fromkeys(tps, START)

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 40)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        self.resets.append("beginning")

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        self.resets.append("end")


@pytest.mark.parametrize(
    ("position", "reset", "resets"),
    [
        (START, "earliest", []),  # at its start: nothing handed out, nothing to undo
        (START + 3, "earliest", ["beginning"]),  # past it: records Faust dropped
        (None, "earliest", ["beginning"]),  # not known yet: reset, as before
        (40, "latest", []),
        (12, "latest", ["end"]),
    ],
)
def test_a_fresh_partition_is_reset_unless_it_is_at_the_edge(
    position: int | None, reset: str, resets: list[str]
) -> None:
    client = _Client(position)
    asyncio.run(seek_to_committed_or_reset(client, reset))
    assert client.resets == resets


def test_regression_a_failed_offset_lookup_resets_every_fresh_partition() -> None:
    """The old seek always reset; a lookup that fails must not leave a partition past the
    records Faust dropped (helper review of 5c74190)."""
    client = _Client(START, lookup_fails=True)
    asyncio.run(seek_to_committed_or_reset(client, "earliest"))
    assert client.resets == ["beginning"]


def test_regression_records_handed_out_during_the_lookup_are_read_again() -> None:
    """A fetch started before the flow stopped can hand records out while the seek awaits
    the offset lookup; the position is read after the lookup, so the partition is reset
    (helper review of 5c74190: 5c74190 read it before)."""
    client = _Client(START)
    client.handed_out_during_lookup = START + 7
    asyncio.run(seek_to_committed_or_reset(client, "earliest"))
    assert client.resets == ["beginning"]
