"""ChangelogBatcher's reads and writes land in the table's own store."""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.util import size_of_varint
from faust.streams import _current_event
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.app import _raw_table
from streams.changelog import ChangelogBatcher, batch_bytes, batch_ends, record_bytes


class _Table:
    """A table whose store is some other mapping (as a RocksDB store is)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


def test_reads_and_writes_go_to_a_faust_memory_store_and_its_changelog_batch() -> None:
    app = faust.App("rampmon-unit", broker="kafka://127.0.0.1:1", autodiscover=False)
    table: Any = app.Table("units", default=bytes)
    batcher = ChangelogBatcher(table)
    assert batcher.mapping.get(b"new") is None  # a unit never seen: no KeyError escapes
    batcher.put_many([(b"u1", b"a")])
    batcher.put_many([(b"u1", b"b")])
    table.data[b"u2"] = b"recovered"  # what recovery writes into the store
    assert table.data.get(b"u1") == b"b"
    assert batcher.mapping.get(b"u2") == b"recovered"
    assert len(batcher) == 1  # one changelog record per key and run: the last value


def test_any_other_store_is_used_through_its_mapping() -> None:
    table = _Table()
    batcher = ChangelogBatcher(table)
    batcher.put_many([(b"u1", b"a")])
    assert table.data == {b"u1": b"a"}
    assert batcher.mapping.get(b"u1") == b"a"


def test_a_rollback_takes_back_the_runs_writes_in_the_store_and_the_batches() -> None:
    table = _Table()
    table.data.update({b"kept": b"0", b"changed": b"1", b"deleted": b"2"})
    batcher = ChangelogBatcher(table)
    batcher.begin()
    batcher.put_many([(b"earlier", b"e")])
    batcher.seal()  # an earlier run of the same fetch, still to be sent
    batcher.begin()
    batcher.put_many([(b"changed", b"1'"), (b"new", b"n")])
    batcher.put_first([(b"deleted", None), (b"window", b"w")])
    batcher.put_first([(b"window", b"w'"), (b"changed", b"1''")])  # a key written twice
    batcher.seal()
    batcher.put_many([(b"after-seal", b"a")])  # the run goes on past a sealed batch
    batcher.rollback()
    assert table.data == {
        b"kept": b"0", b"changed": b"1", b"deleted": b"2", b"earlier": b"e",
    }  # fmt: skip
    assert batcher.take() == [[(b"earlier", b"e")]]


def test_consecutive_sealed_batches_that_fit_one_are_taken_as_one() -> None:
    """A run processed message by message (Ingest.isolate) seals a batch a message: sent
    as they are, that is a broker round trip each, one after the other."""
    batcher = ChangelogBatcher(_Table(), batch_bytes=400)
    for i in range(5):  # 5 runs of 2 records of 2 + 20 bytes: 37 bytes each with overheads
        batcher.put_many([(b"k%d" % i, b"v" * 20), (b"j%d" % i, b"w" * 20)])
        batcher.seal()
    taken = batcher.take()
    assert [len(records) for records in taken] == [8, 2]  # 61 + 4 x 74 < 400 <= 61 + 5 x 74
    assert all(batch_bytes(records) < 400 for records in taken)
    assert [k for records in taken for k, _ in records] == [
        k for i in range(5) for k in (b"k%d" % i, b"j%d" % i)
    ]


def test_writes_handed_to_the_producer_are_beyond_a_rollback() -> None:
    table = _Table()
    batcher = ChangelogBatcher(table)
    batcher.begin()
    batcher.put_many([(b"u", b"sent")])
    assert batcher.take() == [[(b"u", b"sent")]]
    batcher.rollback()  # nothing since: nothing to take back, and no stale undo
    assert table.data == {b"u": b"sent"}


class _Event:
    """What Faust's RocksDB store reads of the event being processed: its partition."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


def test_a_run_of_writes_lands_in_a_rocksdb_store(tmp_path: Path) -> None:
    """Regression: put_many once called the store's update(), which on Faust's RocksDB
    store is mode's FastUserDict.update -- self.data.update, an attribute that store does
    not have -- so the first run on the production store crashed the agent."""
    app = faust.App(
        "rampmon-unit-rocks",
        broker="kafka://127.0.0.1:1",
        store="rocksdb://",
        datadir=str(tmp_path),
        autodiscover=False,
    )
    table = _raw_table(app, "units", 4, {})
    batcher = ChangelogBatcher(table)
    event = _Event(2)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        batcher.put_many([(b"u1", b"a"), (b"u2", b"b"), (b"u1", b"c")])
        assert batcher.mapping.get(b"u1") == b"c" and batcher.mapping.get(b"u2") == b"b"
        assert len(batcher) == 2
        # window records and their tombstones, including one for a key the store lacks
        batcher.put_first([(b"\xffw", b"w"), (b"\xffgone", None)])
        assert batcher.mapping.get(b"\xffw") == b"w"
        batcher.put_first([(b"\xffw", None)])
        assert batcher.mapping.get(b"\xffw") is None
        assert batcher.mapping.get(b"u1") == b"c" and batcher.mapping.get(b"\xffgone") is None
        # a run that raised: its writes taken back in RocksDB too
        batcher.take()
        batcher.begin()
        batcher.put_many([(b"u1", b"d"), (b"u3", b"new")])
        batcher.put_first([(b"u2", None)])
        batcher.rollback()
        got = {k: batcher.mapping.get(k) for k in (b"u1", b"u2", b"u3")}
        assert got == {b"u1": b"c", b"u2": b"b", b"u3": None}
    finally:
        _current_event.reset(token)


def test_window_records_go_first_and_a_none_value_deletes_the_key() -> None:
    table = _Table()
    batcher = ChangelogBatcher(table)
    batcher.put_many([(b"u1", b"a"), (b"u2", b"b")])
    table.data[b"\xffold"] = b"window"  # recovered
    batcher.put_first([(b"\xffnew", b"w"), (b"\xffold", None)])
    assert table.data == {b"u1": b"a", b"u2": b"b", b"\xffnew": b"w"}
    assert len(batcher) == 4
    assert batcher.take() == [
        [(b"\xffnew", b"w"), (b"\xffold", None), (b"u1", b"a"), (b"u2", b"b")]
    ]
    assert len(batcher) == 0 and batcher.take() == []


class _Batch:
    """aiokafka's own batch builder, recording what it accepted."""

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.records: list[tuple[bytes, bytes | None]] = []

    def append(self, *, key: bytes, value: bytes | None, timestamp: int | None) -> Any:
        accepted = self.builder.append(key=key, value=value, timestamp=timestamp)
        if accepted is not None:
            self.records.append((key, value))
        return accepted


class _Producer:
    """An aiokafka producer that is never started: its batches are kept, not sent."""

    def __init__(self, batch_bytes: int) -> None:
        self.client = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", max_batch_size=batch_bytes)
        self.sent: list[tuple[str, int, list[tuple[bytes, bytes | None]]]] = []

    def create_batch(self) -> _Batch:
        return _Batch(self.client.create_batch())

    async def send_batch(self, batch: _Batch, topic: str, *, partition: int) -> Any:
        self.sent.append((topic, partition, batch.records))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(offset=sum(len(r) for _, _, r in self.sent)))
        return done


def test_a_run_is_one_batch_when_it_fits_and_its_planned_batches_when_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = faust.App("rampmon-unit-flush", broker="kafka://127.0.0.1:1", autodiscover=False)
    table: Any = app.Table("units", default=bytes)
    units = [(f"u{i}".encode(), b"x" * 100) for i in range(40)]
    windows: list[tuple[bytes, bytes | None]] = [(b"\xffw1", b"y" * 100), (b"\xffw0", None)]

    async def scenario() -> None:
        batcher = ChangelogBatcher(table, batch_bytes=960 * 1024)
        batcher.put_many(units)
        batcher.put_first(windows)
        assert batcher.fits()
        producer = _Producer(batcher.batch_bytes)
        assert len(await batcher.flush(producer, 3)) == 1
        (topic, partition, records) = producer.sent[0]
        assert topic == batcher.topic and partition == 3
        assert records == [*windows, *units]

        batcher = ChangelogBatcher(table, batch_bytes=1024)  # room for 7-8 records a batch
        batcher.put_many(units)
        batcher.put_first(windows)
        assert not batcher.fits()
        planned = [[*windows, *units[:5]], units[5:10], units[10:15]]
        batcher.seal(planned)  # as Ingest._split plans them
        producer = _Producer(batcher.batch_bytes)
        assert len(await batcher.flush(producer, 3)) == 3
        assert [records for _, _, records in producer.sent] == planned
        assert await batcher.flush(producer, 3) == []  # nothing written since
        assert "took" not in caplog.text

        # a run sealed whole that does not fit is still sent, in several batches, and
        # logged: nothing in rampmon seals one (Ingest plans every large run)
        batcher.put_many(units)
        producer = _Producer(batcher.batch_bytes)
        assert len(await batcher.flush(producer, 3)) == len(producer.sent) > 1
        assert [r for _, _, batch in producer.sent for r in batch] == units
        assert "took" in caplog.text

    asyncio.run(scenario())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.binary(min_size=1, max_size=300), st.none() | st.binary(max_size=3000)),
        max_size=60,
    ),
    st.integers(1024, 64 * 1024),
)
def test_a_batch_within_batch_bytes_fits_one_aiokafka_batch(
    records: list[tuple[bytes, bytes | None]], size: int
) -> None:
    """batch_bytes bounds what aiokafka's own builder needs, so Ingest's plan holds."""

    async def append() -> list[bool]:
        batch = _Producer(size).create_batch()
        now = 1_764_990_000_000  # one timestamp a batch, as ChangelogBatcher sends it
        return [batch.append(key=k, value=v, timestamp=now) is not None for k, v in records]

    accepted = asyncio.run(append())
    if batch_bytes(records) < size:
        assert all(accepted)
    assert batch_bytes(records) == 61 + sum(record_bytes(k, v) for k, v in records)


@pytest.mark.parametrize("key_bytes", [1, 63, 64, 8_191, 8_192, 30_000])
@pytest.mark.parametrize("value_bytes", [None, 0, 63, 64, 8_191, 8_192, 1_000_000])
def test_record_bytes_bounds_aiokafka_s_reckoning_of_a_record(
    key_bytes: int, value_bytes: int | None
) -> None:
    """aiokafka's own reckoning at the largest offset delta a record in a batch below
    1 MiB can have, its timestamp the batch's: a v2 record's attributes, deltas, key,
    value, headers, and its length."""
    key, value = b"k" * key_bytes, None if value_bytes is None else b"v" * value_bytes
    body = 1 + size_of_varint(2**20 - 1) + size_of_varint(0)
    body += DefaultRecordBatchBuilder.size_of(key, value, [])
    assert record_bytes(key, value) >= body + size_of_varint(body)


@given(st.lists(st.integers(1, 5000), max_size=200), st.integers(1, 20_000))
def test_batch_ends_cut_in_order_into_full_batches_within_room(sizes: list[int], room: int) -> None:
    ends = batch_ends(np.asarray(sizes, np.int64), room)
    if not sizes:
        assert ends == [0]
        return
    assert ends == sorted(set(ends)) and ends[-1] == len(sizes)
    for lo, hi in zip([0, *ends], ends, strict=False):
        batch = sizes[lo:hi]
        assert sum(batch) <= room or len(batch) == 1  # too large alone: a batch of its own
        if hi < len(sizes):
            assert sum(batch) + sizes[hi] > room  # as full as it can be
