"""Unit-level statistics of one experiment, maintained exactly from per-unit deltas.

The state, :class:`ExperimentStats`, holds per (stage, variant):

* :class:`monitor.comoments.CoMoments` of the unit vectors (metrics, then covariates):
  means, variances, CUPED and ratio-metric covariances all derive from it;
* per segment slot, plain moments of the metrics (exploratory segment effects);
* a quantile sketch per metric that a quantile guardrail watches.

Its size depends on the config only (stages x variants x columns^2, plus sketch bins), never
on the number of units or events. :class:`UnitStatsAggregation` follows the
initialize / update / merge / result contract of :mod:`monitor.aggregation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitor.comoments import CoMoments
from monitor.errors import ShapeMismatch
from monitor.layout import ExperimentLayout
from monitor.moments import MomentArray
from monitor.quantiles import QuantileSketch, SketchSpec
from monitor.unitstate import Assignment

__all__ = ["ExperimentStats", "UnitDeltas", "UnitStatsAggregation", "sketch_spec"]


@dataclass(frozen=True)
class UnitDeltas:
    """One row per unit whose vector changed in a batch (or that was newly exposed).

    ``before``/``after`` are full unit vectors ``(rows, k)``; for a newly exposed unit
    (``new``) ``before`` is ignored: the unit enters the statistics with ``after``.
    ``segments`` holds the unit's slot per segment attribute ``(rows, dims)``.
    """

    stage: NDArray[np.intp]
    variant: NDArray[np.intp]
    new: NDArray[np.bool_]
    before: NDArray[np.float64]
    after: NDArray[np.float64]
    segments: NDArray[np.intp]

    @classmethod
    def build(
        cls,
        layout: ExperimentLayout,
        rows: Sequence[tuple[Assignment, Sequence[float] | None]],
    ) -> UnitDeltas:
        """Rows from assignments and each one's metric values before the batch (None = new)."""
        k = layout.columns
        dims = len(layout.config.segments)
        if not rows:
            empty_i = np.empty(0, np.intp)
            return cls(
                empty_i, empty_i, np.empty(0, bool), np.empty((0, k)), np.empty((0, k)),
                np.empty((0, dims), np.intp),
            )  # fmt: skip
        n, m = len(rows), len(layout.metrics)
        stage = np.fromiter((a.stage for a, _ in rows), np.intp, n)
        variant = np.fromiter((a.variant for a, _ in rows), np.intp, n)
        new = np.fromiter((b is None for _, b in rows), bool, n)
        # one flat copy per block, not a Python list per row: this runs once per unit touch
        values = _matrix([a.values for a, _ in rows], m, np.float64, "metric values")
        covariates = _matrix([a.covariates for a, _ in rows], k - m, np.float64, "covariates")
        previous = _matrix(
            [a.values if b is None else b for a, b in rows], m, np.float64, "metric values"
        )
        segments = _matrix([a.segments for a, _ in rows], dims, np.intp, "segment slots")
        after = np.concatenate([values, covariates], axis=1)
        before = np.concatenate([previous, covariates], axis=1)
        return cls(stage, variant, new, before, after, segments)

    @classmethod
    def concat(cls, parts: Sequence[UnitDeltas]) -> UnitDeltas:
        """Rows of several batches as one; applying it equals applying them in turn."""
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.stage for p in parts]),
            np.concatenate([p.variant for p in parts]),
            np.concatenate([p.new for p in parts]),
            np.concatenate([p.before for p in parts]),
            np.concatenate([p.after for p in parts]),
            np.concatenate([p.segments for p in parts]),
        )

    @classmethod
    def exposed(cls, layout: ExperimentLayout, assignments: Sequence[Assignment]) -> UnitDeltas:
        """Every assignment entering the statistics at its current values (a rebuild)."""
        return cls.build(layout, [(a, None) for a in assignments])


def _matrix(
    lists: Sequence[Sequence[Any]], width: int, dtype: type[Any], what: str
) -> NDArray[Any]:
    """``lists`` as an ``(len(lists), width)`` array, refusing rows of another width."""
    widths = set(map(len, lists))
    if widths - {width}:
        raise ShapeMismatch(f"{what} of widths {sorted(widths)}, layout expects {width}")
    flat = np.fromiter(chain.from_iterable(lists), dtype, len(lists) * width)
    return flat.reshape(len(lists), width)


def sketch_spec(layout: ExperimentLayout, metric: str) -> SketchSpec:
    cfg = next(m for m in layout.config.metrics if m.name == metric).sketch
    return SketchSpec(cfg.relative_accuracy, cfg.min_value, cfg.max_value)


@dataclass(frozen=True, eq=False)
class ExperimentStats:
    """All unit-level statistics of one experiment (see the module docstring)."""

    units: CoMoments
    segments: MomentArray
    sketches: tuple[QuantileSketch, ...]

    def __add__(self, other: ExperimentStats) -> ExperimentStats:
        if not isinstance(other, ExperimentStats):
            return NotImplemented
        if len(other.sketches) != len(self.sketches):
            raise ShapeMismatch("different numbers of quantile sketches")
        return ExperimentStats(
            self.units + other.units,
            self.segments + other.segments,
            tuple(a + b for a, b in zip(self.sketches, other.sketches, strict=True)),
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ExperimentStats)
            and self.units == other.units
            and self.segments == other.segments
            and len(self.sketches) == len(other.sketches)
            and all(a == b for a, b in zip(self.sketches, other.sketches, strict=True))
        )

    __hash__ = None  # type: ignore[assignment]

    def to_wire(self) -> dict[str, Any]:
        return {
            "units": self.units.to_wire(),
            "segments": self.segments.to_wire(),
            "sketches": [s.to_wire() for s in self.sketches],
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> ExperimentStats:
        return cls(
            CoMoments.from_wire(wire["units"]),
            MomentArray.from_wire(wire["segments"]),
            tuple(QuantileSketch.from_wire(s) for s in wire["sketches"]),
        )


class UnitStatsAggregation:
    """Maintains :class:`ExperimentStats` from :class:`UnitDeltas`.

    A unit moving from vector ``a`` to ``b`` adds ``b - a`` to the sums and
    ``b b^T - a a^T`` to the Gram matrix: exact, with no events kept.
    """

    state_version = "unit-stats/v2"

    def __init__(self, layout: ExperimentLayout) -> None:
        self.layout = layout
        self.specs = tuple(sketch_spec(layout, m) for m in layout.quantile_metrics)
        self._quantile_columns = [layout.column(m) for m in layout.quantile_metrics]

    def initialize(self) -> ExperimentStats:
        lay = self.layout
        cells = (lay.stages, lay.variants)
        return ExperimentStats(
            CoMoments.zeros(cells, lay.columns),
            MomentArray.zeros((*cells, len(lay.segment_slots), len(lay.metrics))),
            tuple(QuantileSketch.zeros(spec, cells) for spec in self.specs),
        )

    def update(self, state: ExperimentStats, batch: UnitDeltas) -> ExperimentStats:
        if batch.stage.size == 0:
            return state
        lay = self.layout
        cell = (batch.stage * lay.variants + batch.variant).astype(np.intp)
        old = np.where(batch.new[:, None], 0.0, batch.before)
        return ExperimentStats(
            state.units.move(cell, batch.before, batch.after, batch.new),
            self._segments(state.segments, batch, cell, old),
            self._sketches(state, batch, cell),
        )

    def _segments(
        self, seg: MomentArray, batch: UnitDeltas, cell: NDArray[np.intp], old: NDArray[Any]
    ) -> MomentArray:
        lay = self.layout
        m = len(lay.metrics)
        slots = len(lay.segment_slots)
        if slots == 0:
            return seg
        y_new, y_old = batch.after[:, :m], old[:, :m]
        index = ((cell[:, None, None] * slots + batch.segments[:, :, None]) * m
                 + np.arange(m)[None, None, :])  # fmt: skip
        dims = batch.segments.shape[1]
        rep = (slice(None), None, slice(None))
        return seg.scatter_add(
            index.ravel(),
            np.broadcast_to(batch.new.astype(np.int64)[:, None, None], index.shape).ravel(),
            np.broadcast_to((y_new - y_old)[rep], (len(cell), dims, m)).ravel(),
            np.broadcast_to((y_new * y_new - y_old * y_old)[rep], (len(cell), dims, m)).ravel(),
        )

    def _sketches(
        self, state: ExperimentStats, batch: UnitDeltas, cell: NDArray[np.intp]
    ) -> tuple[QuantileSketch, ...]:
        out = []
        for sketch, col in zip(state.sketches, self._quantile_columns, strict=True):
            new = batch.new
            moved = ~new & (batch.before[:, col] != batch.after[:, col])
            if new.any():
                sketch = sketch.move(cell[new], None, batch.after[new, col])
            if moved.any():
                sketch = sketch.move(cell[moved], batch.before[moved, col], batch.after[moved, col])
            out.append(sketch)
        return tuple(out)

    def merge(self, left: ExperimentStats, right: ExperimentStats) -> ExperimentStats:
        return left + right

    def result(self, state: ExperimentStats) -> ExperimentStats:
        return state
