"""`rampmon simulate`: seed 000's workflow-assistant traffic, streamed into Kafka.

Units arrive at ``rate`` per second; each gets an exposure (treatment with the ramp stage's
probability) and its telemetry (tasks, revenue, latency, error sessions, support tickets)
from :class:`monitor.workload.RampTraffic`. The stage is set in Redis as the ramp advances.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from alerts.stages import set_stage
from monitor.workload import RampTraffic
from streams.producer import EventProducer, ensure_topics

__all__ = ["RampPlan", "parse_regression", "simulate"]


@dataclass(frozen=True)
class RampPlan:
    """Stages (percent) and how long to hold each; the last is held until ``duration``."""

    stages: Sequence[float]
    seconds_per_stage: float
    duration: float


def parse_regression(specs: Sequence[str]) -> dict[str, float]:
    """``["error_session=+0.02", "latency_ms=30"]`` -> ``{"error_session": 0.02, ...}``."""
    out: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise ValueError(f"--regression expects METRIC=DELTA, got {spec!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--regression: {value.strip()!r} is not a number") from None
    return out


async def simulate(
    *,
    bootstrap: str,
    redis_url: str | None,
    experiment: str,
    plan: RampPlan,
    rate: float,
    partitions: int,
    exposures_topic: str = "exposures",
    telemetry_topic: str = "telemetry",
    regression: Mapping[str, float] | None = None,
    seed: int = 1,
    batch_size: int = 100,
    tick: float = 0.25,
    on_tick: Callable[[float, int], Awaitable[None]] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Produce until ``plan.duration`` elapses or ``should_stop()``; return units produced."""
    traffic = RampTraffic(experiment, seed=seed, regression=regression)
    producer = EventProducer(bootstrap, partitions=partitions, batch_size=batch_size)
    redis = Redis.from_url(redis_url) if redis_url else None
    await ensure_topics(bootstrap, [exposures_topic, telemetry_topic], partitions)
    await producer.start()
    units = 0
    stage: float = plan.stages[0]
    announced: float | None = None
    started = time.time()
    try:
        while (elapsed := time.time() - started) < plan.duration and not should_stop():
            index = min(int(elapsed // plan.seconds_per_stage), len(plan.stages) - 1)
            stage = plan.stages[index]
            if stage != announced:
                announced = stage
                if redis is not None:
                    await set_stage(redis, experiment, stage, now=time.time(), by="simulate")
            target = int(rate * elapsed) - units
            if target > 0:
                # stamped with the stage they were drawn under: the workers' view of the
                # stage history may be up to a refresh interval old
                exposures, telemetry = traffic.next_batch(
                    target, stage / 100.0, time.time(), stage=stage
                )
                await producer.send_events(exposures_topic, exposures)
                await producer.send_events(telemetry_topic, telemetry)
                units += target
            if on_tick is not None:
                await on_tick(stage, units)
            await asyncio.sleep(tick)
    finally:
        await producer.stop()
        if redis is not None:
            await redis.aclose()
    return units
