"""A rampmon deployment for one integration test: real broker, Redis, worker and receiver."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer

from alerts.receiver import WebhookReceiver
from streams.embedded import EmbeddedBroker, EmbeddedRedis
from streams.producer import EventProducer, ensure_topics
from streams.workerproc import WorkerProcess

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "experiments.yaml"
EXPERIMENT = "workflow_assistant"
SECRET = b"integration-test-secret"
PARTITIONS = 4


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Stack:
    """Unique topics and app id per test, so tests can share one broker."""

    def __init__(self, broker: EmbeddedBroker, redis: EmbeddedRedis, tmp: Path) -> None:
        self.broker = broker
        self.redis = redis
        tag = uuid.uuid4().hex[:8]
        self.topics = {
            "exposures": f"exposures-{tag}",
            "telemetry": f"telemetry-{tag}",
            "decisions": f"decisions-{tag}",
            "deadletter": f"deadletter-{tag}",
            "partials": f"partials-{tag}",
        }
        self.env = {
            "RAMPMON_BROKER_URL": broker.url,
            "RAMPMON_REDIS_URL": redis.url,
            "RAMPMON_WEBHOOK_SECRET": SECRET.decode(),
            "RAMPMON_APP_ID": f"rampmon-{tag}",
            "RAMPMON_PARTITIONS": str(PARTITIONS),
            "RAMPMON_WEBHOOK_BASE_DELAY_SECONDS": "0.05",
            **{f"RAMPMON_TOPIC_{k.upper()}": v for k, v in self.topics.items()},
        }
        self.receiver = WebhookReceiver(SECRET)
        self.tmp = tmp
        self.workers: list[WorkerProcess] = []
        asyncio.run(ensure_topics(broker.bootstrap, list(self.topics.values()), PARTITIONS))

    def start_worker(self, config_overrides: Mapping[str, Any] | None = None) -> WorkerProcess:
        config = yaml.safe_load(CONFIG.read_text())
        config["webhooks"] = [{"url": self.receiver.url}]
        config.update(config_overrides or {})
        path = self.tmp / f"experiments-{len(self.workers)}.yaml"
        path.write_text(yaml.safe_dump(config))
        worker = WorkerProcess(path, self.env)
        worker.start()
        self.workers.append(worker)
        return worker

    def run_regression(
        self,
        regression: Mapping[str, float],
        *,
        seed: int = 3,
        should_stop: Callable[[], bool] | None = None,
        rate: float = 1500,
        use_redis: bool = True,
    ) -> None:
        """Seed 000's live traffic at 50% with ``regression`` in treatment, until
        ``should_stop()`` (default: the receiver has a delivery) or two minutes pass;
        without ``use_redis`` the simulator does not announce its stage."""
        from streams.simulate import RampPlan, simulate

        asyncio.run(
            simulate(
                bootstrap=self.broker.bootstrap,
                redis_url=self.redis.url if use_redis else None,
                experiment=EXPERIMENT,
                plan=RampPlan([50], seconds_per_stage=120, duration=120),
                rate=rate,
                partitions=PARTITIONS,
                exposures_topic=self.topics["exposures"],
                telemetry_topic=self.topics["telemetry"],
                regression=regression,
                seed=seed,
                should_stop=should_stop or (lambda: bool(self.receiver.accepted)),
            )
        )

    def produce(self, topic: str, events: Iterable[Mapping[str, Any]], batch: int = 100) -> None:
        async def go() -> None:
            producer = EventProducer(self.broker.bootstrap, partitions=PARTITIONS, batch_size=batch)
            await producer.start()
            try:
                await producer.send_events(self.topics[topic], events)
            finally:
                await producer.stop()

        asyncio.run(go())

    def produce_raw(self, topic: str, messages: Iterable[tuple[bytes, bytes]]) -> None:
        """(key, value) pairs, partitioned by key like any default producer."""

        async def go() -> None:
            producer = EventProducer(self.broker.bootstrap, partitions=PARTITIONS)
            await producer.start()
            try:
                for key, raw in messages:
                    await producer.send_raw(self.topics[topic], raw, key=key)
            finally:
                await producer.stop()

        asyncio.run(go())

    def consume(
        self, topic: str, timeout: float = 3.0, decode: Callable[[bytes], Any] = orjson.loads
    ) -> list[Any]:
        """Every message of ``topic`` so far, each decoded (JSON unless told)."""

        async def go() -> list[Any]:
            consumer = AIOKafkaConsumer(
                self.topics[topic],
                bootstrap_servers=self.broker.bootstrap,
                auto_offset_reset="earliest",
                group_id=None,
                enable_auto_commit=False,
            )
            await consumer.start()
            out: list[Any] = []
            try:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    batches = await consumer.getmany(timeout_ms=500)
                    out += [decode(m.value) for ms in batches.values() for m in ms]
            finally:
                await consumer.stop()
            return out

        return asyncio.run(go())

    def stop(self) -> None:
        for w in self.workers:
            w.stop()
