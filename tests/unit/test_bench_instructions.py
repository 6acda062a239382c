"""The instruction-count benchmark's helpers: valgrind's output, the recording, the replay.

The replay runs here without valgrind, on this tree's code: it must keep working with
``Ingest``'s API, and produce the statistics the worker would.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import orjson
import pytest

from bench.hotpath import replay
from bench.instructions import best_steady_pass, collected, cpu_seconds, record
from bench.throughput import ROOT, paired_ratios
from monitor.unitstate import decode_unit, recent_events
from streams.windowrecords import is_unit_key


def test_the_instruction_count_is_read_from_callgrinds_summary() -> None:
    stderr = (
        "==4002== Callgrind, a call-graph generating cache profiler\n"
        "==4002== Events    : Ir\n"
        "==4002== Collected : 16560452830\n"
        "==4002== \n"
        "==4002== I   refs:      16,560,452,830\n"
    )
    assert collected(stderr) == 16_560_452_830


@pytest.mark.parametrize("stderr", ["", "==1== Collected : 1\n==2== Collected : 2\n"])
def test_no_single_count_is_an_error(stderr: str) -> None:
    with pytest.raises(RuntimeError, match="Collected"):
        collected(stderr)


@pytest.mark.parametrize("envelope", [1, 100])
def test_a_recording_replays_every_event_of_its_partition(envelope: int) -> None:
    recording, events = record(
        units=400, seed=3, envelope=envelope, run=7, partition=1, snapshot_every=300
    )
    runs, counted, every = recording
    assert counted == events > 0 and every == max(1, 300 // envelope)
    assert {(topic, p) for topic, p, _ in runs} == {("x", 1), ("t", 1)}
    assert all(len(messages) <= 7 for _, _, messages in runs)
    ingest, snapshots = replay(recording)
    messages = {t: sum(len(m) for topic, _, m in runs if topic == t) for t in ("x", "t")}
    assert {t: ingest.last_offset[(t, 1)] + 1 for t in ("x", "t")} == messages
    exposures = sum(
        len(orjson.loads(value)) if envelope > 1 else 1
        for topic, _, m in runs
        if topic == "x"
        for _, value in m
    )
    # one exposure per unit: every unit of the partition has a record, and the last
    # snapshot counts each of them once
    units = [k for k in ingest.units_table.data if is_unit_key(k)]
    assert len(units) == exposures
    assert {s.partition for s in snapshots} == {1}
    assert int(snapshots[-1].stats.units.n.sum()) == exposures


def test_timed_rounds_compare_each_round_and_take_the_median() -> None:
    # the machine ran slow in the second round: both sides alike
    median, ratios = paired_ratios([1.0, 2.0, 1.0], [0.9, 1.9, 1.2])
    assert ratios == pytest.approx([0.9, 0.95, 1.2])
    assert median == pytest.approx(0.95)


def test_the_best_timed_pass_leaves_out_the_first_and_anything_else_printed() -> None:
    stdout = "pass-cpu-seconds 0.5\nsome warning\npass-cpu-seconds 2.0\npass-cpu-seconds 1.5\n"
    assert best_steady_pass(stdout) == 1.5
    with pytest.raises(RuntimeError, match="needs 2"):
        best_steady_pass("pass-cpu-seconds 0.5\n")


def test_a_timed_run_of_this_tree_reports_a_steady_pass(tmp_path: Path) -> None:
    recording, _ = record(units=200, seed=3, envelope=1, run=50, partition=0, snapshot_every=100)
    path = tmp_path / "recording.pickle"
    path.write_bytes(pickle.dumps(recording))
    assert 0.0 < cpu_seconds(ROOT, path, passes=3) < 60.0


def test_a_busy_recording_sends_each_telemetry_event_as_many_with_their_own_ids() -> None:
    quiet, quiet_events = record(
        units=200, seed=3, envelope=1, run=50, partition=0, snapshot_every=100
    )
    busy, busy_events = record(
        units=200, seed=3, envelope=1, run=50, partition=0, snapshot_every=100, busy=5
    )

    def telemetry(recording: tuple) -> list[dict]:
        return [orjson.loads(v) for topic, _, m in recording[0] if topic == "t" for _, v in m]

    sent, expanded = telemetry(quiet), telemetry(busy)
    assert len(expanded) == 5 * len(sent) and busy_events - quiet_events == 4 * len(sent)
    assert len({e["event_id"] for e in expanded}) == len(expanded)
    assert [e["ts"] for e in expanded] == sorted(e["ts"] for e in expanded)
    ingest, _ = replay(busy)
    # nothing is a re-send, and a unit keeps its expanded events' ids
    outcomes = {
        sample.labels["outcome"]: sample.value
        for metric in ingest.metrics.attribution.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
    assert outcomes["attributed"] > 0 and outcomes.get("duplicate", 0) == 0
    kept = max(
        len(recent_events(decode_unit(raw)))
        for key, raw in ingest.units_table.data.items()
        if is_unit_key(key)
    )
    assert kept >= 5
