"""Per-source-partition statistic snapshots, published by ingest workers to the evaluator.

A snapshot is the *whole* state of one (experiment, partition) -- not a delta -- so a
redelivered or duplicated snapshot is harmless, and ``seq`` lets the evaluator ignore one
that arrives out of order: the sum over source topics of the highest offset the
partition's unit records absorbed, plus one (``streams.ingest.PartitionStats.seq``). It
only grows, and it is a function of the unit records, so a new owner of the partition
goes on from the old owner's ``seq``, not below it.

A worker sends its snapshots of one experiment as one message, a :func:`bundle`: the
evaluator then reads the experiment out once per publish with every partition's new data,
not once per partition as the snapshots trickle in (bench/detection.py: a second readout
for ~half the publishes, and four Faust messages where one will do). A message holding a
single JSON snapshot, as workers before bundles sent, is still read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import orjson

from monitor.aggregation import WindowMoments
from monitor.moments import MomentArray
from monitor.unitstats import ExperimentStats

__all__ = ["Partial", "bundle", "bundles", "merge_partials", "unbundle"]


@dataclass(frozen=True, eq=False)
class Partial:
    experiment: str
    partition: int
    seq: int
    stats: ExperimentStats
    windows: dict[float, WindowMoments] = field(default_factory=dict)

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "experiment": self.experiment,
                "partition": self.partition,
                "seq": self.seq,
                "stats": self.stats.to_wire(),
                "windows": {
                    repr(start): {"events": w.events.to_wire(), "exposures": w.exposures.tolist()}
                    for start, w in self.windows.items()
                },
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Partial:
        doc: dict[str, Any] = orjson.loads(raw)
        return cls(
            doc["experiment"],
            int(doc["partition"]),
            int(doc["seq"]),
            ExperimentStats.from_wire(doc["stats"]),
            {
                float(start): WindowMoments(
                    MomentArray.from_wire(w["events"]), np.asarray(w["exposures"], np.int64)
                )
                for start, w in doc["windows"].items()
            },
        )


def merge_partials(
    partials: list[Partial],
) -> tuple[ExperimentStats, dict[float, WindowMoments]]:
    """The explicit merge step: exact sums over partitions of statistics and of each window."""
    stats = partials[0].stats
    windows: dict[float, WindowMoments] = dict(partials[0].windows)
    for p in partials[1:]:
        stats = stats + p.stats
        for start, w in p.windows.items():
            windows[start] = windows[start] + w if start in windows else w
    return stats, windows


def bundle(encoded: Sequence[bytes]) -> bytes:
    """Encoded snapshots in one message: a msgpack array of their JSON encodings, each kept
    as is so the collector stores it in the partials table without re-encoding."""
    return msgspec.msgpack.encode(list(encoded))


def bundles(encoded: Sequence[bytes], limit: int) -> list[bytes]:
    """The snapshots as few :func:`bundle` messages as keep each within ``limit`` bytes, in
    order. One experiment's bundle holds every partition this worker owns: at 12-40 KiB a
    snapshot, a few dozen partitions would pass the producer's request limit, and the send
    would raise in the publish loop. The collector reads each message on its own, so
    several messages of an experiment are as good as one. A snapshot over the limit by
    itself travels alone, and its send fails loudly."""
    out: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for raw in encoded:
        # msgpack: a bin header of up to 5 bytes per snapshot, an array header of up to 5
        if group and size + len(raw) + 5 > limit - 5:
            out.append(bundle(group))
            group, size = [], 0
        group.append(raw)
        size += len(raw) + 5
    if group:
        out.append(bundle(group))
    return out


def unbundle(raw: bytes) -> list[bytes]:
    """The encoded snapshots in a message: a :func:`bundle`, or one JSON snapshot."""
    if raw[:1] == b"{":
        return [raw]
    return msgspec.msgpack.decode(raw, type=list[bytes])
