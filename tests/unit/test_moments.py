"""Moments, MomentArray and the window moment aggregation against numpy on the raw values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.aggregation import EventBatch, WindowMomentAggregation
from monitor.errors import ShapeMismatch
from monitor.moments import MomentArray, Moments

EPS = np.finfo(float).eps


def _var_tolerance(values: np.ndarray) -> float:
    """Error bound of the raw power-sum variance: cancellation scales with sum(x**2)/(n-1).

    This is the known weakness of the textbook formula (Chan, Golub & LeVeque 1983); the test
    states the bound instead of pretending the error is relative to the variance.
    """
    n = values.size
    return 4 * n * EPS * float(np.square(values).sum()) / (n - 1) + 1e-300


RNG = np.random.default_rng(20240601)
EDGE_CASES = {
    "empty": np.array([]),
    "one": np.array([3.5]),
    "two": np.array([1.0, 4.0]),
    "constant": np.full(50, 0.1),
    "constant_int": np.full(7, 3.0),
    "zeros": np.zeros(10),
    "binary": (RNG.random(1000) < 0.03).astype(float),
    "skewed": RNG.lognormal(0, 2, 500),
    "negative": -RNG.exponential(5, 200),
    "offset_1e6": 1e6 + RNG.normal(0, 1, 300),
    "offset_1e6_tiny_noise": 1e6 + RNG.normal(0, 1e-3, 300),
}


@pytest.mark.parametrize("values", EDGE_CASES.values(), ids=EDGE_CASES.keys())
def test_moments_match_numpy(values: np.ndarray) -> None:
    m = Moments.of(values)
    assert m.n == values.size
    if values.size == 0:
        assert math.isnan(m.mean) and math.isnan(m.variance)
        return
    assert m.mean == pytest.approx(float(np.mean(values)), rel=1e-12, abs=1e-12)
    if values.size < 2:
        assert math.isnan(m.variance)
        return
    expected = float(np.var(values, ddof=1))
    assert m.variance >= 0
    assert abs(m.variance - expected) <= max(_var_tolerance(values), 1e-9 * expected)


@pytest.mark.xfail(
    strict=True,
    reason="raw power sums lose the variance when mean**2 >> variance (offset 1e6, sd 1e-3);"
    " a shifted or Welford-style merge in monitor/moments.py would fix it",
)
def test_variance_is_relatively_precise_under_large_offset() -> None:
    values = EDGE_CASES["offset_1e6_tiny_noise"]
    assert Moments.of(values).variance == pytest.approx(np.var(values, ddof=1), rel=1e-3)


def test_moments_of_list_equals_of_array() -> None:
    values = [1.0, 2.0, 5.0]
    assert Moments.of(values) == Moments.of(np.array(values)) == Moments(3, 8.0, 30.0)


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, max_size=40)


def _close(a: float, b: float, scale: float) -> bool:
    # sums may cancel, so the tolerance is relative to the sum of magnitudes, not the result
    return abs(a - b) <= 1e-9 * scale + 1e-12


@settings(max_examples=200, deadline=None)
@given(samples, samples)
def test_merge_equals_moments_of_concatenation(a: list[float], b: list[float]) -> None:
    merged, whole = Moments.of(a) + Moments.of(b), Moments.of(a + b)
    abs_sum = sum(abs(x) for x in a + b)
    assert merged.n == whole.n
    assert _close(merged.sum, whole.sum, abs_sum)
    assert _close(merged.sum_squares, whole.sum_squares, whole.sum_squares)
    assert Moments() + Moments.of(a) == Moments.of(a)


arrays = st.lists(st.tuples(st.integers(0, 50), finite, finite), min_size=6, max_size=6)


def _grid(cells: list[tuple[int, float, float]]) -> MomentArray:
    n, s, ss = zip(*cells, strict=True)
    return MomentArray(
        np.array(n, np.int64).reshape(2, 3),
        np.array(s).reshape(2, 3),
        np.abs(np.array(ss)).reshape(2, 3),
    )


def _allclose(x: MomentArray, y: MomentArray) -> bool:
    return (
        bool(np.array_equal(x.n, y.n))
        and bool(np.allclose(x.sum, y.sum, rtol=1e-12, atol=1e-6))
        and bool(np.allclose(x.sum_squares, y.sum_squares, rtol=1e-12, atol=1e-6))
    )


@settings(max_examples=100, deadline=None)
@given(arrays, arrays, arrays)
def test_moment_array_merge_is_commutative_and_associative(
    a: list[tuple[int, float, float]],
    b: list[tuple[int, float, float]],
    c: list[tuple[int, float, float]],
) -> None:
    x, y, z = _grid(a), _grid(b), _grid(c)
    assert x + y == y + x  # float addition of two operands is exactly commutative
    assert _allclose((x + y) + z, x + (y + z))
    assert x + MomentArray.zeros(x.shape) == x


def test_moment_array_rejects_other_shapes() -> None:
    with pytest.raises(ShapeMismatch):
        MomentArray.zeros((2, 3)) + MomentArray.zeros((3, 2))
    with pytest.raises(ShapeMismatch):
        MomentArray(np.zeros(2, np.int64), np.zeros(3), np.zeros(2))


def test_moment_array_cells_and_total_match_numpy() -> None:
    rng = np.random.default_rng(7)
    cell_of = rng.integers(0, 6, 2000)
    values = rng.normal(10, 3, 2000)
    grid = MomentArray.zeros((2, 3)).scatter_add(
        cell_of.astype(np.intp), np.ones(2000, np.int64), values, values**2
    )
    for i in range(2):
        for j in range(3):
            v = values[cell_of == i * 3 + j]
            m = grid.cell(i, j)
            assert m.n == v.size
            assert m.mean == pytest.approx(v.mean(), rel=1e-12)
            assert m.variance == pytest.approx(v.var(ddof=1), rel=1e-9)
    pooled = grid.total(axis=0)
    for j in range(3):
        v = values[cell_of % 3 == j]
        assert pooled.cell(j).variance == pytest.approx(v.var(ddof=1), rel=1e-9)
    assert MomentArray.from_wire(grid.to_wire()) == grid


# --- window-level aggregation ---------------------------------------------------------
# (unit-level statistics: tests/unit/test_unitstats.py)


@pytest.mark.parametrize("seed", [0, 1])
def test_window_moments_match_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    variants, metrics = 3, 2
    agg = WindowMomentAggregation(variants, metrics)
    state = agg.initialize()
    all_v: list[np.ndarray] = []
    all_m: list[np.ndarray] = []
    all_x: list[np.ndarray] = []
    all_exp: list[np.ndarray] = []
    for _ in range(10):
        k = int(rng.integers(0, 200))
        v = rng.integers(0, variants, k).astype(np.intp)
        m = rng.integers(0, metrics, k).astype(np.intp)
        x = rng.gamma(2.0, 3.0, k)
        exp = rng.integers(0, variants, int(rng.integers(0, 20))).astype(np.intp)
        state = agg.update(state, EventBatch(exp, v, m, x))
        all_v.append(v)
        all_m.append(m)
        all_x.append(x)
        all_exp.append(exp)
    v, m, x = np.concatenate(all_v), np.concatenate(all_m), np.concatenate(all_x)
    result = agg.result(state)
    assert np.array_equal(
        result.exposures, np.bincount(np.concatenate(all_exp), minlength=variants)
    )
    for i in range(variants):
        for j in range(metrics):
            y = x[(v == i) & (m == j)]
            cell = result.events.cell(i, j)
            assert cell.n == y.size
            assert cell.mean == pytest.approx(y.mean(), rel=1e-12)
            assert cell.variance == pytest.approx(y.var(ddof=1), rel=1e-9)
