"""The records Faust's recovery misses on the bundled broker, and recover_tail applying them."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from faust.types import TP

from streams.changelog import recover_tail
from streams.embedded import EmbeddedBroker
from streams.producer import ensure_topics

pytestmark = pytest.mark.integration


async def _write_batches(bootstrap: str, topic: str, sizes: list[int]) -> list[tuple[bytes, bytes]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=-1)
    await producer.start()
    written = []
    try:
        for b, size in enumerate(sizes):
            batch = producer.create_batch()
            for i in range(size):
                key, value = f"unit-{b}-{i}".encode(), f"state-{b}-{i}".encode()
                batch.append(key=key, value=value, timestamp=None)
                written.append((key, value))
            await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()
    return written


async def _end_offset(bootstrap: str, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


def test_regression_records_past_the_reported_end_offset_are_applied(
    kafka_broker: EmbeddedBroker,
) -> None:
    """tansu reports a partition's end as its last batch's base offset + 1: Faust recovers
    up to ``end - 1`` and misses the rest of that batch. recover_tail reads on from there."""

    async def scenario() -> None:
        topic = "tail-changelog"
        await ensure_topics(kafka_broker.bootstrap, [topic], 1)
        written = await _write_batches(kafka_broker.bootstrap, topic, [30, 20, 50])
        end = await _end_offset(kafka_broker.bootstrap, topic)
        highwater = end - 1  # Faust's "highwater" (recovery.py: value - 1)
        recovered = dict(written[: highwater + 1])  # what Faust's recovery applied
        assert len(recovered) < len(written)  # the broker under-reports: records are missing

        tp = TP(topic, 0)

        class Table:  # hashable, as Faust's tables are; a memory store's changelog path
            def __init__(self, data: dict[bytes, bytes]) -> None:
                self.data = data

            def apply_changelog_batch(self, batch: Any) -> None:
                for event in batch:
                    assert event.message.tp == tp and event.message.key == event.key
                    if event.value is None:
                        self.data.pop(event.key, None)
                    else:
                        self.data[event.key] = event.value

        table = Table(dict(recovered))
        recovery = SimpleNamespace(
            actives_for_table={table: {tp}}, active_highwaters={tp: highwater}
        )
        app = SimpleNamespace(tables=SimpleNamespace(recovery=recovery))
        options = {"bootstrap_servers": kafka_broker.bootstrap}
        applied = await recover_tail(app, table, options)
        assert table.data == dict(written)
        assert applied == len(written) - highwater  # the tail, from the highwater record on

    asyncio.run(scenario())
