"""The records Faust's recovery misses on the bundled broker, and recover_tail applying them."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
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


class _Table:
    """Hashable, as Faust's tables are, with a memory store's changelog path."""

    def __init__(self, tp: TP, data: dict[bytes, bytes]) -> None:
        self.tp = tp
        self.data = data
        self.name = tp.topic

    def apply_changelog_batch(self, batch: Any) -> None:
        for event in batch:
            assert event.message.tp == self.tp and event.message.key == event.key
            if event.value is None:
                self.data.pop(event.key, None)
            else:
                self.data[event.key] = event.value


async def _recovered(bootstrap: str, topic: str) -> tuple[Any, _Table, dict[bytes, bytes], int]:
    """Three batches written, and what Faust's recovery leaves: ``(app, table, written,
    highwater)`` with the table holding the records up to the reported highwater."""
    await ensure_topics(bootstrap, [topic], 1)
    written = dict(await _write_batches(bootstrap, topic, [30, 20, 50]))
    end = await _end_offset(bootstrap, topic)
    highwater = end - 1  # Faust's "highwater" (recovery.py: value - 1)
    recovered = dict(list(written.items())[: highwater + 1])  # what Faust's recovery applied
    assert len(recovered) < len(written)  # the broker under-reports: records are missing
    tp = TP(topic, 0)
    table = _Table(tp, recovered)
    recovery = SimpleNamespace(actives_for_table={table: {tp}}, active_highwaters={tp: highwater})
    return SimpleNamespace(tables=SimpleNamespace(recovery=recovery)), table, written, highwater


def test_regression_records_past_the_reported_end_offset_are_applied(
    kafka_broker: EmbeddedBroker,
) -> None:
    """tansu reports a partition's end as its last batch's base offset + 1: Faust recovers
    up to ``end - 1`` and misses the rest of that batch. recover_tail reads on from there."""

    async def scenario() -> None:
        app, table, written, highwater = await _recovered(kafka_broker.bootstrap, "tail-a")
        options = {"bootstrap_servers": kafka_broker.bootstrap}
        applied = await recover_tail(app, table, options)
        assert table.data == written
        assert applied == len(written) - highwater  # the tail, from the highwater record on

    asyncio.run(scenario())


def test_regression_a_slow_broker_does_not_end_the_tail_before_the_highwater(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tail once ended after two empty 250 ms fetches: a broker slow to answer (a loaded
    CI machine) returned nothing in time, no record was applied, and the crash test's
    statistics stayed short for good. Now the tail reads until it has the highwater's batch.
    The broker is paused (SIGSTOP) for two seconds right after the tail's consumer starts."""
    from aiokafka import AIOKafkaConsumer as Consumer

    with EmbeddedBroker() as broker:
        assert broker.proc is not None
        pid = broker.proc.pid

        async def scenario() -> None:
            app, table, written, highwater = await _recovered(broker.bootstrap, "tail-b")
            real_start = Consumer.start

            async def start_then_pause(self: Any) -> None:
                await real_start(self)
                os.kill(pid, signal.SIGSTOP)
                asyncio.get_running_loop().call_later(2.0, os.kill, pid, signal.SIGCONT)

            monkeypatch.setattr(Consumer, "start", start_then_pause)
            try:
                applied = await recover_tail(app, table, {"bootstrap_servers": broker.bootstrap})
            finally:
                os.kill(pid, signal.SIGCONT)
            assert table.data == written
            assert applied == len(written) - highwater

        asyncio.run(scenario())


def test_the_tail_gives_up_after_its_deadline_and_says_so(
    kafka_broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A highwater record that never comes (here: past the log's end) must not hold recovery
    forever: after ``deadline_seconds`` the tail ends with an error in the log."""

    async def scenario() -> None:
        app, table, _, highwater = await _recovered(kafka_broker.bootstrap, "tail-c")
        tp = next(iter(app.tables.recovery.active_highwaters))
        app.tables.recovery.active_highwaters[tp] = highwater + 1_000
        began = time.monotonic()
        await recover_tail(
            app, table, {"bootstrap_servers": kafka_broker.bootstrap}, deadline_seconds=1.0
        )
        assert time.monotonic() - began < 10

    with caplog.at_level(logging.ERROR, logger="rampmon"):
        asyncio.run(scenario())
    assert "waits for offset" in caplog.text and "tail-c" in caplog.text
