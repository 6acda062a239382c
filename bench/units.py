"""Worker memory against the number of units, for each table store.

Per-unit state is O(units): in the memory store every unit record lives in the Python
heap; in the rocksdb store (``RAMPMON_STORE=rocksdb://``, rocksdict) the records live in
RocksDB under the data directory and memory holds only RocksDB's caches and Faust's
bounded key index. One embedded broker and redis-server; ``--units`` exposures of seed
000's experiment (one per unit, envelopes of 100) are produced once, then one worker per
store consumes them from the start while its ``VmRSS`` is read at unit checkpoints:

    .venv/bin/python -m bench.units --readme bench/README.md

(default 1,000,000 units; about 4 minutes on 2 cores.)
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.readme import publish
from bench.throughput import (
    CONFIG,
    EXPERIMENT,
    STAGE,
    proc_status_bytes,
    processed,
    results_header,
    set_bench_stage,
    topic_names,
    worker_env,
)

__all__ = ["main", "render_markdown"]

STORES = ("memory://", "rocksdb://")


def exposures(units: int, seed: int, start: float) -> Iterator[dict[str, Any]]:
    """One exposure per unit, in event-time order, with seed 000's covariates' shapes."""
    rng = np.random.default_rng(seed)
    variants = rng.integers(0, 2, units)
    tasks = rng.poisson(8.0, units)
    revenue = rng.gamma(2.0, 2.0, units)
    for i in range(units):
        yield {
            "event_id": f"{EXPERIMENT}:u{i}:exposure",
            "ts": start + i * 1e-3,
            "experiment": EXPERIMENT,
            "unit_id": f"u{i}",
            "variant": "treatment" if variants[i] else "control",
            "stage": STAGE,
            "attributes": {"segment": "new_user", "device": "desktop", "region": "EU"},
            "covariates": {
                "pre_tasks_28": float(tasks[i]),
                "pre_revenue_28": float(revenue[i]),
                "pre_workflow_entries": 3.0,
                "tenure_days": 100.0,
            },
        }


async def produce(bootstrap: str, topic: str, units: int, seed: int, partitions: int) -> None:
    from streams.producer import EventProducer, ensure_topics

    await ensure_topics(bootstrap, [topic], partitions)
    producer = EventProducer(bootstrap, partitions=partitions, batch_size=100)
    await producer.start()
    try:
        chunk: list[dict[str, Any]] = []
        for e in exposures(units, seed, time.time() - units * 1e-3 - 600):
            chunk.append(e)
            if len(chunk) == 50_000:
                await producer.send_events(topic, chunk)
                chunk = []
        await producer.send_events(topic, chunk)
    finally:
        await producer.stop()


def measure(
    store: str, broker: Any, redis: Any, topics: dict[str, str], args: argparse.Namespace
) -> dict[str, Any]:
    from streams.workerproc import WorkerProcess

    tag = f"units-{uuid.uuid4().hex[:8]}"
    env = worker_env(broker.url, redis.url, topics, args.partitions, tag)
    env["RAMPMON_STORE"] = store
    worker = WorkerProcess(CONFIG, env)
    worker.start(timeout=120)
    checkpoints = sorted(int(c) for c in args.checkpoints.split(","))
    rss: dict[int, int | None] = {}
    started = time.monotonic()
    try:
        for checkpoint in checkpoints:
            while processed(worker.metrics(), [topics["exposures"]]) < checkpoint:
                if time.monotonic() - started > args.timeout:
                    raise SystemExit(f"{store}: {checkpoint:,} units not processed in time")
                time.sleep(0.5)
            rss[checkpoint] = proc_status_bytes(worker.proc.pid, "VmRSS") if worker.proc else None
        peak = proc_status_bytes(worker.proc.pid, "VmHWM") if worker.proc else None
        disk = sum(f.stat().st_size for f in worker.data_dir.rglob("*") if f.is_file())
    finally:
        worker.stop()
    return {
        "store": store,
        "rss_bytes": {str(k): v for k, v in rss.items()},
        "peak_rss_bytes": peak,
        "data_dir_bytes": disk,
        "seconds": time.monotonic() - started,
    }


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from streams.embedded import EmbeddedBroker, EmbeddedRedis

    topics = topic_names(f"units-{uuid.uuid4().hex[:8]}")
    with EmbeddedBroker() as broker, EmbeddedRedis() as redis:
        asyncio.run(set_bench_stage(redis.url, time.time() - args.units * 1e-3 - 3600))
        asyncio.run(
            produce(broker.bootstrap, topics["exposures"], args.units, args.seed, args.partitions)
        )
        stores = [measure(store, broker, redis, topics, args) for store in args.stores.split(",")]
    return {
        **results_header(command),
        "parameters": {"units": args.units, "partitions": args.partitions},
        "stores": stores,
    }


def render_markdown(results: dict[str, Any]) -> str:
    p = results["parameters"]
    checkpoints = list(results["stores"][0]["rss_bytes"])
    mib = 1024 * 1024
    lines = [
        f"{results['date'][:10]}, commit {results['code'].get('commit', '?')[:10]}, "
        f"`{results['command']}`: {p['units']:,} units, one exposure each (envelopes of "
        f"100, {p['partitions']} partitions), consumed from the start.",
        "",
        "| store | "
        + " | ".join(f"RSS at {int(c):,} units" for c in checkpoints)
        + " | peak RSS | data dir |",
        "|---|" + "---:|" * (len(checkpoints) + 2),
    ]
    for s in results["stores"]:
        cells = [f"{(v or 0) / mib:,.0f} MiB" for v in s["rss_bytes"].values()]
        lines.append(
            f"| `{s['store']}` | "
            + " | ".join(cells)
            + f" | {(s['peak_rss_bytes'] or 0) / mib:,.0f} MiB"
            + f" | {s['data_dir_bytes'] / mib:,.0f} MiB |"
        )
    for s in results["stores"]:
        values = [v or 0 for v in s["rss_bytes"].values()]
        first, last = values[0], values[-1]
        units = int(checkpoints[-1]) - int(checkpoints[0])
        per_unit = (last - first) / units if units else float("nan")
        lines.append(
            f"- `{s['store']}`: {per_unit:,.0f} B of RSS per added unit between "
            f"{int(checkpoints[0]):,} and {int(checkpoints[-1]):,} units."
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.units", description=__doc__)
    parser.add_argument("--units", type=int, default=1_000_000)
    parser.add_argument("--checkpoints", default="250000,500000,750000,1000000")
    parser.add_argument("--stores", default=",".join(STORES))
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=1200.0)
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/...)")
    parser.add_argument("--readme", type=Path, help="update the units block of this README")
    args = parser.parse_args(argv)
    command = "python -m bench.units" + (f" --readme {args.readme}" if args.readme else "")
    results = run(args, command)
    publish(results, "units", render_markdown(results), args.out, args.readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
