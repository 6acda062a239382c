"""The quantile sketch and quantile confidence sequences, against numpy/scipy on raw values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import optimize, stats

from monitor.errors import ShapeMismatch
from monitor.quantiles import (
    MAX_ALPHA,
    QuantileInterval,
    QuantileSketch,
    SketchSpec,
    dkw_radius,
    quantile_cs,
    quantile_cs_ranks,
    quantile_difference_cs,
    sketch_quantile,
)

SPEC = SketchSpec()
A = SPEC.relative_accuracy


def sketch_of(values: np.ndarray, spec: SketchSpec = SPEC) -> np.ndarray:
    """One cell's counts, built through the public ``move`` path."""
    cells = np.zeros(len(values), np.intp)
    return QuantileSketch.zeros(spec, (1,)).move(cells, None, np.asarray(values, float)).cell(0)


def paper_radius(t: float, alpha: float) -> float:
    """Howard & Ramdas (2022), Theorem 2 with m = 1, A = 0.85, C = 0.8 log(1612/alpha)."""
    return 0.85 * math.sqrt((math.log(math.log(math.e * t)) + 0.8 * math.log(1612 / alpha)) / t)


def paper_bounds(sorted_values: np.ndarray, p: float, alpha: float) -> tuple[float, float]:
    """The quantile CS from the uniform radius, as in the authors' confseq demo/quantiles.py."""
    t = sorted_values.size
    f = paper_radius(t, alpha)
    lower_index = math.floor(t * (p - f) + 1)
    upper_index = math.ceil(t * (p + f))
    lower = -math.inf if lower_index < 1 else sorted_values[lower_index - 1]
    upper = math.inf if upper_index > t else sorted_values[upper_index - 1]
    return float(lower), float(upper)


def theorem2_tail(c: float, eta: np.ndarray, a: float = 0.85) -> np.ndarray:
    """Theorem 2's crossing-probability bound for constant C and each eta (inf if not allowed).

    ``4 exp(-gamma^2 C) (1 + 1 / ((gamma^2 - 1) log eta))`` with
    ``gamma^2 = (2 / eta) (A - sqrt(2 (eta - 1) / C))^2``, for ``eta > 1`` with ``gamma^2 > 1``.
    """
    gap = a - np.sqrt(2 * (eta - 1) / c)
    gamma_sq = 2 / eta * gap * gap
    ok = (gap > 0) & (gamma_sq > 1)
    with np.errstate(divide="ignore"):
        tail = 4 * np.exp(-gamma_sq * c) * (1 + 1 / ((gamma_sq - 1) * np.log(eta)))
    return np.where(ok, tail, np.inf)


# every eta gives a valid bound, so the minimum over a grid is a (tight) valid bound too
ETAS = 1 + np.geomspace(1e-6, 0.5, 40_001)


def best_tail(c: float) -> float:
    return float(theorem2_tail(c, ETAS).min())


# --- the grid -------------------------------------------------------------------------------

WIDE = st.floats(-1e9, 1e9, allow_nan=False) | st.sampled_from([0.0, -0.0, 1e-3, 1e7, 5e-324])


def test_default_grid_size_and_special_bins() -> None:
    assert SPEC.n_bins == 1154  # ceil(log(1e10) / log(1.01 / 0.99)) = 1152 regular + 2
    last = SPEC.n_bins - 1
    assert SPEC.lower_edge(0) == -np.inf and SPEC.upper_edge(0) == SPEC.min_value
    assert SPEC.lower_edge(1) == SPEC.min_value
    assert SPEC.lower_edge(last) == SPEC.max_value and SPEC.upper_edge(last) == np.inf
    assert SPEC.index(np.array([-5.0, 0.0, 1e-3, 1e7, 1e300])).tolist() == [0, 0, 1, last, last]


def test_edges_tile_the_line() -> None:
    i = np.arange(SPEC.n_bins - 1)
    assert np.array_equal(SPEC.upper_edge(i), SPEC.lower_edge(i + 1))
    assert (np.diff(SPEC.lower_edge(np.arange(1, SPEC.n_bins))) > 0).all()
    # each finite edge opens its bin, and the float just below it belongs to the previous one
    edges = SPEC.lower_edge(np.arange(1, SPEC.n_bins))
    assert np.array_equal(SPEC.index(edges), np.arange(1, SPEC.n_bins))
    assert np.array_equal(SPEC.index(np.nextafter(edges, -np.inf)), np.arange(SPEC.n_bins - 1))


@given(st.lists(WIDE, max_size=50))
def test_every_value_lies_in_its_bin(values: list[float]) -> None:
    v = np.array(values, float)
    idx = SPEC.index(v)
    assert idx.shape == v.shape and idx.dtype == np.intp
    assert (SPEC.lower_edge(idx) <= v).all() and (v < SPEC.upper_edge(idx)).all()


@given(st.lists(WIDE, min_size=1, max_size=20))
def test_vectorised_index_equals_scalar(values: list[float]) -> None:
    v = np.array(values, float)
    scalar = [int(SPEC.index(x)) for x in values]
    assert SPEC.index(v).tolist() == scalar
    assert SPEC.index(v.reshape(-1, 1)).ravel().tolist() == scalar


@pytest.mark.parametrize("spec", [SPEC, SketchSpec(0.05, 0.5, 2e3), SketchSpec(1e-4, 1.0, 10.0)])
def test_regular_bins_are_relatively_narrow(spec: SketchSpec) -> None:
    i = np.arange(1, spec.n_bins - 1)
    lo, hi = spec.lower_edge(i), spec.upper_edge(i)
    a = spec.relative_accuracy
    assert ((hi - lo) / hi <= 2 * a).all()
    assert ((hi - lo) / ((hi + lo) / 2) <= 2 * a * (1 + 1e-9)).all()
    # full bins (all but the truncated last one) are exactly one gamma step
    assert np.allclose(hi[:-1] / lo[:-1], spec.gamma, rtol=1e-12)


def test_index_rejects_nan_and_edges_reject_bad_bins() -> None:
    with pytest.raises(ValueError, match="NaN"):
        SPEC.index(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="bin index"):
        SPEC.lower_edge(SPEC.n_bins)
    with pytest.raises(ValueError, match="bin index"):
        SPEC.upper_edge(-1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"relative_accuracy": 0.0},
        {"relative_accuracy": 1.0},
        {"relative_accuracy": -0.01},
        {"relative_accuracy": math.nan},
        {"min_value": 0.0},
        {"min_value": -1.0},
        {"min_value": math.nan},
        {"min_value": 5.0, "max_value": 5.0},
        {"min_value": 5.0, "max_value": 1.0},
        {"max_value": math.inf},
        {"relative_accuracy": 1e-7},  # 115 million bins per cell
    ],
)
def test_spec_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SketchSpec(**kwargs)


# --- the point estimate ---------------------------------------------------------------------

RNG = np.random.default_rng(20240917)
DATA = {
    "lognormal": RNG.lognormal(0.0, 1.0, 100_000),
    "lognormal_wide": RNG.lognormal(3.0, 2.5, 20_000),
    "normal_positive": RNG.normal(100.0, 15.0, 50_000),
    "tiny": RNG.lognormal(0.0, 1.0, 7),
}
PS = [0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999]


@pytest.mark.parametrize("name", DATA)
def test_sketch_quantile_is_relatively_accurate(name: str) -> None:
    x = DATA[name]
    assert x.min() > SPEC.min_value and x.max() < SPEC.max_value
    counts = sketch_of(x)
    for p in PS:
        exact = float(np.quantile(x, p, method="inverted_cdf"))
        assert abs(sketch_quantile(SPEC, counts, p) - exact) <= A * exact * (1 + 1e-12), p


@settings(max_examples=200)
@given(
    st.lists(st.floats(1e-3, 9.99e6), min_size=1, max_size=60),
    st.floats(1e-6, 1 - 1e-6),
)
def test_sketch_quantile_matches_inverted_cdf_on_any_sample(values: list[float], p: float) -> None:
    x = np.array(values)
    exact = float(np.quantile(x, p, method="inverted_cdf"))
    assert abs(sketch_quantile(SPEC, sketch_of(x), p) - exact) <= A * exact * (1 + 1e-12)


def test_sketch_quantile_outside_the_grid() -> None:
    counts = sketch_of(np.array([0.0, 0.0, -3.0, 5e8]))
    assert sketch_quantile(SPEC, counts, 0.5) == 0.0
    assert sketch_quantile(SPEC, counts, 0.9) == SPEC.max_value


# --- merging and moving ---------------------------------------------------------------------

CELLS = (2, 3)
VALUE = st.floats(-10.0, 1e8, allow_nan=False)
UNITS = st.lists(st.tuples(st.integers(0, 5), VALUE), max_size=40)


def build(units: list[tuple[int, float]]) -> QuantileSketch:
    cells = np.array([c for c, _ in units], np.intp)
    values = np.array([v for _, v in units], float)
    return QuantileSketch.zeros(SPEC, CELLS).move(cells, None, values)


@given(UNITS, UNITS)
def test_merge_equals_sequential_update(
    a: list[tuple[int, float]], b: list[tuple[int, float]]
) -> None:
    merged = build(a) + build(b)
    assert merged == build(a + b)
    assert merged == build(b) + build(a)
    assert merged.n().sum() == len(a) + len(b)


@given(
    st.lists(st.tuples(st.integers(0, 5), VALUE, VALUE), max_size=40),
    st.integers(0, 40),
)
def test_moves_are_exact_and_reversible(units: list[tuple[int, float, float]], split: int) -> None:
    cells = np.array([c for c, _, _ in units], np.intp)
    old = np.array([v for _, v, _ in units], float)
    new = np.array([v for _, _, v in units], float)
    zero = QuantileSketch.zeros(SPEC, CELLS)
    before = zero.move(cells, None, old)
    after = before.move(cells, old, new)
    assert after == zero.move(cells, None, new)  # as if built from the final values
    assert after.move(cells, new, old) == before  # and moving back restores the counts
    assert np.array_equal(after.n(), before.n())
    # deltas computed on different partitions may go negative yet still sum to the truth
    s = slice(0, split)
    r = slice(split, None)
    d1 = zero.move(cells[s], old[s], new[s])
    d2 = zero.move(cells[r], old[r], new[r])
    assert before + d1 + d2 == after


def test_move_builds_counts_per_cell() -> None:
    sk = QuantileSketch.zeros(SPEC, CELLS).move(
        np.array([0, 5, 5, 5], np.intp), None, np.array([1.0, 2.0, 2.0, 3.0])
    )
    assert sk.n().tolist() == [[1, 0, 0], [0, 0, 3]]
    assert sk.cell(1, 2)[SPEC.index(2.0)] == 2
    assert sk.total(axis=0).n().tolist() == [1, 0, 3]
    assert sk.total(axis=-1).n().tolist() == [1, 3]
    assert sk.total(axis=0).cells_shape == (3,)
    with pytest.raises(ValueError, match="cell axis"):
        sk.total(axis=2)
    with pytest.raises(ValueError, match="indices"):
        sk.cell(1)


def test_move_validates_inputs() -> None:
    sk = QuantileSketch.zeros(SPEC, CELLS)
    with pytest.raises(ValueError, match="cell index"):
        sk.move(np.array([6], np.intp), None, np.array([1.0]))
    with pytest.raises(ValueError, match="cell index"):
        sk.move(np.array([-1], np.intp), None, np.array([1.0]))
    with pytest.raises(ShapeMismatch):
        sk.move(np.array([0, 1], np.intp), None, np.array([1.0]))
    with pytest.raises(ShapeMismatch):
        sk.move(np.array([0, 1], np.intp), np.array([1.0]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="NaN"):
        sk.move(np.array([0], np.intp), None, np.array([np.nan]))


def test_merge_rejects_other_shapes_and_specs() -> None:
    a = QuantileSketch.zeros(SPEC, CELLS)
    with pytest.raises(ShapeMismatch):
        a + QuantileSketch.zeros(SPEC, (3, 2))
    with pytest.raises(ShapeMismatch):
        a + QuantileSketch.zeros(SketchSpec(relative_accuracy=0.02), CELLS)
    with pytest.raises(ShapeMismatch):
        QuantileSketch(SPEC, np.zeros((2, 10), np.int64))
    with pytest.raises(TypeError):
        QuantileSketch(SPEC, np.zeros(SPEC.n_bins))  # type: ignore[arg-type]
    assert QuantileSketch(SPEC, np.zeros(SPEC.n_bins, np.int32)).counts.dtype == np.int64
    assert a != QuantileSketch.zeros(SketchSpec(relative_accuracy=0.02), CELLS)
    assert a != object()


@given(UNITS, UNITS)
def test_wire_round_trip_is_exact_and_sparse(
    a: list[tuple[int, float]], b: list[tuple[int, float]]
) -> None:
    sk = build(a) + QuantileSketch(SPEC, -build(b).counts)  # negative partial counts too
    wire = json.loads(json.dumps(sk.to_wire()))
    assert QuantileSketch.from_wire(wire) == sk
    assert len(wire["index"]) == np.count_nonzero(sk.counts) <= len(a) + len(b)


def test_from_wire_rejects_inconsistent_payloads() -> None:
    wire = build([(0, 1.0), (4, 2.0)]).to_wire()
    with pytest.raises(ShapeMismatch):
        QuantileSketch.from_wire({**wire, "n_bins": 7})
    with pytest.raises(ValueError, match="outside"):
        QuantileSketch.from_wire({**wire, "index": [0, 6 * SPEC.n_bins]})
    with pytest.raises(ValueError, match="duplicates"):
        QuantileSketch.from_wire({**wire, "index": [3, 3]})
    with pytest.raises(ValueError, match="equal-length"):
        QuantileSketch.from_wire({**wire, "count": [1]})


# --- the boundary ---------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", [1e-6, 0.001, 0.01, 0.025, 0.05, 0.1, 0.2, MAX_ALPHA])
def test_dkw_radius_matches_the_paper_and_is_vectorised(alpha: float) -> None:
    t = np.array([1, 2, 10, 137, 10_000, 10**9])
    expected = [paper_radius(float(x), alpha) for x in t]
    assert dkw_radius(t, alpha) == pytest.approx(expected, rel=1e-12)
    assert [dkw_radius(int(x), alpha) for x in t] == pytest.approx(expected, rel=1e-12)
    assert dkw_radius(0, alpha) == math.inf


@pytest.mark.parametrize("alpha", [1e-9, 1e-4, 0.01, 0.05, 0.1, 0.2, 0.3, MAX_ALPHA])
def test_the_closed_form_constants_satisfy_theorem_2(alpha: float) -> None:
    """C = 0.8 log(1612/alpha) at A = 0.85 keeps Theorem 2's crossing bound below alpha."""
    assert best_tail(0.8 * math.log(1612 / alpha)) <= alpha


def test_theorem_2_transcription_reproduces_the_authors_library() -> None:
    """confseq's unit test: empirical_process_lil_bound(1000, .05, t_min=100) = 0.08204769.

    That function solves Theorem 2's tail bound for C numerically; matching it checks the
    transcription used in the test above. The closed form is only slightly more conservative.
    """
    c = optimize.brentq(lambda c: best_tail(c) - 0.05, 2.0, 50.0, xtol=1e-12)
    assert 0.85 * math.sqrt((math.log1p(math.log(1000 / 100)) + c) / 1000) == pytest.approx(
        0.08204769, abs=2e-7
    )
    assert c < 0.8 * math.log(1612 / 0.05) < 1.03 * c


def test_cs_ranks_match_the_paper_except_on_exact_integers() -> None:
    n = np.arange(0, 20_001)
    for alpha in (0.01, 0.05):
        for p in (0.01, 0.5, 0.95, 0.99):
            lo, hi = quantile_cs_ranks(n, p, alpha)
            f = np.array([paper_radius(float(x), alpha) if x else math.inf for x in n])
            with np.errstate(invalid="ignore"):
                paper_lo = np.where(n > 0, np.floor(n * (p - f) + 1), 0)
                paper_hi = np.where(n > 0, np.ceil(n * (p + f)), 1)
                x = n * (p - f)
                integer = np.abs(x - np.round(x)) < 1e-9 * np.maximum(1.0, np.abs(x))
            assert np.array_equal(np.maximum(paper_lo, 0)[~integer], lo[~integer])
            # on (float-)exact integers ours may be one rank lower: valid even with atoms
            assert np.isin(paper_lo[integer] - lo[integer], [0, 1]).all()
            assert np.array_equal(np.minimum(paper_hi, n + 1), hi)


@pytest.mark.parametrize("n", [1000, 5000, 20_000])
def test_cs_lower_rank_on_an_exact_integer_is_that_integer(n: int) -> None:
    """``lo = ceil(n (p - f))``: where ``n (p - f)`` is the integer ``k`` it is ``k``, even
    when float rounding leaves the product a few ulps above ``k``. The test above marks a
    product within 1e-9 of an integer, but its grid has only four such and none within the
    code's 1e-12 tolerance, so a ``ceil`` without the tolerance passed it. Here ``p`` is
    chosen so that the product is ``k`` up to rounding, on both sides of it."""
    f = paper_radius(float(n), 0.05)
    ks = np.arange(n // 4, n // 4 + 300)
    above = 0
    for k in ks.tolist():
        p = k / n + f
        lo, _ = quantile_cs_ranks(n, p, 0.05)
        assert int(lo) == k, (k, p)
        above += n * (p - f) > k
    assert above > 10  # rounding really pushed the product above k: the case is reached


# --- the confidence sequence on one sample --------------------------------------------------

FINE = SketchSpec(relative_accuracy=1e-4, min_value=1e-3, max_value=1e3)


@pytest.mark.parametrize("n", [1, 30, 100, 1000, 20_000])
@pytest.mark.parametrize("p", [0.05, 0.5, 0.95, 0.99])
def test_quantile_cs_brackets_the_exact_order_statistic_cs(n: int, p: float) -> None:
    rng = np.random.default_rng(n)
    x = np.sort(rng.lognormal(0.0, 1.0, n))
    exact_lo, exact_hi = paper_bounds(x, p, 0.05)
    for spec in (FINE, SPEC):
        g = spec.gamma
        cs = quantile_cs(spec, sketch_of(x, spec), p, 0.05)
        assert cs.n == n
        # binning only widens: by at most one bin at each end
        assert cs.lower <= exact_lo and (exact_lo == -math.inf or cs.lower * g >= exact_lo)
        assert cs.upper >= exact_hi and (exact_hi == math.inf or cs.upper <= exact_hi * g)
        assert cs.lower <= cs.estimate <= cs.upper


@settings(max_examples=200)
@given(
    st.lists(st.floats(-1.0, 2e7), min_size=1, max_size=300),
    st.floats(0.001, 0.999),
    st.sampled_from([0.01, 0.05, 0.2]),
)
def test_quantile_cs_is_nested_and_contains_its_estimate(
    values: list[float], p: float, alpha: float
) -> None:
    counts = sketch_of(np.array(values))
    cs = quantile_cs(SPEC, counts, p, alpha)
    wider = quantile_cs(SPEC, counts, p, alpha / 10)
    assert cs.lower <= cs.estimate <= cs.upper
    assert wider.lower <= cs.lower and cs.upper <= wider.upper
    assert cs.estimate == sketch_quantile(SPEC, counts, p)


def test_tiny_samples_give_no_information() -> None:
    # f_1 = 2.45 at alpha = 0.05: nothing is known about any quantile from one unit
    cs = quantile_cs(SPEC, sketch_of(np.array([3.0])), 0.5, 0.05)
    assert (cs.lower, cs.upper) == (-math.inf, math.inf) and cs.estimate == pytest.approx(3.0, 0.01)


def test_empty_cells() -> None:
    empty = np.zeros(SPEC.n_bins, np.int64)
    cs = quantile_cs(SPEC, empty, 0.95, 0.05)
    assert math.isnan(cs.estimate) and cs.lower == -math.inf and cs.upper == math.inf
    assert cs.n == 0 and cs.contains(0.0)
    assert math.isnan(sketch_quantile(SPEC, empty, 0.5))
    full = sketch_of(RNG.lognormal(0, 1, 5000))
    for t, c in ((empty, full), (full, empty)):
        d = quantile_difference_cs(SPEC, t, c, 0.5, 0.05)
        assert math.isnan(d.estimate) and (d.lower, d.upper) == (-math.inf, math.inf)
        assert d.n == 5000


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_p_outside_the_open_unit_interval_is_rejected(p: float) -> None:
    counts = sketch_of(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="p must be"):
        quantile_cs(SPEC, counts, p, 0.05)
    with pytest.raises(ValueError, match="p must be"):
        quantile_difference_cs(SPEC, counts, counts, p, 0.05)
    with pytest.raises(ValueError, match="p must be"):
        sketch_quantile(SPEC, counts, p)
    with pytest.raises(ValueError, match="p must be"):
        quantile_cs_ranks(10, p, 0.05)


@pytest.mark.parametrize("alpha", [0.0, -0.1, 0.5, 1.0, math.nan])
def test_bad_alpha_is_rejected(alpha: float) -> None:
    counts = sketch_of(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="alpha"):
        quantile_cs(SPEC, counts, 0.5, alpha)
    with pytest.raises(ValueError, match="alpha"):
        dkw_radius(10, alpha)
    with pytest.raises(ValueError, match="alpha"):
        quantile_difference_cs(SPEC, counts, counts, 0.5, 2 * alpha)


def test_bad_counts_are_rejected() -> None:
    counts = sketch_of(np.array([1.0, 2.0]))
    with pytest.raises(ShapeMismatch):
        quantile_cs(SPEC, counts[:-1], 0.5, 0.05)
    with pytest.raises(TypeError):
        quantile_cs(SPEC, counts.astype(float), 0.5, 0.05)
    counts[0] = -1
    with pytest.raises(ValueError, match="negative"):
        quantile_cs(SPEC, counts, 0.5, 0.05)


def test_difference_cs_combines_the_arms_at_half_alpha() -> None:
    t_counts = sketch_of(RNG.lognormal(0.2, 1.0, 3000))
    c_counts = sketch_of(RNG.lognormal(0.0, 1.0, 2000))
    d = quantile_difference_cs(SPEC, t_counts, c_counts, 0.9, 0.1)
    t = quantile_cs(SPEC, t_counts, 0.9, 0.05)
    c = quantile_cs(SPEC, c_counts, 0.9, 0.05)
    assert d == QuantileInterval(
        t.estimate - c.estimate, t.lower - c.upper, t.upper - c.lower, 5000
    )
    assert d.lower < d.estimate < d.upper


# --- coverage under continuous monitoring ---------------------------------------------------

STREAMS, T_MAX, ALPHA = 300, 20_000, 0.05
LOOKS = np.unique(np.geomspace(20, T_MAX, 60).round().astype(int))
QUANTILES = (0.5, 0.95, 0.99)
SIGMA = 1.0  # lognormal shape: p99 / p50 = 10


def test_cs_covers_all_quantiles_at_every_look_and_naive_cis_do_not() -> None:
    rng = np.random.default_rng(2024)
    x = rng.lognormal(0.0, SIGMA, (STREAMS, T_MAX))
    truth = stats.lognorm.ppf(QUANTILES, s=SIGMA)

    # the sketch path, through the public API, one look at a time
    sketch = QuantileSketch.zeros(SPEC, (STREAMS,))
    cs_miss = np.zeros((STREAMS, len(QUANTILES)), bool)
    prev = 0
    for t in LOOKS:
        seg = x[:, prev:t]
        cells = np.repeat(np.arange(STREAMS, dtype=np.intp), t - prev)
        sketch = sketch.move(cells, None, seg.ravel())
        prev = t
        for j, (p, q) in enumerate(zip(QUANTILES, truth, strict=True)):
            for s in range(STREAMS):
                cs = quantile_cs(SPEC, sketch.counts[s], p, ALPHA)
                cs_miss[s, j] |= not cs.contains(q)
    assert np.array_equal(sketch.n(), np.full(STREAMS, T_MAX))

    # exact order statistics, vectorised: X_(k) > q iff fewer than k values are <= q
    below = np.stack([np.cumsum(x <= q, axis=1)[:, LOOKS - 1] for q in truth], axis=-1)
    exact_miss = np.zeros_like(cs_miss)
    naive_miss = np.zeros_like(cs_miss)
    for j, p in enumerate(QUANTILES):
        lo, hi = quantile_cs_ranks(LOOKS, p, ALPHA)
        exact_miss[:, j] = ((below[..., j] < lo) | (below[..., j] >= hi)).any(axis=1)
        # fixed-sample order-statistic CI at level alpha: ranks from Binomial(t, p) tails
        lo_n = stats.binom.ppf(ALPHA / 2, LOOKS, p)
        hi_n = stats.binom.ppf(1 - ALPHA / 2, LOOKS, p) + 1
        naive_miss[:, j] = ((below[..., j] < lo_n) | (below[..., j] >= hi_n)).any(axis=1)

    mc_se = math.sqrt(ALPHA * (1 - ALPHA) / STREAMS)
    rates = {
        name: (m.mean(axis=0).round(4).tolist(), float(m.any(axis=1).mean()))
        for name, m in (("sketch CS", cs_miss), ("exact CS", exact_miss), ("naive", naive_miss))
    }
    print(f"\never-miss rate per p {QUANTILES} and for any of them, {len(LOOKS)} looks: {rates}")
    assert (cs_miss <= exact_miss).all()  # binning only widens
    assert cs_miss.any(axis=1).mean() <= ALPHA + 3 * mc_se  # one alpha for all three
    assert (naive_miss.mean(axis=0) > 2 * ALPHA).all()
    assert naive_miss.any(axis=1).mean() > 4 * ALPHA


def test_exact_cs_covers_after_every_single_observation() -> None:
    """The rank rule checked at all 20k looks, not 60: ranks are distribution-free.

    For continuous data ``X_(k) > Q(p)`` iff fewer than ``k`` of the first ``t`` values are
    ``<= Q(p)``, a count whose law is the same for every continuous ``F``, so uniforms stand
    in for lognormal latencies. Dense looks are what separate a time-uniform boundary from a
    fixed-sample one: the plain DKW radius ``sqrt(log(2/alpha) / 2t)`` recomputed at every
    look misses the median in about 15% of these streams.
    """
    rng = np.random.default_rng(99)
    streams, chunk = 1000, 250
    looks = np.arange(1, T_MAX + 1)
    ranks = [quantile_cs_ranks(looks, p, ALPHA) for p in QUANTILES]
    miss = np.zeros((streams, len(QUANTILES)), bool)
    for start in range(0, streams, chunk):
        u = rng.random((chunk, T_MAX))
        for j, (p, (lo, hi)) in enumerate(zip(QUANTILES, ranks, strict=True)):
            below = np.cumsum(u <= p, axis=1)
            miss[start : start + chunk, j] = ((below < lo) | (below >= hi)).any(axis=1)
    rate = float(miss.any(axis=1).mean())
    print(f"\nexact CS ever-miss rate over {T_MAX} looks, any of {QUANTILES}: {rate:.4f}")
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / streams)


def test_difference_cs_detects_a_20pct_p95_regression() -> None:
    """Treatment latency scaled by 1.2 (every quantile +20%); report units/arm to detection."""
    rng = np.random.default_rng(11)
    streams, n_max, sigma = 20, 100_000, 0.5
    looks = np.unique(np.geomspace(100, n_max, 80).round().astype(int))
    first = np.full(streams, -1)
    for s in range(streams):
        treatment = rng.lognormal(math.log(1.2), sigma, n_max)
        control = rng.lognormal(0.0, sigma, n_max)
        t_sk = c_sk = QuantileSketch.zeros(SPEC, (1,))
        prev = 0
        for t in looks:
            cells = np.zeros(t - prev, np.intp)
            t_sk = t_sk.move(cells, None, treatment[prev:t])
            c_sk = c_sk.move(cells, None, control[prev:t])
            prev = t
            d = quantile_difference_cs(SPEC, t_sk.cell(0), c_sk.cell(0), 0.95, ALPHA)
            assert d.upper > 0  # never the wrong sign
            if d.lower > 0:
                first[s] = t
                break
    print(
        f"\np95 +20% (lognormal sigma={sigma}): detected in {np.mean(first > 0):.2f} of "
        f"streams, units/arm at detection: median {np.median(first)}, max {first.max()}"
    )
    assert (first > 0).all()
    assert np.median(first) > 1_000  # not suspiciously early either


def test_difference_cs_does_not_fire_in_aa_tests() -> None:
    rng = np.random.default_rng(12)
    fired = 0
    for _ in range(40):
        t_counts = c_counts = np.zeros(SPEC.n_bins, np.int64)
        for _ in range(20):
            t_counts = t_counts + sketch_of(rng.lognormal(0.0, 0.5, 500))
            c_counts = c_counts + sketch_of(rng.lognormal(0.0, 0.5, 500))
            fired += not quantile_difference_cs(SPEC, t_counts, c_counts, 0.95, ALPHA).contains(0)
    assert fired == 0
