"""TableUnitStore: a run's unit records read and written through the changelog batcher."""

from __future__ import annotations

from monitor.unitstate import Assignment, UnitState, decode_unit, encode_unit
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
    long.recent_ids, long.recent_ts = list(range(40)), [float(t) for t in range(40)]
    first = encode_unit(long, scratch)
    second = encode_unit(short, scratch)  # shorter: the buffer must not keep the tail
    assert first == encode_unit(long) and second == encode_unit(short)
    assert decode_unit(first) == long and decode_unit(second) == short
