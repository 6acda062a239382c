"""Dependencies failing mid-stream: Redis unreachable, a webhook receiver answering 503.

Nothing the worker accepted is lost or duplicated: every event is processed (no consumer
lag, no dead letter), the rollback is claimed once and delivered once.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from redis import Redis

from alerts import keys
from streams.workerproc import WorkerProcess
from streams.workerproc import sample as value
from tests.integration.checks import stage_at
from tests.integration.stack import EXPERIMENT, Stack, wait_for

pytestmark = pytest.mark.integration


def _decided_rollback(worker: WorkerProcess) -> bool:
    m = worker.metrics()
    return value(m, "rampmon_experiment_decision", experiment=EXPERIMENT, decision="rollback") == 1


def _drained(stack: Stack, worker: WorkerProcess) -> bool:
    m = worker.metrics()
    lags = [value(m, "rampmon_consumer_lag_messages", topic=stack.topics[t])
            for t in ("exposures", "telemetry")]  # fmt: skip
    return all(x == 0 for x in lags)


def _traffic(stack: Stack, stop: threading.Event, use_redis: bool = True) -> threading.Thread:
    thread = threading.Thread(
        target=stack.run_regression,
        args=({"error_session": 0.5},),
        kwargs={"should_stop": stop.is_set, "rate": 600, "use_redis": use_redis},
        daemon=True,
    )
    thread.start()
    return thread


def test_redis_unreachable_for_ten_seconds(stack: Stack) -> None:
    """The worker keeps computing and exporting; the rollback it decides during the outage
    is claimed, written and delivered once Redis answers again.

    It failed 1 run in 5 in CI and 3 in 7 locally with two CPU burners, for a reason outside
    what it tests: the worker had not yet read the simulator's 50% stage when Redis
    stopped, so it decided at the default first stage and sent three notices. That
    stale-view sequence is now refused by the stage fence and has its own test
    (``test_regression_a_decision_on_a_stale_stage_view_is_not_claimed``). Here the ramp is
    at 50% before the worker starts, as in a deployment, so the outage is what is tested;
    no claim may be fenced."""
    stage_at(stack, 50, time.time() - 60)
    worker = stack.start_worker()
    stop = threading.Event()
    try:
        # a stage refresh succeeded: the worker holds the 50% stage (redis_up is set only by
        # a refresh until there is something to evaluate); now Redis stops answering
        # (SIGSTOP: connections hang like a partitioned server's, and its data survives)
        wait_for(lambda: value(worker.metrics(), "rampmon_redis_up") == 1, 60, "a stage read")
        assert stack.redis.proc is not None
        os.kill(stack.redis.proc.pid, signal.SIGSTOP)
        paused_at = time.monotonic()
        try:
            # the evidence exists only from now on: Redis stopped once the first events were
            # processed raced the worker, whose first fetch of the backlog could hold the
            # 50-point regression whole; the rollback was claimed and sent before the SIGSTOP
            # (a fresh-clone CI run of 8704c26). The simulator needs no Redis: 50% is in force
            traffic = _traffic(stack, stop, use_redis=False)
            wait_for(lambda: value(worker.metrics(), "rampmon_redis_up") == 0, 10, "redis_up 0")
            wait_for(
                lambda: _decided_rollback(worker), 30, "a rollback decided while Redis is down"
            )
            assert stack.receiver.requests == 0  # not claimed, so not sent
            time.sleep(max(0.0, 10 - (time.monotonic() - paused_at)))
        finally:
            os.kill(stack.redis.proc.pid, signal.SIGCONT)
        wait_for(lambda: bool(stack.receiver.accepted), 30, "the rollback after the outage")
        stop.set()
        traffic.join(30)
        wait_for(lambda: value(worker.metrics(), "rampmon_redis_up") == 1, 10, "redis_up 1")
        wait_for(lambda: _drained(stack, worker), 60, "every event processed")
        time.sleep(3)  # more evaluations: nothing more may be sent
        sent = [(d.payload["decision"], d.payload["stage"], d.payload["reason"])
                for d in stack.receiver.accepted]  # fmt: skip
        assert len(sent) == 1 and stack.receiver.requests == 1, (sent, worker.log_tail(60))
        assert stack.receiver.accepted[0].payload["decision"] == "rollback"
        kill = Redis.from_url(stack.redis.url, decode_responses=True).hgetall(
            keys.killswitch(EXPERIMENT)
        )
        assert kill["decision"] == "rollback"
        m = worker.metrics()
        # every (topic, reason) series exists from the start, at 0 (streams.metrics)
        assert not [k for k, v in m.items() if k[0] == "rampmon_dead_letters_total" and v]
        # a claim whose reply the outage swallowed reads "taken" on its retry, never fenced
        # (the counter's series exist from the start, at 0)
        fenced = [v for k, v in m.items() if k[0] == "rampmon_decisions_stage_moved_total"]
        assert fenced and not any(fenced), (fenced, worker.log_tail(60))
        assert worker.proc is not None and worker.proc.poll() is None
    finally:
        stop.set()
        if stack.redis.proc is not None:
            os.kill(stack.redis.proc.pid, signal.SIGCONT)


def test_webhook_receiver_answering_503_for_a_minute(stack: Stack) -> None:
    """Bounded retries with backoff and jitter outlast the outage; one delivery in the end,
    nothing dead-lettered, nothing sent twice."""
    stack.env.update(
        RAMPMON_WEBHOOK_BASE_DELAY_SECONDS="2",
        RAMPMON_WEBHOOK_MAX_DELAY_SECONDS="15",
        # full jitter makes the retry span random: 20 attempts capped at 15 s span ~2 min on
        # average, far past the one-minute outage (12 did not, in CI)
        RAMPMON_WEBHOOK_MAX_ATTEMPTS="20",
    )
    stack.receiver.status = 503
    worker = stack.start_worker()
    stop = threading.Event()
    traffic = _traffic(stack, stop)
    try:
        wait_for(lambda: stack.receiver.requests >= 1, 120, "the first (refused) delivery")
        stop.set()
        first_try = time.monotonic()
        wait_for(lambda: time.monotonic() - first_try >= 60, 70, "a minute of 503s", step=1)
        assert stack.receiver.refused >= 3 and not stack.receiver.accepted  # with backoff
        m = worker.metrics()
        assert value(m, "rampmon_deliveries_dead") == 0
        stack.receiver.status = 200
        wait_for(lambda: bool(stack.receiver.accepted), 60, "delivery after the recovery")
        traffic.join(30)
        time.sleep(5)
        assert len(stack.receiver.accepted) == 1
        assert stack.receiver.accepted[0].payload["decision"] == "rollback"
        m = worker.metrics()
        assert value(m, "rampmon_deliveries_dead") == 0
        assert value(m, "rampmon_deliveries_total", target="webhook", outcome="delivered") == 1
        failed = value(m, "rampmon_deliveries_total", target="webhook", outcome="failed_attempt")
        # counted by the receiver as it answers: a retry that arrived between a count taken
        # here and the switch to 200 was once refused but missed (11 failed against 10, CI)
        assert failed == stack.receiver.refused
    finally:
        stop.set()
