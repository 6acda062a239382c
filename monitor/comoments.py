"""Mergeable co-moments of per-unit vectors: count, column sums and the Gram matrix.

Every unit contributes a vector ``z`` (its metric values, then its pre-exposure covariates,
in the experiment's column order). A cell keeps ``n``, ``sum z`` and ``sum z z^T``; from
these follow every mean, variance and covariance the engine needs:

* difference in means of a metric (the diagonal: ``sum y``, ``sum y^2``);
* CUPED's ``theta = cov(y, x) / var(x)`` and adjusted variances (Deng, Xu, Kohavi &
  Walker 2013) from ``sum x``, ``sum x^2`` and ``sum xy``;
* ratio metrics by the delta method (Deng, Knoblich & Lu 2018) from the numerator's and
  denominator's sums, squares and cross-product.

Like :class:`monitor.moments.MomentArray` the cells form a grid (stage x variant) and merge
with ``+``; a unit's vector moving from ``a`` to ``b`` moves the Gram matrix by
``b b^T - a a^T``, so the statistics are maintained exactly without keeping events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from monitor.errors import ShapeMismatch
from monitor.moments import MomentArray, Moments

__all__ = ["CoMomentCell", "CoMoments"]

#: relative rounding error of ``sum y^2 - (sum y)^2 / n`` (a few ulps of ``sum y^2``)
_CANCELLATION = 8 * float(np.finfo(np.float64).eps)


@dataclass(frozen=True, eq=False)
class CoMomentCell:
    """One cell: ``n`` units, column sums ``sum`` (k,) and Gram matrix ``gram`` (k, k)."""

    n: int
    sum: NDArray[np.float64]
    gram: NDArray[np.float64]

    @classmethod
    def of(cls, rows: NDArray[np.float64]) -> CoMomentCell:
        z = np.asarray(rows, np.float64)
        return cls(int(z.shape[0]), z.sum(axis=0), z.T @ z)

    def __add__(self, other: CoMomentCell) -> CoMomentCell:
        if not isinstance(other, CoMomentCell):
            return NotImplemented
        return CoMomentCell(self.n + other.n, self.sum + other.sum, self.gram + other.gram)

    @property
    def mean(self) -> NDArray[np.float64]:
        return self.sum / self.n if self.n else np.full(self.sum.shape, math.nan)

    @property
    def covariance(self) -> NDArray[np.float64]:
        """Unbiased (ddof=1) covariance matrix; NaN below two units.

        Raw power sums, as :attr:`monitor.moments.Moments.variance`; the diagonal is clipped
        at 0 against cancellation when a column is constant.
        """
        k = self.sum.shape[0]
        if self.n < 2:
            return np.full((k, k), math.nan)
        cov = (self.gram - np.outer(self.sum, self.sum) / self.n) / (self.n - 1)
        diag = np.diag_indices(k)
        # below the rounding error of the power sums a variance is indistinguishable from 0;
        # keeping ~1e-18 would give a constant stage near-infinite inverse-variance weight
        noise = _CANCELLATION * np.abs(np.diagonal(self.gram)) / (self.n - 1)
        cov[diag] = np.where(cov[diag] > noise, cov[diag], 0.0)
        return cov

    def moments(self, column: int) -> Moments:
        return Moments(self.n, float(self.sum[column]), float(self.gram[column, column]))


@dataclass(frozen=True, eq=False)
class CoMoments:
    """A grid of :class:`CoMomentCell`: ``n`` shaped ``cells``, ``sum`` ``cells + (k,)``,
    ``gram`` ``cells + (k, k)``."""

    n: NDArray[np.int64]
    sum: NDArray[np.float64]
    gram: NDArray[np.float64]

    def __post_init__(self) -> None:
        k = self.sum.shape[-1] if self.sum.ndim else -1
        if self.sum.shape[:-1] != self.n.shape or self.gram.shape != (*self.n.shape, k, k):
            raise ShapeMismatch(f"n{self.n.shape}, sum{self.sum.shape}, gram{self.gram.shape}")

    @classmethod
    def zeros(cls, cells: tuple[int, ...], k: int) -> CoMoments:
        return cls(np.zeros(cells, np.int64), np.zeros((*cells, k)), np.zeros((*cells, k, k)))

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid of cells (without the column axes)."""
        return self.n.shape

    @property
    def columns(self) -> int:
        return int(self.sum.shape[-1])

    def __add__(self, other: CoMoments) -> CoMoments:
        if not isinstance(other, CoMoments):
            return NotImplemented
        if other.shape != self.shape or other.columns != self.columns:
            raise ShapeMismatch(
                f"cannot merge {self.shape}x{self.columns} with {other.shape}x{other.columns}"
            )
        return CoMoments(self.n + other.n, self.sum + other.sum, self.gram + other.gram)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CoMoments)
            and other.shape == self.shape
            and other.columns == self.columns
            and bool(np.array_equal(self.n, other.n))
            and bool(np.array_equal(self.sum, other.sum))
            and bool(np.array_equal(self.gram, other.gram))
        )

    __hash__ = None  # type: ignore[assignment]

    def cell(self, *index: int) -> CoMomentCell:
        return CoMomentCell(int(self.n[index]), self.sum[index].copy(), self.gram[index].copy())

    def column_moments(self, column: int) -> MomentArray:
        """The plain moments of one column over the whole grid."""
        return MomentArray(
            self.n.copy(), self.sum[..., column].copy(), self.gram[..., column, column].copy()
        )

    def total(self, axis: int) -> CoMoments:
        """Merge the cells along one grid axis (e.g. pool stages)."""
        if not 0 <= axis < len(self.shape):
            raise ShapeMismatch(f"axis {axis} is not a cell axis of {self.shape}")
        return CoMoments(self.n.sum(axis=axis), self.sum.sum(axis=axis), self.gram.sum(axis=axis))

    def move(
        self,
        flat_cell: NDArray[np.intp],
        before: NDArray[np.float64],
        after: NDArray[np.float64],
        entering: NDArray[np.bool_],
    ) -> CoMoments:
        """A copy with each row's unit moved from vector ``before`` to ``after`` in cell
        ``flat_cell`` (C order over the grid); an ``entering`` unit is new: it adds 1 to
        ``n`` and its ``before`` row is ignored.

        Per cell, with ``A`` its rows' ``before`` vectors and ``B`` their ``after`` vectors,
        the Gram matrix moves by ``B^T B - A^T A``: one matrix product per touched cell. A
        per-row ``b b^T - a a^T`` writes k^2 floats per row and took four times as long
        (0.73 against 0.18 us a row at k = 9).
        """
        k = self.columns
        n = self.n.copy().reshape(-1)
        s = self.sum.copy().reshape(-1, k)
        g = self.gram.copy().reshape(-1, k, k)
        if flat_cell.size:
            order = np.argsort(flat_cell, kind="stable")
            cells, starts = np.unique(flat_cell[order], return_index=True)
            stops = [*starts[1:].tolist(), flat_cell.size]
            a = np.where(entering[:, None], 0.0, before.reshape(-1, k))[order]
            b = after.reshape(-1, k)[order]
            n[cells] += np.add.reduceat(entering[order].astype(np.int64), starts)
            s[cells] += np.add.reduceat(b - a, starts, axis=0)
            for cell, lo, hi in zip(cells.tolist(), starts.tolist(), stops, strict=True):
                ac, bc = a[lo:hi], b[lo:hi]
                g[cell] += bc.T @ bc - ac.T @ ac
        return CoMoments(n.reshape(self.shape), s.reshape(self.sum.shape),
                         g.reshape(self.gram.shape))  # fmt: skip

    def to_wire(self) -> dict[str, Any]:
        """A JSON-serialisable form; floats round-trip exactly."""
        return {
            "shape": list(self.shape),
            "k": self.columns,
            "n": self.n.ravel().tolist(),
            "sum": self.sum.ravel().tolist(),
            "gram": self.gram.ravel().tolist(),
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> CoMoments:
        shape = tuple(int(s) for s in wire["shape"])
        k = int(wire["k"])
        return cls(
            np.asarray(wire["n"], np.int64).reshape(shape),
            np.asarray(wire["sum"], np.float64).reshape((*shape, k)),
            np.asarray(wire["gram"], np.float64).reshape((*shape, k, k)),
        )
