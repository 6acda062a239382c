"""Quantile guardrails: a mergeable, deletable log-histogram sketch and quantile CSs.

Two pieces:

* :class:`QuantileSketch` -- per-cell bin counts on a *fixed* logarithmic grid
  (:class:`SketchSpec`). The bins are those of DDSketch,

      C. Masson, J. E. Rim, H. K. Lee (2019), "DDSketch: a fast and fully-mergeable quantile
      sketch with relative-error guarantees", PVLDB 12(12),

  with ``gamma = (1 + a) / (1 - a)`` for relative accuracy ``a``; but the bin range is fixed
  up front instead of growing or collapsing. That costs a few kilobytes per cell and buys
  counts that are plain additive ``int64`` arrays: partitions merge with ``+`` in any order,
  and a unit whose value changes is *moved* (decrement at ``bin(old)``, increment at
  ``bin(new)``), which a collapsing sketch cannot do exactly.
* :func:`quantile_cs` / :func:`quantile_difference_cs` -- anytime-valid confidence sequences
  for a quantile and for a treatment-minus-control difference of quantiles, from

      S. R. Howard, A. Ramdas (2022), "Sequential estimation of quantiles with applications
      to A/B-testing and best-arm identification", Bernoulli 28(3), 1704-1728;
      arXiv:1906.09712,

  Theorem 2 (a time-uniform Dvoretzky-Kiefer-Wolfowitz inequality). It bounds
  ``sup_x |F_t(x) - F(x)|`` for all ``t`` at once, so the intervals may be recomputed after
  every batch, and one ``alpha`` covers every quantile of an arm (p50, p95 and p99 together).

The guarantee assumes each arm's counts at a look are ``t`` i.i.d. draws from a fixed
distribution, the first ``t`` of one stream. When :meth:`QuantileSketch.move` rewrites the
value of an already-counted unit (running per-unit aggregates), the sample at later looks is
not an extension of the earlier one, and time-uniformity then holds only in so far as each
look's values are i.i.d. from the distribution being tracked.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
from numpy.typing import ArrayLike, NDArray

from monitor.errors import ShapeMismatch

__all__ = [
    "QuantileInterval",
    "QuantileSketch",
    "SketchSpec",
    "dkw_radius",
    "quantile_cs",
    "quantile_cs_ranks",
    "quantile_difference_cs",
    "sketch_quantile",
]

# The closed form 0.8 log(1612 / alpha) for Theorem 2's constant C keeps the theorem's tail
# bound below alpha only for alpha up to about 0.47 (checked numerically; at 0.5 it is 0.3%
# over), so larger levels are refused rather than silently under-covered.
MAX_ALPHA = 0.4
MAX_REGULAR_BINS = 1_000_000


@dataclass(frozen=True)
class SketchSpec:
    """A fixed log-spaced grid: underflow bin, ``[min_value, max_value)`` in steps, overflow.

    Bin ``0`` holds everything below ``min_value`` (zeros, negatives, exposures recorded as
    ``0.0``); bins ``1 .. n_bins - 2`` are ``[min_value * gamma**(i - 1), min_value *
    gamma**i)``, the last one cut short at ``max_value``; bin ``n_bins - 1`` holds everything
    at or above ``max_value``. Only the regular bins carry the relative-accuracy guarantee.
    """

    relative_accuracy: float = 0.01
    min_value: float = 1e-3
    max_value: float = 1e7

    def __post_init__(self) -> None:
        a, lo, hi = self.relative_accuracy, self.min_value, self.max_value
        if not 0 < a < 1:
            raise ValueError(f"relative_accuracy must be in (0, 1), got {a}")
        if not (0 < lo < hi and math.isfinite(hi)):
            raise ValueError(f"need 0 < min_value < max_value < inf, got {lo} and {hi}")
        # every cell of every sketch allocates all bins: fail here, not in a huge np.zeros
        if _n_regular(self) > MAX_REGULAR_BINS:
            raise ValueError(
                f"{_n_regular(self)} bins for accuracy {a} over [{lo}, {hi}); "
                f"at most {MAX_REGULAR_BINS}: coarsen the accuracy or narrow the range"
            )

    @property
    def gamma(self) -> float:
        a = self.relative_accuracy
        return (1 + a) / (1 - a)

    @property
    def n_bins(self) -> int:
        return _grid(self).edges.size + 1

    def index(self, values: ArrayLike) -> NDArray[np.intp]:
        """Bin of each value, same shape as ``values``; NaN is refused (no bin is right).

        A binary search on the stored edges rather than ``floor(log_gamma(x))``: the edges
        are then the single source of truth, so ``lower_edge(i) <= x < upper_edge(i)`` holds
        exactly, with no float disagreement at bin boundaries.
        """
        v = np.asarray(values, np.float64)
        if np.isnan(v).any():
            raise ValueError("cannot bin NaN")
        return np.asarray(np.searchsorted(_grid(self).edges, v, side="right"), np.intp)

    def lower_edge(self, idx: ArrayLike) -> NDArray[np.float64]:
        """Inclusive lower edge of each bin; ``-inf`` for the underflow bin."""
        return _grid(self).lower[self._check_idx(idx)]

    def upper_edge(self, idx: ArrayLike) -> NDArray[np.float64]:
        """Exclusive upper edge of each bin; ``+inf`` for the overflow bin."""
        return _grid(self).upper[self._check_idx(idx)]

    def _check_idx(self, idx: ArrayLike) -> NDArray[np.intp]:
        i = np.asarray(idx, np.intp)
        if ((i < 0) | (i >= self.n_bins)).any():
            raise ValueError(f"bin index outside [0, {self.n_bins})")
        return i


@dataclass(frozen=True)
class _Grid:
    edges: NDArray[np.float64]  # the n_bins - 1 finite edges, strictly increasing
    lower: NDArray[np.float64]
    upper: NDArray[np.float64]
    representative: NDArray[np.float64]


def _n_regular(spec: SketchSpec) -> int:
    # a difference of logs: the ratio itself can overflow for very wide ranges
    span = math.log(spec.max_value) - math.log(spec.min_value)
    return math.ceil(span / math.log(spec.gamma))


@functools.lru_cache(maxsize=64)
def _grid(spec: SketchSpec) -> _Grid:
    g = spec.gamma
    m = _n_regular(spec)
    inner = spec.min_value * np.power(g, np.arange(m, dtype=np.float64))
    # rounding can push the last power onto or past max_value; it must stay strictly inside
    edges = np.append(inner[inner < spec.max_value], spec.max_value)
    lower = np.concatenate(([-np.inf], edges))
    upper = np.concatenate((edges, [np.inf]))
    # 2 lo hi / (lo + hi) equalises the relative error at both ends of [lo, hi): for a full
    # bin it is DDSketch's 2 gamma**i / (gamma + 1) with error (gamma - 1) / (gamma + 1) = a,
    # and for the truncated last bin it is smaller still
    rep = np.empty_like(lower)
    rep[1:-1] = 2 * lower[1:-1] * upper[1:-1] / (lower[1:-1] + upper[1:-1])
    # no relative guarantee is possible outside the grid: report 0 for the underflow bin
    # (exactly right for the zeros it mostly holds) and max_value, a lower bound, for overflow
    rep[0], rep[-1] = 0.0, spec.max_value
    for arr in (edges, lower, upper, rep):
        arr.setflags(write=False)
    return _Grid(edges, lower, upper, rep)


@dataclass(frozen=True, eq=False)
class QuantileSketch:
    """Bin counts for a grid of cells; ``counts`` has shape ``cells_shape + (n_bins,)``.

    Counts of a partial sketch may be negative (one partition may see a unit's old value
    leave and another see it arrive); only merged totals must be non-negative, which the
    quantile functions check.
    """

    spec: SketchSpec
    counts: NDArray[np.int64]

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts)
        if counts.ndim < 1 or counts.shape[-1] != self.spec.n_bins:
            raise ShapeMismatch(
                f"counts{counts.shape} must end in n_bins={self.spec.n_bins} for {self.spec}"
            )
        if counts.dtype != np.int64:
            if not np.issubdtype(counts.dtype, np.integer):
                raise TypeError(f"counts must be integers, got {counts.dtype}")
            object.__setattr__(self, "counts", counts.astype(np.int64))

    @classmethod
    def zeros(cls, spec: SketchSpec, cells_shape: tuple[int, ...]) -> QuantileSketch:
        return cls(spec, np.zeros((*cells_shape, spec.n_bins), np.int64))

    @property
    def cells_shape(self) -> tuple[int, ...]:
        return self.counts.shape[:-1]

    def __add__(self, other: QuantileSketch) -> QuantileSketch:
        if not isinstance(other, QuantileSketch):
            return NotImplemented
        if other.spec != self.spec:
            raise ShapeMismatch(f"cannot merge sketches on {self.spec} and {other.spec}")
        if other.counts.shape != self.counts.shape:
            raise ShapeMismatch(f"cannot merge {self.cells_shape} with {other.cells_shape}")
        return QuantileSketch(self.spec, self.counts + other.counts)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, QuantileSketch)
            and other.spec == self.spec
            and bool(np.array_equal(self.counts, other.counts))
        )

    __hash__ = None  # type: ignore[assignment]

    def move(
        self,
        cell_flat_index: NDArray[np.intp],
        old: NDArray[np.float64] | None,
        new: NDArray[np.float64],
    ) -> QuantileSketch:
        """Return a copy with each unit's count moved from ``bin(old)`` to ``bin(new)``.

        ``cell_flat_index`` is the C-order flat index into ``cells_shape``, one per unit.
        ``old=None`` only adds (first value of a unit; new exposures are added at ``0.0``).
        One ``np.bincount`` per direction: the cost is per batch, not per unit.
        """
        cells = np.asarray(cell_flat_index, np.intp)
        new_v = np.asarray(new, np.float64)
        n_cells = math.prod(self.cells_shape)
        if cells.ndim != 1 or new_v.shape != cells.shape:
            raise ShapeMismatch(f"cell_flat_index{cells.shape} vs new{new_v.shape}")
        if cells.size and (cells.min() < 0 or cells.max() >= n_cells):
            raise ValueError(f"cell index outside [0, {n_cells})")
        size, n_bins = self.counts.size, self.spec.n_bins
        base = cells * n_bins
        delta = np.bincount(base + self.spec.index(new_v), minlength=size)
        if old is not None:
            old_v = np.asarray(old, np.float64)
            if old_v.shape != cells.shape:
                raise ShapeMismatch(f"cell_flat_index{cells.shape} vs old{old_v.shape}")
            delta = delta - np.bincount(base + self.spec.index(old_v), minlength=size)
        return QuantileSketch(self.spec, self.counts + delta.reshape(self.counts.shape))

    def n(self) -> NDArray[np.int64]:
        """Units per cell."""
        return self.counts.sum(axis=-1)

    def total(self, axis: int) -> QuantileSketch:
        """Merge the cells along one cell axis (e.g. pool stages); the bin axis is not one."""
        k = len(self.cells_shape)
        if not -k <= axis < k:
            raise ValueError(f"axis {axis} is not a cell axis of {self.cells_shape}")
        return QuantileSketch(self.spec, self.counts.sum(axis=axis % k))

    def cell(self, *index: int) -> NDArray[np.int64]:
        """A copy of one cell's bin counts, for :func:`quantile_cs` and friends."""
        if len(index) != len(self.cells_shape):
            raise ValueError(f"need {len(self.cells_shape)} indices, got {len(index)}")
        return self.counts[index].copy()

    def to_wire(self) -> dict[str, Any]:
        """JSON-serialisable and sparse: most of a fine grid is empty for any one metric."""
        flat = self.counts.ravel()
        nonzero = np.flatnonzero(flat)
        return {
            "spec": {
                "relative_accuracy": self.spec.relative_accuracy,
                "min_value": self.spec.min_value,
                "max_value": self.spec.max_value,
            },
            "cells_shape": list(self.cells_shape),
            "n_bins": self.spec.n_bins,
            "index": nonzero.tolist(),
            "count": flat[nonzero].tolist(),
        }

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> QuantileSketch:
        spec = SketchSpec(**wire["spec"])
        if int(wire["n_bins"]) != spec.n_bins:
            raise ShapeMismatch(f"wire has {wire['n_bins']} bins, {spec} has {spec.n_bins}")
        shape = (*(int(s) for s in wire["cells_shape"]), spec.n_bins)
        index = np.asarray(wire["index"], np.intp)
        count = np.asarray(wire["count"], np.int64)
        size = math.prod(shape)
        if index.shape != count.shape or index.ndim != 1:
            raise ValueError("wire index and count must be equal-length lists")
        if index.size and (index.min() < 0 or index.max() >= size):
            raise ValueError(f"wire index outside [0, {size})")
        if np.unique(index).size != index.size:
            raise ValueError("wire index has duplicates")
        flat = np.zeros(size, np.int64)
        flat[index] = count
        return cls(spec, flat.reshape(shape))


@dataclass(frozen=True, slots=True)
class QuantileInterval:
    """A point estimate with a confidence interval; infinite bounds mean "no information"."""

    estimate: float
    lower: float
    upper: float
    n: int

    def contains(self, x: float) -> bool:
        return self.lower <= x <= self.upper


def _check_p(p: float) -> None:
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha <= MAX_ALPHA:
        raise ValueError(f"alpha must be in (0, {MAX_ALPHA}], got {alpha}")


def _cumulative(spec: SketchSpec, counts_1d: ArrayLike) -> NDArray[np.int64]:
    counts = np.asarray(counts_1d)
    if counts.shape != (spec.n_bins,):
        raise ShapeMismatch(f"counts{counts.shape} is not one cell of {spec.n_bins} bins")
    if not np.issubdtype(counts.dtype, np.integer):
        raise TypeError(f"counts must be integers, got {counts.dtype}")
    if (counts < 0).any():
        raise ValueError("negative bin count: merge all partitions before asking quantiles")
    return np.cumsum(counts, dtype=np.int64)


def _bin_of_rank(cum: NDArray[np.int64], rank: int) -> int:
    """Bin holding the ``rank``-th smallest value (1-based)."""
    return int(np.searchsorted(cum, rank, side="left"))


def _estimate(spec: SketchSpec, cum: NDArray[np.int64], p: float) -> float:
    n = int(cum[-1])
    if n == 0:
        return math.nan
    # the inverted-CDF quantile (Hyndman & Fan type 1, numpy's "inverted_cdf")
    rank = min(max(math.ceil(p * n), 1), n)
    return float(_grid(spec).representative[_bin_of_rank(cum, rank)])


def sketch_quantile(spec: SketchSpec, counts_1d: NDArray[np.int64], p: float) -> float:
    """Point estimate of the ``p``-quantile: the representative of the bin of rank ceil(p n).

    Within ``relative_accuracy`` of the empirical inverted-CDF quantile when that lies in
    ``[min_value, max_value)``; 0.0 in the underflow bin and ``max_value`` in overflow. NaN for
    an empty cell.
    """
    _check_p(p)
    return _estimate(spec, _cumulative(spec, counts_1d), p)


@overload
def dkw_radius(t: int | float, alpha: float) -> float: ...


@overload
def dkw_radius(
    t: NDArray[np.integer] | NDArray[np.floating], alpha: float
) -> NDArray[np.float64]: ...


def dkw_radius(
    t: int | float | NDArray[np.integer] | NDArray[np.floating], alpha: float
) -> float | NDArray[np.float64]:
    """Time-uniform DKW radius of Howard & Ramdas (2022), Theorem 2, closed form with m = 1::

        f_t = 0.85 * sqrt( (log log(e t) + 0.8 log(1612 / alpha)) / t )

    so that ``P(exists t >= 1: sup_x |F_t(x) - F(x)| > f_t) <= alpha`` for any ``F``.
    Theorem 2 gives, for ``A > 1/sqrt(2)``, the crossing bound
    ``4 exp(-gamma**2 C) (1 + 1 / ((gamma**2 - 1) log eta))`` with
    ``gamma**2 = (2 / eta) (A - sqrt(2 (eta - 1) / C))**2`` for any admissible ``eta``; at
    ``A = 0.85`` and ``C = 0.8 log(1612 / alpha)`` its minimum over ``eta`` is below
    ``alpha`` for every ``alpha <= 0.47`` (0.78 alpha at 0.05; see the unit tests), the
    reason for :data:`MAX_ALPHA`. The same general form is ``empirical_process_lil_bound`` in
    the authors' ``confseq`` library. ``+inf`` for ``t < 1``. Vectorised over ``t``.
    """
    _check_alpha(alpha)
    tt = np.asarray(t, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        safe = np.maximum(tt, 1.0)
        r = 0.85 * np.sqrt((np.log1p(np.log(safe)) + 0.8 * math.log(1612 / alpha)) / safe)
    out = np.where(tt >= 1, r, np.inf)
    if out.ndim == 0:
        return float(out)
    return out


def quantile_cs_ranks(
    n: int | NDArray[np.integer], p: float, alpha: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """1-based order-statistic ranks ``(lo, hi)`` bracketing the ``p``-quantile at size ``n``.

    With ``f = dkw_radius(n, alpha)``: ``lo = ceil(n (p - f))`` and ``hi = ceil(n (p + f))``;
    ``lo < 1`` means the lower bound is ``-inf`` and ``hi > n`` that the upper is ``+inf``.
    On the event ``sup |F_n - F| <= f``, ``F_n(Q(p)) >= p - f`` gives ``Q(p) >= X_(lo)`` and
    ``F_n(X_(hi)) >= p + f`` gives ``F(X_(hi)) >= p``, i.e. ``Q(p) <= X_(hi)``.
    Howard & Ramdas' code uses ``floor(n (p - f)) + 1`` for ``lo``; it differs only when
    ``n (p - f)`` is an integer, where ours is one rank lower and valid even if ``F`` has an
    atom exactly at ``Q(p)``. A hair of tolerance keeps float error from raising ``lo``.
    """
    _check_p(p)
    nn = np.asarray(n, np.int64)
    f = np.asarray(dkw_radius(nn, alpha))
    with np.errstate(invalid="ignore"):
        x_lo = nn * (p - f)
        x_hi = nn * (p + f)
    lo = np.where(np.isfinite(x_lo), np.ceil(x_lo - 1e-12 * np.maximum(1.0, np.abs(x_lo))), 0)
    hi = np.where(np.isfinite(x_hi), np.ceil(x_hi), nn + 1)
    return (
        np.clip(lo, 0, None).astype(np.int64),
        np.minimum(hi, nn + 1).astype(np.int64),
    )


def quantile_cs(
    spec: SketchSpec, counts_1d: NDArray[np.int64], p: float, alpha: float
) -> QuantileInterval:
    """Anytime-valid ``1 - alpha`` confidence sequence for the ``p``-quantile of one cell.

    The order statistics at :func:`quantile_cs_ranks` are only known up to their bin, so the
    lower bound is the *lower edge* of the bin holding ``X_(lo)`` and the upper bound the
    *upper edge* of the bin holding ``X_(hi)``: binning can only widen the exact interval
    (by at most a factor ``gamma`` at each end inside the grid), never make it anti-
    conservative. Valid for all quantiles of the cell at once, and at every look.
    """
    _check_p(p)
    _check_alpha(alpha)
    cum = _cumulative(spec, counts_1d)
    n = int(cum[-1])
    if n == 0:
        return QuantileInterval(math.nan, -math.inf, math.inf, 0)
    lo_rank, hi_rank = (int(r) for r in quantile_cs_ranks(n, p, alpha))
    grid = _grid(spec)
    lower = -math.inf if lo_rank < 1 else float(grid.lower[_bin_of_rank(cum, lo_rank)])
    upper = math.inf if hi_rank > n else float(grid.upper[_bin_of_rank(cum, hi_rank)])
    return QuantileInterval(_estimate(spec, cum, p), lower, upper, n)


def quantile_difference_cs(
    spec: SketchSpec,
    treatment_counts: NDArray[np.int64],
    control_counts: NDArray[np.int64],
    p: float,
    alpha: float,
) -> QuantileInterval:
    """Confidence sequence for ``Q_treatment(p) - Q_control(p)``.

    Each arm gets ``alpha / 2`` (a union bound; the arms' sample sizes need not match since
    each sequence is uniform over its own time), and the difference interval is
    ``[lo_t - hi_c, hi_t - lo_c]``. ``n`` is the total units of both arms.
    """
    _check_p(p)
    if not 0 < alpha <= 2 * MAX_ALPHA:
        raise ValueError(f"alpha must be in (0, {2 * MAX_ALPHA}], got {alpha}")
    t = quantile_cs(spec, treatment_counts, p, alpha / 2)
    c = quantile_cs(spec, control_counts, p, alpha / 2)
    return QuantileInterval(
        t.estimate - c.estimate, t.lower - c.upper, t.upper - c.lower, t.n + c.n
    )
