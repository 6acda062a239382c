"""`rampmon demo`: the whole path on embedded servers, start to rollback, then clean up.

Starts tansu and redis-server on free ports, a local webhook receiver, one ``rampmon
worker`` process and the seed-000 simulator with an injected error-session regression
(+2 pp in treatment). It prints a live readout while the ramp advances 1% -> 5% -> 25% ->
50%, then the signed rollback webhook, the Redis kill switch and the decision event.
"""

from __future__ import annotations

import asyncio
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import yaml
from aiokafka import AIOKafkaConsumer
from redis.asyncio import Redis

from alerts import keys
from alerts.receiver import Delivery, WebhookReceiver
from streams.embedded import EmbeddedBroker, EmbeddedRedis
from streams.simulate import RampPlan, simulate
from streams.workerproc import Sample, WorkerProcess

__all__ = ["run_demo"]

EXPERIMENT = "workflow_assistant"
CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "experiments.yaml"
REGRESSION = {"error_session": 0.02}


def _value(metrics: dict[Sample, float], name: str, **labels: str) -> float:
    want = set(labels.items())
    for (n, ls), v in metrics.items():
        if n == name and want <= ls:
            return v
    return float("nan")


def _readout(metrics: dict[Sample, float], stage: float, elapsed: float) -> str:
    st = f"{stage:g}"
    exp = {"experiment": EXPERIMENT, "stage": st}
    c = _value(metrics, "rampmon_exposures", **exp, variant="control")
    t = _value(metrics, "rampmon_exposures", **exp, variant="treatment")
    g = {**exp, "guardrail": "error_session", "variant": "treatment"}
    effect = _value(metrics, "rampmon_guardrail_effect", **g)
    lo = _value(metrics, "rampmon_guardrail_interval_lower", **g)
    hi = _value(metrics, "rampmon_guardrail_interval_upper", **g)
    verdict = next(
        (
            v
            for v in ("breach", "pass", "inconclusive")
            if _value(metrics, "rampmon_guardrail_verdict", **g, verdict=v) == 1.0
        ),
        "-",
    )
    events = sum(
        _value(metrics, "rampmon_events_processed_total", topic=topic)
        for topic in ("exposures", "telemetry")
    )
    if events != events:  # NaN: the worker has not joined its consumer group yet
        return f"t={elapsed:5.1f}s stage={st:>3}%  worker joining its consumer group ..."
    if c != c or t != t:  # the stage's series appear with its first evaluation
        return (
            f"t={elapsed:5.1f}s stage={st:>3}%  waiting for the stage's first readout ... "
            f"events={events:,.0f}"
        )
    # below the estimation floor there is no effect yet: say so rather than print NaNs
    estimate = (
        f"effect={effect:+.4f} CS=[{lo:+.4f}, {hi:+.4f}]"
        if effect == effect
        else "effect not estimated yet (too few units)"
    )
    return (
        f"t={elapsed:5.1f}s stage={st:>3}%  units c/t={c:6.0f}/{t:<6.0f} "
        f"error_session {estimate} margin=+0.0050 -> {verdict:<12} events={events:,.0f}"
    )


async def _decision_events(bootstrap: str) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(
        "decisions",
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3000)
        return [orjson.loads(m.value) for msgs in batches.values() for m in msgs if m.value]
    finally:
        await consumer.stop()


def _rollback(receiver: WebhookReceiver) -> Delivery | None:
    return next((d for d in receiver.accepted if d.payload.get("decision") == "rollback"), None)


async def run_demo(*, timeout: float = 240.0, rate: float = 800.0) -> int:
    secret = secrets.token_hex(16)
    receiver = WebhookReceiver(secret.encode())
    broker, redis_server = EmbeddedBroker(), EmbeddedRedis()
    worker: WorkerProcess | None = None
    workdir = Path(tempfile.mkdtemp(prefix="rampmon-demo-"))
    try:
        print("starting tansu (Kafka API) and redis-server on free loopback ports ...")
        broker.start()
        redis_server.start()
        await receiver.start()
        config = yaml.safe_load(CONFIG.read_text())
        config["webhooks"] = [{"url": receiver.url}]
        config_path = workdir / "experiments.yaml"
        config_path.write_text(yaml.safe_dump(config))
        env = {
            "RAMPMON_BROKER_URL": broker.url,
            "RAMPMON_REDIS_URL": redis_server.url,
            "RAMPMON_WEBHOOK_SECRET": secret,
            "RAMPMON_APP_ID": "rampmon-demo",
        }
        worker = WorkerProcess(config_path, env)
        worker.start()
        print(f"worker up: http://127.0.0.1:{worker.web_port}/metrics ; webhook {receiver.url}")
        print(
            f"simulating seed 000 traffic at {rate:g} units/s, "
            f"injected regression {REGRESSION} in treatment\n"
        )
        started = time.time()
        last_print = 0.0
        w = worker

        async def on_tick(stage: float, units: int) -> None:
            nonlocal last_print
            if time.time() - last_print >= 2.0:
                last_print = time.time()
                metrics = await asyncio.to_thread(w.metrics)
                print(_readout(metrics, stage, time.time() - started), flush=True)

        await simulate(
            bootstrap=broker.bootstrap,
            redis_url=redis_server.url,
            experiment=EXPERIMENT,
            plan=RampPlan([1, 5, 25, 50], seconds_per_stage=10.0, duration=timeout),
            rate=rate,
            partitions=4,
            regression=REGRESSION,
            seed=7,
            on_tick=on_tick,
            should_stop=lambda: _rollback(receiver) is not None,
        )
        deadline = time.time() + 30
        while _rollback(receiver) is None and time.time() < deadline:
            await asyncio.sleep(0.2)
        delivery = _rollback(receiver)
        if delivery is None:
            print(f"\nno rollback within {timeout:g}s -- worker log:\n{worker.log_tail()}")
            return 1
        elapsed = time.time() - started
        metrics = await asyncio.to_thread(worker.metrics)
        events = sum(
            _value(metrics, "rampmon_events_processed_total", topic=t)
            for t in ("exposures", "telemetry")
        )
        print(f"\nROLLBACK webhook received after {elapsed:.1f}s (signature verified):")
        print(orjson.dumps(delivery.event, option=orjson.OPT_INDENT_2).decode())
        print(f"X-Rampmon-Signature: {delivery.signature}")
        redis = Redis.from_url(redis_server.url, decode_responses=True)
        kill = await redis.hgetall(keys.killswitch(EXPERIMENT))
        stage = await redis.hget(keys.stage(EXPERIMENT), "percent")
        await redis.aclose()
        print(f"\nRedis kill switch {keys.killswitch(EXPERIMENT)}: {kill}")
        print(f"ramp stage now {float(stage or 0):g}% (set by the rollback)")
        decisions = await _decision_events(broker.bootstrap)
        print(f"decision events on 'decisions' (CloudEvents): {len(decisions)}")
        for d in decisions:
            data = d["data"]
            print(
                f"  {data['decision']:<9} at {data['stage']:g}%: {data['reason']}"
                f"{' (' + data['guardrail'] + ')' if data['guardrail'] else ''}"
            )
        _, gate = await asyncio.to_thread(worker.request, f"/experiments/{EXPERIMENT}/gate")
        print(f"rollout gate GET /experiments/{EXPERIMENT}/gate: {gate.decode()}")
        print(
            f"\nworker: {events:,.0f} events in {elapsed:.1f}s "
            f"({events / elapsed:,.0f} events/s offered and processed), "
            f"peak RSS {worker.peak_rss_bytes() / 2**20:.0f} MiB"
        )
        return 0
    finally:
        if worker is not None:
            worker.stop()
        await receiver.stop()
        broker.cleanup()
        redis_server.cleanup()
