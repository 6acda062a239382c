"""Mergeable sufficient statistics: counts, sums and sums of squares.

Two shapes of the same idea, in the style of gbstats' ``SampleMeanStatistic``:

* :class:`Moments` -- one cell, a frozen scalar triple with ``mean`` and ``variance``.
* :class:`MomentArray` -- many cells at once (stage x variant x metric, or variant x metric
  for a time window), as numpy arrays of one shape, updated by vectorised scatter-adds.

Both merge with ``+``; merging is exact for ``n`` and associative up to float rounding for
the sums, so per-partition partials can be combined in any order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitor.errors import ShapeMismatch

__all__ = ["MomentArray", "Moments"]

#: relative rounding error of ``sum y^2 - (sum y)^2 / n`` (a few ulps of ``sum y^2``)
_CANCELLATION = 8 * float(np.finfo(np.float64).eps)


@dataclass(frozen=True, slots=True)
class Moments:
    """Count, sum and sum of squares of one sample."""

    n: int = 0
    sum: float = 0.0
    sum_squares: float = 0.0

    @classmethod
    def of(cls, values: Iterable[float]) -> Moments:
        arr = np.asarray(list(values) if not isinstance(values, np.ndarray) else values, float)
        return cls(int(arr.size), float(arr.sum()), float(np.square(arr).sum()))

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Unbiased sample variance (ddof=1); NaN below two observations.

        Computed from raw power sums; a result within the sums' rounding error (e.g. seven
        copies of 0.1 leave 2e-18) is reported as exactly 0.
        """
        if self.n < 2:
            return math.nan
        centred = self.sum_squares - self.sum * self.sum / self.n
        # below the rounding error of the power sums the variance is indistinguishable from 0
        if centred <= _CANCELLATION * abs(self.sum_squares):
            return 0.0
        return centred / (self.n - 1)

    def __add__(self, other: Moments) -> Moments:
        if not isinstance(other, Moments):
            return NotImplemented
        return Moments(self.n + other.n, self.sum + other.sum, self.sum_squares + other.sum_squares)


@dataclass(frozen=True, eq=False)
class MomentArray:
    """Moments for a grid of cells; ``n``, ``sum`` and ``sum_squares`` share one shape."""

    n: NDArray[np.int64]
    sum: NDArray[np.float64]
    sum_squares: NDArray[np.float64]

    def __post_init__(self) -> None:
        if not (self.n.shape == self.sum.shape == self.sum_squares.shape):
            raise ShapeMismatch(
                f"n{self.n.shape}, sum{self.sum.shape}, sum_squares{self.sum_squares.shape}"
            )

    @classmethod
    def zeros(cls, shape: tuple[int, ...]) -> MomentArray:
        return cls(np.zeros(shape, np.int64), np.zeros(shape), np.zeros(shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return self.n.shape

    @property
    def mean(self) -> NDArray[np.float64]:
        """:attr:`Moments.mean` of every cell (NaN where empty)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.n > 0, self.sum / self.n, np.nan)

    @property
    def variance(self) -> NDArray[np.float64]:
        """:attr:`Moments.variance` of every cell, bit for bit: the same operations in the
        same order, and NaN below two observations."""
        with np.errstate(divide="ignore", invalid="ignore"):
            centred = self.sum_squares - self.sum * self.sum / self.n
            variance = np.where(
                centred <= _CANCELLATION * np.abs(self.sum_squares), 0.0, centred / (self.n - 1)
            )
        return np.where(self.n >= 2, variance, np.nan)

    def __add__(self, other: MomentArray) -> MomentArray:
        if not isinstance(other, MomentArray):
            return NotImplemented
        if other.shape != self.shape:
            raise ShapeMismatch(f"cannot merge {self.shape} with {other.shape}")
        return MomentArray(
            self.n + other.n, self.sum + other.sum, self.sum_squares + other.sum_squares
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, MomentArray)
            and other.shape == self.shape
            and bool(np.array_equal(self.n, other.n))
            and bool(np.array_equal(self.sum, other.sum))
            and bool(np.array_equal(self.sum_squares, other.sum_squares))
        )

    __hash__ = None  # type: ignore[assignment]

    def cell(self, *index: int) -> Moments:
        return Moments(int(self.n[index]), float(self.sum[index]), float(self.sum_squares[index]))

    def scatter_add(
        self,
        flat_index: NDArray[np.intp],
        n: NDArray[np.int64] | None = None,
        sum: NDArray[np.float64] | None = None,
        sum_squares: NDArray[np.float64] | None = None,
    ) -> MomentArray:
        """Return a copy with per-cell increments added at ``flat_index`` (C order).

        One ``np.bincount`` per component: the cost is per batch, not per event.
        """
        size = self.n.size

        def bump(base: NDArray[Any], weights: NDArray[Any] | None) -> NDArray[Any]:
            if weights is None or flat_index.size == 0:
                return base.copy()
            inc = np.bincount(flat_index, weights=weights, minlength=size)
            return base + inc.reshape(base.shape).astype(base.dtype, copy=False)

        return MomentArray(
            bump(self.n, n), bump(self.sum, sum), bump(self.sum_squares, sum_squares)
        )

    def total(self, axis: int) -> MomentArray:
        """Merge the cells along one axis (e.g. pool stages)."""
        return MomentArray(
            self.n.sum(axis=axis), self.sum.sum(axis=axis), self.sum_squares.sum(axis=axis)
        )

    def to_wire(self) -> dict[str, Any]:
        """A JSON-serialisable form; floats round-trip exactly through ``repr``."""
        return {
            "shape": list(self.shape),
            "n": self.n.ravel().tolist(),
            "sum": self.sum.ravel().tolist(),
            "sum_squares": self.sum_squares.ravel().tolist(),
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> MomentArray:
        shape = tuple(int(s) for s in wire["shape"])
        return cls(
            np.asarray(wire["n"], np.int64).reshape(shape),
            np.asarray(wire["sum"], np.float64).reshape(shape),
            np.asarray(wire["sum_squares"], np.float64).reshape(shape),
        )
