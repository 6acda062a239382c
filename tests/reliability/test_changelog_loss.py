"""A changelog batch the broker never acknowledges ends the worker before any offset
commit passes its run, and the next worker's statistics equal numpy's on every event.

A first worker processes and commits the events of a tenth of the units, and stops. A second
worker recovers its table and drains the rest; the broker is frozen (SIGSTOP: its
connections hang and its data survives) for longer than the producer's request timeout,
so aiokafka fails the changelog writes in flight or waiting to be queued. Faust flushes
its producer before a commit, but a flush does not fail with a batch, and the commit used
to pass the run whose unit records were lost, which no later owner of the partition
counted (streams.acks). A third worker recovers the table and is redelivered what the
second did not commit.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

import pytest

from streams.acks import EXIT_DELIVERY_LOST
from streams.workerproc import sample as value
from tests.integration.checks import processed, seed_events, wait_exact
from tests.integration.stack import Stack, wait_for

pytestmark = pytest.mark.integration


def _unit_by_unit(exposures: list, telemetry: list) -> tuple[list, list]:
    """The same events, each unit's telemetry moved to just after its exposure, so that in
    event-time order a unit's events are next to each other. A run's unit records are then
    rewritten by no later run, and a run whose batch was lost without the worker noticing
    stays lost (with the events spread over the stream, later runs rewrote most of its
    units whole from the worker's table, and a version of the worker that let the commit
    pass the lost run still passed this test)."""
    exposed_at = {e["unit_id"]: e["ts"] for e in exposures}
    moved, seen = [], Counter[str]()
    for t in telemetry:
        seen[t["unit_id"]] += 1
        moved.append({**t, "ts": exposed_at[t["unit_id"]] + 1e-3 * seen[t["unit_id"]]})
    return exposures, sorted(moved, key=lambda t: t["ts"])


def test_a_changelog_batch_lost_to_a_frozen_broker_ends_the_worker_and_changes_no_number(
    own_stack: Stack,
) -> None:
    stack = own_stack  # its broker is frozen
    # tansu reports a lagging high watermark: see Settings.recovery_consistency_check
    stack.env["RAMPMON_RECOVERY_CONSISTENCY_CHECK"] = "false"
    stack.env["RAMPMON_PRODUCER_REQUEST_TIMEOUT_SECONDS"] = "3"
    exposures, telemetry = _unit_by_unit(*seed_events(stack, 40_000, seed=12, duration=600))
    # the first tenth of the units, then the rest
    k = len(exposures) // 10
    early = {e["unit_id"] for e in exposures[:k]}
    parts = [
        (exposures[:k], [t for t in telemetry if t["unit_id"] in early]),
        (exposures[k:], [t for t in telemetry if t["unit_id"] not in early]),
    ]
    stack.produce("exposures", parts[0][0])
    stack.produce("telemetry", parts[0][1], batch=1)
    first = stack.start_worker()
    done = len(parts[0][0]) + len(parts[0][1])
    wait_for(lambda: processed(stack, first) == done, 120, "the first part processed")
    first.stop()  # commits, and leaves the group

    # one telemetry event a message: a drain of a few seconds, with a changelog batch in
    # flight nearly all the time and more runs fetched behind it
    stack.produce("exposures", parts[1][0])
    stack.produce("telemetry", parts[1][1], batch=1)
    worker = stack.start_worker()
    wait_for(lambda: processed(stack, worker) > 0, 120, "a first processed event", step=0.02)
    rest = len(parts[1][0]) + len(parts[1][1])
    assert processed(stack, worker) < rest, "drained before the broker froze: no batch to lose"
    broker = stack.broker.proc
    assert broker is not None
    os.kill(broker.pid, signal.SIGSTOP)
    try:
        proc = worker.proc
        assert proc is not None
        wait_for(lambda: proc.poll() is not None, 60, "the worker to exit", step=0.1)
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    log = worker.log_tail(400)
    assert proc.returncode == EXIT_DELIVERY_LOST, log
    assert "was not delivered" in log and "Exiting without a shutdown" in log, log

    restarted = stack.start_worker()

    metrics = wait_exact(
        stack, restarted, exposures, telemetry, 300, "the statistics to equal numpy's"
    )
    lags = [value(metrics, "rampmon_consumer_lag_messages", topic=stack.topics[t])
            for t in ("exposures", "telemetry")]  # fmt: skip
    assert lags == [0, 0]
