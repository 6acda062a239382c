"""streams.seeking on the real broker: after fetches that Faust dropped, every partition goes
back to its committed offset, or to where its reset policy puts it when it has none."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from streams.embedded import EmbeddedBroker
from streams.producer import ensure_topics
from streams.seeking import seek_to_committed_or_reset

pytestmark = pytest.mark.integration

RECORDS = 40
#: records read before the seek: the position the dropped fetches left, short of both ends
FETCHED = 10


async def _partition_of_records(bootstrap: str, prefix: str) -> TopicPartition:
    """A new one-partition topic holding ``RECORDS`` records."""
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [topic], 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=-1)
    await producer.start()
    try:
        for i in range(RECORDS):
            await producer.send_and_wait(topic, f"r{i}".encode(), partition=0)
    finally:
        await producer.stop()
    return TopicPartition(topic, 0)


async def _position_after_seek(
    bootstrap: str, committed: int | None, reset: str, *, leave: bool = False, plain: bool = False
) -> int:
    """Position of a partition of ``RECORDS`` records after the consumer fetched
    ``FETCHED`` of them (as a recovering Faust worker does before it drops them) and then
    seeks."""
    tp = await _partition_of_records(bootstrap, "seek")
    topic = tp.topic
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=f"group-{topic}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        if committed is not None:
            await consumer.commit({tp: OffsetAndMetadata(committed, "")})
            assert await consumer.committed(tp) == committed
        await consumer.seek_to_beginning(tp)
        read = 0
        while read < FETCHED:
            batches = await consumer.getmany(timeout_ms=1000, max_records=FETCHED - read)
            read += sum(len(rs) for rs in batches.values())
        assert await consumer.position(tp) == FETCHED
        if plain:
            await consumer.seek_to_committed()
        else:
            offsets = await seek_to_committed_or_reset(
                consumer, reset, leave={topic} if leave else ()
            )
            assert offsets == {tp: committed}  # what Faust's perform_seek reads back
        return int(await consumer.position(tp))
    finally:
        await consumer.stop()


def test_regression_a_partition_without_a_committed_offset_is_read_from_its_start(
    kafka_broker: EmbeddedBroker,
) -> None:
    """The loss behind a failed CI run of test_three_sigkills (seed 646227869): aiokafka
    leaves an uncommitted partition where the dropped fetches left it."""
    bootstrap = kafka_broker.bootstrap
    assert asyncio.run(_position_after_seek(bootstrap, None, "earliest", plain=True)) == FETCHED
    assert asyncio.run(_position_after_seek(bootstrap, None, "earliest")) == 0


@pytest.mark.parametrize(
    ("committed", "reset", "leave", "position"),
    [
        (0, "earliest", False, 0),  # aiokafka skips offset 0 too
        (17, "earliest", False, 17),
        (17, "latest", False, 17),
        (None, "latest", False, RECORDS),
        (None, "none", False, FETCHED),  # no policy: the position is left alone
        # a changelog: recovery sets its position, aiokafka's seek alone applies
        (None, "earliest", True, FETCHED),
        (17, "earliest", True, 17),
    ],
)
def test_each_partition_goes_to_its_committed_offset_or_its_reset_policy(
    kafka_broker: EmbeddedBroker, committed: int | None, reset: str, leave: bool, position: int
) -> None:
    got = asyncio.run(_position_after_seek(kafka_broker.bootstrap, committed, reset, leave=leave))
    assert got == position


async def _resets_at_the_edge(bootstrap: str, reset: str) -> tuple[list[str], int]:
    """The resets the seek asks of a fresh partition that is already where ``reset`` puts
    it (nothing read yet), and the position after the seek."""
    tp = await _partition_of_records(bootstrap, "edge")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=f"group-{tp.topic}", enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        if reset == "earliest":
            await consumer.seek_to_beginning(tp)
        else:
            await consumer.seek_to_end(tp)
        resets: list[str] = []

        async def to_beginning(*tps: TopicPartition) -> bool:
            resets.append("beginning")
            return bool(await type(consumer).seek_to_beginning(consumer, *tps))

        async def to_end(*tps: TopicPartition) -> bool:
            resets.append("end")
            return bool(await type(consumer).seek_to_end(consumer, *tps))

        consumer.seek_to_beginning = to_beginning  # type: ignore[method-assign]
        consumer.seek_to_end = to_end  # type: ignore[method-assign]
        await seek_to_committed_or_reset(consumer, reset)
        return resets, int(await consumer.position(tp))
    finally:
        await consumer.stop()


@pytest.mark.parametrize(("reset", "position"), [("earliest", 0), ("latest", RECORDS)])
def test_regression_a_fresh_partition_already_at_the_edge_is_not_reset(
    kafka_broker: EmbeddedBroker, reset: str, position: int
) -> None:
    """A reset drops the partition's fetched records and fetches them again. Resetting
    every fresh partition on a fresh group's first start let whichever came back first
    reach the agent first: telemetry ran ahead of its exposures in 18 of 45 throughput
    bench runs (bench/README.md, "A reset that was not needed")."""
    resets, got = asyncio.run(_resets_at_the_edge(kafka_broker.bootstrap, reset))
    assert (resets, got) == ([], position)
