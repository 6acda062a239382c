"""Vectorised segment effects against the scalar estimator they replace, cell by cell.

The oracle is the per-cell path the readout used before: ``MomentArray.cell`` ->
``diff_in_means`` per stage above the floor -> ``combine_stages``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.estimators import combine_stages
from monitor.moments import MomentArray, Moments
from monitor.segments import segment_effects
from monitor.sequential import DiffEstimate, diff_in_means

STAGES, VARIANTS, SLOTS, METRICS = 3, 2, 4, 3


def segment_oracle(
    seg: MomentArray, stages: list[int], v: int, control: int, floor: int
) -> dict[tuple[int, int], DiffEstimate]:
    out = {}
    for si in range(seg.shape[2]):
        for mi in range(seg.shape[3]):
            ests = []
            for s in stages:
                t, c = seg.cell(s, v, si, mi), seg.cell(s, control, si, mi)
                if min(t.n, c.n) >= floor:
                    ests.append(diff_in_means(t, c))
            est = combine_stages(ests)
            if est is not None:
                out[si, mi] = est
    return out


def _cells(draw: st.DrawFn) -> MomentArray:
    """Cells built from real samples (so sum_squares is consistent with sum), some of them
    empty, single, constant or offset far from 0."""
    shape = (STAGES, VARIANTS, SLOTS, METRICS)
    n = np.zeros(shape, np.int64)
    total, squares = np.zeros(shape), np.zeros(shape)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    for idx in np.ndindex(shape):
        kind = draw(
            st.sampled_from(["empty", "one", "few", "many", "constant", "offset", "binary"])
        )
        size = {"empty": 0, "one": 1, "few": 3}.get(kind, int(rng.integers(2, 400)))
        if kind == "constant":
            values = np.full(size, 0.1)
        elif kind == "offset":
            values = 1e6 + rng.normal(0, 1e-3, size)
        elif kind == "binary":
            values = (rng.random(size) < 0.05).astype(float)
        else:
            values = rng.lognormal(0, 1.5, size)
        m = Moments.of(values)
        n[idx], total[idx], squares[idx] = m.n, m.sum, m.sum_squares
    return MomentArray(n, total, squares)


cells = st.composite(_cells)


@settings(max_examples=150, deadline=None)
@given(
    seg=cells(),
    floor=st.sampled_from([2, 3, 50]),
    stages=st.sampled_from([[0], [2], [0, 1, 2], [1, 2]]),
)
def test_segment_effects_match_the_scalar_path(
    seg: MomentArray, floor: int, stages: list[int]
) -> None:
    fx = segment_effects(seg, stages, 1, 0, floor)
    expected = segment_oracle(seg, stages, 1, 0, floor)
    assert {tuple(map(int, i)) for i in zip(*np.nonzero(fx.ok), strict=True)} == set(expected)
    for (si, mi), est in expected.items():
        assert fx.n_treatment[si, mi] == est.n_treatment
        assert fx.n_control[si, mi] == est.n_control
        got = (float(fx.effect[si, mi]), float(fx.variance[si, mi]))
        usable = sum(
            min(seg.n[s, 1, si, mi], seg.n[s, 0, si, mi]) >= floor
            and math.isfinite(
                diff_in_means(seg.cell(s, 1, si, mi), seg.cell(s, 0, si, mi)).variance
            )
            for s in stages
        )
        if usable == 1:
            # one stage: the same operations, so the same bits
            assert got == (est.effect, est.variance)
        else:
            # numpy's sums instead of math.fsum over the stages
            assert got == pytest.approx((est.effect, est.variance), rel=1e-12, abs=1e-300)


@settings(max_examples=150, deadline=None)
@given(seg=cells())
def test_moment_array_mean_and_variance_are_the_scalar_ones_bit_for_bit(seg: MomentArray) -> None:
    mean, variance = seg.mean, seg.variance
    for idx in np.ndindex(seg.shape):
        cell = seg.cell(*idx)
        for got, want in ((mean[idx], cell.mean), (variance[idx], cell.variance)):
            assert (math.isnan(got) and math.isnan(want)) or float(got) == want


def test_a_floor_below_two_is_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        segment_effects(MomentArray.zeros((1, 2, 1, 1)), [0], 1, 0, 1)


def test_no_units_no_rows() -> None:
    fx = segment_effects(MomentArray.zeros((2, 2, 3, 2)), [0, 1], 1, 0, 2)
    assert not fx.ok.any()
    assert (fx.n_treatment == 0).all() and (fx.n_control == 0).all()
