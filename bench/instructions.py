"""Instructions per event on the worker's hot path: this tree against a baseline commit.

Wall-clock CPU time on these 2-core machines moves by a third between identical runs
(bench/README "The envelope target's floor"), which hides any hot-path change smaller than
that. valgrind's callgrind counts the instructions executed instead: the same input and
code give counts within 0.1% of each other run after run at 1 event/message (two runs
of the default, counted from 0 and 1 passes then: base 5,928.5M and 5,929.8M, head
5,682.3M and 5,679.4M), within 0.4% with envelopes, whatever else the machine does.
So this bench
replays one recording of the throughput benchmark's events (seed 000's units, 1 event per
message or envelopes of 100, one partition, runs of ``--run`` messages, snapshots every
``--snapshot-every`` events) through :mod:`bench.hotpath` -- ``Ingest.process_run`` on
dict-backed tables, no Kafka, no Faust -- once with the working tree's code and once
with ``--base``'s (a temporary git worktree). Each side runs twice, with 1 and 2 passes,
and the difference is one steady-state pass: the first pass also pays the replay's lazy
imports (``streams.cli`` imports Faust) and first-call warm-ups, about as many
instructions as the pass itself, so a 0-pass baseline would halve every change's
ratio. The two sides run side by side, one per core.

Instructions are not time (a numpy kernel's count says nothing of its cache misses, and
the machine's speed varies), but a ratio of counts taken in one run is the steadiest
figure these machines give for Python-level work. A change that trades work for memory
traffic can fool it: keeping the last-written unit records decoded ran 0.911 of the
instructions and took 1.331 times the CPU time (median of 5 rounds; issue #6,
2026-12-03). So the bench also times the same replay without valgrind, ``--cpu-rounds``
rounds (an even number, so each side goes first equally often) that alternate which side
goes first, one side at a time: a side's figure in a round is its best pass after the
first of ``--cpu-passes``, and the result is the median of the rounds' head/base ratios.
The times move with the machine, and a round's ratio moves too (0.97 to 1.40 in the run
above), so only the median of several rounds is worth quoting.

Needs valgrind (Debian ``valgrind``). About 7 minutes on 2 cores::

    .venv/bin/python -m bench.instructions --base 382af6a --readme bench/README.md
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.hotpath import CPU_LINE
from bench.readme import finish
from bench.throughput import ROOT, generate, paired_ratios, results_header

__all__ = [
    "best_steady_pass",
    "collected",
    "cpu_seconds",
    "main",
    "record",
    "render_markdown",
]

HOTPATH = Path(__file__).resolve().parent / "hotpath.py"

_COLLECTED = re.compile(r"^==\d+== Collected : (\d+)$", re.MULTILINE)


def collected(stderr: str) -> int:
    """The instruction count callgrind prints when its program exits."""
    found = _COLLECTED.findall(stderr)
    if len(found) != 1:
        raise RuntimeError(f"no single 'Collected' line in valgrind's output:\n{stderr[-2000:]}")
    return int(found[0])


def record(
    units: int,
    seed: int,
    envelope: int,
    run: int,
    partition: int,
    snapshot_every: int,
    busy: int = 1,
) -> tuple[Any, int]:
    """The recording :mod:`bench.hotpath` replays, and its event count. ``busy`` > 1
    sends each telemetry event as that many, a second apart, each with its own id: the
    units' records then keep up to that many recent ids, as busy units' do."""
    import orjson

    from streams.producer import partition_of

    # a fixed start: the recording, not the clock, decides every event
    exposures, telemetry, _ = generate(units, seed, 1200.0, start=1.7e9)
    if busy > 1:
        telemetry = sorted(
            (
                {**e, "event_id": f"{e['event_id']}-{j}", "ts": e["ts"] + j}
                for e in telemetry
                for j in range(busy)
            ),
            key=lambda e: e["ts"],
        )
    runs = []
    events = 0
    for topic, stream in (("x", exposures), ("t", telemetry)):
        mine = [e for e in stream if partition_of(e["unit_id"], 4) == partition]
        events += len(mine)
        messages = [mine[i : i + envelope] for i in range(0, len(mine), envelope)]
        for i in range(0, len(messages), run):
            runs.append(
                (topic, partition, [
                    (m[0]["unit_id"].encode(), orjson.dumps(m[0] if envelope == 1 else m))
                    for m in messages[i : i + run]
                ])
            )  # fmt: skip
    return (runs, events, max(1, snapshot_every // envelope)), events


def _count(code: Path, recording: Path, passes: int) -> int:
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, str(HOTPATH), "--recording", str(recording), "--passes", str(passes)],
        cwd=code, env=env, capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"hot path under valgrind failed in {code}:\n{done.stderr[-3000:]}")
    return collected(done.stderr)


def cpu_seconds(code: Path, recording: Path, passes: int) -> float:
    """CPU seconds of the best steady-state pass of ``passes`` (the first, which pays the
    imports, left out)."""
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONHASHSEED": "0"}
    done = subprocess.run(
        [sys.executable, str(HOTPATH), "--recording", str(recording),
         "--passes", str(passes), "--cpu"],
        cwd=code, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"hot path failed in {code}:\n{done.stderr[-3000:]}")
    return best_steady_pass(done.stdout)


def best_steady_pass(stdout: str) -> float:
    """The least CPU seconds among the passes ``hotpath.py --cpu`` printed, the first
    (which pays the imports) left out."""
    seconds = [float(line.split()[1]) for line in stdout.splitlines() if line.startswith(CPU_LINE)]
    if len(seconds) < 2:
        raise RuntimeError(
            f"{len(seconds)} timed pass(es); a steady one needs 2:\n{stdout[-2000:]}"
        )
    return min(seconds[1:])


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found: apt-get install valgrind")
    base_commit = _git("rev-parse", "--verify", f"{args.base}^{{commit}}")
    with tempfile.TemporaryDirectory(prefix="rampmon-instructions-") as tmp:
        recording, events = record(
            args.units, args.seed, args.envelope, args.run, args.partition,
            args.snapshot_every, args.busy,
        )  # fmt: skip
        path = Path(tmp, "recording.pickle")
        path.write_bytes(pickle.dumps(recording))
        worktree = Path(tmp, "base")
        _git("worktree", "add", "--detach", str(worktree), base_commit)
        try:
            sides = {"base": worktree, "head": ROOT}
            jobs = [(side, passes) for side in sides for passes in (1, 2)]

            def count(job: tuple[str, int]) -> int:
                return _count(sides[job[0]], path, job[1])

            with ThreadPoolExecutor(max_workers=2) as pool:
                counts = dict(zip(jobs, pool.map(count, jobs), strict=True))
            cpu: dict[str, list[float]] = {"base": [], "head": []}
            for i in range(args.cpu_rounds):
                # alternate which side goes first: a drift in speed then falls on both
                for side in ("base", "head") if i % 2 == 0 else ("head", "base"):
                    cpu[side].append(cpu_seconds(sides[side], path, args.cpu_passes))
        finally:
            _git("worktree", "remove", "--force", str(worktree))
    per_pass = {side: counts[(side, 2)] - counts[(side, 1)] for side in ("base", "head")}
    cpu_ratio, cpu_ratios = (
        paired_ratios(cpu["base"], cpu["head"]) if args.cpu_rounds else (None, [])
    )
    return {
        **results_header(command),
        "base": {"rev": args.base, "commit": base_commit},
        "parameters": {
            "units": args.units,
            "seed": args.seed,
            "envelope": args.envelope,
            "run_messages": args.run,
            "partition": args.partition,
            "snapshot_every_events": args.snapshot_every,
            "busy": args.busy,
            "events": events,
            "cpu_rounds": args.cpu_rounds,
            "cpu_passes": args.cpu_passes,
        },
        "instructions": {f"{side}_{p}": counts[(side, p)] for side, p in counts},
        "per_pass": per_pass,
        "per_event": {side: n / events for side, n in per_pass.items()},
        "ratio": per_pass["head"] / per_pass["base"],
        "cpu_seconds": cpu,
        "cpu_ratios": cpu_ratios,
        "cpu_ratio": cpu_ratio,
    }


def render_markdown(r: dict[str, Any]) -> str:
    p, per_event = r["parameters"], r["per_event"]
    head = r["code"]["commit"][:10] + (" + uncommitted changes" if r["code"]["dirty_files"] else "")
    cpu = r.get("cpu_seconds", {})
    timed = []
    if cpu.get("base"):
        us = {side: statistics.median(cpu[side]) / p["events"] * 1e6 for side in cpu}
        timed = [
            f"CPU time without valgrind, {len(cpu['base'])} rounds alternating the sides, "
            f"each side's best of {p['cpu_passes'] - 1} steady-state passes: median "
            f"{us['base']:.2f} µs per event (base) and {us['head']:.2f} (head); head / base "
            f"per round {', '.join(f'{x:.3f}' for x in r['cpu_ratios'])}: median "
            f"**{r['cpu_ratio']:.3f}**.",
            "",
        ]
    return "\n".join([
        f"{r['date'][:10]}, `{r['command']}`: {p['events']:,} events of partition "
        f"{p['partition']} ({p['envelope']} event(s)/message, runs of {p['run_messages']} "
        f"messages, snapshots every {p['snapshot_every_events']:,} events"
        + (f", each telemetry event sent {p['busy']} times 1 s apart" if p.get("busy", 1) > 1
           else "")
        + ").",
        "",
        "| code | instructions per pass | per event | vs base |",
        "|---|---:|---:|---:|",
        f"| base {r['base']['commit'][:10]} (`{r['base']['rev']}`) | "
        f"{r['per_pass']['base']:,} | {per_event['base']:,.0f} | 1.000 |",
        f"| head {head} | {r['per_pass']['head']:,} | {per_event['head']:,.0f} | "
        f"{r['ratio']:.3f} |",
        "",
        *timed,
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--units", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=501)
    parser.add_argument("--envelope", type=int, choices=(1, 100), default=1)
    parser.add_argument("--run", type=int, default=2_000, help="messages per run (one fetch)")
    parser.add_argument("--partition", type=int, default=0)
    parser.add_argument("--snapshot-every", type=int, default=12_000, help="events")
    parser.add_argument(
        "--busy", type=int, default=1,
        help="send each telemetry event as this many, 1 s apart (busy units; try --run 100)",
    )  # fmt: skip
    parser.add_argument("--cpu-rounds", type=int, default=6, help="0: count instructions only")
    parser.add_argument("--cpu-passes", type=int, default=4, help="passes per timed run")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--readme", type=Path)
    args = parser.parse_args(argv)
    if args.cpu_passes < 2:
        parser.error("--cpu-passes: at least 2 (the first pass pays the imports)")
    if args.cpu_rounds < 0 or args.cpu_rounds % 2:
        parser.error("--cpu-rounds: 0, or an even number (each side goes first as often)")
    return finish("instructions", args, argv, run, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
