"""Window record keys and values in the units table (streams.windowrecords)."""

from __future__ import annotations

import math

import numpy as np
import orjson
from hypothesis import given
from hypothesis import strategies as st

from monitor.aggregation import EventBatch, WindowMomentAggregation
from streams.windowrecords import (
    decode_window,
    encode_window,
    is_unit_key,
    parse_watermark_key,
    parse_window_key,
    watermark_key,
    window_key,
)


@given(
    experiment=st.text(min_size=1),
    partition=st.integers(0, 10_000),
    start=st.floats(allow_nan=False, allow_infinity=False),
)
def test_a_window_key_gives_back_its_experiment_partition_and_start(
    experiment: str, partition: int, start: float
) -> None:
    assert parse_window_key(window_key(experiment, partition, start)) == (
        experiment,
        partition,
        start,
    )


@given(unit_id=st.text())
def test_no_unit_key_reads_as_a_window_or_a_watermark(unit_id: str) -> None:
    key = unit_id.encode()
    assert parse_window_key(key) is None and parse_watermark_key(key) is None
    assert is_unit_key(key)


@given(partition=st.integers(0, 10_000), start=st.floats(0, 1e10))
def test_window_and_watermark_keys_are_not_unit_keys(partition: int, start: float) -> None:
    assert parse_watermark_key(watermark_key(partition)) == partition
    assert parse_window_key(watermark_key(partition)) is None
    assert parse_watermark_key(window_key("e", partition, start)) is None
    assert not is_unit_key(watermark_key(partition))
    assert not is_unit_key(window_key("e", partition, start))


def test_keys_of_other_partitions_starts_and_experiments_differ() -> None:
    keys = {
        window_key(e, p, s)
        for e in ("a", "a|1", "b")
        for p in (0, 1, 11)
        for s in (0.0, 10.0, 1e9, 1e9 + 0.5)
    }
    assert len(keys) == 3 * 3 * 4


def test_a_window_record_round_trips_its_moments() -> None:
    agg = WindowMomentAggregation(2, 3)
    moments = agg.update(
        agg.initialize(),
        EventBatch(
            np.array([0, 1, 1], np.intp),
            np.array([0, 1, 1, 0], np.intp),
            np.array([2, 0, 0, 1], np.intp),
            np.array([1.5, -2.0, math.pi, 1e-300]),
        ),
    )
    assert decode_window(encode_window(moments)) == moments
    # the first v3 workers filter by "offsets": empty, it lets every entry through
    assert orjson.loads(encode_window(moments))["offsets"] == {}
    # and this worker reads their records, offsets and all
    old = orjson.loads(encode_window(moments)) | {"offsets": {"exposures": 7}}
    assert decode_window(orjson.dumps(old)) == moments
