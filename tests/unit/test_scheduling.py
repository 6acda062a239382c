"""The order in which a fetch's records reach the agents (streams.scheduling)."""

from __future__ import annotations

from typing import NamedTuple

from faust.transport.utils import DefaultSchedulingStrategy
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from streams.runs import RecordRun
from streams.scheduling import OldestFirst, head_timestamp


class Rec(NamedTuple):
    topic: str
    partition: int
    offset: int
    timestamp: int | None
    key: bytes | None = None
    value: bytes = b"{}"


def _run(topic: str, partition: int, stamps: list[int]) -> RecordRun:
    return RecordRun([Rec(topic, partition, i, ts) for i, ts in enumerate(stamps)])


def test_the_partition_with_the_oldest_head_goes_first_whole() -> None:
    """A run's head is its first record, not its last (``RecordRun.timestamp``): the
    exposures sent at 1000-3000 go before telemetry sent from 2000 on."""
    exposures, telemetry = TP("exposures", 0), TP("telemetry", 0)
    fetched = {
        telemetry: [_run("telemetry", 0, [2000, 2100])],
        exposures: [_run("exposures", 0, [1000, 3000])],
        TP("partials", 1): [Rec("partials", 1, 7, 1500), Rec("partials", 1, 8, 1600)],
    }
    order = [(tp.topic, getattr(r, "offset", None)) for tp, r in OldestFirst().iterate(fetched)]
    assert order == [("exposures", 1), ("partials", 7), ("partials", 8), ("telemetry", 1)]
    assert head_timestamp(fetched[exposures]) == 1000


def test_ties_keep_the_fetch_order_and_no_timestamp_sorts_first() -> None:
    fetched = {
        TP("t", 0): [Rec("t", 0, 0, 5)],
        TP("t", 1): [Rec("t", 1, 0, 5)],
        TP("t", 2): [],  # a partition with nothing fetched
        TP("x", 0): [Rec("x", 0, 0, None)],
    }
    assert [tp for tp, _ in OldestFirst().iterate(fetched)] == [
        TP("x", 0), TP("t", 0), TP("t", 1),
    ]  # fmt: skip


@given(
    st.dictionaries(
        st.tuples(st.sampled_from(["exposures", "telemetry", "partials"]), st.integers(0, 3)),
        st.lists(st.one_of(st.none(), st.integers(0, 10**13)), min_size=0, max_size=5),
        max_size=12,
    )
)
def test_every_record_once_each_partition_in_offset_order(
    stamps: dict[tuple[str, int], list[int | None]],
) -> None:
    """The same records as Faust's round robin delivers, each once; only the order of
    partitions differs, and within a partition the offsets rise."""
    fetched = {
        TP(t, p): [Rec(t, p, i, ts) for i, ts in enumerate(tss)] for (t, p), tss in stamps.items()
    }
    ours = list(OldestFirst().iterate(fetched))
    faust = list(DefaultSchedulingStrategy().iterate(fetched))
    assert sorted(ours) == sorted(faust)
    for tp in fetched:
        offsets = [r.offset for t, r in ours if t == tp]
        assert offsets == sorted(offsets)
    heads = [head_timestamp(fetched[tp]) for tp in dict.fromkeys(t for t, _ in ours)]
    assert heads == sorted(heads)
