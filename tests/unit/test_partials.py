"""Snapshot messages: bundles of one experiment's partitions, and the single-snapshot form."""

from __future__ import annotations

import msgspec
import pytest

from streams.partials import Partial, bundle, merge_partials, unbundle
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
