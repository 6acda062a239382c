"""The worker's hot path in one process: recorded runs through ``Ingest.process_run``.

Run as a script by :mod:`bench.instructions`, under valgrind, once per code tree: the file
is run by path and imports ``monitor`` and ``streams`` from ``PYTHONPATH``, so the same
replay measures a baseline commit's code and the working tree's. It therefore uses only
what both have had since 2026-12-02: ``Ingest``'s constructor, ``process_run``,
``snapshots``, ``changelog``, ``Settings``' ``gc_gen0_threshold`` default (the collector
tuned as each tree's worker tunes it), and a Faust table's ``data`` (windowed:
``table.data``), which :class:`DictTable` and :class:`DictWindows` stand in for here and
in :mod:`bench.floor`. Trees before 2026-12-06 kept window records in a windowed table of
their own (``Ingest(windows=...)``) and had no ``ChangelogBatcher.take``; both are
looked for, so a baseline from before then still runs.

One pass's cost is the difference of runs with 2 and 1 passes: the first pass imports
what the replay needs (``streams.cli`` imports Faust) and warms first-call caches. Each
pass is a fresh ``Ingest`` on empty dict-backed tables; snapshots are taken every so many
messages of the recording, as the worker publishes.
"""

from __future__ import annotations

import argparse
import math
import pickle
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DictTable", "DictWindows", "Recording", "Run", "dict_ingest", "feed", "replay"]

#: how ``--cpu`` prints a pass's CPU seconds, so a reader skips anything else on stdout
CPU_LINE = "pass-cpu-seconds"

#: (topic "x" or "t", partition, [(key, value), ...]) per run, exposures first
Run = tuple[str, int, list[tuple[bytes | None, bytes]]]
#: runs, events in them, snapshot cadence in messages
Recording = tuple[list[Run], int, int]


class DictTable:
    """A table's store: what ``Ingest`` reads and writes of a Faust table."""

    def __init__(self) -> None:
        self.data: dict[Any, bytes] = {}


class DictWindows:
    """A tumbling windowed table keyed ``(key, (start, end))``, as Faust's: for trees that
    kept window records in a table of their own."""

    def __init__(self, size: float) -> None:
        self.table = DictTable()
        self.size = size

    def __setitem__(self, key: str, value: bytes) -> None:
        import importlib

        # only an older tree has it: looked up by name, so this tree's types allow it
        window_ts = importlib.import_module("streams.ingest").window_ts
        start = math.floor(window_ts.get() / self.size) * self.size
        self.table.data[(key, (start, start + self.size))] = value


def dict_ingest(config: Any, partitions: int = 4) -> Any:
    """An ``Ingest`` on empty dict-backed tables: topics ``x`` (exposures) and ``t``
    (telemetry), every exposure at the 50% stage, no Kafka, no Faust."""
    import inspect

    from prometheus_client import CollectorRegistry

    from streams.ingest import Ingest
    from streams.metrics import Metrics

    tables: dict[str, Any] = {"units": DictTable()}
    if "windows" in inspect.signature(Ingest).parameters:
        tables["windows"] = DictWindows(config.windows.size_seconds)
    return Ingest(
        config, **tables,
        metrics=Metrics(CollectorRegistry()), stage_index=lambda _e, _ts: 3,
        topics={"exposures": "x", "telemetry": "t"}, partitions=partitions,
        max_message_bytes=10**7, max_pending=64,
    )  # fmt: skip


def feed(ingest: Any, runs: Sequence[Run], snapshot_every: float = math.inf) -> list[Any]:
    """Each run through ``ingest.process_run`` as the worker's agent hands it over, a
    snapshot every ``snapshot_every`` messages and one at the end; the snapshots."""
    from streams.runs import OneRecord

    snapshots: list[Any] = []
    since = 0
    for topic, partition, messages in runs:
        offset = ingest.last_offset.get((topic, partition), -1) + 1
        records = [OneRecord(offset + i, k, v) for i, (k, v) in enumerate(messages)]
        ingest.process_run(topic, partition, records)
        # what a flush hands to Kafka
        take = getattr(ingest.changelog, "take", None)
        take() if take is not None else ingest.changelog._pending.clear()
        since += len(messages)
        if since >= snapshot_every:
            snapshots += ingest.snapshots()
            since = 0
    snapshots += ingest.snapshots()
    return snapshots


def replay(recording: Recording) -> tuple[Any, list[Any]]:
    """One pass: the ingest after every run, and every snapshot it published."""
    from streams.cli import DEFAULT_CONFIG, load_config

    runs, _, snapshot_every = recording
    ingest = dict_ingest(load_config(DEFAULT_CONFIG))
    return ingest, feed(ingest, runs, snapshot_every)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recording", type=Path, required=True)
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--cpu", action="store_true", help=f"print '{CPU_LINE} <s>' for each pass")
    args = parser.parse_args(argv)
    from streams import gctune
    from streams.settings import Settings

    recording: Recording = pickle.loads(args.recording.read_bytes())
    # as the worker tunes it: each tree's own default
    gctune.tune(Settings.model_fields["gc_gen0_threshold"].default)
    for _ in range(args.passes):
        start = time.process_time()
        replay(recording)
        if args.cpu:
            print(f"{CPU_LINE} {time.process_time() - start!r}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
