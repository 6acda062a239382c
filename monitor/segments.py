"""Per-segment treatment effects, every (segment, metric) cell of a variant at once.

The same estimator as the scalar path -- :func:`monitor.sequential.diff_in_means` per stage,
then :func:`monitor.estimators.combine_stages` -- on whole arrays: a readout has
``slots x metrics`` segment rows (30 in the seed config), and building each from scalar
cells was a third of :func:`monitor.readout.build_readout` under py-spy.

Means, variances and the one-stage case are bit-identical to the scalar path (the same
IEEE operations in the same order). Combining two or more stages sums with numpy instead of
``math.fsum``, so those rows may differ in the last bits (tested to 1e-12 relative).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from monitor.moments import MomentArray

__all__ = ["SegmentEffects", "segment_effects"]


@dataclass(frozen=True, eq=False)
class SegmentEffects:
    """Arrays shaped (slots, metrics); cells with ``ok`` False have no estimate."""

    effect: NDArray[np.float64]
    variance: NDArray[np.float64]
    n_treatment: NDArray[np.int64]
    n_control: NDArray[np.int64]
    ok: NDArray[np.bool_]

    @property
    def t(self) -> NDArray[np.int64]:
        """Total units per cell, the clock of the confidence sequences."""
        return self.n_treatment + self.n_control


def segment_effects(
    segments: MomentArray, stages: Sequence[int], variant: int, control: int, floor: int
) -> SegmentEffects:
    """Treatment-minus-control effects of every segment cell, combined over ``stages``.

    ``segments`` is shaped (stages, variants, slots, metrics). A stage counts for a cell when
    both arms have at least ``floor`` (>= 2) units there and its estimate is finite, as in
    :func:`monitor.estimators.combine_stages`; stages are weighted by
    ``1 / (1/n_t + 1/n_c)``.
    """
    if floor < 2:
        raise ValueError(f"floor must be at least 2 (a variance needs two units), got {floor}")
    idx = np.asarray(stages, np.intp)
    t = MomentArray(segments.n[idx, variant], segments.sum[idx, variant],
                    segments.sum_squares[idx, variant])  # fmt: skip
    c = MomentArray(segments.n[idx, control], segments.sum[idx, control],
                    segments.sum_squares[idx, control])  # fmt: skip
    n_t, n_c = t.n, c.n
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = t.mean - c.mean
        variance = t.variance / n_t + c.variance / n_c
        usable = (
            (np.minimum(n_t, n_c) >= floor) & np.isfinite(effect) & np.isfinite(variance)
            & (variance >= 0)
        )  # fmt: skip
        count = usable.sum(axis=0)
        # one usable stage: its own estimate, untouched (the scalar path returns it as is)
        first = np.argmax(usable, axis=0)[None]
        effect_1 = np.take_along_axis(effect, first, axis=0)[0]
        variance_1 = np.take_along_axis(variance, first, axis=0)[0]
        # several: unit-count weights fixed by the design (combine_stages' docstring)
        w = np.where(usable, 1.0 / (1.0 / n_t + 1.0 / n_c), 0.0)
        total = w.sum(axis=0)
        effect_k = np.where(usable, w * effect, 0.0).sum(axis=0) / total
        variance_k = np.where(usable, w * w * variance, 0.0).sum(axis=0) / (total * total)
    several = count > 1
    return SegmentEffects(
        effect=np.where(several, effect_k, effect_1),
        variance=np.where(several, variance_k, variance_1),
        n_treatment=np.where(usable, n_t, 0).sum(axis=0),
        n_control=np.where(usable, n_c, 0).sum(axis=0),
        ok=count > 0,
    )
