"""Detection latency: from the first produced event of a breach to its rollback webhook.

One embedded broker and redis-server, one ``rampmon worker``, a signed-webhook receiver.
The config holds ``--experiments`` copies of seed 000's experiment (``deploy/``), each with
its own units, all at the 50% stage. Live traffic at ``--rate`` events/s in total (seed
000's model, envelopes of 100, exposures stamped with their stage) warms every experiment
up to thousands of units; then, one experiment every ``--spacing`` seconds, the treatment's
latency jumps by ``--breach-ms`` (far past the 50 ms margin: "a breach large enough to be
detected"). Each experiment's latency is wall time from the send of its first breached
event to the arrival of its signed rollback webhook at the receiver (stamped by the
receiver as it accepts it; this loop polls the receiver every 10 ms).

    .venv/bin/python -m bench.detection --readme bench/README.md

The time covers the broker hop, the worker's processing lag, the periodic snapshot
publish and evaluation, the Redis claim and the delivery loop's poll -- and the units the
sequential test needs to see past the margin.

The issue asks for the latency "once enough units exist to reject", so the bench also
finds that moment: every tick the producer sends is kept (as JSON) per experiment, and
after the run the engine itself (``monitor.replayer.Replayer``, the offline path with the
worker's statistics) replays each breached experiment tick by tick and reads it out after
each tick since the breach. The first tick whose cumulative data gives a ``rollback`` is
when enough units existed; from its send to the webhook is the monitor's own latency.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import yaml

from bench.readme import publish
from bench.throughput import (
    CONFIG,
    extra_env,
    results_header,
    topic_names,
    worker_env,
)

if TYPE_CHECKING:
    from alerts.receiver import Delivery
    from streams.workerproc import Sample

__all__ = ["main", "render_markdown"]

SECRET = b"bench-detection-secret"


def _config(n: int, receiver_url: str, path: Path) -> list[str]:
    base = yaml.safe_load(CONFIG.read_text())
    template = base["experiments"][0]
    names = [f"{template['name']}_{k}" for k in range(n)]
    base["experiments"] = [{**template, "name": name} for name in names]
    base["webhooks"] = [{"url": receiver_url}]
    path.write_text(yaml.safe_dump(base))
    return names


async def _set_stages(redis_url: str, names: Sequence[str], at: float) -> None:
    from redis.asyncio import Redis

    from alerts.stages import set_stage

    r = Redis.from_url(redis_url)
    try:
        for name in names:
            await set_stage(r, name, 50.0, now=at, by="bench")
    finally:
        await r.aclose()


class Traffic:
    """Seed 000's traffic for every experiment at ``rate`` events/s; breaches on demand."""

    def __init__(self, names: Sequence[str], rate: float, seed: int) -> None:
        from monitor.workload import RampTraffic

        self.traffics = {
            name: RampTraffic(name, seed=seed + k, start_user_id=k * 1_000_000_000)
            for k, name in enumerate(names)
        }
        self.units_per_second = rate / 5.5 / len(names)  # ~5.5 events per seed-000 unit
        self.breach_sent: dict[str, float] = {}
        #: per experiment, each tick: (send completed, exposures JSON, telemetry JSON)
        self.ticks: dict[str, list[tuple[float, bytes, bytes]]] = {n: [] for n in names}
        self._pending_breach: dict[str, dict[str, float]] = {}
        self.sent_events = 0
        self.stop = False

    def breach(self, name: str, regression: dict[str, float]) -> None:
        self._pending_breach[name] = regression

    async def run(self, bootstrap: str, topics: dict[str, str], partitions: int) -> None:
        from streams.producer import EventProducer, ensure_topics

        await ensure_topics(bootstrap, list(topics.values()), partitions)
        producer = EventProducer(bootstrap, partitions=partitions, batch_size=100)
        await producer.start()
        started = time.time()
        emitted = dict.fromkeys(self.traffics, 0)
        try:
            while not self.stop:
                elapsed, now = time.time() - started, time.time()
                exposures: list[dict] = []
                telemetry: list[dict] = []
                fresh = []
                sent: list[tuple[str, bytes, bytes]] = []
                for name, traffic in self.traffics.items():
                    if name in self._pending_breach:
                        traffic.regression = self._pending_breach.pop(name)
                        fresh.append(name)
                    n = int(elapsed * self.units_per_second) - emitted[name]
                    if n <= 0:
                        continue
                    ex, tel = traffic.next_batch(n, 0.5, now, stage=50.0)
                    emitted[name] += n
                    exposures += ex
                    telemetry += tel
                    sent.append((name, orjson.dumps(ex), orjson.dumps(tel)))
                for name in fresh:
                    self.breach_sent[name] = time.time()  # its breached units leave now
                # one send per tick for all experiments: envelopes stay full, as a
                # collector's would
                await producer.send_events(topics["exposures"], exposures)
                await producer.send_events(topics["telemetry"], telemetry)
                done = time.time()
                for name, ex_json, tel_json in sent:
                    self.ticks[name].append((done, ex_json, tel_json))
                self.sent_events += len(exposures) + len(telemetry)
                await asyncio.sleep(0.1)
        finally:
            await producer.stop()


def ticks_until(
    ticks: Sequence[tuple[float, bytes, bytes]], t: float
) -> list[tuple[float, bytes, bytes]]:
    """The ticks whose send completed by ``t`` (the webhook's arrival). The bench keeps
    sending after it; a tick after it that first reads out a rollback would time the
    monitor from a moment after its own webhook (a negative latency), where the report
    says the data never sufficed before the webhook."""
    return [tick for tick in ticks if tick[0] <= t]


def enough_units_at(
    config: Any, name: str, ticks: Sequence[tuple[float, bytes, bytes]], breach_sent: float
) -> float | None:
    """When the produced data first sufficed: the send time of the first tick after which
    the engine, fed every event of ``name`` so far, reads out a rollback."""
    from monitor.events import Exposure, Telemetry
    from monitor.replayer import Replayer

    cfg = config.experiment(name)
    stage = cfg.stage_index(50.0)
    replayer = Replayer(config, lambda _e, _ts: stage, chunk=100)
    for sent_at, ex_json, tel_json in ticks:
        replayer.feed([Exposure(**e) for e in orjson.loads(ex_json)])
        replayer.feed([Telemetry(**e) for e in orjson.loads(tel_json)])
        if sent_at < breach_sent:
            continue
        if replayer.readout(name, stage, fixed_horizon=False).decision == "rollback":
            return sent_at
    return None


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from alerts.receiver import WebhookReceiver
    from streams.embedded import EmbeddedBroker, EmbeddedRedis
    from streams.workerproc import WorkerProcess

    tag = f"det-{uuid.uuid4().hex[:8]}"
    topics = topic_names(tag)
    receiver = WebhookReceiver(SECRET)
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, daemon=True)
    loop_thread.start()
    asyncio.run_coroutine_threadsafe(receiver.start(), loop).result(10)
    arrived: dict[str, float] = {}
    decided: dict[str, float] = {}
    latencies: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker() as broker,
        EmbeddedRedis() as redis,
    ):
        cfg_path = Path(tmp) / "experiments.yaml"
        names = _config(args.experiments, receiver.url, cfg_path)
        from streams.cli import load_config

        config = load_config(cfg_path)
        asyncio.run(_set_stages(redis.url, names, time.time() - 60))
        env = worker_env(broker.url, redis.url, topics, args.partitions, tag)
        env["RAMPMON_WEBHOOK_SECRET"] = SECRET.decode()
        env.update(extra_env(args.worker_env))
        worker = WorkerProcess(cfg_path, env)
        worker.start(timeout=120)
        traffic = Traffic(names, args.rate, args.seed)
        producer = threading.Thread(
            target=lambda: asyncio.run(traffic.run(broker.bootstrap, topics, args.partitions)),
            daemon=True,
        )
        t0 = time.time()
        producer.start()
        try:
            schedule = {name: t0 + args.warmup + k * args.spacing for k, name in enumerate(names)}
            deadline = max(schedule.values()) + args.timeout
            seen, next_scrape = 0, 0.0
            lags: list[float] = []
            while time.time() < deadline and len(arrived) < len(names):
                now = time.time()
                if now >= next_scrape and now > t0 + args.warmup:
                    # how far behind the newest event the worker is, once a second
                    m = worker.metrics()
                    lag = [v for (n, _), v in m.items() if n == "rampmon_processing_lag_seconds"]
                    lags += [max(lag)] if lag else []
                    next_scrape = now + 1.0
                for name, at in schedule.items():
                    if at <= now and name not in traffic.breach_sent and name not in arrived:
                        traffic.breach(name, {"latency_ms": args.breach_ms})
                        schedule[name] = float("inf")
                accepted = receiver.accepted[seen:]
                note_rollbacks(accepted, arrived, decided)
                seen += len(accepted)
                time.sleep(0.01)
            elapsed = time.time() - t0
            sent = traffic.sent_events
        finally:
            traffic.stop = True
            producer.join(30)
            metrics = worker.metrics()
            worker.stop()
            asyncio.run_coroutine_threadsafe(receiver.stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
    early = sorted(n for n in arrived if n not in traffic.breach_sent)
    for name, at in arrived.items():
        if name in traffic.breach_sent:
            latencies[name] = at - traffic.breach_sent[name]
    values = sorted(latencies.values())
    # from the moment the produced data sufficed to reject (the engine, offline), on the
    # ticks sent before the webhook: one that never sufficed by then is listed, not timed
    ready = {
        n: enough_units_at(
            config, n, ticks_until(traffic.ticks[n], arrived[n]), traffic.breach_sent[n]
        )
        for n in latencies
    }
    from_ready = sorted(arrived[n] - t for n, t in ready.items() if t is not None)
    units_wait = [t - traffic.breach_sent[n] for n, t in ready.items() if t is not None]
    # the split: breach sent -> decision taken (processing, snapshot, evaluation, and the
    # units the test needs) and decision -> webhook received (claim, outbox, POST)
    to_decision = [decided[n] - traffic.breach_sent[n] for n in latencies]
    to_webhook = [arrived[n] - decided[n] for n in latencies]
    ready_to_decision = [decided[n] - t for n, t in ready.items() if t is not None]
    processed = sum(v for (n, _), v in metrics.items() if n == "rampmon_events_processed_total")
    published = sum(v for (n, _), v in metrics.items() if n == "rampmon_partials_published_total")
    readouts = {
        trigger: {
            "per_second": _labelled(metrics, "rampmon_readouts_total", trigger) / elapsed,
            # the share of the worker's event loop that readouts took
            "share": _labelled(metrics, "rampmon_readout_seconds_total", trigger) / elapsed,
        }
        for trigger in ("arrival", "periodic")
    }
    budget_wait = sum(
        v for (n, _), v in metrics.items() if n == "rampmon_readout_budget_wait_seconds_total"
    )
    return {
        **results_header(command),
        "parameters": {
            "experiments": args.experiments,
            "rate_events_per_second": args.rate,
            "warmup_seconds": args.warmup,
            "spacing_seconds": args.spacing,
            "breach_latency_ms": args.breach_ms,
            "partitions": args.partitions,
            "worker_env": extra_env(args.worker_env),
        },
        "offered_events_per_second": sent / elapsed,
        # a worker that keeps up publishes each interval; one that was behind at a publish,
        # once more when it catches up (streams.pacing)
        "snapshots_published_per_second": published / elapsed,
        "readouts": readouts,
        "readout_budget_wait_share": budget_wait / elapsed,
        "processed_events": int(processed),
        "latencies_seconds": latencies,
        "p50_seconds": float(np.percentile(values, 50)) if values else None,
        "p99_seconds": float(np.percentile(values, 99)) if values else None,
        "max_seconds": max(values) if values else None,
        "mean_seconds": statistics.fmean(values) if values else None,
        "detected": len(values),
        "from_enough_units": {
            "latencies_seconds": {n: arrived[n] - t for n, t in ready.items() if t is not None},
            "p50_seconds": float(np.percentile(from_ready, 50)) if from_ready else None,
            "p99_seconds": float(np.percentile(from_ready, 99)) if from_ready else None,
            "max_seconds": max(from_ready) if from_ready else None,
            "median_breach_to_enough_units_seconds": (
                statistics.median(units_wait) if units_wait else None
            ),
            "median_to_decision_seconds": (
                statistics.median(ready_to_decision) if ready_to_decision else None
            ),
            "never_enough": sorted(n for n, t in ready.items() if t is None),
        },
        "median_to_decision_seconds": statistics.median(to_decision) if to_decision else None,
        "median_decision_to_webhook_seconds": statistics.median(to_webhook) if to_webhook else None,
        "processing_lag_seconds": {
            "median": statistics.median(lags) if lags else None,
            "max": max(lags) if lags else None,
            "samples": len(lags),
        },
        "missed": sorted(set(names) - set(arrived)),
        "rolled_back_before_breach": early,
        "duplicate_deliveries": receiver.requests - receiver.rejected - len(receiver.accepted),
    }


def note_rollbacks(
    deliveries: Sequence[Delivery], arrived: dict[str, float], decided: dict[str, float]
) -> None:
    """Each experiment's first rollback webhook: when the receiver accepted it (not when
    this loop noticed it, which can be before: the loop's clock is read before its
    once-a-second scrape) and when the worker decided it."""
    for d in deliveries:
        if d.payload.get("decision") == "rollback":
            arrived.setdefault(d.payload["experiment"], d.received_at)
            decided.setdefault(d.payload["experiment"], d.payload["decided_at"])


def _labelled(metrics: Mapping[Sample, float], name: str, trigger: str) -> float:
    """A counter's value for ``trigger`` (0 if it has no such series)."""
    return sum(v for (n, ls), v in metrics.items() if n == name and ("trigger", trigger) in ls)


def render_markdown(results: dict[str, Any]) -> str:
    p = results["parameters"]
    ready = results["from_enough_units"]

    def s(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f} s"

    p50 = ready["p50_seconds"]
    verdict = "met" if p50 is not None and p50 < 2.0 else "not met"
    return "\n".join(
        [
            f"{results['date'][:10]}, commit {results['code'].get('commit', '?')[:10]}, "
            f"`{results['command']}`: {p['experiments']} experiments at 50%, "
            f"{results['offered_events_per_second']:,.0f} events/s offered in all "
            f"(target {p['rate_events_per_second']:,.0f}), {p['warmup_seconds']:g} s of "
            f"warm-up, then one breach (+{p['breach_latency_ms']:g} ms latency in "
            f"treatment) every {p['spacing_seconds']:g} s. Worker settings: "
            f"{p['worker_env'] or 'defaults'}.",
            "",
            "| to the rollback webhook, from | detected | p50 | p99 | max |",
            "|---|---:|---:|---:|---:|",
            f"| the breach's first event | {results['detected']} | "
            f"{s(results['p50_seconds'])} | {s(results['p99_seconds'])} | "
            f"{s(results['max_seconds'])} |",
            f"| enough units to reject (engine, offline) | {len(ready['latencies_seconds'])} | "
            f"{s(p50)} | {s(ready['p99_seconds'])} | {s(ready['max_seconds'])} |",
            "",
            f"- p50 target < 2 s once enough units exist to reject: {verdict}. The data "
            f"sufficed a median {s(ready['median_breach_to_enough_units_seconds'])} after the "
            f"breach began (the test's evidence, not the monitor's delay); never sufficed "
            f"before the webhook: {ready['never_enough'] or 'none'}. Missed: "
            f"{results['missed'] or 'none'}; rollbacks before a breach: "
            f"{results['rolled_back_before_breach'] or 'none'}; duplicate webhook "
            f"deliveries: {results['duplicate_deliveries']}.",
            f"- Worker processing lag (wall clock minus the newest processed event's time, "
            f"once a second): median {s(results['processing_lag_seconds']['median'])}, max "
            f"{s(results['processing_lag_seconds']['max'])}. Median split: breach to the "
            f"decision {s(results['median_to_decision_seconds'])}, enough units to the "
            f"decision {s(ready.get('median_to_decision_seconds'))}, decision to webhook "
            f"received {s(results['median_decision_to_webhook_seconds'])}. Partition "
            f"snapshots published: {results.get('snapshots_published_per_second', 0):.1f}/s.",
            *_readout_line(results),
        ]
    )


def _readout_line(results: dict[str, Any]) -> list[str]:
    """Readouts a second and their share of the worker's event loop (results since
    2026-12-05 morning; earlier ones have none)."""
    r = results.get("readouts")
    if not r:
        return []
    return [
        f"- Readouts: {r['arrival']['per_second']:.1f}/s on arrival, taking "
        f"{r['arrival']['share']:.1%} of the worker's event loop, and "
        f"{r['periodic']['per_second']:.1f}/s periodic ({r['periodic']['share']:.1%}); "
        f"held by the readout budget {results['readout_budget_wait_share']:.1%} of the time."
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__)
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--rate", type=float, default=10_000.0, help="events/s in all")
    parser.add_argument("--warmup", type=float, default=40.0)
    parser.add_argument("--spacing", type=float, default=3.0)
    parser.add_argument("--breach-ms", type=float, default=5_000.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra RAMPMON_* settings for the worker (repeatable)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--readme", type=Path)
    args = parser.parse_args(argv)
    command = "python -m bench.detection" + (f" --readme {args.readme}" if args.readme else "")
    results = run(args, command)
    publish(results, "detection", render_markdown(results), args.out, args.readme)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
