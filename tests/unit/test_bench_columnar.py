"""The columnar sketch behind the envelope floor: it must be exact before it is timed, and
the floor benchmark's table (timings themselves are not tested)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.columnar import ColumnarSketch, moments_truth, row_dtype, truth
from bench.floor import _changelog, _check_records, _recovered, main
from monitor.config import parse_config
from monitor.unitstate import UnitState
from streams.cli import DEFAULT_CONFIG, load_config
from streams.decode import Decoder

CONFIG = load_config(DEFAULT_CONFIG)
EXP = CONFIG.experiments[0]
VARIANTS = {v: i for i, v in enumerate(EXP.variants)}
METRICS = {m.name: i for i, m in enumerate(EXP.metrics)}
TS = 1_700_000_000.0


#: re-sends skipped by a set of every id (True), or by each unit's recent ids in its row
Dedup = bool | Literal["units"]
DEDUPS: list[Dedup] = [False, True, "units"]


def _sketch(
    dedup: Dedup = False,
    capacity: int = 2,
    decoder: Decoder | None = None,
    moments: bool = False,
    window_seconds: float = 60.0,
    records: bool = False,
    layout: Any = None,
) -> ColumnarSketch:
    # a tiny capacity: the arrays grow while units arrive
    decoder = decoder or Decoder(CONFIG, max_message_bytes=10**6)
    return ColumnarSketch(
        decoder, VARIANTS, METRICS, dedup=dedup is True, recent=8 if dedup == "units" else 0,
        moments=moments, records=records, layout=layout, stage=3,
        window_seconds=window_seconds, capacity=capacity,
    )  # fmt: skip


def _exposure(unit: str, variant: str, i: int) -> dict[str, Any]:
    return {
        "event_id": f"x{i}",
        "ts": TS + i,
        "experiment": EXP.name,
        "unit_id": unit,
        "variant": variant,
    }


def _telemetry(unit: str, metric: str, value: float, i: int) -> dict[str, Any]:
    return {"event_id": f"t{i}", "ts": TS + 100 + i, "unit_id": unit, "metric": metric,
            "value": value}  # fmt: skip


def _envelopes(events: list[dict[str, Any]], size: int) -> list[bytes]:
    return [orjson.dumps(events[i : i + size]) for i in range(0, len(events), size)]


def _workload() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    variants, metrics = list(VARIANTS), list(METRICS)
    exposures = [_exposure(f"u{u}", variants[u % len(variants)], u) for u in range(40)]
    telemetry = [
        _telemetry(f"u{(7 * i) % 40}", metrics[i % len(metrics)], float(i % 2), i)
        for i in range(300)
    ]
    return exposures, telemetry


@pytest.mark.parametrize("envelope", [1, 7, 100])
@pytest.mark.parametrize("dedup", DEDUPS)
def test_the_sketch_holds_each_units_first_variant_and_its_sums(
    envelope: int, dedup: Dedup
) -> None:
    exposures, telemetry = _workload()
    # a unit's later exposure to another variant does not move it, in its run or later
    second = _exposure("u0", list(VARIANTS)[1], 999)
    sketch = _sketch(dedup)
    raws = _envelopes([*exposures, second], envelope)
    sketch.exposures(raws, 0)
    sketch.exposures(_envelopes([second], 1), len(raws))
    sketch.telemetry(_envelopes(telemetry, envelope), 0)
    assert sketch.unit_values() == truth(exposures, telemetry, VARIANTS, METRICS)
    assert sketch.unit_values()["u0"][0] == VARIANTS[exposures[0]["variant"]]


@pytest.mark.parametrize("dedup", DEDUPS)
def test_a_redelivered_run_changes_nothing_however_it_is_split(dedup: Dedup) -> None:
    exposures, telemetry = _workload()
    raws = _envelopes(telemetry, 10)
    sketch = _sketch(dedup)
    sketch.exposures(_envelopes(exposures, 10), 0)
    sketch.telemetry(raws[:20], 0)
    sketch.telemetry(raws[12:25], 12)  # a redelivery that starts inside the first run
    sketch.telemetry(raws[25:], 25)
    sketch.telemetry(raws, 0)  # and all of it again
    assert sketch.unit_values() == truth(exposures, telemetry, VARIANTS, METRICS)


@pytest.mark.parametrize("dedup", DEDUPS)
def test_telemetry_before_its_units_exposure_is_dropped_by_the_sketch(dedup: Dedup) -> None:
    sketch = _sketch(dedup)
    sketch.telemetry(_envelopes([_telemetry("early", "tasks", 1.0, 0)], 1), 0)
    # two units: the second takes the last row, where a dropped event's row -1 would land
    exposed = [_exposure("other", "control", 0), _exposure("early", "control", 1)]
    sketch.exposures(_envelopes(exposed, 1), 0)
    zero = (VARIANTS["control"], [0.0] * len(METRICS))
    assert sketch.unit_values() == {"other": zero, "early": zero}


def test_a_resent_event_counts_once_only_when_the_sketch_skips_resends() -> None:
    exposures = [_exposure("u", "control", 0)]
    event = _telemetry("u", "tasks", 2.0, 0)
    # the same event in two messages: a producer's re-send, not a Kafka redelivery
    raws = _envelopes([event, event], 1)
    totals = {}
    for dedup in DEDUPS:
        sketch = _sketch(dedup)
        sketch.exposures(_envelopes(exposures, 1), 0)
        sketch.telemetry(raws, 0)
        totals[dedup] = sketch.unit_values()["u"][1][METRICS["tasks"]]
    assert totals == {False: 4.0, True: 2.0, "units": 2.0}


@pytest.mark.parametrize("dedup", [True, "units"])
def test_a_resent_event_counts_once_across_runs_and_a_new_one_still_counts(dedup: Dedup) -> None:
    sketch = _sketch(dedup)
    sketch.exposures(_envelopes([_exposure("u", "control", 0)], 1), 0)
    first = [_telemetry("u", "tasks", 2.0, i) for i in range(3)]
    sketch.telemetry(_envelopes(first, 1), 0)
    # later messages: three re-sends, then a new event that shares the run
    later = [*first, _telemetry("u", "tasks", 5.0, 3)]
    sketch.telemetry(_envelopes(later, 1), 3)
    assert sketch.unit_values()["u"][1][METRICS["tasks"]] == 11.0


def _bad_telemetry() -> list[bytes]:
    good = _telemetry("u1", "tasks", 1.0, 0)
    return [
        orjson.dumps([good, {**good, "event_id": "t1", "value": 1e9}]),  # out of bounds
        orjson.dumps([{**good, "event_id": "t2", "metric": "nope"}]),  # unknown metric
        orjson.dumps([{**good, "event_id": "t3", "experiment": EXP.name, "variant": "treatment"}]),
        orjson.dumps([{**good, "event_id": "t3a", "experiment": "nope"}]),  # tagged, unknown
        orjson.dumps([{**good, "event_id": "t3b", "variant": "treatment"}]),  # no experiment
        orjson.dumps([{**good, "event_id": "t4", "ts": "2023-11-14T22:13:20Z"}]),  # RFC 3339
        orjson.dumps([{**good, "event_id": "t5", "ts": -1.0}, {**good, "event_id": "t6"}]),
        orjson.dumps([{**good, "event_id": "t7", "unit_id": "u2", "value": 0.0}]),
        orjson.dumps({**good, "event_id": "t8"}),  # one object, not an array
        b"\n".join(orjson.dumps({**good, "event_id": f"t{i}"}) for i in (9, 10)),  # NDJSON
        orjson.dumps([{**good, "event_id": "t11", "unit_id": "ü"}]),  # valid UTF-8, not ASCII
        b'[{"event_id": "t12", "ts": 1.5, "unit_id": "u1"',  # malformed
        orjson.dumps([{k: v for k, v in good.items() if k != "value"}]),  # missing field
        orjson.dumps([{**good, "event_id": "x" * 300}]),  # a Text too long
        orjson.dumps([{**good, "event_id": f"big{i}"} for i in range(40)]),  # over the limit
        orjson.dumps([{**good, "event_id": "t13", "ts": TS + 10**7}]),  # from the future
    ]


def _bad_exposures() -> list[bytes]:
    good = _exposure("u1", "control", 0)
    return [
        orjson.dumps([good, {**good, "unit_id": "u2", "variant": "nope"}]),
        orjson.dumps([{**good, "unit_id": "u3", "experiment": "nope"}]),
        orjson.dumps([{**good, "unit_id": "u4", "stage": 5.0}]),  # a stage of the ramp
        orjson.dumps([{**good, "unit_id": "u5", "stage": 3.0}]),  # not one
        orjson.dumps([{**good, "unit_id": "u6", "ts": "2023-11-14T22:13:20Z"}]),
        orjson.dumps([{**good, "unit_id": "u6a", "ts": -1.0}]),
        orjson.dumps([{**good, "unit_id": "u7", "covariates": {"c": 1.0}}]).replace(
            b"1.0", b"1e999"
        ),  # an infinite covariate
        orjson.dumps([{**good, "unit_id": "u8", "attributes": {"a": 1}}]),
        orjson.dumps([{**good, "unit_id": "u9", "variant": "treatment"}]),
        orjson.dumps([{**good, "unit_id": "u1", "variant": "treatment"}]),  # u1 keeps control
    ]


@pytest.mark.parametrize("live", [False, True])
@pytest.mark.parametrize("dedup", DEDUPS)
def test_the_sketchs_own_screen_takes_exactly_the_events_the_decoder_takes(
    live: bool, dedup: Dedup
) -> None:
    """The sketch decodes a run with one typed decode per message and screens it in numpy;
    any doubt and the Decoder decodes the run. Message by message and as whole runs, bad
    events among good ones, it ends where the Decoder alone ends."""
    limits: dict[str, Any] = (
        {"max_age_seconds": 10**6, "max_future_seconds": 60, "clock": lambda: TS + 1000}
        if live
        else {}
    )
    exposures, telemetry = _workload()
    good_x, good_t = _envelopes(exposures, 7), _envelopes(telemetry, 7)
    bad_x, bad_t = _bad_exposures(), _bad_telemetry()
    ends = []
    for screened in (True, False):
        decoder = Decoder(CONFIG, max_message_bytes=2048, **limits)
        sketch = _sketch(dedup, decoder=decoder)
        if not screened:
            sketch._typed = lambda raws, typed: None  # type: ignore[method-assign]
        runs: list[int] = []
        for name in ("exposures_run", "telemetry_run"):
            run = getattr(decoder, name)
            setattr(decoder, name, lambda raws, run=run, runs=runs: runs.append(1) or run(raws))
        offset = {"x": 0, "t": 0}
        by_decoder = []
        for topic, raws in [("x", good_x), ("x", bad_x), ("t", good_t), ("t", bad_t)]:
            runs.clear()
            for batch in [*([raw] for raw in raws), raws]:
                apply = sketch.exposures if topic == "x" else sketch.telemetry
                apply(batch, offset[topic])
                offset[topic] += len(batch)
            by_decoder.append(len(runs))
        ends.append(sketch.unit_values())
        if screened:
            # good runs never reach the Decoder; every bad message does, and each whole run
            # of them, and a stage (good or not): only two valid exposures, a valid
            # telemetry event and (with no live limits) a time from the future pass the
            # sketch's own screen
            assert by_decoder == [0, len(bad_x) - 2 + 1, 0, len(bad_t) - 2 + live + 1]
    assert ends[0] == ends[1]


def test_the_floor_table_lists_the_sketch_beside_the_record_round_trip(tmp_path: Path) -> None:
    out, readme = tmp_path / "floor.json", tmp_path / "README.md"
    readme.write_text("before\n<!-- floor:begin -->\nSTALE\n<!-- floor:end -->\nafter\n")
    argv = ["--units", "400", "--repeat", "1", "--out", str(out), "--readme", str(readme)]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert results["command"] == "python -m bench.floor " + " ".join(argv)
    us = results["us_per_event"]
    assert {
        "columnar_sketch", "columnar_sketch_dedup", "columnar_sketch_moments",
        "record_round_trip",
    } <= us.keys()  # fmt: skip
    assert all(v > 0 for v in us.values())
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "STALE" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 13  # header and thirteen steps
    assert {
        "columnar_sketch_stats", "columnar_changelog_memory", "columnar_changelog_rocksdb",
        "columnar_once_memory", "columnar_once_rocksdb",
    } <= us.keys()  # fmt: skip
    assert any(row.startswith("| ... and the records in RocksDB too") for row in rows)
    assert any(row.startswith("| ... re-sends skipped per unit instead") for row in rows)
    assert results["parameters"]["recent"] == 8 and "columnar_sketch_recent" in us


def test_an_exposure_to_another_experiments_variant_goes_to_the_decoder() -> None:
    """Every configured variant name passes the sketch's typed decode; the variant must
    also be one of its own experiment's, as the Decoder requires."""
    config = parse_config(
        """
experiments:
  - {name: e1, variants: [c, t], control: c, stages: [50], metrics: [{name: m}]}
  - {name: e2, variants: [a, b], control: a, stages: [50], metrics: [{name: m}]}
"""
    )
    sketch = ColumnarSketch(Decoder(config), {"c": 0, "t": 1}, {"m": 0})
    exposures = [{**_exposure("u1", "c", 0), "experiment": "e1"}]
    exposures.append({**_exposure("u2", "a", 1), "experiment": "e1"})  # e2's variant
    sketch.exposures(_envelopes(exposures, 2), 0)
    assert sketch.unit_values() == {"u1": (0, [0.0])}


def _assert_moments(sketch: ColumnarSketch, want: dict[str, Any]) -> None:
    np.testing.assert_array_equal(sketch.units, want["units"])
    np.testing.assert_allclose(sketch.sums, want["sums"], rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(sketch.gram, want["gram"], rtol=1e-12, atol=1e-9)
    assert sketch.windows.keys() == want["windows"].keys()
    for start, per in want["windows"].items():
        np.testing.assert_allclose(sketch.windows[start], per, rtol=1e-12, atol=1e-9)
    assert sketch.window_exposures.keys() == want["window_exposures"].keys()
    for start, per in want["window_exposures"].items():
        np.testing.assert_array_equal(sketch.window_exposures[start], per)


def _valued_workload() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Exposures over several windows, and telemetry whose values differ by metric and
    unit, so the Gram matrix's co-moments are not all equal: continuous values for the
    metrics the config leaves unbounded above, 0 or 1 for the rest."""
    variants, metrics = list(VARIANTS), list(METRICS)
    binary = {m.name for m in EXP.metrics if m.max_value is not None and m.max_value <= 1}
    rng = np.random.default_rng(5)
    exposures = [
        {**_exposure(f"u{u}", variants[u % len(variants)], u), "ts": TS + 7.0 * u}
        for u in range(40)
    ]
    telemetry = []
    for i in range(300):
        metric = metrics[i % len(metrics)]
        value = float(rng.integers(0, 2)) if metric in binary else round(rng.gamma(2.0, 50), 3)
        event = _telemetry(f"u{(7 * i) % 40}", metric, value, i)
        telemetry.append({**event, "ts": TS + 1.7 * i})
    assert binary and len(binary) < len(metrics)
    return exposures, telemetry


@pytest.mark.parametrize("envelope", [1, 7, 100])
@pytest.mark.parametrize("dedup", DEDUPS)
def test_the_sketchs_moments_equal_numpy_on_its_units_and_events(
    envelope: int, dedup: Dedup
) -> None:
    exposures, telemetry = _valued_workload()
    sketch = _sketch(dedup, moments=True, window_seconds=60.0)
    sketch.exposures(_envelopes(exposures, envelope), 0)
    raws = _envelopes(telemetry, envelope)
    half = len(raws) // 2
    sketch.telemetry(raws[:half], 0)
    sketch.telemetry(raws[half:], half)
    want = moments_truth(exposures, telemetry, VARIANTS, METRICS, 60.0)
    assert len(want["windows"]) > 3 and len(want["window_exposures"]) > 3
    _assert_moments(sketch, want)
    got, units = sketch.unit_values(), truth(exposures, telemetry, VARIANTS, METRICS)
    assert got.keys() == units.keys()
    assert all(got[u][0] == v and got[u][1] == pytest.approx(x) for u, (v, x) in units.items())


@pytest.mark.parametrize("dedup", DEDUPS)
def test_a_redelivery_moves_no_moment(dedup: Dedup) -> None:
    exposures, telemetry = _valued_workload()
    sketch = _sketch(dedup, moments=True)
    xs, raws = _envelopes(exposures, 10), _envelopes(telemetry, 10)
    sketch.exposures(xs, 0)
    sketch.exposures(xs[1:], 1)  # exposures again: no unit counted twice
    # nor a unit exposed again by a later message, to another variant
    again = {**exposures[0], "event_id": "again", "variant": list(VARIANTS)[1]}
    sketch.exposures(_envelopes([again], 1), len(xs))
    sketch.telemetry(raws[:20], 0)
    sketch.telemetry(raws[12:], 12)  # a redelivery that starts inside the first run
    sketch.telemetry(raws, 0)
    _assert_moments(sketch, moments_truth(exposures, telemetry, VARIANTS, METRICS, 60.0))


def test_without_moments_the_sketch_keeps_none() -> None:
    exposures, telemetry = _valued_workload()
    sketch = _sketch()
    sketch.exposures(_envelopes(exposures, 10), 0)
    sketch.telemetry(_envelopes(telemetry, 10), 0)
    assert not sketch.windows and not sketch.window_exposures and not sketch.units.any()


@pytest.mark.parametrize("dedup", DEDUPS)
def test_a_table_recovered_from_the_sketchs_records_holds_every_units_row(dedup: Dedup) -> None:
    exposures, telemetry = _workload()
    sketch = _sketch(dedup, records=True)
    batches: list[bytes] = []
    write = _changelog(None, batches)
    xs, raws = _envelopes(exposures, 10), _envelopes(telemetry, 10)
    for first, run in ((0, xs[:3]), (3, xs[3:]), (1, xs[1:2])):  # the last, redelivered
        sketch.exposures(run, first)
        write(sketch.run_records)
    assert sketch.run_records == []  # a redelivered run changes no row, so writes none
    for first, end in ((0, 20), (12, 25), (25, len(raws))):  # the second starts inside
        sketch.telemetry(raws[first:end], first)
        write(sketch.run_records)
    table = _recovered(batches)
    assert table.keys() == {u.encode() for u in sketch.rows}
    dtype = sketch.row_dtype
    assert dtype == row_dtype(len(METRICS), recent=8 if dedup == "units" else 0)
    recovered = {
        k.decode(): (int(r["variant"]), r["values"].tolist())
        for k, r in ((k, np.frombuffer(v, dtype)[0]) for k, v in table.items())
    }
    assert recovered == truth(exposures, telemetry, VARIANTS, METRICS)
    # the offsets too, which make the recovered rows skip a redelivery
    _check_records(sketch, table)
    last = {k: np.frombuffer(v, dtype)[0]["telemetry_offset"] for k, v in table.items()}
    assert max(last.values()) == len(raws) - 1


def test_the_records_check_stops_on_a_row_the_changelog_lost() -> None:
    exposures, telemetry = _workload()
    sketch = _sketch(records=True)
    batches: list[bytes] = []
    write = _changelog(None, batches)
    sketch.exposures(_envelopes(exposures, 10), 0)
    write(sketch.run_records)
    raws = _envelopes(telemetry, 10)
    sketch.telemetry(raws[:10], 0)
    sketch.telemetry(raws[10:], 10)  # its records never written
    write(sketch.run_records[:0])
    with pytest.raises(SystemExit, match="disagree with its rows"):
        _check_records(sketch, _recovered(batches))


def test_rows_written_once_fill_several_changelog_batches_and_recover_whole() -> None:
    sketch = _sketch(records=True)
    exposures = [_exposure(f"unit-{u:06d}", "control", u) for u in range(30_000)]
    sketch.exposures(_envelopes(exposures, 100), 0)
    batches: list[bytes] = []
    _changelog(None, batches)(sketch.records_of(np.arange(len(sketch.rows), dtype=np.int64)))
    assert len(batches) > 1  # 30,000 records of 70 bytes: more than a 960 KiB batch
    _check_records(sketch, _recovered(batches))


def _stats_workload() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Units with covariates (one missing on some) and segment attributes (some values
    undeclared), and telemetry after every exposure with values that differ, 0 or 1 for
    the ``any`` metrics, and some units hit by several events of them."""
    variants, metrics = list(VARIANTS), list(METRICS)
    rng = np.random.default_rng(9)
    exposures = []
    for u in range(60):
        e = _exposure(f"u{u}", variants[u % len(variants)], u)
        e["covariates"] = {c: float(rng.normal(10, 3)) for c in EXP.covariates}
        if u % 5 == 0:
            del e["covariates"][EXP.covariates[0]]
        e["attributes"] = {"segment": ["new_user", "casual", "martian"][u % 3],
                           "device": ["desktop", "mobile"][u % 3 % 2]}  # fmt: skip
        if u % 4 == 0:
            del e["attributes"]["device"]  # a missing attribute: its ``other`` slot
        exposures.append(e)
    binary = {m.name for m in EXP.metrics if m.aggregation == "any"}
    telemetry = []
    for i in range(500):
        metric = metrics[i % len(metrics)]
        value = float(rng.integers(0, 2)) if metric in binary else round(rng.gamma(2.0, 50), 3)
        telemetry.append(_telemetry(f"u{(7 * i) % 60}", metric, value, i))
    assert binary
    return exposures, telemetry


@pytest.mark.parametrize("dedup", [True, "units"])
@pytest.mark.parametrize("envelope", [1, 10])
def test_the_sketch_keeps_the_workers_own_statistics_on_the_same_events(
    envelope: int, dedup: Dedup
) -> None:
    from bench.floor import _check_statistics, sum_stats
    from bench.hotpath import dict_ingest, feed
    from monitor.layout import ExperimentLayout

    exposures, telemetry = _stats_workload()
    xs, ts = _envelopes(exposures, envelope), _envelopes(telemetry, envelope)
    worker = dict_ingest(CONFIG, 1)  # one partition: every unit routed to it
    feed(worker, [("x", 0, [(None, r) for r in xs]), ("t", 0, [(None, r) for r in ts])])
    sketch = _sketch(dedup, layout=ExperimentLayout(EXP), window_seconds=10.0)
    sketch.exposures(xs, 0)
    half = len(ts) // 2
    sketch.telemetry(ts[:half], 0)
    sketch.statistics()  # a publish between runs
    sketch.telemetry(ts[half // 2 :], half // 2)  # a redelivery reaching back into the first
    want = sum_stats(worker, EXP.name)
    assert want.units.n.sum() == len(exposures)
    got = sketch.statistics()
    np.testing.assert_array_equal(got.units.n, want.units.n)
    np.testing.assert_allclose(got.units.gram, want.units.gram, rtol=1e-12, atol=1e-9)
    np.testing.assert_array_equal(got.segments.n, want.segments.n)
    np.testing.assert_allclose(got.segments.sum_squares, want.segments.sum_squares, rtol=1e-12)
    assert got.sketches == want.sketches and got.sketches[0].counts.sum() > 0
    # and the floor's own check agrees (windows included)
    _check_statistics(sketch, want, moments_truth(exposures, telemetry, VARIANTS, METRICS, 10.0))
    # an ``any`` metric is 0 or 1 per unit, though units had several events of value 1
    anys = [i for i, m in enumerate(EXP.metrics) if m.aggregation == "any"]
    assert set(np.unique(sketch.values[: len(sketch.rows), anys])) == {0.0, 1.0}


def test_the_statistics_check_stops_on_a_unit_the_sketch_counted_twice() -> None:
    from bench.floor import _check_statistics, sum_stats
    from bench.hotpath import dict_ingest, feed
    from monitor.layout import ExperimentLayout

    exposures, telemetry = _stats_workload()
    xs, ts = _envelopes(exposures, 10), _envelopes(telemetry, 10)
    worker = dict_ingest(CONFIG, 1)
    feed(worker, [("x", 0, [(None, r) for r in xs]), ("t", 0, [(None, r) for r in ts])])
    sketch = _sketch(dedup=True, layout=ExperimentLayout(EXP), window_seconds=10.0)
    sketch.exposures(xs, 0)
    sketch.telemetry(ts, 0)
    sketch.telemetry_offset[:] = -1  # forget what the rows absorbed: the redelivery counts
    sketch.seen.clear()
    sketch.telemetry(ts[:3], 0)
    want = moments_truth(exposures, telemetry, VARIANTS, METRICS, 10.0)
    with pytest.raises(SystemExit, match="disagrees with the worker"):
        _check_statistics(sketch, sum_stats(worker, EXP.name), want)


def _per_unit(slots: int, horizon: float) -> ColumnarSketch:
    return ColumnarSketch(
        Decoder(CONFIG, max_message_bytes=10**6), VARIANTS, METRICS, recent=slots,
        horizon=horizon, capacity=2,
    )  # fmt: skip


def _workers_sums(telemetry: list[dict[str, Any]], horizon: float, most: int) -> dict[str, float]:
    """Each unit's ``tasks`` sum with the re-sends the worker's records skip
    (:meth:`UnitState.seen`), event by event."""
    states: dict[str, UnitState] = {}
    sums: dict[str, float] = {}
    for e in telemetry:
        state = states.setdefault(e["unit_id"], UnitState(0))
        sums.setdefault(e["unit_id"], 0.0)
        if not state.seen(zlib.crc32(e["event_id"].encode()), e["ts"], horizon, most):
            sums[e["unit_id"]] += e["value"]
    return sums


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_per_unit_resend_slots_skip_what_the_workers_unit_records_skip(data: Any) -> None:
    """Re-sent ids (a small pool, so many repeat), in runs and envelopes of any size, the
    same unit's events anywhere in a run: with slots for all a unit's events the sketch
    skips exactly the events the worker's records skip."""
    units = [f"u{i}" for i in range(data.draw(st.integers(1, 4)))]
    steps = data.draw(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=1, max_size=50))
    telemetry = [
        {"event_id": f"e{data.draw(st.integers(0, 12))}", "ts": TS + 100 + sum(steps[: i + 1]),
         "unit_id": data.draw(st.sampled_from(units)), "metric": "tasks",
         "value": float(data.draw(st.integers(1, 9)))}
        for i in range(len(steps))
    ]  # fmt: skip
    sketch = _per_unit(len(telemetry), math.inf)
    sketch.exposures(_envelopes([_exposure(u, "control", i) for i, u in enumerate(units)], 1), 0)
    offset = i = 0
    while i < len(telemetry):
        end = i + data.draw(st.integers(1, 12))
        raws = _envelopes(telemetry[i:end], data.draw(st.integers(1, 4)))
        sketch.telemetry(raws, offset)
        offset, i = offset + len(raws), end
    got = {u: v[METRICS["tasks"]] for u, (_, v) in sketch.unit_values().items()}
    want = _workers_sums(telemetry, math.inf, len(telemetry))
    assert got == {u: want.get(u, 0.0) for u in units}


@pytest.mark.parametrize(
    ("slots", "sent", "want"),
    [
        # 2 slots: an id three events back is forgotten and counts; one kept is skipped
        (2, [("a", 0, 1), ("b", 1, 2), ("c", 2, 4), ("a", 3, 8), ("c", 4, 16)], 1 + 2 + 4 + 8),
        # slots to spare: an id older than the 300 s horizon of the unit's newest event is
        # forgotten and counts; one within it is skipped
        (8, [("a", 0, 1), ("b", 400, 2), ("a", 401, 4), ("b", 402, 8)], 1 + 2 + 4),
    ],
)
def test_a_resend_out_of_the_slots_or_past_the_horizon_counts_as_the_workers_does(
    slots: int, sent: list[tuple[str, float, float]], want: float
) -> None:
    """One event a run: the order in which the worker's records see them, exactly."""
    telemetry = [
        {"event_id": i, "ts": TS + 100 + dt, "unit_id": "u", "metric": "tasks", "value": v}
        for i, dt, v in sent
    ]
    sketch = _per_unit(slots, 300.0)
    sketch.exposures(_envelopes([_exposure("u", "control", 0)], 1), 0)
    for offset, event in enumerate(telemetry):
        sketch.telemetry(_envelopes([event], 1), offset)
    assert _workers_sums(telemetry, 300.0, slots)["u"] == want
    assert sketch.unit_values()["u"][1][METRICS["tasks"]] == want


def test_an_empty_slot_is_no_kept_id(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh unit's slots hold id 0: an event whose id's crc32 is 0 is not a re-send
    (regression: an empty slot's time of -inf was within the horizon of a newest of -inf)."""
    import bench.columnar

    monkeypatch.setattr(
        bench.columnar, "crc32", lambda raw: 0 if raw == b"zero" else zlib.crc32(raw)
    )
    sketch = _per_unit(4, 300.0)
    sketch.exposures(_envelopes([_exposure("u", "control", 0)], 1), 0)
    event = {**_telemetry("u", "tasks", 3.0, 0), "event_id": "zero"}
    sketch.telemetry(_envelopes([event], 1), 0)
    sketch.telemetry(_envelopes([event], 1), 1)  # its re-send
    assert sketch.unit_values()["u"][1][METRICS["tasks"]] == 3.0


def test_the_records_check_stops_on_a_row_whose_recent_ids_were_lost() -> None:
    exposures, telemetry = _workload()
    sketch = _sketch("units", records=True)
    batches: list[bytes] = []
    write = _changelog(None, batches)
    sketch.exposures(_envelopes(exposures, 10), 0)
    write(sketch.run_records)
    sketch.telemetry(_envelopes(telemetry, 10), 0)
    write(sketch.run_records)
    table = _recovered(batches)
    _check_records(sketch, table)
    key = next(iter(table))
    row = np.frombuffer(table[key], sketch.row_dtype).copy()
    assert row["recent_kept"][0] > 0
    row["recent_ids"] = 0  # a record that kept the values but not the ids
    with pytest.raises(SystemExit, match="disagree with its rows"):
        _check_records(sketch, {**table, key: row.tobytes()})


def test_a_sketch_skips_resends_one_way_only() -> None:
    with pytest.raises(ValueError, match="by a set"):
        ColumnarSketch(Decoder(CONFIG), VARIANTS, METRICS, dedup=True, recent=4)
