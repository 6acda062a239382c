"""ChangelogBatcher's reads and writes land in the table's own store."""

from __future__ import annotations

from typing import Any

import faust

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
    batcher.put(b"u1", b"a")
    batcher.put(b"u1", b"b")
    table.data[b"u2"] = b"recovered"  # what recovery writes into the store
    assert table.data.get(b"u1") == b"b"
    assert batcher.mapping.get(b"u2") == b"recovered"
    assert len(batcher) == 1  # one changelog record per key and run: the last value


def test_any_other_store_is_used_through_its_mapping() -> None:
    table = _Table()
    batcher = ChangelogBatcher(table)
    batcher.put(b"u1", b"a")
    assert table.data == {b"u1": b"a"}
    assert batcher.mapping.get(b"u1") == b"a"
