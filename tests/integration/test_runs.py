"""Record runs (streams.runs) on the real broker: exact statistics and exact commits.

The ingest agent takes each fetched run of a source partition as one Faust message, whose
offset is the run's last. Faust must still commit every offset exactly: a stalled commit
makes a restarted worker replay, one past the records loses them.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.workerproc import sample as value
from tests.integration.checks import assert_matches_numpy, seed_events, settle
from tests.integration.stack import EXPERIMENT, PARTITIONS, Stack, wait_for

pytestmark = pytest.mark.integration


def _offsets(stack: Stack, group: str | None) -> dict[tuple[str, int], int]:
    """Per source partition: the group's committed offset, or (no group) one past the
    last record, read record by record (the broker's end offsets are not exact)."""

    async def go() -> dict[tuple[str, int], int]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=stack.broker.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        tps = [
            TopicPartition(stack.topics[t], p)
            for t in ("exposures", "telemetry")
            for p in range(PARTITIONS)
        ]
        out: dict[tuple[str, int], int] = {}
        try:
            if group is not None:
                for tp in tps:
                    out[(tp.topic, tp.partition)] = await consumer.committed(tp) or 0
                return out
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            idle = 0
            while idle < 3:
                batches = await consumer.getmany(timeout_ms=500)
                idle = 0 if batches else idle + 1
                for tp, records in batches.items():
                    out[(tp.topic, tp.partition)] = records[-1].offset + 1
        finally:
            await consumer.stop()
        return out

    return asyncio.run(go())


@pytest.mark.parametrize("store", ["memory://", "rocksdb://"])
def test_single_event_messages_are_exact_and_every_offset_is_committed(
    stack: Stack, store: str
) -> None:
    """With either table store; rocksdb (rocksdict) is the production one for unit
    records. The restarted worker has an empty data directory: it rebuilds its store from
    the changelogs, past the broker's misreported end offsets (recover_tail)."""
    stack.env["RAMPMON_STORE"] = store
    exposures, telemetry = seed_events(stack, 3_000, 11, duration=300)
    worker = stack.start_worker()
    stack.produce("exposures", exposures, batch=1)
    stack.produce("telemetry", telemetry, batch=1)
    total = len(exposures) + len(telemetry)
    metrics = settle(stack, worker, total, timeout=240)
    assert_matches_numpy(metrics, exposures, telemetry, stage="50")
    messages = sum(
        value(metrics, "rampmon_messages_processed_total", topic=stack.topics[t])
        for t in ("exposures", "telemetry")
    )
    assert messages == total  # one event per message, each counted once

    ends = _offsets(stack, None)
    assert sum(ends.values()) == total
    group = stack.env["RAMPMON_APP_ID"]
    # Faust commits every commit_interval (2.8 s): wait for the acked offsets to land
    wait_for(lambda: _offsets(stack, group) == ends, 30, "every offset committed")

    # a restarted worker resumes at the commits: it replays nothing
    worker.stop()
    again = stack.start_worker()
    more_exposures, _ = seed_events(stack, 200, 12, duration=60)
    more = [dict(e, unit_id=f"late-{e['unit_id']}") for e in more_exposures]
    stack.produce("exposures", more, batch=1)

    def count(name: str, **labels: str) -> float:
        found = value(again.metrics(), name, **labels)
        return 0.0 if found != found else found  # NaN: no such series yet

    def new_events() -> float:
        return count("rampmon_events_processed_total", topic=stack.topics["exposures"])

    wait_for(lambda: new_events() >= len(more), 120, "the new events processed")
    time.sleep(3)  # a replay, were there one, would land after them
    assert new_events() == len(more)
    assert count("rampmon_events_processed_total", topic=stack.topics["telemetry"]) == 0
    assert count("rampmon_attribution_events_total", experiment="", outcome="replayed") == 0
    applied = count(
        "rampmon_attribution_events_total", experiment=EXPERIMENT, outcome="exposure_applied"
    )
    assert applied == len(more)
    # and commits them: its first runs start at a committed offset, not at 0
    ends = _offsets(stack, None)
    wait_for(lambda: _offsets(stack, group) == ends, 30, "the new offsets committed")
