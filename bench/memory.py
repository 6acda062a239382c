"""Does the worker's memory stay flat as events grow at a fixed number of units?

One embedded tansu broker and redis-server, one ``rampmon worker``. A fixed population of
seed 000's units is exposed once; then their telemetry is replayed round after round, each
round shifted later in event time (so tumbling windows keep opening and expiring) and with
new event ids, while the worker consumes live. The worker's resident set (``VmRSS``) is
read from /proc at fixed processed-event checkpoints; the figure of merit is the growth
from 1M to 5M events (issue #6 target: under 10%).

    .venv/bin/python -m bench.memory --readme bench/README.md

Per-unit state is O(units) (the unit records); per-variant state O(experiments x variants
x metrics x stages); windows are bounded by ``windows.expires_seconds``: none of it depends
on the event count, which is what this measures.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.readme import publish
from bench.throughput import (
    CONFIG,
    EXPERIMENT,
    ROOT,
    STAGE,
    generate,
    proc_status_bytes,
    processed,
    results_header,
    set_bench_stage,
    topic_names,
    worker_env,
)

__all__ = ["main", "render_markdown", "rss_bytes"]

DEFAULT_CHECKPOINTS = (250_000, 500_000, 1_000_000, 2_000_000, 3_000_000, 4_000_000, 5_000_000)


def rss_bytes(pid: int) -> int | None:
    """VmRSS: resident now (not the high-water mark), so a release would show."""
    return proc_status_bytes(pid, "VmRSS")


def _config(tmp: Path, expires_seconds: float) -> Path:
    """The deploy config with the windows' expiry set for the run (see ``--expires-seconds``)."""
    doc = yaml.safe_load(CONFIG.read_text())
    doc.setdefault("windows", {})["expires_seconds"] = expires_seconds
    path = tmp / "experiments.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _units(n: int, seed: int, round_seconds: float) -> tuple[list[dict], list[dict], float]:
    # a day ago (the worker refuses events over 30 days old): rounds move forward from there
    exposures, telemetry, start = generate(n, seed, round_seconds, start=time.time() - 86400.0)
    telemetry.sort(key=lambda e: e["ts"])
    return exposures, telemetry, start


def _shifted(telemetry: list[dict], k: int, round_seconds: float) -> list[dict]:
    """Round ``k`` of the same units' telemetry: later in event time, new event ids."""
    shift = k * round_seconds
    return [{**e, "event_id": f"{e['event_id']}:r{k}", "ts": e["ts"] + shift} for e in telemetry]


async def _produce(
    bootstrap: str,
    topics: dict[str, str],
    exposures: list[dict],
    telemetry: list[dict],
    *,
    target: int,
    round_seconds: float,
    envelope: int,
    partitions: int,
    produced: list[int],
) -> None:
    from streams.producer import EventProducer, ensure_topics

    await ensure_topics(bootstrap, list(topics.values()), partitions)
    producer = EventProducer(bootstrap, partitions=partitions, batch_size=envelope)
    await producer.start()
    try:
        await producer.send_events(topics["exposures"], exposures)
        produced[0] += len(exposures)
        k = 0
        while produced[0] < target:
            batch = _shifted(telemetry, k, round_seconds)[: target - produced[0]]
            await producer.send_events(topics["telemetry"], batch)
            produced[0] += len(batch)
            k += 1
    finally:
        await producer.stop()


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from streams.embedded import EmbeddedBroker, EmbeddedRedis
    from streams.workerproc import WorkerProcess, sample

    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    target = checkpoints[-1]
    exposures, telemetry, start = _units(args.units, args.seed, args.round_seconds)
    print(
        f"{args.units:,} units: {len(exposures):,} exposures, {len(telemetry):,} telemetry "
        f"events per round; {target:,} events in all",
        flush=True,
    )
    tag = f"mem-{uuid.uuid4().hex[:8]}"
    topics = topic_names(tag)
    source = [topics["exposures"], topics["telemetry"]]
    samples: list[dict[str, Any]] = []
    produced = [0]
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker() as broker,
        EmbeddedRedis() as redis,
    ):
        asyncio.run(set_bench_stage(redis.url, start - 60))
        env = worker_env(broker.url, redis.url, topics, args.partitions, tag)
        config = _config(Path(tmp), args.expires_seconds)
        producer = threading.Thread(
            target=lambda: asyncio.run(
                _produce(
                    broker.bootstrap,
                    topics,
                    exposures,
                    telemetry,
                    target=target,
                    round_seconds=args.round_seconds,
                    envelope=args.envelope,
                    partitions=args.partitions,
                    produced=produced,
                )
            ),
            daemon=True,
        )
        producer.start()
        worker = WorkerProcess(config, env)
        worker.start(timeout=120)
        assert worker.proc is not None
        pid = worker.proc.pid
        t0 = time.monotonic()
        try:
            pending = list(checkpoints)
            deadline = t0 + args.timeout
            while pending and time.monotonic() < deadline:
                n = processed(worker.metrics(), source)
                while pending and n >= pending[0]:
                    rss = rss_bytes(pid)
                    samples.append(
                        {
                            "checkpoint": pending.pop(0),
                            "processed": int(n),
                            "rss_bytes": rss,
                            "seconds": time.monotonic() - t0,
                        }
                    )
                    print(
                        f"  {int(n):>10,} events  RSS {(rss or 0) / 2**20:7.1f} MiB  "
                        f"{time.monotonic() - t0:6.1f} s",
                        flush=True,
                    )
                time.sleep(0.5)
            if pending:
                raise RuntimeError(f"checkpoints {pending} not reached in {args.timeout}s")
            final = worker.metrics()
            peak = worker.peak_rss_bytes()
        finally:
            worker.stop()
        producer.join(60)
    dead = sum(v for (n, _), v in final.items() if n == "rampmon_dead_letters_total")
    attributed = sample(final, "rampmon_attribution_events_total", experiment=EXPERIMENT,
                        outcome="attributed")  # fmt: skip
    by = {s["checkpoint"]: s for s in samples}
    base, last = by.get(1_000_000), by[target]
    growth = (
        None
        if base is None or not base["rss_bytes"]
        else (last["rss_bytes"] - base["rss_bytes"]) / base["rss_bytes"]
    )
    return {
        **results_header(command),
        "parameters": {
            "units": args.units,
            "seed": args.seed,
            "envelope": args.envelope,
            "partitions": args.partitions,
            "round_seconds": args.round_seconds,
            "windows_expires_seconds": args.expires_seconds,
            "telemetry_per_round": len(telemetry),
            "exposures": len(exposures),
            "events": target,
            "config": str(CONFIG.relative_to(ROOT)),
            "stage": STAGE,
        },
        "samples": samples,
        "rss_growth_1m_to_last": growth,
        "peak_rss_bytes": peak,
        "dead_letters": int(dead),
        "attributed": int(attributed),
    }


def render_markdown(results: dict[str, Any]) -> str:
    p = results["parameters"]
    code = results["code"]
    lines = [
        f"{results['date'][:10]}, commit {code.get('commit', '?')[:10]}, "
        f"`{results['command']}`: {p['units']:,} units exposed once, then their telemetry "
        f"({p['telemetry_per_round']:,} events a round, each round {p['round_seconds']:g} s "
        f"later in event time; windows expire after {p['windows_expires_seconds']:g} s) in "
        f"envelopes of {p['envelope']}, consumed live by one worker.",
        "",
        "| processed events | worker RSS MiB | seconds |",
        "|---:|---:|---:|",
    ]
    for s in results["samples"]:
        lines.append(
            f"| {s['processed']:,} | {(s['rss_bytes'] or 0) / 2**20:.1f} | {s['seconds']:.0f} |"
        )
    growth = results["rss_growth_1m_to_last"]
    verdict = "met" if growth is not None and growth < 0.10 else "not met"
    lines += [
        "",
        f"- RSS growth from 1M to {p['events']:,} events: "
        f"**{'n/a' if growth is None else f'{100 * growth:+.1f}%'}** (target < 10%: {verdict}); "
        f"peak RSS {results['peak_rss_bytes'] / 2**20:.0f} MiB; dead letters "
        f"{results['dead_letters']}; telemetry attributed {results['attributed']:,}.",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--units", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--envelope", type=int, default=100, help="events per Kafka message")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--round-seconds", type=float, default=60.0)
    parser.add_argument(
        "--expires-seconds",
        type=float,
        default=300.0,
        help="windows.expires_seconds for the run: event time runs ~30x faster than the "
        "wall clock here, so the deploy value (3600) would take most of the run to reach "
        "its steady number of windows",
    )
    parser.add_argument("--checkpoints", default=",".join(str(c) for c in DEFAULT_CHECKPOINTS))
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/...)")
    parser.add_argument("--readme", type=Path, help="update the memory block of this README")
    args = parser.parse_args(argv)
    command = "python -m bench.memory" + (f" --readme {args.readme}" if args.readme else "")
    results = run(args, command)
    publish(results, "memory", render_markdown(results), args.out, args.readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
