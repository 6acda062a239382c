"""Seek each partition to its committed offset, or by the reset policy where it has none.

Faust reads nothing of a source partition until its tables have recovered. Records the
client fetches before then are dropped, and Faust calls ``Consumer.perform_seek`` (which
calls aiokafka's ``seek_to_committed``) to read them again. aiokafka seeks only
partitions whose committed offset is above zero (``if offset and offset > 0``). A
partition with no committed offset keeps the position its dropped fetches reached, so
those records are never processed.

That happens to a partition its group has committed nothing for, as when the first worker
is killed before its first commit (every 2.8 s, Faust's default). In issue #5's SIGKILL
test a restarted worker dropped exposure offsets 0-36 of every partition during recovery
and then read from 37. Offsets 0-18 were in the recovered unit records, 19-36 were lost,
and about 17% of the units were never exposed
(``test_regression_a_partition_without_a_committed_offset_is_read_from_its_start``).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from aiokafka import TopicPartition

__all__ = ["seek_to_committed_or_reset"]


async def seek_to_committed_or_reset(
    consumer: Any, reset: str, *, leave: Collection[str] = ()
) -> dict[TopicPartition, int | None]:
    """Seek every assigned partition as aiokafka's ``seek_to_committed`` does, then the
    ones it skips: offset 0 to 0, no committed offset by ``reset`` (the group's
    ``auto_offset_reset``; ``none`` leaves them). Partitions of the ``leave`` topics get
    aiokafka's seek only: Faust's changelogs, which no group commits and whose positions
    recovery sets itself. Returns the committed offsets, as ``seek_to_committed`` does."""
    committed: dict[TopicPartition, int | None] = await consumer.seek_to_committed()
    ours = {tp: offset for tp, offset in committed.items() if tp.topic not in leave}
    for tp, offset in ours.items():
        if offset == 0:
            consumer.seek(tp, 0)
    fresh = [tp for tp, offset in ours.items() if offset is None]
    if fresh and reset == "earliest":
        await consumer.seek_to_beginning(*fresh)
    elif fresh and reset == "latest":
        await consumer.seek_to_end(*fresh)
    return committed
