"""Where the envelope target's budget goes: the worker's unavoidable steps, in process.

The envelope target is 80% of the raw decode rate of the same events, so rampmon may spend
1.25 times what ``json.loads`` spends per event, everything included. This benchmark
measures, on the same events (seed 000's units, envelopes of 100 events of one partition,
runs of ``--run`` envelopes as a fetch delivers them), in one process and with no broker:

1. ``json.loads`` of every envelope: the target's baseline;
2. the worker's own decode (:class:`streams.decode.Decoder`: msgspec typed decode plus
   validation);
3. the **unit record round trip** alone: for every unit a run touches, its record is read
   from a dict, msgpack-decoded, msgpack-encoded and written back (the records as they
   stand at the end of the stream, a unit's steady state). This is the floor of
   exactness under redelivery (README "State and exactness"): the record carries the unit's
   applied offsets and values in one table value, so each run must read and write it;
4. a sketch of another store, units as numpy rows (:mod:`bench.columnar`), without the
   skip of producer re-sends, with it by a set of every id (which grows with the events
   and a restart loses: not a worker's option), and with it as a worker must, each unit
   keeping its last ``--recent`` ids and their times in its row (and so in its record),
   then with that skip plus the statistics' and the windows' moments, each checked
   against the truth before it is timed: the floor of a design without per-unit msgpack
   records. Every row below it skips re-sends per unit;
5. that sketch with the worker's own statistics instead of its moments (the worker's
   unit-stats aggregation fed its changed rows, each changed unit once a publish), checked
   equal to the worker's statistics on the same events;
6. that sketch writing the unit records a Faust table recovers it from: a record per unit
   each run changes (its packed row, keyed by the unit, which a compacted changelog
   keeps), appended to one changelog batch a run by aiokafka's own record batch builder
   (its C extension, called directly: less than the worker's
   :class:`streams.changelog.ChangelogBatcher` pays through aiokafka's wrapper), or each
   unit's record written once after the whole drain (the fewest records a changelog of
   units can take). In memory the rows are the store, so the changelog is all it writes;
   the production store, RocksDB opened as the worker opens it, takes them in one write
   batch as well. Before it is timed, a table recovered from the batches, and a RocksDB
   store of the check's own, must each hold every unit's row as the sketch ends. The
   worker's window and watermark records, which share those batches, are left out;
7. rampmon's whole per-run path, :meth:`streams.ingest.Ingest.process_run` on dict-backed
   tables (decode, routing, attribution, statistics, windows; no Kafka, no Faust).

Each figure is CPU time per event on the calling thread, the best of ``--repeat`` passes;
the garbage collector is tuned as the worker tunes it (:mod:`streams.gctune`). Run::

    .venv/bin/python -m bench.floor --readme bench/README.md

(about 1 minute on 2 cores.)
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from bench.columnar import ColumnarSketch, moments_truth, truth
from bench.hotpath import Run, dict_ingest, feed
from bench.readme import finish
from bench.throughput import EXPERIMENT, generate, results_header
from monitor.layout import ExperimentLayout
from monitor.unitstats import ExperimentStats

__all__ = ["main", "render_markdown"]

#: every unit's stage in the sketch: :func:`bench.hotpath.dict_ingest` puts every exposure
#: there (the 50% stage), so the worker's statistics are comparable
STAGE = 3


def _cpu(fn: Callable[[], Any], repeat: int) -> float:
    """The best of ``repeat`` calls, in CPU time of the calling thread: the one Python
    thread that holds a worker back. RocksDB flushes and compacts on threads of its own."""
    best = math.inf
    for _ in range(repeat):
        gc.collect()
        t0 = time.thread_time()
        fn()
        best = min(best, time.thread_time() - t0)
    return best


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    import numpy as np
    import orjson

    from monitor.unitstate import decode_unit, encode_unit
    from streams import gctune
    from streams.cli import DEFAULT_CONFIG, load_config
    from streams.decode import Decoder
    from streams.ingest import Ingest
    from streams.producer import partition_of
    from streams.settings import Settings
    from streams.windowrecords import is_unit_key

    config = load_config(DEFAULT_CONFIG)
    exposures, telemetry, _ = generate(args.units, args.seed, args.duration)
    runs: list[tuple[str, int, list[bytes], list[list[str]]]] = []
    for topic, events in (("x", exposures), ("t", telemetry)):
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for e in events:
            by_partition.setdefault(partition_of(e["unit_id"], args.partitions), []).append(e)
        for p, evs in sorted(by_partition.items()):
            per_run = args.envelope * args.run
            for i in range(0, len(evs), per_run):
                chunk = evs[i : i + per_run]
                envs = [chunk[j : j + args.envelope] for j in range(0, len(chunk), args.envelope)]
                runs.append(
                    (topic, p, [orjson.dumps(x) for x in envs], [e["unit_id"] for e in chunk])
                )
    n = len(exposures) + len(telemetry)
    # as the worker tunes it: each tree's own default
    gctune.tune(Settings.model_fields["gc_gen0_threshold"].default)

    unkeyed: list[Run] = [(topic, p, [(None, raw) for raw in raws]) for topic, p, raws, _ in runs]

    def whole() -> Ingest:
        worker: Ingest = dict_ingest(config, args.partitions)
        feed(worker, unkeyed)
        return worker

    done = whole()
    records = {k.decode(): v for k, v in done.units_table.data.items() if is_unit_key(k)}
    touches = sum(len(set(units)) for _, _, _, units in runs)

    def json_loads() -> None:
        for _, _, raws, _ in runs:
            for raw in raws:
                json.loads(raw)

    decoder = Decoder(config, max_message_bytes=10**7)

    def rampmon_decode() -> None:
        for topic, _, raws, _ in runs:
            decode = decoder.exposures if topic == "x" else decoder.telemetry
            for raw in raws:
                decode(raw)

    def record_round_trip() -> None:
        table = dict(records)
        for _, _, _, units in runs:
            for unit in dict.fromkeys(units):
                raw = table.get(unit)
                state = decode_unit(raw) if raw else None
                if state is not None:
                    table[unit] = encode_unit(state)

    exp = next(e for e in config.experiments if e.name == EXPERIMENT)
    variants = {v: i for i, v in enumerate(exp.variants)}
    metric_rows = {m.name: i for i, m in enumerate(exp.metrics)}

    window_seconds = config.windows.size_seconds

    layout = ExperimentLayout(exp)

    # the worker's re-send horizon; slots enough for every unit of this drain, so that the
    # sketch skips exactly what the worker (64 ids a unit) would
    horizon = Settings.model_fields["dedup_horizon_seconds"].default
    most = max(Counter(e["unit_id"] for e in telemetry).values(), default=0)
    if most > args.recent:
        raise SystemExit(f"a unit has {most} telemetry events: --recent {args.recent} is short")

    def columnar(
        dedup: bool | Literal["units"],
        moments: bool = False,
        sink: Callable[[Records], None] | None = None,
        stats: bool = False,
    ) -> Callable[[], ColumnarSketch]:
        """A pass of the sketch; ``dedup``: re-sends skipped by a set of every id (True) or
        by each unit's recent ids in its row ("units"); ``stats``: with the worker's
        statistics, applied once at the end of the drain (the worker applies them once a
        publish, about a second, and the drain takes less at the target's rate)."""

        def one_pass() -> ColumnarSketch:
            sketch = ColumnarSketch(
                decoder, variants, metric_rows, dedup=dedup is True,
                recent=args.recent if dedup == "units" else 0, horizon=horizon,
                moments=moments, records=sink is not None, layout=layout if stats else None,
                stage=STAGE, window_seconds=window_seconds,
            )  # fmt: skip
            next_offset: dict[tuple[str, int], int] = {}
            for topic, p, raws, _ in runs:
                first = next_offset.get((topic, p), 0)
                apply = sketch.exposures if topic == "x" else sketch.telemetry
                apply(raws, first)
                next_offset[(topic, p)] = first + len(raws)
                if sink is not None:
                    sink(sketch.run_records)
            if stats:
                sketch.statistics()
            return sketch

        return one_pass

    def written_once(store: Any | None, batches: list[bytes] | None = None) -> Callable[[], Any]:
        """The sketch with its rows written once, after the whole drain: the fewest
        records a changelog of units could take (a commit only at the end)."""
        sink = _changelog(store, batches)

        def one_pass() -> ColumnarSketch:
            sketch = columnar("units", stats=True)()
            sink(sketch.records_of(np.arange(len(sketch.rows), dtype=np.int64)))
            return sketch

        return one_pass

    # a lower bound is worth something only if the sketch gets the statistics right
    expected = truth(exposures, telemetry, variants, metric_rows)
    dedups: tuple[bool | Literal["units"], ...] = (False, True, "units")
    for dedup in dedups:
        got = columnar(dedup)().unit_values()
        if got.keys() != expected.keys() or any(
            got[u][0] != v
            or not all(math.isclose(a, b, abs_tol=1e-9) for a, b in zip(got[u][1], s, strict=True))
            for u, (v, s) in expected.items()
        ):
            raise SystemExit(f"columnar sketch (dedup={dedup}) disagrees with the truth")
    _check_moments(
        columnar("units", moments=True)(),
        moments_truth(exposures, telemetry, variants, metric_rows, window_seconds),
    )
    # the worker's statistics, as the worker itself keeps them on the same events
    _check_statistics(
        columnar("units", stats=True)(),
        sum_stats(done, EXPERIMENT),
        moments_truth(exposures, telemetry, variants, metric_rows, window_seconds),
    )
    # what the records are worth: a table recovered from the changelog batches, and the
    # RocksDB store, hold every unit's row as the sketch ends. Each pass checks a store
    # of its own, or one that wrote nothing would pass on the rows the other left
    scratch = tempfile.TemporaryDirectory(prefix="rampmon-floor-")
    for i, pass_ in enumerate((columnar, written_once)):
        built: list[bytes] = []
        fresh = _rocksdb(Path(scratch.name) / f"check-{i}")
        checked = (
            columnar("units", sink=_changelog(fresh, built), stats=True)()
            if pass_ is columnar
            else written_once(fresh, built)()
        )
        _check_records(checked, _recovered(built))
        _check_records(checked, fresh)
        fresh.close()
        del checked, built
    rocksdb = _rocksdb(Path(scratch.name) / "timed")

    seconds = {
        "json_loads": _cpu(json_loads, args.repeat),
        "rampmon_decode": _cpu(rampmon_decode, args.repeat),
        "record_round_trip": _cpu(record_round_trip, args.repeat),
        "columnar_sketch": _cpu(columnar(False), args.repeat),
        "columnar_sketch_dedup": _cpu(columnar(True), args.repeat),
        "columnar_sketch_recent": _cpu(columnar("units"), args.repeat),
        "columnar_sketch_moments": _cpu(columnar("units", moments=True), args.repeat),
        "columnar_sketch_stats": _cpu(columnar("units", stats=True), args.repeat),
        "columnar_changelog_memory": _cpu(
            columnar("units", sink=_changelog(None), stats=True), args.repeat
        ),
        "columnar_changelog_rocksdb": _cpu(
            columnar("units", sink=_changelog(rocksdb), stats=True), args.repeat
        ),
        "columnar_once_memory": _cpu(written_once(None), args.repeat),
        "columnar_once_rocksdb": _cpu(written_once(rocksdb), args.repeat),
        "process_run": _cpu(whole, args.repeat),
    }
    rocksdb.close()
    scratch.cleanup()
    per_event = {k: v / n * 1e6 for k, v in seconds.items()}
    return {
        **results_header(command),
        "parameters": {
            "units": args.units,
            "seed": args.seed,
            "partitions": args.partitions,
            "envelope": args.envelope,
            "run_envelopes": args.run,
            "repeat": args.repeat,
            "recent": args.recent,
            "dedup_horizon_seconds": horizon,
            "events": n,
            "unit_touches": touches,
            "experiment": EXPERIMENT,
        },
        "cpu_seconds": seconds,
        "us_per_event": per_event,
        "budget_us_per_event": per_event["json_loads"] / 0.8,
    }


Records = list[tuple[bytes, bytes]]


def _changelog(store: Any | None, batches: list[bytes] | None = None) -> Callable[[Records], None]:
    """Write a run's records as a worker's table must: into one changelog record batch,
    built and sealed by aiokafka's C builder (the cheapest form aiokafka has), and into
    ``store``, a RocksDB database, in one write batch. ``store`` None: the sketch's rows
    are the store, as a table store of rows would be, and the changelog is all it writes.
    Each built batch is appended to ``batches`` if given."""
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from rocksdict import WriteBatch

    from streams.changelog import BATCH_BYTES

    def sink(records: Records) -> None:
        if store is not None:
            batch = WriteBatch(raw_mode=True)
            for key, value in records:
                batch.put(key, value)
            store.write(batch)
        now = int(time.time() * 1000)
        builder = new_batch()
        count = 0
        for key, value in records:
            if builder.append(count, now, key, value, []) is None:
                # full: sealed, and the record starts the next (a run's fit one batch; the
                # rows of a whole drain, written once, take several)
                seal(builder)
                builder, count = new_batch(), 0
                builder.append(count, now, key, value, [])
            count += 1
        seal(builder)

    def new_batch() -> Any:
        return DefaultRecordBatchBuilder(
            magic=2, compression_type=0, is_transactional=0, producer_id=-1,
            producer_epoch=-1, base_sequence=-1, batch_size=BATCH_BYTES,
        )  # fmt: skip

    def seal(builder: Any) -> None:
        built = builder.build()
        if batches is not None:
            batches.append(bytes(built))

    return sink


def _recovered(batches: Sequence[bytes]) -> dict[bytes, bytes]:
    """What a table recovers from these changelog batches: each key's last value."""
    from aiokafka.record.default_records import DefaultRecordBatch

    table: dict[bytes, bytes] = {}
    for raw in batches:
        batch = DefaultRecordBatch(raw)
        if not batch.validate_crc():
            raise SystemExit("a changelog batch failed its CRC")
        table.update((record.key, record.value) for record in batch)
    return table


def _rocksdb(path: Path) -> Any:
    """RocksDB as the worker opens a table partition's store with ``RAMPMON_STORE=rocksdb://``
    (Faust's options, the worker's memory bounds)."""
    from faust.stores.rocksdb import RocksDBOptions

    from streams.app import _store_options
    from streams.settings import Settings

    return RocksDBOptions(**_store_options(Settings(store="rocksdb://"))).open(path)


def _check_records(sketch: ColumnarSketch, store: Any) -> None:
    """Stop unless ``store`` (a dict, or a RocksDB database: anything with ``get``),
    written with the sketch's records, holds every unit's row."""
    import numpy as np

    dtype = sketch.row_dtype
    for unit, row in sketch.rows.items():
        raw = store.get(unit.encode())
        got = None if raw is None else np.frombuffer(raw, dtype)[0]
        if got is None or not (
            got["variant"] == sketch.variant[row]
            and got["exposure_offset"] == sketch.exposure_offset[row]
            and got["telemetry_offset"] == sketch.telemetry_offset[row]
            and np.array_equal(got["values"], sketch.values[row])
            and (
                sketch.layout is None
                or (
                    got["stage"] == sketch.stage
                    and np.array_equal(got["covariates"], sketch.covariates[row])
                    and np.array_equal(got["segments"], sketch.segments[row])
                )
            )
            and (
                not sketch.recent
                or (
                    np.array_equal(got["recent_ids"], sketch.recent_ids[row])
                    and np.array_equal(got["recent_ts"], sketch.recent_ts[row], equal_nan=True)
                    and got["recent_kept"] == sketch.recent_kept[row]
                )
            )
        ):
            raise SystemExit(f"the sketch's table records disagree with its rows ({unit!r})")


def sum_stats(ingest: Any, experiment: str) -> ExperimentStats:
    """The worker's statistics of ``experiment`` over all its partitions."""
    parts = [p.stats(experiment, ingest.aggs[experiment]) for p in ingest.stats.values()]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


def _check_statistics(
    sketch: ColumnarSketch, worker: ExperimentStats, want: dict[str, Any]
) -> None:
    """Stop unless the sketch's statistics equal the worker's on the same events, and its
    windows numpy's. Both sides' statistics come from the same aggregation code, so this
    checks what the sketch feeds it (rows, covariates, segments, stages, aggregations);
    that code has its own references (tests/unit/test_unitstats.py and the calibration)."""
    import numpy as np

    got = sketch.statistics()
    ok = (
        np.array_equal(got.units.n, worker.units.n)
        and _close(got.units.sum, worker.units.sum)
        and _close(got.units.gram, worker.units.gram)
        and np.array_equal(got.segments.n, worker.segments.n)
        and _close(got.segments.sum, worker.segments.sum)
        and _close(got.segments.sum_squares, worker.segments.sum_squares)
        and len(got.sketches) == len(worker.sketches)
        and all(a == b for a, b in zip(got.sketches, worker.sketches, strict=True))
        and _windows_match(sketch, want)
    )
    if not ok:
        raise SystemExit("columnar sketch (the worker's statistics) disagrees with the worker")


def _check_moments(sketch: ColumnarSketch, want: dict[str, Any]) -> None:
    """Stop unless the sketch's statistics and windows equal numpy's on the same events."""
    import numpy as np

    ok = (
        np.array_equal(sketch.units, want["units"])
        and _close(sketch.sums, want["sums"])
        and _close(sketch.gram, want["gram"])
        and _windows_match(sketch, want)
    )
    if not ok:
        raise SystemExit("columnar sketch (moments) disagrees with the truth")


def _close(a: Any, b: Any) -> bool:
    import numpy as np

    return bool(np.allclose(a, b, rtol=1e-9, atol=1e-6))


def _windows_match(sketch: ColumnarSketch, want: dict[str, Any]) -> bool:
    """The sketch's windows (event moments, first exposures) equal numpy's."""
    import numpy as np

    return (
        sketch.windows.keys() == want["windows"].keys()
        and all(_close(sketch.windows[w], x) for w, x in want["windows"].items())
        and sketch.window_exposures.keys() == want["window_exposures"].keys()
        and all(
            np.array_equal(sketch.window_exposures[w], x)
            for w, x in want["window_exposures"].items()
        )
    )


def render_markdown(r: dict[str, Any]) -> str:
    p, us = r["parameters"], r["us_per_event"]
    budget = r["budget_us_per_event"]
    rows = [
        ("`json.loads` of the envelopes (the baseline)", "json_loads"),
        ("the worker's decode (msgspec + validation)", "rampmon_decode"),
        ("unit record round trip (dict get, msgpack decode + encode, set)", "record_round_trip"),
        ("columnar sketch: run decode, rows, offsets, sums", "columnar_sketch"),
        (
            "... re-sends skipped by a set of every id (grows, lost on restart)",
            "columnar_sketch_dedup",
        ),
        (
            f"... re-sends skipped per unit instead, its last {p['recent']} ids in its row",
            "columnar_sketch_recent",
        ),
        ("... and the statistics' and windows' moments", "columnar_sketch_moments"),
        ("... the worker's own statistics instead of those moments", "columnar_sketch_stats"),
        (
            "... and a changelog record per changed unit (the rows as the store)",
            "columnar_changelog_memory",
        ),
        (
            "... and the records in RocksDB too (the production store)",
            "columnar_changelog_rocksdb",
        ),
        ("... each unit's record written once, after the drain", "columnar_once_memory"),
        ("... once, and in RocksDB too", "columnar_once_rocksdb"),
        ("`Ingest.process_run`, everything but Kafka and Faust", "process_run"),
    ]
    lines = [
        f"{r['date'][:10]}, commit {r['code']['commit'][:10]}, `{r['command']}`: "
        f"{p['events']:,} events in envelopes of {p['envelope']}, runs of {p['run_envelopes']} "
        f"envelopes, {p['unit_touches']:,} unit touches ({p['unit_touches'] / p['events']:.2f} "
        f"a event), best of {p['repeat']}.",
        "",
        "| step | CPU µs per event | of the 80% budget |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {us[key]:.2f} | {us[key] / budget:.0%} |" for label, key in rows]
    both = us["rampmon_decode"] + us["record_round_trip"]
    lines += [
        "",
        f"- Budget at 80% of `json.loads`: {budget:.2f} µs per event for everything the worker "
        "does after the fetch (the fetch both pay adds a quarter of its own cost: see "
        "`aiokafka + none` in the throughput table).",
        f"- The worker's decode and the unit record round trip, the two steps exact per-unit "
        f"records cannot skip, take {both:.2f} µs: {both / budget:.0%} of the budget before "
        "any attribution, statistics or window work.",
        f"- A store of units as numpy rows would skip the round trip. Its sketch, checked "
        f"against the truth in the same run, takes {us['columnar_sketch']:.2f} µs "
        f"({us['columnar_sketch'] / budget:.0%}); "
        f"{us['columnar_sketch_recent']:.2f} µs ({us['columnar_sketch_recent'] / budget:.0%}) "
        f"when it also skips re-sent event ids as the worker must, each unit keeping its "
        f"recent ids in its row ({us['columnar_sketch_dedup']:.2f} µs, "
        f"{us['columnar_sketch_dedup'] / budget:.0%}, by a set of every id, which grows with "
        f"the events and a restart loses); {us['columnar_sketch_moments']:.2f} µs "
        f"({us['columnar_sketch_moments'] / budget:.0%}) when it also keeps the statistics' "
        "and the windows' moments: before held telemetry, covariates and segments, the p95 "
        "sketch, outcomes, metrics, Faust and the changelog.",
        f"- With the worker's own statistics instead of those moments (its unit-stats "
        f"aggregation, fed the changed rows: co-moments of metrics and covariates per stage "
        f"and variant, segments, the p95 sketch; checked equal to the worker's on the same "
        f"events): {us['columnar_sketch_stats']:.2f} µs "
        f"({us['columnar_sketch_stats'] / budget:.0%}).",
        f"- Writing what a Faust table recovers those rows from, a record per changed unit "
        f"in one changelog batch a run (checked: the table recovered from the batches holds "
        f"every row), brings that to {us['columnar_changelog_memory']:.2f} µs "
        f"({us['columnar_changelog_memory'] / budget:.0%}), and writing them to RocksDB as "
        f"well to {us['columnar_changelog_rocksdb']:.2f} µs "
        f"({us['columnar_changelog_rocksdb'] / budget:.0%}): before the produce request's "
        "own send and all the sketch leaves out.",
        f"- No changelog of units writes fewer records than one a unit, after the whole "
        f"drain (a commit only at its end; a worker commits every few seconds): "
        f"{us['columnar_once_memory']:.2f} µs ({us['columnar_once_memory'] / budget:.0%}), "
        f"{us['columnar_once_rocksdb']:.2f} µs ({us['columnar_once_rocksdb'] / budget:.0%}) "
        "with RocksDB.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--units", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--envelope", type=int, default=100)
    parser.add_argument("--run", type=int, default=10, help="envelopes per run (one fetch)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--recent", type=int, default=8,
        help="re-send slots a unit in the sketch's rows (at least a unit's telemetry events)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path)
    parser.add_argument("--readme", type=Path)
    args = parser.parse_args(argv)
    return finish("floor", args, argv, run, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
