"""What a unit record costs on the hot path, by the number of recent event ids it keeps.

Every telemetry event's unit record is read (msgpack decode), checked for a producer's
re-send (:meth:`monitor.unitstate.UnitState.seen`, which remembers the event's id) and
written back (msgpack encode) once per run. The record keeps the ids and times of the
unit's events of the last ``dedup_horizon_seconds`` (300 s), at most 64: as two lists
while they are :data:`monitor.unitstate.PACK_ABOVE` (16) or fewer, packed into bytes
above. The throughput benchmark's units send about 4 events in 20 minutes, so their
records keep one or two; a unit that sends an event a second keeps 64. This benchmark
measures what that costs per touch, in one process, on records shaped by the deploy
config's experiment (its metrics, covariates and segment attributes)::

    .venv/bin/python -m bench.records --readme bench/README.md

(a few seconds.) Each figure is the best of ``--repeat`` timings of ``--number`` calls.
A touch is timed as the hot path does it, on a run of 100 records: ``decode_units``,
``seen`` of a new event on each, ``encode_units``; the decode and encode columns time
those calls alone, on the same 100 records.
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

#: a new event's id
NEW_ID = zlib.crc32(b"an event the unit has not sent before")
#: the worker's defaults: RAMPMON_DEDUP_HORIZON_SECONDS, and the Attributor's cap
HORIZON, MOST = 300.0, 64
#: records per timed call, as in a run of the hot path (per-call costs spread over them)
RUN = 100


def sample_record(kept: int, metrics: int, covariates: int, segments: int) -> Any:
    """A unit record of one experiment that has kept ``kept`` recent event ids, 1 s apart,
    in the layout the dedup check leaves them in."""
    from monitor.unitstate import Assignment, UnitState

    assignment = Assignment(
        1, 3, 1.7e9, [float(m) + 0.5 for m in range(metrics)],
        [float(c) + 0.25 for c in range(covariates)], list(range(segments)),
    )  # fmt: skip
    state = UnitState(0, 1_000, 2_000, {"experiment": assignment})
    for i in range(kept):
        state.seen(zlib.crc32(f"event-{i}".encode()), 1.7e9 + 10.0 + i, HORIZON, MOST)
    return state


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from monitor.unitstate import decode_units, encode_unit, encode_units
    from streams.cli import DEFAULT_CONFIG, load_config

    experiment = load_config(DEFAULT_CONFIG).experiments[0]
    shape = (len(experiment.metrics), len(experiment.covariates), len(experiment.segments))
    scratch = bytearray()
    rows = []
    for kept in args.kept:
        state = sample_record(kept, *shape)
        raw = encode_unit(state)
        raws = [raw] * RUN
        # the new event comes a second after the record's newest, as from a busy unit
        ts = 1.7e9 + 10.0 + kept

        def best(fn: Any) -> float:
            timeit.timeit(fn, number=args.number)  # warm: the first row ran slow without
            timings = timeit.repeat(fn, number=args.number, repeat=args.repeat)
            return min(timings) / args.number / RUN * 1e6

        def touch(raws: list[bytes] = raws, ts: float = ts) -> None:
            states = decode_units(raws)
            for s in states:
                s.seen(NEW_ID, ts, HORIZON, MOST)  # type: ignore[union-attr]
            encode_units(states, scratch)  # type: ignore[arg-type]

        states = [state] * RUN
        rows.append(
            {"kept": kept, "layout": "packed" if state.seen_ids else "lists",
             "bytes": len(raw), "decode_us": best(lambda raws=raws: decode_units(raws)),
             "encode_us": best(lambda states=states: encode_units(states, scratch)),
             "touch_us": best(touch)}
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
            "records_per_call": RUN,
        },
        "rows": rows,
    }


def render_markdown(r: dict[str, Any]) -> str:
    p, rows = r["parameters"], r["rows"]
    base = rows[0]["touch_us"]
    lines = [
        f"{r['date'][:10]}, commit {r['code']['commit'][:10]}, `{r['command']}`: records of "
        f"`{p['experiment']}` ({p['metrics']} metrics, {p['covariates']} covariates, "
        f"{p['segments']} segment attributes), per record, best of {p['repeat']} x "
        f"{p['number']:,} calls on {p['records_per_call']} records.",
        "",
        "| recent ids kept | layout | record bytes | decode µs | encode µs | per touch µs "
        f"| vs {rows[0]['kept']} kept |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {x['kept']} | {x['layout']} | {x['bytes']:,} | {x['decode_us']:.2f} | "
        f"{x['encode_us']:.2f} | {x['touch_us']:.2f} | {x['touch_us'] / base:.1f}x |"
        for x in rows
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.records", description=__doc__)
    parser.add_argument(
        "--kept",
        type=lambda s: [int(k) for k in s.split(",")],
        default=[2, 8, 15, 17, 32, 64],
        help="comma-separated numbers of recent ids; the first is the reference",
    )
    parser.add_argument("--number", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--readme", type=Path)
    args = parser.parse_args(argv)
    return finish("records", args, argv, run, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
