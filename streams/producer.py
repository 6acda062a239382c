"""Producing events the way rampmon expects them: keyed and partitioned by ``unit_id``.

A batch envelope (a JSON array) must hold only units of one partition, so events are
grouped by the default (murmur2) partition of their unit before they are batched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError
from aiokafka.partitioner import murmur2

__all__ = ["EventProducer", "ensure_topics", "partition_of"]


def partition_of(unit_id: str, partitions: int) -> int:
    return (murmur2(unit_id.encode()) & 0x7FFFFFFF) % partitions


async def ensure_topics(bootstrap: str, topics: Iterable[str], partitions: int) -> None:
    """Create missing topics with ``partitions`` partitions.

    A producer that writes first would otherwise get the broker's default partition count,
    and exposures and telemetry must be co-partitioned with the worker's tables.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # a worker was faster
                await admin.create_topics(missing)
    finally:
        await admin.close()


class EventProducer:
    def __init__(self, bootstrap: str, *, partitions: int, batch_size: int = 100) -> None:
        self.partitions = partitions
        self.batch_size = batch_size
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            linger_ms=5,
            max_batch_size=1 << 20,
            max_request_size=8 << 20,
            acks="all",
        )
        self.sent_events = 0
        self.sent_messages = 0

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def send_events(self, topic: str, events: Iterable[Mapping[str, Any]]) -> None:
        """Send events keyed by unit, in envelopes of up to ``batch_size`` per partition."""
        groups: dict[int, list[Mapping[str, Any]]] = {}
        for e in events:
            groups.setdefault(partition_of(str(e["unit_id"]), self.partitions), []).append(e)
        futures = []
        for partition, group in groups.items():
            for i in range(0, len(group), self.batch_size):
                chunk = group[i : i + self.batch_size]
                key = str(chunk[0]["unit_id"]).encode()
                value = orjson.dumps(chunk[0] if self.batch_size == 1 else chunk)
                futures.append(
                    await self._producer.send(topic, value, key=key, partition=partition)
                )
                self.sent_messages += 1
                self.sent_events += len(chunk)
        for f in futures:
            await f

    async def send_raw(
        self, topic: str, value: bytes, *, key: bytes | None = None, partition: int | None = None
    ) -> None:
        await self._producer.send_and_wait(topic, value, key=key, partition=partition)
        self.sent_messages += 1
