"""ChangelogBatcher's reads and writes land in the table's own store."""

from __future__ import annotations

import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
from faust.streams import _current_event

from streams.app import _raw_table
from streams.changelog import ChangelogBatcher


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
    finally:
        _current_event.reset(token)
