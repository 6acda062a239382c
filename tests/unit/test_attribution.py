"""ITT attribution rules and exact replay skipping, against hand-computed truth."""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Iterable, Sequence

import msgspec
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.attribution import Attributor
from monitor.config import parse_config
from monitor.events import Exposure, Telemetry
from monitor.layout import ExperimentLayout
from monitor.moments import Moments
from monitor.unitstate import (
    PACK_ABOVE,
    UnitState,
    decode_unit,
    encode_unit,
    recent_events,
)
from monitor.unitstats import ExperimentStats, UnitStatsAggregation

CONFIG = parse_config(
    """
experiments:
  - name: e
    variants: [control, treatment]
    control: control
    stages: [5, 50]
    metrics: [{name: tasks}, {name: err, aggregation: any}]
    covariates: [pre]
    segments: [{attribute: platform, values: [ios]}]
"""
)
LAYOUT = ExperimentLayout(CONFIG.experiments[0])


def aggregation() -> UnitStatsAggregation:
    return UnitStatsAggregation(LAYOUT)


def cell(state: ExperimentStats, stage: int, variant: int, metric: int) -> Moments:
    return state.units.cell(stage, variant).moments(metric)


class DictStore:
    """Round-trips through the real msgpack encoding, as the Faust table does."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def get(self, unit_id: str) -> UnitState | None:
        raw = self.data.get(unit_id)
        return decode_unit(raw) if raw else None

    def get_many(self, unit_ids: Sequence[str]) -> list[UnitState | None]:
        return [self.get(u) for u in unit_ids]

    def put_many(self, records: Iterable[tuple[str, UnitState]]) -> None:
        self.data.update((u, encode_unit(state)) for u, state in records)


def exp(unit: str, variant: str, ts: float) -> Exposure:
    return Exposure(f"x-{unit}-{ts}", ts, "e", unit, variant)


_IDS = itertools.count()


def tel(unit: str, metric: str, value: float, ts: float) -> Telemetry:
    """A new event (a unique event_id): ids repeat only for a producer's re-send."""
    return Telemetry(f"t-{next(_IDS)}", ts, unit, metric, value)


def stage(_: str, ts: float) -> int:
    return 0 if ts < 100 else 1


def test_itt_rules_and_moments() -> None:
    a, store = Attributor(CONFIG), DictStore()
    r1 = a.apply_exposures(
        store, 0, 0, [exp("u1", "treatment", 10), exp("u2", "control", 20)], stage
    )
    # u1 telemetry before its exposure is pre-exposure; u3 is not exposed yet (pending)
    r2 = a.apply_telemetry(
        store,
        0,
        0,
        [
            tel("u1", "tasks", 5, 5),
            tel("u1", "tasks", 2, 11),
            tel("u1", "tasks", 3, 12),
            tel("u2", "err", 1, 30),
            tel("u2", "err", 1, 31),
            tel("u3", "tasks", 7, 40),
        ],
    )
    assert r2.outcomes[("e", "pre_exposure")] == 1
    assert r2.outcomes[("", "pending")] == 1
    # a conflicting second assignment is counted, not applied; u3 arrives and takes pending
    r3 = a.apply_exposures(store, 0, 1, [exp("u1", "control", 50), exp("u3", "control", 39)], stage)
    assert r3.outcomes[("e", "conflicting_assignment")] == 1
    # u1's two post-exposure tasks, u2's two errors; u3's pending task when it is exposed
    assert r2.outcomes[("e", "attributed")] == 4 and r3.outcomes[("e", "attributed")] == 1
    ua = aggregation()
    state = ua.initialize()
    for r in (r1, r2, r3):
        for b in r.experiments.values():
            state = ua.update(state, b.unit_deltas())
    # truth: u1 treatment tasks=5 err=0; u2 control tasks=0 err=1; u3 control tasks=7 err=0
    assert cell(state, 0, 1, 0).n == 1 and cell(state, 0, 1, 0).sum == 5.0
    assert cell(state, 0, 0, 0).n == 2 and cell(state, 0, 0, 0).sum == 7.0
    assert cell(state, 0, 0, 0).sum_squares == 49.0
    assert cell(state, 0, 0, 1).sum == 1.0  # `any`: two error events count once
    assert store.get("u1").assignments["e"].variant == 1  # type: ignore[union-attr]


def test_replayed_message_is_skipped_exactly() -> None:
    a, store = Attributor(CONFIG), DictStore()
    a.apply_exposures(store, 0, 0, [exp("u1", "treatment", 10)], stage)
    first = a.apply_telemetry(store, 0, 7, [tel("u1", "tasks", 2, 11)])
    again = a.apply_telemetry(store, 0, 7, [tel("u1", "tasks", 2, 11)])
    assert first.experiments and not again.experiments
    assert again.outcomes[("", "replayed")] == 1
    assert store.get("u1").assignments["e"].values == [2.0, 0.0]  # type: ignore[union-attr]


class CountingStore(DictStore):
    """Records every call, to check the attributor's reads and writes per run."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[str]]] = []

    def get_many(self, unit_ids: Sequence[str]) -> list[UnitState | None]:
        self.calls.append(("get", list(unit_ids)))
        return super().get_many(unit_ids)

    def put_many(self, records: Iterable[tuple[str, UnitState]]) -> None:
        records = list(records)
        self.calls.append(("put", [u for u, _ in records]))
        super().put_many(records)


def test_a_run_reads_its_units_once_and_writes_only_those_it_changed() -> None:
    a, store = Attributor(CONFIG), CountingStore()
    a.apply_exposures(store, 0, [0, 1, 2], [exp("u1", "treatment", 10), exp("u2", "control", 10),
                                           exp("u1", "treatment", 12)], stage)  # fmt: skip
    assert store.calls == [("get", ["u1", "u2"]), ("put", ["u1", "u2"])]
    store.calls.clear()
    a.apply_telemetry(store, 0, [5, 6], [tel("u1", "tasks", 1, 11), tel("u2", "tasks", 1, 11)])
    store.calls.clear()
    # u1's message was absorbed already: u1 is read, and not written back
    a.apply_telemetry(store, 0, [5, 7, 7], [tel("u1", "tasks", 1, 11), tel("u2", "tasks", 1, 12),
                                            tel("u2", "tasks", 1, 13)])  # fmt: skip
    assert store.calls == [("get", ["u1", "u2"]), ("put", ["u2"])]


def test_stage_is_the_exposure_time_stage() -> None:
    a, store = Attributor(CONFIG), DictStore()
    r = a.apply_exposures(store, 0, 0, [exp("u1", "treatment", 150)], stage)
    assert r.experiments["e"].exposures == [(1, 1)]


def test_regression_the_stage_the_flag_service_stamped_wins_over_a_stale_history() -> None:
    """Found in `rampmon demo`: exposures of the first second after a stage change were
    labelled with the old stage by a worker whose stage history was a refresh behind, and
    SRM paused the ramp. An exposure that carries its stage keeps it."""
    a, store = Attributor(CONFIG), DictStore()
    stamped = Exposure("x", 150.0, "e", "u1", "treatment", stage=5.0)  # history says 50
    r = a.apply_exposures(store, 0, 0, [stamped, exp("u2", "treatment", 150)], stage)
    assert sorted(r.experiments["e"].exposures) == [(0, 1), (1, 1)]
    assert store.get("u1").assignments["e"].stage == 0  # type: ignore[union-attr]
    assert store.get("u2").assignments["e"].stage == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_streams_equal_numpy(seed: int) -> None:
    """Incremental per-unit moments equal numpy on the final per-unit values."""
    rng = np.random.default_rng(seed)
    a, store = Attributor(CONFIG), DictStore()
    ua = aggregation()
    state = ua.initialize()
    units = [f"u{i}" for i in range(200)]
    variants = {u: ("control", "treatment")[int(rng.integers(2))] for u in units}
    pre = {u: float(rng.poisson(3)) for u in units}
    platform = {u: ("ios", "android", "web")[int(rng.integers(3))] for u in units}
    exposures = [
        Exposure(f"x-{u}", 1.0, "e", u, variants[u], {"platform": platform[u]}, {"pre": pre[u]})
        for u in units
    ]
    r = a.apply_exposures(store, 0, 0, exposures, stage)
    state = ua.update(state, r.experiments["e"].unit_deltas())
    truth = {u: [0.0, 0.0] for u in units}
    for offset in range(1, 30):
        batch = []
        for u in rng.choice(units, 20):
            metric = ("tasks", "err")[int(rng.integers(2))]
            value = float(rng.normal(2, 1)) if metric == "tasks" else float(rng.integers(2))
            batch.append(tel(str(u), metric, value, 2.0 + offset))
            if metric == "tasks":
                truth[str(u)][0] += value
            else:
                truth[str(u)][1] = 1.0 if (truth[str(u)][1] or value) else 0.0
        r = a.apply_telemetry(store, 0, offset, batch)
        for b in r.experiments.values():
            state = ua.update(state, b.unit_deltas())
    for vi, v in enumerate(("control", "treatment")):
        members = [u for u in units if variants[u] == v]
        vals = np.array([truth[u] for u in members])
        for m in range(2):
            got = cell(state, 0, vi, m)
            assert got.n == len(vals)
            assert got.mean == pytest.approx(vals[:, m].mean(), rel=1e-12)
            assert got.variance == pytest.approx(vals[:, m].var(ddof=1), rel=1e-9)
        # the covariate column and its cross-products, as CUPED will read them
        z = np.column_stack([vals, [pre[u] for u in members]])
        np.testing.assert_allclose(state.units.cell(0, vi).gram, z.T @ z, rtol=1e-9)
        # segment slots: ios, then `other` for the undeclared android and web
        ios = np.array([platform[u] == "ios" for u in members])
        for slot, mask in ((0, ios), (1, ~ios)):
            seg = state.segments.cell(0, vi, slot, 0)
            assert seg.n == mask.sum()
            assert seg.sum == pytest.approx(vals[mask, 0].sum(), rel=1e-9, abs=1e-9)


def test_a_resent_event_id_is_counted_as_duplicate_and_applied_once() -> None:
    a, store = Attributor(CONFIG, dedup_horizon_seconds=300), DictStore()
    a.apply_exposures(store, 0, 0, [exp("u1", "treatment", 10)], stage)
    first = Telemetry("dup", 20.0, "u1", "tasks", 2.0)
    a.apply_telemetry(store, 0, 1, [first])
    # the producer re-sends it, in a later message, alone and inside a batch
    again = a.apply_telemetry(store, 0, 2, [first])
    batch = a.apply_telemetry(store, 0, 3, [Telemetry("new", 21.0, "u1", "tasks", 1.0), first])
    assert again.outcomes[("", "duplicate")] == 1 and batch.outcomes[("", "duplicate")] == 1
    assert store.get("u1").assignments["e"].values == [3.0, 0.0]  # type: ignore[union-attr]


def test_dedup_holds_before_the_exposure_too() -> None:
    a, store = Attributor(CONFIG), DictStore()
    early = Telemetry("early", 20.0, "u1", "tasks", 2.0)
    a.apply_telemetry(store, 0, 1, [early])
    a.apply_telemetry(store, 0, 2, [early])
    a.apply_exposures(store, 0, 0, [exp("u1", "treatment", 10)], stage)
    assert store.get("u1").assignments["e"].values == [2.0, 0.0]  # type: ignore[union-attr]


def test_the_dedup_horizon_is_event_time_and_bounded_per_unit() -> None:
    a, store = Attributor(CONFIG, dedup_horizon_seconds=60, dedup_max_per_unit=3), DictStore()
    a.apply_exposures(store, 0, 0, [exp("u1", "treatment", 10)], stage)
    old = Telemetry("old", 20.0, "u1", "tasks", 1.0)
    a.apply_telemetry(store, 0, 1, [old])
    a.apply_telemetry(store, 0, 2, [Telemetry("later", 100.0, "u1", "tasks", 1.0)])
    # "old" is 80 s behind the unit's newest event: past the horizon, applied again
    late = a.apply_telemetry(store, 0, 3, [old])
    assert late.outcomes[("", "duplicate")] == 0
    state = store.get("u1")
    assert state is not None and 0 < len(recent_events(state)) <= 3
    assert all(ts >= 100.0 - 60 for _, ts in recent_events(state))


def test_records_written_before_dedup_decode_with_no_recent_ids() -> None:
    old_layout = msgspec.msgpack.encode([3, 7, 9, {}, []])  # UnitState without `recent`
    state = decode_unit(old_layout)
    assert (state.partition, state.exposure_offset, state.recent) == (3, 7, [])
    assert (state.recent_ids, state.recent_ts, recent_events(state)) == ([], [], [])


def test_records_written_with_recent_pairs_keep_deduplicating() -> None:
    """Records once kept their resend ids as (crc, ts) pairs, and not always in event-time
    order; they decode into the two sorted lists, and a re-send they hold is still caught."""
    a, store = Attributor(CONFIG), DictStore()
    a.apply_exposures(store, 0, 0, [exp("u1", "treatment", 10)], stage)
    state = store.get("u1")
    assert state is not None
    pairs = [(zlib.crc32(b"b"), 30.0), (zlib.crc32(b"a"), 20.0)]
    # the record as the pair-writing version encoded it: six fields, the last the pairs
    old = msgspec.msgpack.encode(
        [state.partition, state.exposure_offset, state.telemetry_offset,
         state.assignments, [], pairs]
    )  # fmt: skip
    decoded = decode_unit(old)
    assert decoded.recent == []
    assert recent_events(decoded) == [(zlib.crc32(b"a"), 20.0), (zlib.crc32(b"b"), 30.0)]
    store.data["u1"] = old
    again = a.apply_telemetry(store, 0, 1, [Telemetry("a", 20.0, "u1", "tasks", 1.0)])
    assert again.outcomes[("", "duplicate")] == 1
    assert store.get("u1").assignments["e"].values == [0.0, 0.0]  # type: ignore[union-attr]
    assert msgspec.msgpack.decode(store.data["u1"])[5] == []  # written back without pairs


def test_a_busy_unit_packs_its_ids_and_unpacks_them_when_it_quietens() -> None:
    """Lists while a unit keeps PACK_ABOVE ids or fewer; packed above, never both; back to
    lists once the horizon leaves half of PACK_ABOVE or fewer. Resends are caught in either
    layout and across the switches, and the record round-trips in both."""
    state = UnitState(0)
    for i in range(PACK_ABOVE):
        assert not state.seen(i + 1_000, float(i), 300.0, 64)
    assert (len(state.recent_ids), state.seen_ids) == (PACK_ABOVE, b"")
    assert not state.seen(5_000, float(PACK_ABOVE), 300.0, 64)
    assert (state.recent_ids, state.recent_ts) == ([], [])
    assert len(state.seen_ids) == 4 * (PACK_ABOVE + 1)
    assert state.seen(1_000, 99.0, 300.0, 64)  # the first id, now packed
    assert decode_unit(encode_unit(state)) == state
    # 296 s later the first 12 fall out of the horizon: 5 left, half of PACK_ABOVE or fewer
    assert not state.seen(6_000, PACK_ABOVE + 296.0, 300.0, 64)
    kept = recent_events(state)
    assert [k for k, _ in kept] == [1_012, 1_013, 1_014, 1_015, 5_000, 6_000]
    assert (state.recent_ids, state.seen_ids) == ([k for k, _ in kept], b"")
    assert state.seen(5_000, 400.0, 300.0, 64)


def test_a_reader_of_the_list_layout_reads_a_packed_record_without_its_ids() -> None:
    """A rolling upgrade: a worker that knows only the lists reads a busy unit's packed
    record's assignments and offsets (msgspec ignores trailing fields) and loses only its
    resend ids; a quiet unit's record is the same to both."""

    class ListLayout(msgspec.Struct, array_like=True):
        partition: int
        exposure_offset: int
        telemetry_offset: int
        assignments: dict[str, object]
        pending: list[object]
        recent: list[object]
        recent_ids: list[int]
        recent_ts: list[float]

    quiet, busy = UnitState(2, 5, 9), UnitState(2, 5, 9)
    assert not quiet.seen(7, 20.0, 300.0, 64)
    for key in range(PACK_ABOVE + 1):
        assert not busy.seen(key, 20.0 + key, 300.0, 64)
    old = msgspec.msgpack.decode(encode_unit(quiet), type=ListLayout)
    assert (old.partition, old.exposure_offset, old.telemetry_offset) == (2, 5, 9)
    assert (old.recent_ids, old.recent_ts) == ([7], [20.0])
    old = msgspec.msgpack.decode(encode_unit(busy), type=ListLayout)
    assert (old.partition, old.exposure_offset, old.telemetry_offset) == (2, 5, 9)
    assert (old.recent_ids, old.recent_ts) == ([], [])


def test_an_id_straddling_two_kept_ids_is_not_a_resend() -> None:
    """Regression: the packed ids are searched as bytes, and the bytes of two neighbours
    can spell a third id across their boundary; only a match at a multiple of 4 counts."""
    state = UnitState(0)
    assert not state.seen(0x11223344, 1.0, 300.0, 64)
    assert not state.seen(0x55667788, 2.0, 300.0, 64)
    for key in range(PACK_ABOVE):  # enough to pack them
        assert not state.seen(key, 3.0, 300.0, 64)
    # little-endian 44 33 22 11 88 77 66 55: bytes 2..5 spell 0x77881122
    straddling = 0x77881122
    assert state.seen_ids.find(straddling.to_bytes(4, "little")) == 2
    assert not state.seen(straddling, 3.0, 300.0, 64)
    assert state.seen(straddling, 4.0, 300.0, 64)  # now kept: a re-send of it is caught


def _seen_reference(
    recent: list[tuple[int, float]], key: int, ts: float, horizon: float, most: int
) -> tuple[bool, list[tuple[int, float]]]:
    """The producer-resend check as first written (issue #5): the oracle for the faster
    one in UnitState.seen."""
    if any(k == key for k, _ in recent):
        return True, recent
    recent = [*recent, (key, ts)]
    newest = max(t for _, t in recent)
    kept = [(k, t) for k, t in recent if t >= newest - horizon]
    if len(kept) > most:
        kept = sorted(kept, key=lambda r: r[1])[-most:]
    return False, kept


def _sends(ids: st.SearchStrategy[int], min_size: int) -> st.SearchStrategy[list]:
    """(id, event time) pairs on a clock that moves on 0 to 2 s per send, or pauses 25 s,
    each event up to 4 s before or 3 s after it: some out of order, many on whole seconds,
    so that events fall exactly on the horizon's edge, and the number kept rises and falls."""
    send = st.tuples(
        ids,
        st.one_of(st.integers(-4, 3), st.floats(-4, 3, allow_nan=False)),
        # now and then a pause, after which a busy unit keeps few ids again
        st.sampled_from([0, 1, 2] * 6 + [25]),
    )

    def timed(raw: list[tuple[int, float, int]]) -> list[tuple[int, float]]:
        clock, out = 0, []
        for key, early_or_late, step in raw:
            out.append((key, float(100 + clock + early_or_late)))
            clock += step
        return out

    return st.lists(send, min_size=min_size, max_size=300).map(timed)


#: horizons short enough to drop ids as the clock moves, and one that never does; caps on
#: either side of PACK_ABOVE and of half of it
_HORIZONS = st.sampled_from([0.0, 4.0, 12.0, 20.0, 40.0, 1_000.0])
_MOST = st.sampled_from([1, 8, 9, 16, 17, 30, 64])


@given(_sends(st.integers(0, 40), PACK_ABOVE + 4), _HORIZONS, _MOST)
@settings(max_examples=300, deadline=None)
def test_resend_check_equals_the_reference(
    sends: list[tuple[int, float]], horizon: float, most: int
) -> None:
    """Each send its own message through the attributor, the record round-tripping
    through msgpack between them, as on the worker."""
    a = Attributor(CONFIG, dedup_horizon_seconds=horizon, dedup_max_per_unit=most)
    store = DictStore()
    recent: list[tuple[int, float]] = []
    for offset, (event_id, ts) in enumerate(sends):
        e = Telemetry(f"id-{event_id}", ts, "u1", "tasks", 1.0)
        key = zlib.crc32(e.event_id.encode())
        seen, recent = _seen_reference(recent, key, ts, horizon, most)
        result = a.apply_telemetry(store, 0, offset, [e])
        assert result.outcomes[("", "duplicate")] == int(seen)
        # the same entries; kept in event-time order (ties in arrival order)
        state = store.get("u1")
        assert state is not None
        assert recent_events(state) == sorted(recent, key=lambda r: r[1])


def test_a_batch_s_newest_event_time_counts_its_replayed_events() -> None:
    """A run too large for one changelog batch writes the watermark in its last: after a
    crash between them, the unit records skip part of the redelivered run, and the run
    must still move the watermark as far as it did the first time (streams.ingest)."""
    a, store = Attributor(CONFIG), DictStore()
    first = [exp("u1", "control", 150.0), exp("u2", "treatment", 50.0)]
    a.apply_exposures(store, 0, [7], first[:1], stage)  # u1 absorbed before the crash
    again = a.apply_exposures(store, 0, [7, 8], first, stage)
    assert again.outcomes[("", "replayed")] == 1 and again.max_ts == 150.0
    events = [tel("u1", "tasks", 1.0, 300.0), tel("u2", "tasks", 1.0, 200.0)]
    a.apply_telemetry(store, 0, [3], events[:1])
    again = a.apply_telemetry(store, 0, [3, 4], events)
    assert again.outcomes[("", "replayed")] == 1 and again.max_ts == 300.0


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_window_entries_equal_per_event_grouping(seed: int) -> None:
    """Window entries are split by window with numpy once per run (ExperimentBatch); the
    reference groups event by event with ``math.floor(ts / size) * size`` and skips late
    events. Each entry names its unit, and masks select the entries of some units (a run
    written in several changelog batches, Ingest._split)."""
    rng = np.random.default_rng(seed)
    size = CONFIG.windows.size_seconds
    a, store = Attributor(CONFIG, lateness_seconds=2 * size), DictStore()
    units = [f"u{i}" for i in range(30)]
    variant = {u: int(rng.integers(2)) for u in units}
    a.apply_exposures(
        store, 0, 0, [exp(u, ("control", "treatment")[variant[u]], 0.0) for u in units], stage
    )
    watermark = 6 * size
    offsets = sorted(int(o) for o in rng.integers(0, 40, 300))
    events = [
        tel(str(rng.choice(units)), ("tasks", "err")[int(rng.integers(2))],
            float(rng.integers(0, 3)), float(rng.uniform(0.0, 9 * size)))
        for _ in offsets
    ]  # fmt: skip
    result = a.apply_telemetry(store, 0, offsets, events, watermark)
    batch = result.experiments["e"]
    # every event counts in the unit's values; the late ones stay out of the windows
    on_time = [e for e in events if e.ts >= watermark - 2 * size]
    assert 0 < len(on_time) < len(events)
    assert result.outcomes[("e", "late")] == len(events) - len(on_time)
    assert result.outcomes[("e", "attributed")] == len(events)
    assert batch.event_unit == [e.unit_id for e in on_time]

    chosen = {u for u in units if rng.random() < 0.5}
    picked = np.array([u in chosen for u in batch.event_unit])
    for mask, kept in ((None, on_time), (picked, [e for e in on_time if e.unit_id in chosen])):
        got = list(batch.window_runs(np.zeros(0, bool), mask))
        expected: dict[float, list[tuple[int, int, float]]] = {}
        for e in kept:
            metric = ("tasks", "err").index(e.metric)
            row = (variant[e.unit_id], metric, e.value)
            expected.setdefault(math.floor(e.ts / size) * size, []).append(row)
        assert [start for start, _ in got] == sorted(expected)
        for start, b in got:
            assert b.variant.tolist() == [r[0] for r in expected[start]]
            assert b.metric.tolist() == [r[1] for r in expected[start]]
            assert b.value.tolist() == [r[2] for r in expected[start]]
            assert b.exposure_variant.size == 0


#: ids whose little-endian bytes overlap: any two side by side spell others across their
#: boundary (0x01000000 then 0x00000001 holds 0x00000100 at byte 1, ...)
_OVERLAPPING_IDS = st.sampled_from(
    [0, 1, 0x100, 0x10000, 0x1000000, 0x01010101, 0xFFFFFFFF, 0x00FFFF00, 0x11223344]
)


@given(
    _sends(st.one_of(_OVERLAPPING_IDS, st.integers(0, 2**32 - 1)), PACK_ABOVE + 4),
    _HORIZONS,
    _MOST,
)
@settings(max_examples=500, deadline=None)
def test_packed_ids_equal_the_reference_whatever_their_bytes(
    sends: list[tuple[int, float]], horizon: float, most: int
) -> None:
    """Both layouts and the switches between them, against the reference: as the clock
    moves, the number kept rises past PACK_ABOVE and falls back under half of it.
    Packed ids are searched as bytes, so ids whose neighbours spell other ids across their
    boundary must still be told apart exactly (the reference compares ints)."""
    state = UnitState(0)
    recent: list[tuple[int, float]] = []
    for key, ts in sends:
        seen, recent = _seen_reference(recent, key, ts, horizon, most)
        assert state.seen(key, ts, horizon, most) is seen
        assert recent_events(state) == sorted(recent, key=lambda r: r[1])
        # and what is kept survives the record's round trip
        assert recent_events(decode_unit(encode_unit(state))) == recent_events(state)
