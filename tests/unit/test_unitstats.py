"""Unit-level statistics (monitor.unitstats) against numpy on the final per-unit vectors.

Random per-unit event streams run through :class:`Assignment` objects the way
:mod:`monitor.attribution` does: a newly exposed unit enters a batch as ``(assignment, None)``,
a unit whose values an event touches as ``(assignment, values before the batch)``, events
mutate ``assignment.values`` in place, and :meth:`UnitDeltas.build` vectorises the rows at the
end of the batch. The oracle is numpy on the units' final vectors only, so the incremental
``b b^T - a a^T`` bookkeeping is checked against a from-scratch computation.

With integer-valued events and covariates every sum and Gram entry is an integer far below
2**53, so float arithmetic is exact and the comparisons are exact; the float-valued
(hypothesis) tests use a tolerance derived from the magnitudes of the summed increments.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.aggregation import next_unit_value
from monitor.config import Aggregation, ExperimentConfig, parse_config
from monitor.errors import ShapeMismatch
from monitor.layout import OTHER, ExperimentLayout
from monitor.quantiles import QuantileSketch, SketchSpec
from monitor.unitstate import Assignment
from monitor.unitstats import ExperimentStats, UnitDeltas, UnitStatsAggregation, sketch_spec

EPS = np.finfo(float).eps

CONFIG = """
experiments:
  - name: checkout
    variants: [control, treat_a, treat_b]
    control: control
    stages: [10, 50]
    covariates: [pre_tasks, tenure_days]
    metrics:
      - {name: tasks, aggregation: sum, cuped_covariate: pre_tasks}
      - {name: latency_ms, aggregation: sum, sketch: {min_value: 1, max_value: 100000}}
      - {name: error_session, aggregation: any}
    guardrails:
      - {metric: latency_ms, statistic: quantile, quantile: 0.95, harmful_direction: increase,
         margin: 50}
      - {metric: error_session, harmful_direction: increase, margin: 0.01}
    segments:
      - {attribute: device, values: [desktop, mobile]}
"""

EXPERIMENT: ExperimentConfig = parse_config(CONFIG).experiment("checkout")
LAYOUT = ExperimentLayout(EXPERIMENT)
STAGES, VARIANTS = 2, 3
METRICS = ("tasks", "latency_ms", "error_session")
AGGREGATIONS: tuple[Aggregation, ...] = ("sum", "sum", "any")
K = len(METRICS) + 2
#: the oracle's own slot mapping, written out from the YAML (undeclared or missing -> other)
DEVICE_SLOT = {"desktop": 0, "mobile": 1}
SLOTS = 3
LATENCY = 1
#: the sketch grid, written out from the YAML (not through sketch_spec)
LATENCY_SPEC = SketchSpec(0.01, 1.0, 100_000.0)
DEVICES = ("desktop", "mobile", "tablet", None)  # tablet is undeclared, None = attribute missing


def test_layout_of_the_config() -> None:
    assert LAYOUT.metrics == METRICS
    assert LAYOUT.covariates == ("pre_tasks", "tenure_days")
    assert LAYOUT.columns == K
    assert [LAYOUT.column(c) for c in (*METRICS, "pre_tasks", "tenure_days")] == list(range(K))
    assert LAYOUT.segment_slots == (("device", "desktop"), ("device", "mobile"), ("device", OTHER))
    assert LAYOUT.quantile_metrics == ("latency_ms",)
    assert sketch_spec(LAYOUT, "latency_ms") == LATENCY_SPEC
    for device in DEVICES:
        attrs = {} if device is None else {"device": device}
        assert LAYOUT.segment_codes(attrs) == [DEVICE_SLOT.get(device or "", 2)]


# --- the event-stream driver ----------------------------------------------------------------

#: (stage, variant, covariates, device) of a newly exposed unit
NewUnit = tuple[int, int, tuple[float, float], str | None]
#: (unit pick, metric, value); the unit is ``pick % units exposed so far``
Event = tuple[int, int, float]
Batch = tuple[list[NewUnit], list[Event]]


@dataclass
class Stream:
    """What a run produced: the units, and the UnitDeltas per batch (whole and per partition)."""

    units: list[Assignment] = field(default_factory=list)
    devices: list[str | None] = field(default_factory=list)
    whole: list[UnitDeltas] = field(default_factory=list)
    parts: tuple[list[UnitDeltas], list[UnitDeltas]] = field(default_factory=lambda: ([], []))
    #: per cell: rows fed, and sum of |increment terms| for sums and for the Gram matrix
    rows: np.ndarray = field(default_factory=lambda: np.zeros((STAGES, VARIANTS)))
    sum_mass: np.ndarray = field(default_factory=lambda: np.zeros((STAGES, VARIANTS, K)))
    gram_mass: np.ndarray = field(default_factory=lambda: np.zeros((STAGES, VARIANTS, K, K)))


def run_stream(batches: Sequence[Batch]) -> Stream:
    out = Stream()
    for new_units, events in batches:
        rows: dict[int, tuple[Assignment, list[float] | None]] = {}
        for stage, variant, covariates, device in new_units:
            attrs = {} if device is None else {"device": device}
            a = Assignment(
                variant, stage, 0.0, [0.0] * len(METRICS), list(covariates),
                LAYOUT.segment_codes(attrs),
            )  # fmt: skip
            rows[len(out.units)] = (a, None)
            out.units.append(a)
            out.devices.append(device)
        for pick, metric, value in events:
            if not out.units:
                continue
            uid = pick % len(out.units)
            a = out.units[uid]
            if uid not in rows:  # as ExperimentBatch.touch: values before the first change
                rows[uid] = (a, list(a.values))
            a.values[metric] = next_unit_value(AGGREGATIONS[metric], a.values[metric], value)
        # vectorise now: later batches mutate the same Assignment objects
        out.whole.append(UnitDeltas.build(LAYOUT, list(rows.values())))
        for p in (0, 1):
            out.parts[p].append(
                UnitDeltas.build(LAYOUT, [r for uid, r in rows.items() if uid % 2 == p])
            )
        for a, before in rows.values():
            after = np.array([*a.values, *a.covariates])
            old = np.zeros(K) if before is None else np.array([*before, *a.covariates])
            cell = (a.stage, a.variant)
            out.rows[cell] += 1
            out.sum_mass[cell] += np.abs(after) + np.abs(old)
            out.gram_mass[cell] += np.abs(np.outer(after, after)) + np.abs(np.outer(old, old))
    return out


def fold(deltas: Sequence[UnitDeltas]) -> ExperimentStats:
    agg = UnitStatsAggregation(LAYOUT)
    state = agg.initialize()
    for d in deltas:
        state = agg.update(state, d)
    return agg.result(state)


def random_batches(seed: int, batches: int, *, integer: bool) -> list[Batch]:
    """Ramp-like: stage 0 for the first half of the batches, stage 1 after."""
    rng = np.random.default_rng(seed)
    out: list[Batch] = []
    for b in range(batches):
        stage = 0 if b < batches // 2 else 1
        new_units: list[NewUnit] = []
        for _ in range(int(rng.integers(0, 25))):
            pre = float(rng.poisson(4)) if integer else float(rng.gamma(2.0, 2.0))
            tenure = float(rng.integers(0, 400)) if integer else float(rng.exponential(100))
            device = DEVICES[int(rng.integers(len(DEVICES)))]
            new_units.append((stage, int(rng.integers(VARIANTS)), (pre, tenure), device))
        events: list[Event] = []
        for _ in range(int(rng.integers(0, 80))):
            metric = int(rng.integers(len(METRICS)))
            if metric == 0:
                value = float(rng.poisson(1.5)) if integer else float(rng.exponential(1.5))
            elif metric == 1:
                value = float(rng.integers(0, 900)) if integer else float(rng.lognormal(5, 1))
            else:  # "any" also sees zero-valued events, which must not flip it to 1
                value = float(rng.choice([0.0, 0.0, 1.0]))
            events.append((int(rng.integers(1 << 30)), metric, value))
        out.append((new_units, events))
    return out


# --- the oracle -----------------------------------------------------------------------------


@dataclass
class Expected:
    n: np.ndarray
    sum: np.ndarray
    gram: np.ndarray
    seg_n: np.ndarray
    seg_sum: np.ndarray
    seg_ss: np.ndarray
    sketch: QuantileSketch
    z: np.ndarray
    cell: np.ndarray


def expected_from_final_units(
    units: Sequence[Assignment], devices: Sequence[str | None]
) -> Expected:
    z = np.array([[*a.values, *a.covariates] for a in units]).reshape(len(units), K)
    stage = np.array([a.stage for a in units], int)
    variant = np.array([a.variant for a in units], int)
    slot = np.array([DEVICE_SLOT.get(d or "", 2) for d in devices], int)
    n = np.zeros((STAGES, VARIANTS), np.int64)
    s = np.zeros((STAGES, VARIANTS, K))
    g = np.zeros((STAGES, VARIANTS, K, K))
    seg_n = np.zeros((STAGES, VARIANTS, SLOTS, len(METRICS)), np.int64)
    seg_sum = np.zeros(seg_n.shape)
    seg_ss = np.zeros(seg_n.shape)
    for i in range(STAGES):
        for j in range(VARIANTS):
            zc = z[(stage == i) & (variant == j)]
            n[i, j], s[i, j], g[i, j] = zc.shape[0], zc.sum(axis=0), zc.T @ zc
            for k in range(SLOTS):
                y = z[(stage == i) & (variant == j) & (slot == k), : len(METRICS)]
                seg_n[i, j, k] = y.shape[0]
                seg_sum[i, j, k] = y.sum(axis=0)
                seg_ss[i, j, k] = np.square(y).sum(axis=0)
    cell = stage * VARIANTS + variant
    sketch = QuantileSketch.zeros(LATENCY_SPEC, (STAGES, VARIANTS)).move(
        cell.astype(np.intp), None, z[:, LATENCY]
    )
    return Expected(n, s, g, seg_n, seg_sum, seg_ss, sketch, z, cell)


def assert_exact(stats: ExperimentStats, exp: Expected) -> None:
    assert np.array_equal(stats.units.n, exp.n)
    assert np.array_equal(stats.units.sum, exp.sum)
    assert np.array_equal(stats.units.gram, exp.gram)
    assert np.array_equal(stats.segments.n, exp.seg_n)
    assert np.array_equal(stats.segments.sum, exp.seg_sum)
    assert np.array_equal(stats.segments.sum_squares, exp.seg_ss)
    assert len(stats.sketches) == 1 and stats.sketches[0] == exp.sketch


def assert_close(stats: ExperimentStats, exp: Expected, stream: Stream) -> None:
    """Counts exact; sums within (terms + 1) * eps * sum of |terms| of the increments."""
    factor = 4 * (stream.rows + exp.n + 1) * EPS
    assert np.array_equal(stats.units.n, exp.n)
    assert np.all(np.abs(stats.units.sum - exp.sum) <= factor[..., None] * stream.sum_mass + 1e-300)
    gram_tol = factor[..., None, None] * stream.gram_mass + 1e-300
    assert np.all(np.abs(stats.units.gram - exp.gram) <= gram_tol)
    m = len(METRICS)
    assert np.array_equal(stats.segments.n, exp.seg_n)
    # a segment cell's increments are a subset of its (stage, variant) cell's
    seg_sum_tol = (factor[..., None] * stream.sum_mass[..., :m])[:, :, None, :]
    diag = np.diagonal(stream.gram_mass, axis1=-2, axis2=-1)[..., :m]
    seg_ss_tol = (factor[..., None] * diag)[:, :, None, :]
    assert np.all(np.abs(stats.segments.sum - exp.seg_sum) <= seg_sum_tol + 1e-300)
    assert np.all(np.abs(stats.segments.sum_squares - exp.seg_ss) <= seg_ss_tol + 1e-300)
    assert stats.sketches[0] == exp.sketch


# --- deterministic runs: exact -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stream_matches_numpy_on_final_unit_vectors(seed: int) -> None:
    stream = run_stream(random_batches(seed, 40, integer=True))
    exp = expected_from_final_units(stream.units, stream.devices)
    stats = fold(stream.whole)
    assert_exact(stats, exp)
    # every cell, every slot and both stages are populated, or the test would prove little
    assert (exp.n >= 5).all() and (exp.seg_n >= 1).all()
    assert len(stream.units) == int(exp.n.sum())
    # units without events are in the denominator with value 0 (ITT); "any" stays 0/1
    assert set(np.unique(exp.z[:, 2])) == {0.0, 1.0}
    assert (exp.z[:, :2] == 0).any(axis=0).all()
    # covariances and per-column moments follow from the same state
    for i in range(STAGES):
        for j in range(VARIANTS):
            zc = exp.z[exp.cell == i * VARIANTS + j]
            np.testing.assert_allclose(
                stats.units.cell(i, j).covariance, np.cov(zc, rowvar=False), rtol=1e-9, atol=1e-9
            )
            m = stats.units.column_moments(0).cell(i, j)
            assert m.variance == pytest.approx(np.var(zc[:, 0], ddof=1), rel=1e-9)
    # each unit is in exactly one slot of the one segment attribute
    assert np.array_equal(stats.segments.n.sum(axis=2)[..., 0], stats.units.n)
    # the sketch counts every unit exactly once, in its cell
    assert np.array_equal(stats.sketches[0].n(), stats.units.n)


def test_merge_of_partitions_equals_one_pass_and_sequential_streams() -> None:
    stream = run_stream(random_batches(3, 40, integer=True))
    agg = UnitStatsAggregation(LAYOUT)
    a, b = fold(stream.parts[0]), fold(stream.parts[1])
    whole = fold(stream.whole)
    assert agg.merge(a, b) == whole
    assert a + b == b + a
    assert agg.merge(a, b) == fold(stream.parts[0] + stream.parts[1])  # A then B
    assert a + agg.initialize() == a
    # the partitions really split the units
    assert 0 < int(a.units.n.sum()) < int(whole.units.n.sum())


def test_rebuild_from_assignments_equals_the_incremental_state() -> None:
    stream = run_stream(random_batches(4, 30, integer=True))
    rebuilt = fold([UnitDeltas.exposed(LAYOUT, stream.units)])
    assert rebuilt == fold(stream.whole)
    exposed = UnitDeltas.exposed(LAYOUT, stream.units)
    assert exposed.new.all()
    assert np.array_equal(exposed.before, exposed.after)


def test_a_unit_exposed_and_active_in_one_batch_enters_once_with_its_final_values() -> None:
    batches: list[Batch] = [
        ([(0, 1, (2.0, 10.0), "mobile")], [(0, 0, 3.0), (0, 1, 120.0), (0, 0, 2.0)]),
        ([], [(0, 2, 0.0), (0, 0, 1.0)]),  # a touch that leaves "any" at 0, and one more task
        ([], [(0, 2, 1.0), (0, 2, 1.0)]),
    ]
    stream = run_stream(batches)
    assert stream.whole[0].new.tolist() == [True]
    assert stream.whole[1].before[0].tolist() == [5.0, 120.0, 0.0, 2.0, 10.0]
    stats = fold(stream.whole)
    z = np.array([6.0, 120.0, 1.0, 2.0, 10.0])
    assert stats.units.n[0, 1] == 1 and stats.units.n.sum() == 1
    assert np.array_equal(stats.units.sum[0, 1], z)
    assert np.array_equal(stats.units.gram[0, 1], np.outer(z, z))
    assert stats.segments.cell(0, 1, 1, 0).sum == 6.0  # mobile slot
    assert stats.sketches[0].cell(0, 1)[LATENCY_SPEC.index(120.0)] == 1


def test_empty_batch_leaves_the_state_unchanged() -> None:
    stream = run_stream(random_batches(5, 6, integer=True))
    state = fold(stream.whole)
    empty = UnitDeltas.build(LAYOUT, [])
    assert empty.after.shape == (0, K) and empty.segments.shape == (0, 1)
    assert UnitStatsAggregation(LAYOUT).update(state, empty) == state


@pytest.mark.parametrize(
    ("values", "covariates"),
    [([0.0, 0.0], [1.0, 2.0]), ([0.0, 0.0, 0.0], [1.0]), ([0.0] * 3, [1.0, 2.0, 3.0])],
)
def test_build_refuses_vectors_of_the_wrong_width(
    values: list[float], covariates: list[float]
) -> None:
    a = Assignment(0, 0, 0.0, values, covariates, [0])
    with pytest.raises(ShapeMismatch):
        UnitDeltas.build(LAYOUT, [(a, None)])


def test_build_refuses_ragged_rows_whose_cells_add_up() -> None:
    """Rows are copied as one flat block: a short row next to a long one has the right
    total and must still be refused, not shifted into its neighbour's columns."""
    width = len(LAYOUT.metrics)
    short = Assignment(0, 0, 0.0, [0.0] * (width - 1), [1.0] * len(LAYOUT.covariates), [0])
    long = Assignment(0, 0, 0.0, [0.0] * (width + 1), [1.0] * len(LAYOUT.covariates), [0])
    with pytest.raises(ShapeMismatch, match="metric values"):
        UnitDeltas.build(LAYOUT, [(short, None), (long, None)])


def test_stats_wire_round_trip_is_exact_through_json() -> None:
    stream = run_stream(random_batches(6, 20, integer=False))
    stats = fold(stream.whole)
    back = ExperimentStats.from_wire(json.loads(json.dumps(stats.to_wire())))
    assert back == stats
    assert back.units.gram.tobytes() == stats.units.gram.tobytes()


def test_stats_with_different_sketch_counts_do_not_merge() -> None:
    state = UnitStatsAggregation(LAYOUT).initialize()
    with pytest.raises(ShapeMismatch):
        state + ExperimentStats(state.units, state.segments, ())
    assert state != ExperimentStats(state.units, state.segments, ())


# --- hypothesis: arbitrary float streams ------------------------------------------------------

values = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)
new_unit = st.tuples(
    st.integers(0, STAGES - 1),
    st.integers(0, VARIANTS - 1),
    st.tuples(values, values),
    st.sampled_from(DEVICES),
)
event = st.tuples(st.integers(0, 1 << 20), st.integers(0, len(METRICS) - 1), values)
batch = st.tuples(st.lists(new_unit, max_size=6), st.lists(event, max_size=12))


@settings(max_examples=100, deadline=None)
@given(st.lists(batch, min_size=1, max_size=8))
def test_float_streams_match_numpy_merge_and_rebuild(batches: list[Batch]) -> None:
    stream = run_stream(batches)
    exp = expected_from_final_units(stream.units, stream.devices)
    incremental = fold(stream.whole)
    assert_close(incremental, exp, stream)
    merged = fold(stream.parts[0]) + fold(stream.parts[1])
    assert_close(merged, exp, stream)
    rebuilt = fold([UnitDeltas.exposed(LAYOUT, stream.units)])
    assert_close(rebuilt, exp, stream)


# --- two segment attributes: every unit counts once per attribute -----------------------------

TWO_SEGMENTS = """
experiments:
  - name: two_segments
    variants: [control, treatment]
    control: control
    stages: [5, 50]
    metrics:
      - {name: tasks}
      - {name: errors, aggregation: any}
    segments:
      - {attribute: device, values: [desktop, mobile]}
      - {attribute: plan, values: [free, pro, team]}
"""


def test_segments_with_two_attributes_match_numpy_per_attribute() -> None:
    layout = ExperimentLayout(parse_config(TWO_SEGMENTS).experiment("two_segments"))
    assert [v for _, v in layout.segment_slots] == [
        "desktop", "mobile", OTHER, "free", "pro", "team", OTHER,
    ]  # fmt: skip
    rng = np.random.default_rng(11)
    n = 600
    devices = rng.choice(["desktop", "mobile", "tv", ""], n)
    plans = rng.choice(["free", "pro", "team", "legacy", ""], n)
    y = np.column_stack([rng.poisson(3, n), rng.random(n) < 0.2]).astype(float)
    units = []
    for i in range(n):
        attrs = {k: v for k, v in (("device", devices[i]), ("plan", plans[i])) if v}
        units.append(
            Assignment(int(rng.integers(2)), int(rng.integers(2)), 0.0, y[i].tolist(), [],
                       layout.segment_codes(attrs))
        )  # fmt: skip
    agg = UnitStatsAggregation(layout)
    seg = agg.update(agg.initialize(), UnitDeltas.exposed(layout, units)).segments
    assert seg.shape == (2, 2, 7, 2)
    stage = np.array([a.stage for a in units])
    variant = np.array([a.variant for a in units])
    slot_of = {
        "device": {"desktop": 0, "mobile": 1},
        "plan": {"free": 3, "pro": 4, "team": 5},
    }
    other = {"device": 2, "plan": 6}
    for attr, values in (("device", devices), ("plan", plans)):
        slot = np.array([slot_of[attr].get(v, other[attr]) for v in values])
        for s in range(2):
            for v in range(2):
                for k in sorted({*slot_of[attr].values(), other[attr]}):
                    yy = y[(stage == s) & (variant == v) & (slot == k)]
                    for m in range(2):
                        cell = seg.cell(s, v, k, m)
                        assert cell.n == yy.shape[0]
                        assert cell.sum == yy[:, m].sum()
                        assert cell.sum_squares == np.square(yy[:, m]).sum()
    # per attribute, the slots partition the units
    assert np.array_equal(seg.n[:, :, :3].sum(axis=2), seg.n[:, :, 3:].sum(axis=2))
