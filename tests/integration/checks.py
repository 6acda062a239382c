"""Checks shared by the integration and reliability suites: wait for a live worker to
settle, seed 000's events, and compare its gauges with numpy on the same per-unit data."""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np
import orjson
import pytest

from alerts.stages import set_stage
from monitor.layout import ExperimentLayout
from monitor.unitstats import ExperimentStats
from monitor.workload import METRICS, simulate_units, to_events, unit_totals
from streams.cli import load_config
from streams.partials import unbundle
from streams.producer import partition_of
from streams.workerproc import sample as value
from tests.integration.stack import CONFIG, EXPERIMENT, PARTITIONS, Stack, wait_for

__all__ = [
    "assert_last_window_matches_numpy",
    "assert_matches_numpy",
    "diagnose",
    "processed",
    "seed_events",
    "settle",
    "stable",
    "stage_at",
    "wait_exact",
]


def processed(stack: Stack, worker) -> float:  # type: ignore[no-untyped-def]
    m = worker.metrics()
    counts = (
        value(m, "rampmon_events_processed_total", topic=stack.topics[t])
        for t in ("exposures", "telemetry")
    )
    # a worker that processed nothing of a topic (a restart after its offsets were all
    # committed) has no series for it: 0, not NaN, or the sum never reaches the total
    return sum(0.0 if math.isnan(c) else c for c in counts)


def settle(stack: Stack, worker, total: int, timeout: float) -> dict:  # type: ignore[no-untyped-def]
    """Wait until every event is processed, then for the next publish + evaluation."""
    wait_for(lambda: processed(stack, worker) >= total, timeout, f"{total} events processed")
    return stable(worker, timeout)


def stable(worker, timeout: float) -> dict:  # type: ignore[no-untyped-def]
    """Metrics once two scrapes a few publish/evaluate cycles apart agree.

    Timers share the event loop with a busy ingest agent and can drift (seconds, on a
    loaded machine): agreement between scrapes, not with the truth, is the condition.
    """
    deadline = time.monotonic() + timeout
    previous = None
    while time.monotonic() < deadline:
        metrics = worker.metrics()
        # repr: stages without units export NaN, and NaN never equals itself
        stats = {k: repr(v) for k, v in metrics.items() if k[0].startswith("rampmon_metric_")}
        if stats and stats == previous:
            return metrics
        previous = stats
        time.sleep(3.0)
    raise AssertionError("statistics did not settle")


def wait_exact(  # type: ignore[no-untyped-def]
    stack: Stack, worker, exposures: list, telemetry: list, timeout: float, what: str
) -> dict:
    """Poll until the worker's statistics equal numpy's on these events, then return its
    settled metrics, checked again. Recovery and redelivery take a while, and a lost or
    doubled event never gets there: the timeout prints :func:`diagnose` and the wait's
    error; the final assert shows the difference."""

    def exact() -> bool:
        try:
            assert_matches_numpy(worker.metrics(), exposures, telemetry, stage="50")
        except (AssertionError, KeyError):
            return False
        return True

    try:
        wait_for(exact, timeout, what, step=2)
    except AssertionError:
        diagnose(stack, worker, exposures, telemetry)
        raise
    metrics = stable(worker, 120)
    assert_matches_numpy(metrics, exposures, telemetry, stage="50")
    return metrics


def stage_at(stack: Stack, percent: float, at: float) -> None:
    async def go() -> None:
        from redis.asyncio import Redis as AsyncRedis

        r = AsyncRedis.from_url(stack.redis.url)
        await set_stage(r, EXPERIMENT, percent, now=at, by="test")
        await r.aclose()

    asyncio.run(go())


def seed_events(
    stack: Stack, n: int, seed: int, *, duration: float
) -> tuple[list[dict], list[dict]]:
    """Seed 000's units as events in the recent past, all exposed at the 50% stage."""
    start = time.time() - 1.5 * duration
    stage_at(stack, 50, start - 60)
    units = simulate_units(n, seed=seed)
    return to_events(units, experiment=EXPERIMENT, start_ts=start, duration_s=duration, seed=seed)


def assert_matches_numpy(metrics: dict, exposures: list, telemetry: list, stage: str) -> None:
    totals = unit_totals(exposures, telemetry)
    for variant in ("control", "treatment"):
        mask = totals.variant == variant
        labels = {"experiment": EXPERIMENT, "variant": variant, "stage": stage}
        assert value(metrics, "rampmon_exposures", **labels) == mask.sum()
        for metric in METRICS:
            truth = totals.values[metric][mask]
            n = value(metrics, "rampmon_metric_units", **labels, metric=metric)
            mean = value(metrics, "rampmon_metric_mean", **labels, metric=metric)
            sd = value(metrics, "rampmon_metric_stddev", **labels, metric=metric)
            assert n == truth.size, (variant, metric)
            assert mean == pytest.approx(truth.mean(), rel=1e-9, abs=0), (variant, metric)
            assert sd == pytest.approx(truth.std(ddof=1), rel=1e-6), (variant, metric)


def assert_last_window_matches_numpy(metrics: dict, exposures: list, telemetry: list) -> None:
    """The exported window, the newest complete one, against the same events: first
    exposures, and telemetry from the unit's exposure on, whose event time falls in it."""
    config = load_config(CONFIG)
    cfg, size = config.experiment(EXPERIMENT), config.windows.size_seconds
    start = value(metrics, "rampmon_window_start_timestamp_seconds", experiment=EXPERIMENT)
    newest = max(e["ts"] for e in [*exposures, *telemetry])
    assert start == math.floor(newest / size) * size, (start, newest, time.time())
    first: dict[str, dict] = {}
    for e in exposures:
        first.setdefault(e["unit_id"], e)
    inside = [t for t in telemetry if start <= t["ts"] < start + size]
    for variant in cfg.variants:
        labels = {"experiment": EXPERIMENT, "variant": variant}
        exposed = [e for e in first.values() if e["variant"] == variant]
        in_window = sum(start <= e["ts"] < start + size for e in exposed)
        assert value(metrics, "rampmon_window_exposures", **labels) == in_window, variant
        for metric in cfg.metrics:
            values = np.array([
                t["value"] for t in inside
                if t["metric"] == metric.name and (x := first.get(t["unit_id"])) is not None
                and x["variant"] == variant and t["ts"] >= x["ts"]
            ])  # fmt: skip
            n = value(metrics, "rampmon_window_events", **labels, metric=metric.name)
            assert n == values.size, (variant, metric.name)
            if values.size:
                mean = value(metrics, "rampmon_window_event_mean", **labels, metric=metric.name)
                assert mean == pytest.approx(values.mean(), rel=1e-9), (variant, metric.name)


def diagnose(stack: Stack, worker, exposures: list, telemetry: list) -> None:  # type: ignore[no-untyped-def]
    """What a timed-out exactness wait needs, printed: the worker's log, its counters, and
    per source partition the latest snapshot against numpy on that partition's units --
    which partition is off, by how many units and by how much of each metric. It runs in
    an ``except`` block: its own failure is printed, never raised over the real one."""
    try:
        _diagnose(stack, worker, exposures, telemetry)
    except Exception as exc:
        print(f"diagnose failed: {exc!r}")


def _diagnose(stack: Stack, worker, exposures: list, telemetry: list) -> None:  # type: ignore[no-untyped-def]
    print(worker.log_tail(60))
    metrics = worker.metrics()
    for name in ("rampmon_events_processed_total", "rampmon_consumer_lag_messages"):
        print(name, {t: value(metrics, name, topic=stack.topics[t])
                     for t in ("exposures", "telemetry")})  # fmt: skip
    print("dead letters", {k: v for k, v in metrics.items() if "dead_letters" in k[0]})
    layout = ExperimentLayout(load_config(CONFIG).experiment(EXPERIMENT))
    latest: dict[int, dict] = {}
    count: dict[int, int] = {}
    # a partials message is a bundle of JSON snapshots (streams.partials), not one JSON
    bundles = stack.consume("partials", decode=unbundle)
    for doc in (orjson.loads(raw) for snapshots in bundles for raw in snapshots):
        if doc["experiment"] != EXPERIMENT:
            continue
        p = doc["partition"]
        count[p] = count.get(p, 0) + 1
        if doc["seq"] >= latest.get(p, {"seq": -1})["seq"]:
            latest[p] = doc
    exposed, measured = _by_partition(exposures), _by_partition(telemetry)
    for p in range(PARTITIONS):
        truth = unit_totals(exposed.get(p, []), measured.get(p, []))
        if p not in latest:
            print(f"partition {p}: no snapshot; truth {truth.variant.size} units")
            continue
        units = ExperimentStats.from_wire(latest[p]["stats"]).units
        diff = {
            m: float(units.sum[..., layout.column(m)].sum() - truth.values[m].sum())
            for m in METRICS
        }
        print(
            f"partition {p}: {count[p]} snapshots, last seq {latest[p]['seq']}, "
            f"units {int(units.n.sum())} (truth {truth.variant.size}), "
            f"metric sums minus truth { ({m: d for m, d in diff.items() if not np.isclose(d, 0)}) }"
        )


def _by_partition(events: list) -> dict[int, list]:
    out: dict[int, list] = {}
    for e in events:
        out.setdefault(partition_of(e["unit_id"], PARTITIONS), []).append(e)
    return out
