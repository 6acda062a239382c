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
