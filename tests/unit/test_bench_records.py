"""The record-cost benchmark's records and its table (timings themselves are not tested)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.records import main, render_markdown, run, sample_record
from monitor.unitstate import decode_unit, encode_unit, recent_events


def test_a_sample_record_round_trips_with_the_ids_it_keeps() -> None:
    state = sample_record(16, metrics=5, covariates=4, segments=2)
    kept = recent_events(state)
    assert len(kept) == 16
    assert kept == sorted(kept, key=lambda pair: pair[1])  # as the dedup keeps them
    assert decode_unit(encode_unit(state)) == state


def test_records_grow_with_the_ids_they_keep_in_their_layout_and_the_table_lists_each() -> None:
    args = argparse.Namespace(kept=[0, 8, 64], number=10, repeat=1)
    results = run(args, "python -m bench.records")
    rows = results["rows"]
    assert [r["kept"] for r in rows] == [0, 8, 64]
    sizes = [r["bytes"] for r in rows]
    assert [r["layout"] for r in rows] == ["lists", "lists", "packed"]
    # as lists, an id (a msgpack uint32, 5 bytes) and a time (float64, 9 bytes) per kept
    # event; packed, 4 and 8 bytes, and past 255 bytes each field's header takes 1 more
    assert sizes[1] == sizes[0] + 8 * 14
    assert sizes[2] == sizes[0] + 64 * 12 + 2
    assert all(r["touch_us"] > 0 for r in rows)
    table = render_markdown(results)
    rows_md = [line for line in table.splitlines() if line.startswith("|")]
    assert len(rows_md) == 2 + 3  # header, rule, one row per setting
    assert rows_md[-1].startswith(f"| 64 | packed | {sizes[2]:,} |")


def test_main_writes_its_results_under_the_command_that_made_them(tmp_path: Path) -> None:
    out = tmp_path / "records.json"
    argv = ["--kept", "0,2", "--number", "5", "--repeat", "1", "--out", str(out)]
    assert main(argv) == 0
    results = json.loads(out.read_text())
    assert results["command"] == "python -m bench.records " + " ".join(argv)
    assert [r["kept"] for r in results["rows"]] == [0, 2]
