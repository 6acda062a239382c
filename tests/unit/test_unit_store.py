"""TableUnitStore: a run's unit records read and written through the changelog batcher."""

from __future__ import annotations

import zlib

import msgspec

from monitor.unitstate import (
    Assignment,
    UnitState,
    decode_unit,
    decode_units,
    encode_unit,
    encode_units,
    recent_events,
)
from streams.changelog import ChangelogBatcher
from streams.ingest import TableUnitStore


class _Table:
    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


def _state(value: float) -> UnitState:
    return UnitState(2, 5, 7, {"exp": Assignment(1, 3, 100.0, [value, 0.0], [1.5], [0])})


def test_records_written_are_read_back_equal_and_reach_the_changelog_batch() -> None:
    table = _Table()
    store = TableUnitStore(ChangelogBatcher(table))
    states = {f"u{i}": _state(float(i)) for i in range(3)}
    store.put_many(states.items())
    assert table.data == {u.encode(): encode_unit(s) for u, s in states.items()}
    assert len(store.changelog) == 3
    got = store.get_many(["u2", "missing", "u0"])
    assert got == [states["u2"], None, states["u0"]]
    assert got[0] is not states["u2"]  # decoded afresh: the caller owns what it changes


def test_records_encoded_through_one_scratch_buffer_are_each_their_own_bytes() -> None:
    scratch = bytearray()
    long, short = _state(1.0), UnitState(0)
    for key in range(40):  # enough to pack them
        long.seen(key, float(key), 300.0, 64)
    assert long.seen_ids
    # the shorter second: the buffer must not keep the tail
    first, second = encode_units([long, short], scratch)
    assert first == encode_unit(long) and second == encode_unit(short)
    assert decode_unit(first) == long and decode_unit(second) == short


def test_a_run_reads_records_written_with_recent_pairs_migrated() -> None:
    """decode_units, the hot path's reader, migrates a pair-writing record as decode_unit
    does; the records around it are left as they are."""
    legacy = msgspec.msgpack.encode([1, 4, 6, {}, [], [(zlib.crc32(b"b"), 30.0), (7, 20.0)]])
    table = _Table()
    table.data = {b"old": legacy, b"new": encode_unit(_state(2.0))}
    got = TableUnitStore(ChangelogBatcher(table)).get_many(["new", "old", "none"])
    assert got == [_state(2.0), decode_unit(legacy), None]
    old = got[1]
    assert old is not None and old.recent == []
    assert recent_events(old) == [(7, 20.0), (zlib.crc32(b"b"), 30.0)]
    assert decode_units([b"", None]) == [None, None]


def test_records_written_in_one_call_equal_one_by_one_and_the_last_write_wins() -> None:
    states = [_state(1.0), UnitState(0), _state(3.0)]
    assert encode_units(states, bytearray()) == [encode_unit(s) for s in states]
    one, many = ChangelogBatcher(_Table()), ChangelogBatcher(_Table())
    writes = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]
    for write in writes:
        one.put_many([write])
    many.put_many(writes)
    assert many.mapping == one.mapping == {b"a": b"3", b"b": b"2"}
    assert len(many) == len(one) == 2
