"""Scratch ablation behind bench/README.md "The envelope target's floor" (2026-12-05).

``Ingest.process_run`` on bench.floor's default runs (30,000 units, seed 7, 60 s,
envelopes of 100, runs of 10 envelopes, 4 partitions), with one step at a time replaced
by a no-op; CPU µs per event, the best of 7 rounds of every variant in turn, a publish
(``snapshots``) at the end of each pass. Not a benchmark of its own: it patches
internals. Run from the repository root::

    .venv/bin/python bench/results/floor-ablation-2026-12-05/ablation.py
"""

import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))

import orjson

import monitor.attribution as attribution
import monitor.unitstate as unitstate
import streams.ingest as ingest
from bench.hotpath import Run, dict_ingest, feed
from bench.throughput import generate
from monitor.unitstats import UnitDeltas
from streams import gctune
from streams.cli import DEFAULT_CONFIG, load_config
from streams.producer import partition_of
from streams.settings import Settings

config = load_config(DEFAULT_CONFIG)
exposures, telemetry, _ = generate(30_000, 7, 60.0)
runs: list[Run] = []
for topic, events in (("x", exposures), ("t", telemetry)):
    by_partition: dict[int, list[dict]] = {}
    for e in events:
        by_partition.setdefault(partition_of(e["unit_id"], 4), []).append(e)
    for p, evs in sorted(by_partition.items()):
        for i in range(0, len(evs), 1000):
            chunk = evs[i : i + 1000]
            envs = [chunk[j : j + 100] for j in range(0, len(chunk), 100)]
            runs.append((topic, p, [(None, orjson.dumps(x)) for x in envs]))
n = len(exposures) + len(telemetry)
gctune.tune(Settings.model_fields["gc_gen0_threshold"].default)
ROUNDS = 7


def one_pass() -> float:
    gc.collect()
    worker = dict_ingest(config, 4)
    t0 = time.process_time()
    feed(worker, runs)
    worker.snapshots()
    return (time.process_time() - t0) / n * 1e6


def fold_nothing(self, experiment, aggregation):
    self.pending.pop(experiment, None)
    return self.applied[experiment]


ABLATIONS = {
    "producer re-send check (UnitState.seen)": (unitstate.UnitState, "seen", lambda *a: False),
    "attribution to experiments (Attributor._attribute)": (
        attribution.Attributor,
        "_attribute",
        lambda *a, **k: None,
    ),
    "windows and delta rows (Ingest._apply)": (ingest.Ingest, "_apply", lambda *a: None),
    "delta rows and their numpy update (ExperimentBatch.unit_deltas)": (
        attribution.ExperimentBatch,
        "unit_deltas",
        lambda self: UnitDeltas.build(self.layout, []),
    ),
    "windows (ExperimentBatch.window_runs)": (
        attribution.ExperimentBatch,
        "window_runs",
        lambda self, applied: iter(()),
    ),
    "the statistics' numpy update (PartitionStats.stats)": (
        ingest.PartitionStats,
        "stats",
        fold_nothing,
    ),
}

# rounds of every variant in turn, the best of each: the machine's speed drifts within
# minutes, and a variant timed in a block of its own would carry that drift
best = dict.fromkeys(["all steps", *ABLATIONS], float("inf"))
for _ in range(ROUNDS):
    best["all steps"] = min(best["all steps"], one_pass())
    for label, (owner, name, stub) in ABLATIONS.items():
        original = getattr(owner, name)
        setattr(owner, name, stub)
        try:
            best[label] = min(best[label], one_pass())
        finally:
            setattr(owner, name, original)
whole = best["all steps"]
print(f"process_run, all steps: {whole:.2f} us/event (best of {ROUNDS} rounds)")
for label in ABLATIONS:
    print(f"without {label}: {best[label]:.2f} us/event (step: {whole - best[label]:.2f})")
