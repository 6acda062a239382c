"""Kafka's default partitioner (murmur2 of the key) for many keys at once, in numpy.

The worker checks that every event of an envelope belongs to the partition it arrived on
(:meth:`streams.ingest.Ingest._routed`). aiokafka's ``murmur2`` is pure Python, about 3 us
a key, and an envelope's events are not keyed by their own units, so every unit a worker
meets costs one hash: at 30,000 new units in 163,635 events that alone was 0.5 us an
event. Here the keys of a run are hashed together, column by column of 4-byte blocks.

The function is the Java client's ``Utils.murmur2`` (seed ``0x9747b28c``), as aiokafka and
``streams.producer.partition_of`` compute it; uint32 arithmetic wraps as Java's int does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

__all__ = ["murmur2_many", "partitions_of"]

_SEED = np.uint32(0x9747B28C)
_M = np.uint32(0x5BD1E995)


def murmur2_many(keys: Sequence[bytes]) -> NDArray[np.uint32]:
    """``aiokafka.partitioner.murmur2(key)`` of every key, as one uint32 array.

    Keys are padded to a common width for the column-wise pass, so they are hashed in
    groups of widths up to a power of two: one long key among short ones costs its own
    group, not a run-wide pad (a 512-byte id among 20,000 short ones took 24 MB and 129
    ms padded to one width)."""
    n = len(keys)
    lengths = np.fromiter(map(len, keys), np.int64, n)
    out = np.empty(n, np.uint32)
    # 4, 8, 16, ... bytes: at most twice the key, at most 9 groups for 1 KiB ids
    widths = np.maximum(4, 1 << np.ceil(np.log2(np.maximum(lengths, 1))).astype(np.int64))
    for width in np.unique(widths).tolist():
        at = np.flatnonzero(widths == width)
        out[at] = _murmur2_padded([keys[i] for i in at.tolist()], lengths[at], width)
    return out


def _murmur2_padded(
    keys: Sequence[bytes], lengths: NDArray[np.int64], width: int
) -> NDArray[np.uint32]:
    """murmur2 of keys of at most ``width`` bytes (a multiple of 4), column by column."""
    n = len(keys)
    data = np.frombuffer(b"".join(k.ljust(width, b"\0") for k in keys), np.uint8)
    data = data.reshape(n, width)
    words = data.view("<u4").astype(np.uint32)
    h = _SEED ^ lengths.astype(np.uint32)
    blocks = lengths // 4
    for i in range(width // 4):
        k = words[:, i] * _M
        k ^= k >> np.uint32(24)
        k *= _M
        np.copyto(h, (h * _M) ^ k, where=blocks > i)
    # the last 1 to 3 bytes; a key without them reads a padding column it then ignores
    extra, tail = lengths % 4, lengths & ~3
    rows = np.arange(n)

    def byte(offset: int) -> NDArray[np.uint32]:
        return data[rows, np.minimum(tail + offset, width - 1)].astype(np.uint32)

    np.copyto(h, h ^ (byte(2) << np.uint32(16)), where=extra >= 3)
    np.copyto(h, h ^ (byte(1) << np.uint32(8)), where=extra >= 2)
    np.copyto(h, (h ^ byte(0)) * _M, where=extra >= 1)
    h ^= h >> np.uint32(13)
    h *= _M
    h ^= h >> np.uint32(15)
    return h


def partitions_of(unit_ids: Sequence[str], partitions: int) -> list[int]:
    """The default partitioner's partition of each unit id, keyed by its UTF-8 bytes:
    ``streams.producer.partition_of`` of each."""
    hashed = murmur2_many([u.encode() for u in unit_ids])
    return ((hashed & np.uint32(0x7FFFFFFF)) % np.uint32(partitions)).tolist()
