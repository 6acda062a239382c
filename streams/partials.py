"""Per-source-partition statistic snapshots, published by ingest workers to the evaluator.

A snapshot is the *whole* state of one (experiment, partition) -- not a delta -- so a
redelivered or duplicated snapshot is harmless, and ``seq`` (the sum of the partition's
applied offsets, which only grows) lets the evaluator ignore one that arrives out of order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from monitor.aggregation import WindowMoments
from monitor.moments import MomentArray
from monitor.unitstats import ExperimentStats

__all__ = ["Partial", "merge_partials"]


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
