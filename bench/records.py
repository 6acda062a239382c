"""What a unit record costs on the hot path, by the number of recent event ids it keeps.

Every telemetry event's unit record is read (msgpack decode), checked for a producer's
re-send (a scan of the unit's recent event ids, :meth:`monitor.attribution.Attributor._seen`)
and written back (msgpack encode) once per run. The record keeps the ids and times of the
unit's events of the last ``dedup_horizon_seconds`` (300 s), at most 64. The throughput
benchmark's units send about 4 events in 20 minutes, so their records keep one or two; a
unit that sends an event a second keeps 64, and its record costs several times more per
touch. This benchmark measures that cost, in one process, on records shaped by the deploy
config's experiment (its metrics, covariates and segment attributes)::

    .venv/bin/python -m bench.records --readme bench/README.md

(about 20 seconds.) Each figure is the best of ``--repeat`` timings of ``--number`` calls;
the encode is timed as the hot path encodes, ``encode_units`` on 100 records per call.
"""

from __future__ import annotations

import argparse
import sys
import timeit
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.readme import finish
from bench.throughput import results_header

__all__ = ["main", "render_markdown", "run", "sample_record"]

NEW_ID = zlib.crc32(b"an event the unit has not sent before")
#: records per encode_units call in the encode timing (its per-call cost spread over them)
RUN = 100


def sample_record(kept: int, metrics: int, covariates: int, segments: int) -> Any:
    """A unit record of one experiment with ``kept`` recent event ids, 1 s apart."""
    from monitor.unitstate import Assignment, UnitState

    assignment = Assignment(
        1, 3, 1.7e9, [float(m) + 0.5 for m in range(metrics)],
        [float(c) + 0.25 for c in range(covariates)], list(range(segments)),
    )  # fmt: skip
    state = UnitState(0, 1_000, 2_000, {"experiment": assignment})
    state.recent_ids = [zlib.crc32(f"event-{i}".encode()) for i in range(kept)]
    state.recent_ts = [1.7e9 + 10.0 + i for i in range(kept)]
    return state


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from monitor.unitstate import decode_unit, encode_unit, encode_units
    from streams.cli import DEFAULT_CONFIG, load_config

    experiment = load_config(DEFAULT_CONFIG).experiments[0]
    shape = (len(experiment.metrics), len(experiment.covariates), len(experiment.segments))
    scratch = bytearray()
    rows = []
    for kept in args.kept:
        state = sample_record(kept, *shape)
        raw = encode_unit(state)
        ids = state.recent_ids

        def best(fn: Any) -> float:
            timings = timeit.repeat(fn, number=args.number, repeat=args.repeat)
            return min(timings) / args.number * 1e6

        decode = best(lambda raw=raw: decode_unit(raw))
        # as the hot path encodes a run's records: one call for many, through one buffer
        batch = [state] * RUN
        encode = best(lambda batch=batch: encode_units(batch, scratch)) / RUN
        # a new event's id: the scan reads the whole list, as for most events
        scan = best(lambda ids=ids: NEW_ID in ids)
        rows.append(
            {"kept": kept, "bytes": len(raw), "decode_us": decode, "encode_us": encode,
             "scan_us": scan, "touch_us": decode + encode + scan}
        )  # fmt: skip
    return {
        **results_header(command),
        "parameters": {
            "experiment": experiment.name,
            "metrics": shape[0],
            "covariates": shape[1],
            "segments": shape[2],
            "number": args.number,
            "repeat": args.repeat,
        },
        "rows": rows,
    }


def render_markdown(r: dict[str, Any]) -> str:
    p, rows = r["parameters"], r["rows"]
    base = rows[0]["touch_us"]
    lines = [
        f"{r['date'][:10]}, commit {r['code']['commit'][:10]}, `{r['command']}`: records of "
        f"`{p['experiment']}` ({p['metrics']} metrics, {p['covariates']} covariates, "
        f"{p['segments']} segment attributes), best of {p['repeat']} x {p['number']:,} calls.",
        "",
        "| recent ids kept | record bytes | decode µs | encode µs | id scan µs | per touch µs "
        f"| vs {rows[0]['kept']} kept |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {x['kept']} | {x['bytes']:,} | {x['decode_us']:.2f} | {x['encode_us']:.2f} | "
        f"{x['scan_us']:.3f} | {x['touch_us']:.2f} | {x['touch_us'] / base:.1f}x |"
        for x in rows
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.records", description=__doc__)
    parser.add_argument(
        "--kept",
        type=lambda s: [int(k) for k in s.split(",")],
        default=[2, 8, 16, 32, 64],
        help="comma-separated numbers of recent ids; the first is the reference",
    )
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--readme", type=Path)
    args = parser.parse_args(argv)
    return finish("records", args, argv, run, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
