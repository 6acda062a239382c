"""Snapshot messages: bundles of one experiment's partitions, and the single-snapshot form."""

from __future__ import annotations

import itertools
import random

import msgspec
import numpy as np
import pytest

from monitor.aggregation import WindowMoments
from monitor.moments import MomentArray
from streams.partials import Partial, bundle, bundles, merge_partials, unbundle
from tests.unit.test_evaluator import stats


def test_a_bundle_carries_each_snapshot_byte_for_byte() -> None:
    snapshots = [Partial("e", p, 10 + p, stats(0.02, n=50 + p, seed=p)) for p in range(4)]
    encoded = [p.encode() for p in snapshots]
    parts = unbundle(bundle(encoded))
    assert parts == encoded  # the collector stores these in the partials table as is
    decoded = [Partial.decode(raw) for raw in parts]
    assert [(p.experiment, p.partition, p.seq) for p in decoded] == [
        ("e", p, 10 + p) for p in range(4)
    ]
    merged, _ = merge_partials(decoded)
    assert merged == merge_partials(snapshots)[0]


def test_a_message_from_a_worker_before_bundles_is_one_snapshot() -> None:
    raw = Partial("e", 2, 7, stats(0.02, n=20)).encode()
    assert unbundle(raw) == [raw]


def test_a_bundle_of_anything_but_encoded_snapshots_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError):
        unbundle(msgspec.msgpack.encode([1, 2]))
    with pytest.raises(msgspec.DecodeError):
        unbundle(b"\x92\xc4")


def test_regression_a_worker_with_many_partitions_publishes_within_the_request_limit() -> None:
    """One message per experiment held every partition's snapshot this worker owns: at
    12-40 KiB a snapshot, a few dozen partitions passed the producer's 1,000,000-byte
    request limit and the send raised in the publish loop (review finding). The snapshots
    now go in as few messages as keep each within the limit, in order, byte for byte."""
    rng = random.Random(5)
    encoded = [b"{" + bytes(rng.randrange(97, 123) for _ in range(rng.randrange(12_000, 40_000)))
               for _ in range(48)]  # fmt: skip
    limit = 500_000
    assert len(bundle(encoded)) > 2 * limit  # the old single message
    messages = bundles(encoded, limit)
    assert all(len(m) <= limit for m in messages)
    assert [raw for m in messages for raw in unbundle(m)] == encoded
    # as few as greedy packing gives: no message could have taken the next one's first
    for this, following in itertools.pairwise(messages):
        assert len(bundle([*unbundle(this), unbundle(following)[0]])) > limit
    # few snapshots: one message, as before
    assert bundles(encoded[:3], limit) == [bundle(encoded[:3])]
    # a snapshot over the limit by itself goes alone, not with others
    big = b"{" + b"x" * (limit + 1)
    assert [unbundle(m) for m in bundles([encoded[0], big, encoded[1]], limit)] == [
        [encoded[0]],
        [big],
        [encoded[1]],
    ]


@pytest.mark.parametrize("size", [200, 255, 256, 1000, 65_535, 65_536])
def test_bundles_stay_within_the_limit_at_every_limit_near_a_split(size: int) -> None:
    """The test above draws sizes at random, so its bundles end kilobytes below the limit
    and never meet the msgpack headers' few bytes (a packing rule that left them out passed
    it). Here every limit around the size of two and three snapshots is tried: no message
    may pass it, and a split leaves room for no more than the headers' allowance (5 bytes
    a snapshot and 5 for the array)."""
    encoded = [b"{" + bytes([97 + i]) * (size - 1) for i in range(3)]
    two, three = len(bundle(encoded[:2])), len(bundle(encoded))
    for limit in [*range(two - 20, two + 20), *range(three - 20, three + 20)]:
        messages = bundles(encoded, limit)
        assert [raw for m in messages for raw in unbundle(m)] == encoded
        assert all(len(m) <= limit for m in messages if len(unbundle(m)) > 1), limit
        for this, following in itertools.pairwise(messages):
            joined = [*unbundle(this), unbundle(following)[0]]
            assert len(bundle(joined)) > limit - 5 * (len(joined) + 1), limit


def test_merged_windows_hold_every_partition_s_events() -> None:
    """A window's events and exposures are spread over the partitions like the units: the
    merge adds each window over the snapshots that hold it. A merge that kept the last
    snapshot's window passed every test (no test merged windows)."""
    rng = np.random.default_rng(3)

    def window(variant: np.ndarray, values: np.ndarray, exposed: np.ndarray) -> WindowMoments:
        events = MomentArray.zeros((2, 1)).scatter_add(
            variant.astype(np.intp), np.ones(values.size, np.int64), values, values * values
        )
        return WindowMoments(events, np.bincount(exposed, minlength=2).astype(np.int64))

    # integer values: every sum is exact, whatever the order of the merge
    events = [(rng.integers(0, 2, 40), rng.integers(0, 9, 40).astype(float)) for _ in range(3)]
    exposed = [rng.integers(0, 2, 15) for _ in range(3)]
    snapshots = []
    for p in range(3):
        held = {60.0: window(*events[p], exposed[p])}
        if p == 1:  # a window only one partition has seen
            held[120.0] = window(*events[p], exposed[p])
        snapshots.append(Partial("e", p, 1, stats(0.02, n=20, seed=p), held))
    _, windows = merge_partials(snapshots)
    assert sorted(windows) == [60.0, 120.0]
    variant = np.concatenate([v for v, _ in events])
    values = np.concatenate([x for _, x in events])
    merged = windows[60.0]
    assert merged.exposures.tolist() == np.bincount(np.concatenate(exposed), minlength=2).tolist()
    for v in (0, 1):
        y = values[variant == v]
        cell = merged.events.cell(v, 0)
        assert (cell.n, cell.sum, cell.sum_squares) == (y.size, y.sum(), (y * y).sum())
    assert windows[120.0].exposures.tolist() == np.bincount(exposed[1], minlength=2).tolist()
