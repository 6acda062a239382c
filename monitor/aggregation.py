"""The initialize / update / merge / result contract shared by every aggregation.

State keys carry :attr:`Aggregation.state_version`; bump it whenever the meaning of the state
changes (as quix-streams' ``state_suffix``), so old changelog records are never misread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from monitor.config import Aggregation as MetricAggregation
from monitor.moments import MomentArray

__all__ = [
    "Aggregation",
    "EventBatch",
    "UnitDeltas",
    "UnitMomentAggregation",
    "WindowMomentAggregation",
    "WindowMoments",
    "next_unit_value",
]

S = TypeVar("S")
B = TypeVar("B", contravariant=True)
R = TypeVar("R", covariant=True)


class Aggregation(Protocol, Generic[S, B, R]):
    state_version: str

    def initialize(self) -> S: ...

    def update(self, state: S, batch: B) -> S: ...

    def merge(self, left: S, right: S) -> S: ...

    def result(self, state: S) -> R: ...


def next_unit_value(aggregation: MetricAggregation, current: float, value: float) -> float:
    """A unit's running metric value after one more event.

    ``sum`` adds; ``any`` becomes 1 on the first event with a non-zero value and stays 1.
    """
    if aggregation == "sum":
        return current + value
    return 1.0 if (current or value) else 0.0


@dataclass(frozen=True)
class UnitDeltas:
    """Changes to per-unit state in one batch, as parallel arrays.

    ``exposure_stage``/``exposure_variant``: one entry per newly exposed unit.
    ``stage``/``variant``/``metric``/``before``/``after``: one entry per unit whose running
    metric value changed, with the value before and after the batch.
    """

    exposure_stage: NDArray[np.intp]
    exposure_variant: NDArray[np.intp]
    stage: NDArray[np.intp]
    variant: NDArray[np.intp]
    metric: NDArray[np.intp]
    before: NDArray[np.float64]
    after: NDArray[np.float64]

    @classmethod
    def from_lists(
        cls,
        exposures: list[tuple[int, int]],
        changes: list[tuple[int, int, int, float, float]],
    ) -> UnitDeltas:
        ex = np.asarray(exposures, np.intp).reshape(-1, 2)
        if changes:
            s, v, m, b, a = zip(*changes, strict=True)
            arrays = (np.asarray(s, np.intp), np.asarray(v, np.intp), np.asarray(m, np.intp))
            vals = (np.asarray(b, np.float64), np.asarray(a, np.float64))
        else:
            arrays = (np.empty(0, np.intp),) * 3
            vals = (np.empty(0), np.empty(0))
        return cls(ex[:, 0], ex[:, 1], *arrays, *vals)


class UnitMomentAggregation:
    """Unit-level moments per (stage, variant, metric) of one experiment.

    ``n`` counts exposed units (ITT: units with no events contribute 0 to the sums). When a
    unit's value moves from ``s`` to ``s + y`` the sum moves by ``y`` and the sum of squares by
    ``2*s*y + y**2`` -- exact incremental maintenance without keeping raw events.
    """

    state_version = "unit-moments/v1"

    def __init__(self, stages: int, variants: int, metrics: int) -> None:
        self.shape = (stages, variants, metrics)

    def initialize(self) -> MomentArray:
        return MomentArray.zeros(self.shape)

    def update(self, state: MomentArray, batch: UnitDeltas) -> MomentArray:
        _, n_variants, n_metrics = self.shape
        # an exposure adds one unit (value 0) to every metric of its (stage, variant)
        cells = (batch.exposure_stage * n_variants + batch.exposure_variant) * n_metrics
        exp_index = (cells[:, None] + np.arange(n_metrics)[None, :]).ravel()
        y = batch.after - batch.before
        chg_index = (batch.stage * n_variants + batch.variant) * n_metrics + batch.metric
        index = np.concatenate([exp_index, chg_index]).astype(np.intp)
        dn = np.concatenate([np.ones(exp_index.size, np.int64), np.zeros(chg_index.size, np.int64)])
        ds = np.concatenate([np.zeros(exp_index.size), y])
        dss = np.concatenate([np.zeros(exp_index.size), 2.0 * batch.before * y + y * y])
        return state.scatter_add(index, dn, ds, dss)

    def merge(self, left: MomentArray, right: MomentArray) -> MomentArray:
        return left + right

    def result(self, state: MomentArray) -> MomentArray:
        return state


@dataclass(frozen=True, eq=False)
class WindowMoments:
    """Event-level moments per (variant, metric) in one time window, plus exposures."""

    events: MomentArray
    exposures: NDArray[np.int64]

    def __add__(self, other: WindowMoments) -> WindowMoments:
        return WindowMoments(self.events + other.events, self.exposures + other.exposures)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, WindowMoments)
            and self.events == other.events
            and bool(np.array_equal(self.exposures, other.exposures))
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True)
class EventBatch:
    """Attributed events of one window: variant and metric indices and the event values."""

    exposure_variant: NDArray[np.intp]
    variant: NDArray[np.intp]
    metric: NDArray[np.intp]
    value: NDArray[np.float64]


class WindowMomentAggregation:
    """Per-window event moments (for time series and dashboards)."""

    state_version = "window-moments/v1"

    def __init__(self, variants: int, metrics: int) -> None:
        self.shape = (variants, metrics)

    def initialize(self) -> WindowMoments:
        return WindowMoments(MomentArray.zeros(self.shape), np.zeros(self.shape[0], np.int64))

    def update(self, state: WindowMoments, batch: EventBatch) -> WindowMoments:
        index = (batch.variant * self.shape[1] + batch.metric).astype(np.intp)
        events = state.events.scatter_add(
            index, np.ones(index.size, np.int64), batch.value, batch.value * batch.value
        )
        exposures = state.exposures + np.bincount(
            batch.exposure_variant, minlength=self.shape[0]
        ).astype(np.int64)
        return WindowMoments(events, exposures)

    def merge(self, left: WindowMoments, right: WindowMoments) -> WindowMoments:
        return left + right

    def result(self, state: WindowMoments) -> WindowMoments:
        return state
