"""How the Faust app is configured, where a setting carries a measured consequence."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from alerts.outbox import Job, Target
from alerts.payloads import DecisionNotice
from streams.app import (
    PRODUCER_MAX_REQUEST_BYTES,
    STREAM_BUFFER_RUNS,
    build_app,
    kafka_sender,
)
from streams.changelog import BATCH_BYTES
from streams.cli import DEFAULT_CONFIG, load_config
from streams.settings import Settings


def test_regression_the_stream_buffer_holds_few_runs() -> None:
    """A stream message is a whole fetched run (streams.runs), and Faust buffers up to
    ``stream_buffer_maxsize`` of them before it stops fetching. With Faust's default of
    4096, bench/memory.py held ~550 MiB of buffered runs: worker RSS 790 MiB flat from 1M
    to 5M events, against 240 MiB with 16 (bench/README.md, Memory)."""
    rampmon = build_app(Settings(webhook_secret="x" * 32), load_config(DEFAULT_CONFIG))
    assert rampmon.app.conf.stream_buffer_maxsize == STREAM_BUFFER_RUNS <= 64


def test_the_consumer_long_polls_for_the_configured_wait() -> None:
    """Faust hard-codes aiokafka's ``fetch_max_wait_ms=1500``; tansu answers a waiting fetch
    only when that runs out, so a snapshot on an idle partials partition reached the
    evaluator ~0.5 s late (README "Latency on the bundled broker"). The setting must reach
    the aiokafka consumer Faust builds, which hands it to its fetcher when it starts."""

    async def built(wait: float) -> int:
        settings = Settings(webhook_secret="x" * 32, consumer_fetch_max_wait_seconds=wait)
        app = build_app(settings, load_config(DEFAULT_CONFIG)).app
        consumer = app.consumer._thread._create_worker_consumer(app.transport)
        try:
            return int(consumer._fetch_max_wait_ms)
        finally:
            await consumer.stop()  # never started: closes its client

    assert asyncio.run(built(0.1)) == 100
    assert asyncio.run(built(0.025)) == 25
    assert Settings().consumer_fetch_max_wait_seconds < 1.5


def test_the_producer_fails_a_batch_after_the_configured_request_timeout() -> None:
    """A changelog batch that aiokafka fails ends the worker (streams.acks); the setting
    is how long it retries first, and must reach the aiokafka producer Faust builds."""
    settings = Settings(webhook_secret="x" * 32, producer_request_timeout_seconds=7.5)
    app = build_app(settings, load_config(DEFAULT_CONFIG)).app
    assert app.producer._settings_default()["request_timeout_ms"] == 7500
    default = build_app(Settings(webhook_secret="x" * 32), load_config(DEFAULT_CONFIG)).app
    assert default.producer._settings_default()["request_timeout_ms"] == 1_200_000
    # a run is acked from its dead letters' delivery futures: with publish-on-commit,
    # Faust's send would resolve them only at a commit, which the unacked run holds back
    assert not default.conf.stream_publish_on_commit


def test_a_claimed_decision_is_sent_without_waiting_for_the_poll() -> None:
    """The outbox poll runs every 0.2 s (DELIVERY_POLL_SECONDS); a rollback just claimed starts a
    delivery at once (one at a time: a slow receiver must not pile up tasks)."""
    rampmon = build_app(Settings(webhook_secret="x" * 32), load_config(DEFAULT_CONFIG))
    release = asyncio.Event()
    runs = 0

    async def deliver() -> None:
        nonlocal runs
        runs += 1
        await release.wait()

    rampmon._deliver = deliver  # type: ignore[method-assign]
    notice = DecisionNotice(
        experiment="workflow_assistant", stage=50.0, decision="rollback", guardrail="g",
        metric="latency_ms", variant="treatment", effect=1.0, lower=0.5, upper=1.5,
        margin=0.1, decided_at=0.0, reason="guardrail_breach",
    )  # fmt: skip

    async def fire() -> None:
        rampmon._on_fired(notice)
        await asyncio.sleep(0)
        assert runs == 1  # started before any poll could run
        rampmon._on_fired(notice)  # still sending: no second task
        await asyncio.sleep(0)
        assert runs == 1
        release.set()
        await asyncio.sleep(0.01)
        rampmon._on_fired(notice)
        await asyncio.sleep(0)
        assert runs == 2
        await asyncio.sleep(0.01)

    asyncio.run(fire())


def test_regression_snapshots_share_producer_batches() -> None:
    """aiokafka's default 16 KiB batch holds one snapshot (12-40 KiB), and a partition's
    next batch waits for the last one's ack: 80 snapshots took 48-59 ms to send, against
    9-10 ms in one batch per partition. A batch must hold a publish round of a partials
    partition (20 snapshots of ~12 KiB in bench/detection.py), and stay under Kafka's
    default message.max.bytes."""
    rampmon = build_app(Settings(webhook_secret="x" * 32), load_config(DEFAULT_CONFIG))
    settings = rampmon.app.producer._settings_default()
    assert settings["max_batch_size"] == BATCH_BYTES
    assert 20 * 12_458 <= BATCH_BYTES < PRODUCER_MAX_REQUEST_BYTES < 1_048_588


def test_the_consumer_hands_over_a_fetch_oldest_partition_first() -> None:
    """Faust's consumer uses our scheduler (streams.scheduling), not its round robin."""
    from streams.scheduling import OldestFirst

    rampmon = build_app(Settings(webhook_secret="x" * 32), load_config(DEFAULT_CONFIG))
    assert type(rampmon.app.consumer.scheduler) is OldestFirst


def test_faust_keeps_the_committed_offsets_the_lag_counts_from() -> None:
    """The lag of a held partition not yet processed from reads Faust's private
    ``Consumer._committed_offset``; a Faust that renamed it would silently drop those
    partitions from the lag again."""
    from collections.abc import Mapping

    rampmon = build_app(Settings(webhook_secret="x" * 32), load_config(DEFAULT_CONFIG))
    assert isinstance(rampmon.app.consumer._committed_offset, Mapping)


class BufferingTopic:
    """A Faust topic's ``send`` contract: it returns once the record is buffered, with a
    future of its delivery that the producer settles later."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.delivery: asyncio.Future[Any] | None = None

    async def send(self, *, key: bytes, value: bytes) -> asyncio.Future[Any]:
        self.sent.append((key, value))
        self.delivery = asyncio.get_running_loop().create_future()
        return self.delivery


def _job() -> Job:
    return Job("j1", Target("kafka", "decisions"), b'{"decision":"rollback"}', "key-1", 0, 0.0)


def test_regression_a_decision_event_is_done_only_once_kafka_has_it() -> None:
    """The Kafka target used to return when Faust had buffered the record, so the delivery
    loop acknowledged the job (and deleted it from the outbox) before the broker had it: a
    refused record or a crash before the batch went out lost the decision event."""

    async def scenario() -> None:
        topic = BufferingTopic()
        send = asyncio.ensure_future(kafka_sender(topic, 1.0)(_job()))
        await asyncio.sleep(0.01)
        assert topic.sent == [(b"key-1", b'{"decision":"rollback"}')]
        assert not send.done()  # buffered is not delivered
        assert topic.delivery is not None
        topic.delivery.set_result(object())
        await asyncio.wait_for(send, 1.0)

        # a delivery that fails is the job's failed attempt: retried, not acknowledged
        failing = kafka_sender(topic, 1.0)(_job())
        attempt = asyncio.ensure_future(failing)
        await asyncio.sleep(0.01)
        assert topic.delivery is not None
        topic.delivery.set_exception(RuntimeError("broker refused the record"))
        with pytest.raises(RuntimeError, match="refused"):
            await asyncio.wait_for(attempt, 1.0)

    asyncio.run(scenario())


def test_regression_an_unacknowledged_decision_event_is_a_failed_attempt() -> None:
    """The wait for Kafka's acknowledgement had no bound, and the delivery loop waits for
    every job of a pass: a record the broker never acknowledged (Faust's producer waits up
    to 20 minutes) held every other delivery back, rollback webhooks included, and outlived
    its outbox lease, so another worker sent it again (review finding). An attempt now
    fails after the delivery timeout and is retried."""

    async def scenario() -> None:
        topic = BufferingTopic()  # whose delivery never settles
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(kafka_sender(topic, 0.05)(_job()), 5.0)
        assert time.monotonic() - started < 1.0  # the attempt's own bound, not the guard's
        assert topic.sent == [(b"key-1", b'{"decision":"rollback"}')]

    asyncio.run(scenario())


def test_the_producer_max_request_size_reaches_faust() -> None:
    rampmon = build_app(Settings(webhook_secret="x" * 32), load_config(DEFAULT_CONFIG))
    assert rampmon.app.conf.producer_max_request_size == PRODUCER_MAX_REQUEST_BYTES


def test_decision_counters_start_at_zero_for_every_configured_experiment() -> None:
    """The dashboard's "Rollback fired" annotation takes the increase() of
    rampmon_decisions_fired_total: a counter child born at 1 by its first inc() has no
    earlier sample to increase from, so a worker's first rollback was never marked. Every
    (experiment, decision) a claim can fire exists at 0 from the start; so does the fence
    counter behind RampmonDecisionFenced (increase() too)."""
    config = load_config(DEFAULT_CONFIG)
    rampmon = build_app(Settings(webhook_secret="x" * 32), config)
    assert config.experiments
    for experiment in config.experiments:
        for decision in ("rollback", "pause", "advance", "resolved"):
            labels = {"experiment": experiment.name, "decision": decision}
            for name in ("rampmon_decisions_fired_total", "rampmon_decisions_stage_moved_total"):
                assert rampmon.registry.get_sample_value(name, labels) == 0.0, (name, labels)
    # nothing for a name outside the configuration
    assert (
        rampmon.registry.get_sample_value(
            "rampmon_decisions_fired_total", {"experiment": "unknown", "decision": "rollback"}
        )
        is None
    )


def test_regression_recovered_snapshots_reach_the_evaluator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Review (decide path): the evaluator read the partials table in the
    ``on_partitions_assigned`` handler, which Faust sends right after it *starts* table
    recovery (``tables.on_rebalance`` only signals the recovery service), so a worker that
    takes over an experiment's partials partition (a rebalance, a restart on a new host)
    found the table empty or stale there, and nothing read it again once recovery filled
    it. Only partitions publishing afresh reached the evaluator: it read out and decided
    on part of the experiment's partitions, and a quiet experiment (the ramp at 0 after a
    rollback) not at all, until its snapshots changed."""
    from faust.types import TP

    import streams.app as app_module
    from monitor.layout import ExperimentLayout
    from monitor.unitstate import STATE_VERSION
    from monitor.unitstats import UnitStatsAggregation
    from streams.partials import Partial
    from streams.producer import partition_of

    async def no_tail(*args: Any, **kwargs: Any) -> int:
        return 0  # the changelog tail past the highwater needs a broker; none here

    monkeypatch.setattr(app_module, "recover_tail", no_tail)

    async def scenario() -> None:
        config = load_config(DEFAULT_CONFIG)
        settings = Settings(webhook_secret="x" * 32)
        rampmon = build_app(settings, config)
        table = rampmon.app.tables[f"partials-{STATE_VERSION}"]
        exp = config.experiments[0]
        owned = partition_of(exp.name, settings.partitions)
        # Faust: tables.on_rebalance (recovery starts in the background), then the signal
        await rampmon.app.on_partitions_assigned.send({TP(settings.topic_partials, owned)})
        # recovery replays the changelog into the table, then runs the recovery callbacks
        empty = UnitStatsAggregation(ExperimentLayout(exp)).initialize()
        for source_partition in range(settings.partitions):
            table.data[f"{exp.name}/{source_partition}".encode()] = Partial(
                exp.name, source_partition, 7, empty
            ).encode()
        await table.call_recover_callbacks()
        held = rampmon.evaluator.latest.get(exp.name, {})
        assert sorted(held) == list(range(settings.partitions))

    asyncio.run(scenario())


def test_regression_a_rebalance_keeps_the_experiments_a_worker_keeps() -> None:
    """Review (decide path): Faust's revoke signal names *every* partition the worker held
    (aiokafka's eager rebalance), and the worker released every experiment there: status,
    series, the rollback in force, the firer's markers. Until the assignment came back
    and the snapshots were read out again, no worker exported any experiment's series, so
    a scrape in the rebalance saw none: ``RampmonRollbackDecision`` (no ``for``) resolved
    and fired again on every rebalance, ``RampmonPaused``'s ``for: 2m`` started over, and
    the gate fell back to the Redis copy. A worker stops speaking for an experiment when an
    assignment moves it away, not while the group is still deciding."""
    from faust.types import TP

    from monitor.layout import ExperimentLayout
    from monitor.unitstats import UnitStatsAggregation
    from streams.partials import Partial
    from streams.producer import partition_of

    async def scenario() -> None:
        config = load_config(DEFAULT_CONFIG)
        settings = Settings(webhook_secret="x" * 32)
        rampmon = build_app(settings, config)
        exp = config.experiments[0]
        tp = TP(settings.topic_partials, partition_of(exp.name, settings.partitions))
        await rampmon.app.on_partitions_assigned.send({tp})
        empty = UnitStatsAggregation(ExperimentLayout(exp)).initialize()
        rampmon.evaluator.accept(Partial(exp.name, 0, 1, empty))
        rampmon.evaluator.evaluate(time.time())
        assert exp.name in rampmon.evaluator.status

        await rampmon.app.on_partitions_revoked.send({tp})  # the rebalance begins
        assert exp.name in rampmon.evaluator.status  # still this worker's, as far as known
        await rampmon.app.on_partitions_assigned.send({tp})  # ... and it stays here
        assert exp.name in rampmon.evaluator.status
        other = TP(settings.topic_partials, (tp.partition + 1) % settings.partitions)
        await rampmon.app.on_partitions_revoked.send({tp})
        await rampmon.app.on_partitions_assigned.send({other})  # now it moved away
        assert exp.name not in rampmon.evaluator.status

    asyncio.run(scenario())
