"""The columnar sketch behind the envelope floor: it must be exact before it is timed, and
the floor benchmark's table (timings themselves are not tested)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.columnar import ColumnarSketch, truth
from bench.floor import main
from streams.cli import DEFAULT_CONFIG, load_config
from streams.decode import Decoder

CONFIG = load_config(DEFAULT_CONFIG)
EXP = CONFIG.experiments[0]
VARIANTS = {v: i for i, v in enumerate(EXP.variants)}
METRICS = {m.name: i for i, m in enumerate(EXP.metrics)}
TS = 1_700_000_000.0


def _sketch(dedup: bool = False, capacity: int = 2) -> ColumnarSketch:
    # a tiny capacity: the arrays grow while units arrive
    decoder = Decoder(CONFIG, max_message_bytes=10**6)
    return ColumnarSketch(decoder, VARIANTS, METRICS, dedup=dedup, capacity=capacity)


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
@pytest.mark.parametrize("dedup", [False, True])
def test_the_sketch_holds_each_units_first_variant_and_its_sums(envelope: int, dedup: bool) -> None:
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


def test_a_redelivered_run_changes_nothing_however_it_is_split() -> None:
    exposures, telemetry = _workload()
    raws = _envelopes(telemetry, 10)
    sketch = _sketch()
    sketch.exposures(_envelopes(exposures, 10), 0)
    sketch.telemetry(raws[:20], 0)
    sketch.telemetry(raws[12:25], 12)  # a redelivery that starts inside the first run
    sketch.telemetry(raws[25:], 25)
    sketch.telemetry(raws, 0)  # and all of it again
    assert sketch.unit_values() == truth(exposures, telemetry, VARIANTS, METRICS)


def test_telemetry_before_its_units_exposure_is_dropped_by_the_sketch() -> None:
    sketch = _sketch()
    sketch.telemetry(_envelopes([_telemetry("early", "tasks", 1.0, 0)], 1), 0)
    sketch.exposures(_envelopes([_exposure("early", "control", 0)], 1), 0)
    assert sketch.unit_values() == {"early": (VARIANTS["control"], [0.0] * len(METRICS))}


def test_a_resent_event_counts_once_only_when_the_sketch_skips_resends() -> None:
    exposures = [_exposure("u", "control", 0)]
    event = _telemetry("u", "tasks", 2.0, 0)
    # the same event in two messages: a producer's re-send, not a Kafka redelivery
    raws = _envelopes([event, event], 1)
    totals = {}
    for dedup in (False, True):
        sketch = _sketch(dedup)
        sketch.exposures(_envelopes(exposures, 1), 0)
        sketch.telemetry(raws, 0)
        totals[dedup] = sketch.unit_values()["u"][1][METRICS["tasks"]]
    assert totals == {False: 4.0, True: 2.0}


def test_the_floor_table_lists_the_sketch_beside_the_record_round_trip(tmp_path: Path) -> None:
    out, readme = tmp_path / "floor.json", tmp_path / "README.md"
    readme.write_text("before\n<!-- floor:begin -->\nold\n<!-- floor:end -->\nafter\n")
    argv = ["--units", "400", "--repeat", "1", "--out", str(out), "--readme", str(readme)]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert results["command"] == "python -m bench.floor " + " ".join(argv)
    us = results["us_per_event"]
    assert {"columnar_sketch", "columnar_sketch_dedup", "record_round_trip"} <= us.keys()
    assert all(v > 0 for v in us.values())
    text = readme.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 6  # header and six steps
    assert any(row.startswith("| columnar sketch with producer re-sends") for row in rows)
