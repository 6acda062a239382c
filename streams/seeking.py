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

A partition that is already where its reset policy puts it is not reset: a reset drops
the records the client has fetched for it and fetches them again, and on a fresh group's
first start, where every partition was reset, whichever came back first reached the agent
first (``test_regression_a_fresh_partition_already_at_the_edge_is_not_reset``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Any

from aiokafka import TopicPartition

__all__ = ["seek_to_committed_or_reset"]

log = logging.getLogger("rampmon")


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
    if fresh and reset in ("earliest", "latest"):
        moved = await _away_from(consumer, fresh, reset)
        if moved and reset == "earliest":
            await consumer.seek_to_beginning(*moved)
        elif moved:
            await consumer.seek_to_end(*moved)
    return committed


async def _away_from(consumer: Any, tps: list[TopicPartition], reset: str) -> list[TopicPartition]:
    """The partitions not already where ``reset`` puts them.

    A reset is not free: aiokafka drops the partition's fetched records and fetches them
    again. On a fresh group's first start every source partition was reset, and whichever
    came back first reached the agent first: 30% to 70% of the telemetry was read before
    its exposure in 18 of 45 throughput bench runs, in none of 18 before the reset was
    added (bench/README.md, "A reset that was not needed").

    So a partition already at the edge is left as it is. Everything else is reset as
    before: a partition whose position the client does not know yet, and every partition
    if the edge cannot be read (the old reset always held; a lost lookup must not leave a
    partition past the records Faust dropped). The positions are read after the lookup's
    await, with none before the caller's reset: a fetch that hands records out during the
    lookup moves the position first, and the partition is then reset."""
    ask = consumer.beginning_offsets if reset == "earliest" else consumer.end_offsets
    try:
        edge: dict[TopicPartition, int] = await ask(list(tps))
    except Exception:  # any failure: the safe side is the reset the seek always made
        log.warning("reading the %s offsets of %d partitions failed; resetting them", reset,
                    len(tps), exc_info=True)  # fmt: skip
        return list(tps)
    return [tp for tp in tps if _position_if_known(consumer, tp) != edge.get(tp, -1)]


def _position_if_known(consumer: Any, tp: TopicPartition) -> int | None:
    """The partition's position (the offset of the next record the client hands out; it
    moves only when records are handed out), or None while the client awaits one.

    aiokafka's ``position()`` waits for a pending offset reset; this reads the client's
    own state instead (private: None, and so a reset, if that state ever moves)."""
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
        return int(state.position) if state.has_valid_position else None
    except AttributeError:
        return None
