"""The broker restarts under a running worker: the worker reconnects and resumes on new events.

The bundled tansu broker keeps nothing across a restart, so the broker comes back with the
same topics (as a deployment's topic-init job would create them) and no data. What the
worker had accepted before the restart stays in its tables; the events produced afterwards,
by fresh units, are added to it. Nothing is lost and nothing counted twice: the statistics
equal numpy's on both sets of events together.

A memory-only broker also restarts each log at offset 0, below the offsets the worker had
read; Faust skips such messages as already read (with Kafka the log survives a restart, so
offsets never go back). The test therefore first sends probes -- messages the worker
dead-letters -- until every source partition is delivering again, and only then the new
events.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from monitor.workload import simulate_units, to_events
from streams.embedded import EmbeddedBroker
from streams.producer import ensure_topics, partition_of
from streams.workerproc import sample as value
from tests.integration.checks import assert_matches_numpy, processed, stable, stage_at
from tests.integration.stack import EXPERIMENT, PARTITIONS, Stack, wait_for

pytestmark = pytest.mark.integration


async def _topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return sorted(await admin.list_topics())
    finally:
        await admin.close()


PROBE = b'"probe"'  # valid JSON, not an event: dead-lettered as not_an_object


def _resume_every_partition(stack: Stack) -> int:
    """Probes to every source partition until each has delivered one to the worker;
    returns how many probes the worker read (each one dead-lettered)."""
    keys = {}
    for i in range(1000):
        keys.setdefault(partition_of(f"probe-{i}", PARTITIONS), f"probe-{i}".encode())
    wanted = {(stack.topics[t], p) for t in ("exposures", "telemetry") for p in keys}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for topic in ("exposures", "telemetry"):
            stack.produce_raw(topic, [(key, PROBE) for key in keys.values() for _ in range(10)])
        letters = [d for d in stack.consume("deadletter", timeout=1) if d["event"] == '"probe"']
        if {(d["source"]["topic"], d["source"]["partition"]) for d in letters} >= wanted:
            return len(letters)
    raise AssertionError("a source partition never delivered again after the broker restart")


def _exact(worker, exposures: list, telemetry: list) -> bool:  # type: ignore[no-untyped-def]
    try:
        assert_matches_numpy(worker.metrics(), exposures, telemetry, stage="50")
    except (AssertionError, KeyError):
        return False
    return True


def test_worker_reconnects_after_broker_restart_and_resumes_on_new_events(
    own_broker: EmbeddedBroker, own_stack: Stack
) -> None:
    stack = own_stack
    # the changelogs are empty after the restart while the tables hold what they recovered
    stack.env["RAMPMON_RECOVERY_CONSISTENCY_CHECK"] = "false"
    start = time.time() - 450
    stage_at(stack, 50, start - 60)
    before = to_events(
        simulate_units(4_000, seed=41), experiment=EXPERIMENT, start_ts=start,
        duration_s=300, seed=41, unit_prefix="before-",
    )  # fmt: skip
    after = to_events(
        simulate_units(4_000, seed=42), experiment=EXPERIMENT, start_ts=start,
        duration_s=300, seed=42, unit_prefix="after-",
    )  # fmt: skip
    worker = stack.start_worker()
    stack.produce("exposures", before[0])
    stack.produce("telemetry", before[1])
    wait_for(lambda: _exact(worker, *before), 120, "the statistics of the first events")
    topics = asyncio.run(_topics(own_broker.bootstrap))

    own_broker.stop()
    time.sleep(3)  # the worker's clients see the broker gone
    own_broker.start()
    asyncio.run(ensure_topics(own_broker.bootstrap, topics, PARTITIONS))
    probes = _resume_every_partition(stack)

    exposures, telemetry = before[0] + after[0], before[1] + after[1]
    stack.produce("exposures", after[0])
    stack.produce("telemetry", after[1])
    try:
        wait_for(lambda: _exact(worker, exposures, telemetry), 180, "the new events")
    except AssertionError:
        print(worker.log_tail(80))
        raise
    metrics = stable(worker, 60)
    assert_matches_numpy(metrics, exposures, telemetry, stage="50")
    # a reconnecting consumer may be handed a message again: it is processed, and the
    # unit records' applied offsets skip it (the statistics above are exact)
    assert processed(stack, worker) >= len(exposures) + len(telemetry)
    letters = stack.consume("deadletter")
    assert {d["event"] for d in letters} == {'"probe"'}  # nothing else was refused
    dead = sum(v for (n, _), v in metrics.items() if n == "rampmon_dead_letters_total")
    assert dead == len(letters) >= probes
    assert value(metrics, "rampmon_redis_up") == 1
    assert worker.proc is not None and worker.proc.poll() is None
