"""Every crash point of a changelog written with small batches: for each run, a crash
after each prefix of its batches (0 to all), then the redelivery (a) of the same runs
from the crashed run on, at 5 s of lateness, and (b) of every message no run before the
crashed one absorbed, telemetry first, at lateness = expiry. Each must equal the
uninterrupted worker (tests/unit/test_crash_replay.py's _assert_same_statistics).

From the repository's root: ``.venv/bin/python bench/results/split-windows-2026-12-06/sweep.py
1 2 3`` (the seeds), about 8 minutes; its output is ``sweep.txt`` here."""

import sys
import time

sys.path.insert(0, "tests/unit")
from test_crash_replay import (
    CONFIG,
    _assert_same_statistics,
    _ingest,
    _late_config,
    _messages,
    _recovered,
    _runs,
    _Table,
)

BATCH = 12 * 1024
short = CONFIG.model_copy(
    update={
        "windows": CONFIG.windows.model_copy(
            update={"size_seconds": 60.0, "allowed_lateness_seconds": 5.0}
        )
    }
)
late = _late_config()
messages = _messages()
for seed in map(int, sys.argv[1:]):
    t0 = time.time()
    for name, config in (("same-runs", short), ("telemetry-first", late)):
        runs = _runs(messages, seed)
        whole = _ingest(_Table(), config)
        for m in messages:
            whole.process(*m[:3], None, m[3])
        same = _ingest(_Table(), config)
        for topic, p, run, _ in runs:
            same.process_run(topic, p, run)
        reference = same if name == "same-runs" else whole
        live = _ingest(_Table(), config, changelog_batch_bytes=BATCH)
        log: list[list[tuple[bytes, bytes | None]]] = []
        starts: list[int] = []
        for topic, p, run, _ in runs:
            starts.append(len(log))
            live.process_run(topic, p, run)
            log.extend(live.changelog.take())
        starts.append(len(log))
        points = bad = 0
        for i in range(len(runs)):
            for kept in range(starts[i], starts[i + 1] + 1):
                second = _ingest(_recovered(log[:kept]), config)
                if name == "same-runs":
                    redelivery = [(t, p, r) for t, p, r, _ in runs[i:]]
                else:
                    absorbed = {j for run in runs[:i] for j in run[3]}
                    rest = [m for j, m in enumerate(messages) if j not in absorbed]
                    rest = sorted(rest, key=lambda m: m[0] != "t")
                    redelivery = [(t, p, r) for t, p, r, _ in _runs(rest, seed + 100)]
                for topic, p, run in redelivery:
                    second.process_run(topic, p, run)
                points += 1
                try:
                    _assert_same_statistics(reference, second)
                except AssertionError:
                    bad += 1
                    print(
                        "  inexact:",
                        name,
                        "run",
                        i,
                        "kept",
                        kept - starts[i],
                        "of",
                        starts[i + 1] - starts[i],
                        flush=True,
                    )
        split = sum(starts[i + 1] - starts[i] > 1 for i in range(len(runs)))
        print(
            f"seed {seed} {name}: {len(runs)} runs, {split} split, {len(log)} batches, "
            f"{points} crash points, {bad} inexact ({time.time() - t0:.0f} s)",
            flush=True,
        )
