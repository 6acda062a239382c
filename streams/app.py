"""The Faust application: topics, tables, agents and timers. Wiring only.

Data flow::

    exposures ─┐                    units table (per-unit ITT state + applied offsets,
               ├─► ingest agent ──►  and the tumbling event-time window records)
    telemetry ─┘        │
                        └─ timer ─► partials topic ─► collect agent ─► partials table
                                                          │
                                           evaluate timer ┴─► /metrics, Redis claim,
                                                              outbox ─► webhooks, decisions
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import faust
from prometheus_client import CollectorRegistry, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from alerts.alertmanager import AlertmanagerClient, AlertTracker
from alerts.cloudevents import content_type_for, to_cloudevent
from alerts.delivery import DeliveryLoop, webhook_sender
from alerts.errors import AlertmanagerError
from alerts.outbox import Job, Outbox, Target
from alerts.payloads import DecisionNotice
from monitor.config import RampmonConfig
from monitor.unitstate import STATE_VERSION
from streams.acks import RunAcks, exit_on_lost, forget_revoked
from streams.api import ExperimentsAPI
from streams.api import register as register_api
from streams.changelog import BATCH_BYTES, kafka_producer, recover_tail
from streams.connections import broker_credentials, kafka_client_options, redis_client
from streams.decisions import DecisionFirer
from streams.evaluator import Evaluator, targets_for
from streams.ingest import Ingest
from streams.ingestrun import ingest_run
from streams.metrics import DELIVERY_OUTCOMES, Metrics
from streams.oncall import firing_alerts
from streams.pacing import PublishPacer, caught_up
from streams.partials import Partial, bundles, unbundle
from streams.producer import partition_of
from streams.readouts import READOUT_BURST_SECONDS, ReadoutBudget, ReadoutSchedule
from streams.runs import RunApp
from streams.scheduling import OldestFirst
from streams.settings import Settings
from streams.sourcelag import LOG_START_REFRESH_SECONDS, SourceLag, log_start_reader
from streams.stagecache import StageCache
from streams.wakeup import Wakeup

__all__ = ["Rampmon", "build_app", "kafka_sender"]

log = logging.getLogger("rampmon")

#: Redis and connection errors that must never stop the worker
_REDIS_DOWN = (RedisError, OSError, TimeoutError)
_EXPOSITION = "text/plain; version=0.0.4"

#: fetched runs (streams.runs) a stream may hold before the consumer stops fetching
STREAM_BUFFER_RUNS = 16
#: the producer's largest request, Faust's default made explicit: every record this worker
#: sends must fit it, dead letters included (streams.deadletter). It stays below
#: Kafka's default message.max.bytes (1 MiB + 12) on purpose: the producer refuses a larger
#: record when it is sent, where it shows, while one the broker refuses fails only in a
#: delivery future that Faust's ``Topic.send`` does not wait for. Nor is it tied to
#: RAMPMON_MAX_MESSAGE_BYTES: that bounds what the worker reads, not what it writes
PRODUCER_MAX_REQUEST_BYTES = 1_000_000
#: the largest snapshot message the publish loop sends: half the request limit, so a
#: bundle never meets it (streams.partials.bundles)
PARTIALS_BUNDLE_BYTES = PRODUCER_MAX_REQUEST_BYTES // 2
#: how often the outbox is polled for due jobs: retries, and jobs other workers claimed
DELIVERY_POLL_SECONDS = 0.2


class Rampmon:
    """One worker's Faust app plus the objects its agents and timers share."""

    def __init__(self, settings: Settings, config: RampmonConfig) -> None:
        self.settings = settings
        self.config = config
        self.registry = CollectorRegistry()
        self.metrics = Metrics(
            self.registry,
            [e.name for e in config.experiments],
            source_topics=(settings.topic_exposures, settings.topic_telemetry),
        )
        self.stages = StageCache(config)
        self.evaluator = Evaluator(
            config, self.metrics, self.stages, partitions=settings.partitions
        )
        self.redis: Redis = redis_client(settings, socket_timeout=2.0, socket_connect_timeout=2.0)
        self.outbox = Outbox(self.redis)
        self.firer = DecisionFirer(
            self.redis,
            targets_for(config),
            render=self._render,
            on_fired=self._on_fired,
            on_stage_moved=self._on_stage_moved,
        )
        self.api = ExperimentsAPI(
            config, self.evaluator, self.redis, token=settings.api_token.get_secret_value()
        )
        self._session: aiohttp.ClientSession | None = None
        self._delivery: DeliveryLoop | None = None
        self._delivering: asyncio.Future[None] | None = None
        self.alert_tracker = AlertTracker(resend_seconds=settings.alert_resend_seconds)
        self._alertmanager: AlertmanagerClient | None = None
        self.app = self._build_app()

    # -- construction -------------------------------------------------------------

    def _build_app(self) -> faust.App:
        s = self.settings
        app = RunApp(
            s.app_id,
            # Faust's per-message path costs ~220 us a record: the ingest agent takes each
            # fetched run of a source partition as one message (streams.runs)
            run_topics=(s.topic_exposures, s.topic_telemetry),
            fetch_max_wait_seconds=s.consumer_fetch_max_wait_seconds,
            # a fetch's exposures before the telemetry they cause (streams.scheduling)
            ConsumerScheduler=OldestFirst,
            broker=s.broker_url,
            broker_credentials=broker_credentials(s),
            store=s.store,
            datadir=str(s.data_dir),
            autodiscover=False,
            web_enabled=True,
            web_port=s.web_port,
            web_bind=s.web_host,
            web_host=s.web_host,
            topic_partitions=s.partitions,
            topic_replication_factor=1,
            consumer_auto_offset_reset="earliest",
            broker_session_timeout=s.broker_session_timeout_seconds,
            broker_rebalance_timeout=s.broker_rebalance_timeout_seconds,
            broker_heartbeat_interval=1.0,
            table_standby_replicas=0,
            producer_acks=-1,
            recovery_consistency_check=s.recovery_consistency_check,
            # Faust buffers up to this many messages per stream before it stops fetching, and
            # a message here is a whole fetched run: its default (4096) held ~550 MiB of runs
            # in bench/memory.py (worker RSS 790 MiB; 246 MiB with 16). Runs already
            # amortise Faust's per-message path, so a short queue keeps the agent busy
            stream_buffer_maxsize=STREAM_BUFFER_RUNS,
            producer_max_batch_size=BATCH_BYTES,
            producer_max_request_size=PRODUCER_MAX_REQUEST_BYTES,
            # a changelog batch not delivered by then ends the worker (streams.acks)
            producer_request_timeout=s.producer_request_timeout_seconds,
        )
        # raw bytes through Faust: without explicit serializers it json-decodes every
        # message, which costs CPU and silently skips the ones that are not JSON
        source = app.topic(
            s.topic_exposures, s.topic_telemetry, partitions=s.partitions, schema=_raw_schema()
        )
        deadletter = app.topic(s.topic_deadletter, partitions=s.partitions, schema=_raw_schema())
        partials_topic = app.topic(s.topic_partials, partitions=s.partitions, schema=_raw_schema())
        self.decisions_topic = app.topic(s.topic_decisions, partitions=1, schema=_raw_schema())
        units = _raw_table(app, f"units-{STATE_VERSION}", s.partitions, _store_options(s))
        partials_table = _raw_table(
            app, f"partials-{STATE_VERSION}", s.partitions, _store_options(s)
        )
        self.ingest = Ingest(
            self.config,
            units=units,
            metrics=self.metrics,
            stage_index=self.stages.stage_index,
            topics={"exposures": s.topic_exposures, "telemetry": s.topic_telemetry},
            partitions=s.partitions,
            max_message_bytes=s.max_message_bytes,
            max_pending=s.max_pending_events_per_unit,
            max_age_seconds=s.max_event_age_seconds,
            max_future_seconds=s.max_clock_skew_seconds,
            dedup_horizon_seconds=s.dedup_horizon_seconds,
        )
        source_topics = {s.topic_exposures, s.topic_telemetry}
        client_options = kafka_client_options(s)
        self.source_lag = SourceLag(
            (s.topic_exposures, s.topic_telemetry),
            self.ingest.last_offset,
            self.metrics,
            log_start_reader(lambda: kafka_client_options(s)),
        )

        # Faust's recovery trusts the broker's end offsets; the records past them are applied
        # here, before the stream partitions resume (streams.changelog.recover_tail)
        async def tail(table: Any) -> None:
            applied = await recover_tail(app, table, client_options)
            if applied:
                log.info("applied %d changelog records past %s's highwater", applied, table.name)

        async def recover_units() -> None:
            # one callback per table: Faust keeps a table's recovery callbacks in a set, so
            # two would run in no defined order. The tail first; then every owned partition
            # publishes statistics built from the whole recovered table, including one that
            # gets no new message after a restart
            await tail(units)
            self.ingest.ensure(
                tp.partition for tp in app.consumer.assignment() if tp.topic in source_topics
            )

        #: the partials partitions of the last assignment (Faust's signal names them all)
        owned_partials: set[int] = set()

        def load_partials() -> None:
            # the snapshots of the experiments whose partials partitions this worker owns
            # (a memory store keeps what was written to a partition since revoked)
            self.evaluator.load(
                partial
                for partial in (Partial.decode(raw) for raw in partials_table.data.values() if raw)
                if partition_of(partial.experiment, s.partitions) in owned_partials
            )

        async def recover_partials() -> None:
            await tail(partials_table)
            # Faust sends on_partitions_assigned when recovery *starts*: only now does the
            # table hold what the partitions' previous owner collected
            load_partials()

        units.on_recover(recover_units)
        partials_table.on_recover(recover_partials)

        run_acks = RunAcks(exit_on_lost)
        pacer = PublishPacer(s.publish_interval_seconds, s.publish_catch_up_check_seconds)
        # the publish loop's catch-up check, at the end of a run rather than at its next tick
        run_done = Wakeup()
        # a snapshot's readout, when it arrives rather than at the next tick
        snapshot_arrived = Wakeup()

        @app.agent(source, name="ingest")
        async def ingest(stream: Any) -> None:
            # an exposure's stage comes from the history: know it before the first one
            await self._first_stage_refresh()
            producer = kafka_producer(app)
            # Faust's acks off: a run is acked once the broker has its changelog batches
            # and dead letters, and a run that loses one ends the worker (streams.acks)
            async for event in stream.noack().events():
                await ingest_run(
                    event, ingest=self.ingest, producer=producer, deadletter=deadletter,
                    run_acks=run_acks, lost=exit_on_lost,
                )  # fmt: skip
                if pacer.awaiting_catch_up:
                    run_done.set()

        @app.agent(partials_topic, name="collect")
        async def collect(stream: Any) -> None:
            async for event in stream.events():
                for raw in unbundle(event.message.value):
                    partial = Partial.decode(raw)
                    if self.evaluator.accept(partial):
                        key = f"{partial.experiment}/{partial.partition}".encode()
                        partials_table[key] = raw
                        snapshot_arrived.set()

        @app.task
        async def declare_output_topics() -> None:
            # sending would auto-create them with the broker's default partition count
            for topic in (deadletter, self.decisions_topic):
                await topic.maybe_declare()

        @app.task
        async def publish() -> None:
            # a loop, not app.timer: mode's timers warn whenever a run outlasts the interval,
            # and a publish of many experiments can outlast the tenth-of-a-second tick
            while not app.should_stop:
                woke = await run_done.wait(pacer.tick)
                if app.should_stop:  # the producer is going
                    return
                now = time.monotonic()
                lag = self.source_lag.lag(getattr(app, "consumer", None))
                self.source_lag.export(lag)
                current = caught_up(lag)
                # a run's wake-up is no tick: no slack for it, or a backlog publishes early
                if not pacer.due(now, current, on_tick=not woke):
                    continue
                pacer.published(now, current)
                by_experiment: dict[str, list[bytes]] = {}
                for partial in self.ingest.snapshots():
                    by_experiment.setdefault(partial.experiment, []).append(partial.encode())
                for experiment, encoded in by_experiment.items():
                    for message in bundles(encoded, PARTIALS_BUNDLE_BYTES):
                        await partials_topic.send(key=experiment.encode(), value=message)
                    self.metrics.partials_published.inc(len(encoded))

        @app.timer(s.stage_refresh_seconds)
        async def refresh_stages() -> None:
            try:
                await self.stages.refresh(self.redis)
                self.metrics.redis_up.set(1)
            except _REDIS_DOWN as exc:
                self.metrics.redis_up.set(0)
                log.warning("stage refresh failed, keeping cached stages: %s", exc)

        # a new snapshot is read out when it arrives: the one-second timer below would add
        # half a second, on average, to every decision, and a tenth-of-a-second timer
        # (mode's sleeps its interval after each pass, and a pass over 20 experiments takes
        # about as long) some 0.1 s
        readouts = ReadoutSchedule(
            self.evaluator,
            self._act,
            self.metrics,
            ReadoutBudget(s.readout_loop_share, READOUT_BURST_SECONDS, time.monotonic()),
            gap=min(0.1, s.evaluate_interval_seconds),
        )

        @app.timer(s.evaluate_interval_seconds)
        async def evaluate() -> None:
            await readouts.read_out_due(s.evaluate_interval_seconds)
            await self._push_alerts(time.time())

        @app.task
        async def evaluate_changed() -> None:
            await readouts.run(snapshot_arrived, lambda: bool(app.should_stop))

        @app.timer(DELIVERY_POLL_SECONDS)
        async def deliver() -> None:
            await self._deliver()

        @app.timer(LOG_START_REFRESH_SECONDS)
        async def refresh_log_starts() -> None:
            await self.source_lag.refresh_log_starts(getattr(app, "consumer", None))

        async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
            # the acks of runs that were in flight when Faust forgot these partitions
            forget_revoked(app.consumer, [tp for tp in revoked if tp.topic in source_topics])
            self.ingest.revoke(tp.partition for tp in revoked if tp.topic in source_topics)
            # the experiments stay: the revoke names every partition held (an eager
            # rebalance), and releasing them here left every experiment without status or
            # series until the assignment came back; on_assigned releases those that moved

        async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
            now_owned = {tp.partition for tp in assigned if tp.topic == s.topic_partials}
            released = self.evaluator.release(owned_partials - now_owned)
            # another worker may set or end their pause or rollback before they come back
            self.firer.forget(released)
            owned_partials.clear()
            owned_partials.update(now_owned)
            if owned_partials:
                # what the table holds before recovery (a restart's local store); the rest
                # comes in recover_partials
                load_partials()

        app.on_partitions_revoked.connect(on_revoked)  # type: ignore[arg-type]
        app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]

        @app.page("/metrics")
        async def metrics_page(web: Any, request: Any) -> Any:
            # rendering 20 experiments' ~5,000 series takes 70-130 ms of pure Python: in a
            # thread, the event loop gets the GIL back every switch interval (5 ms) instead
            # of stalling ingest and readouts for the whole scrape (prometheus_client's
            # collection is thread-safe)
            body = await asyncio.to_thread(generate_latest, self.registry)
            # aiohttp refuses a charset inside content_type; the exposition format is UTF-8
            return web.bytes(body, content_type=_EXPOSITION)

        register_api(app, self.api)

        @app.page("/healthz")
        async def healthz(web: Any, request: Any) -> Any:
            return web.json({"status": "ok"})

        return app

    async def _first_stage_refresh(self) -> None:
        deadline = time.monotonic() + self.settings.stage_wait_seconds
        while True:
            try:
                await self.stages.refresh(self.redis)
                self.metrics.redis_up.set(1)
                return
            except _REDIS_DOWN as exc:
                self.metrics.redis_up.set(0)
                if time.monotonic() > deadline:
                    log.error("Redis unreachable (%s): exposures use cached/default stages", exc)
                    return
                await asyncio.sleep(0.5)

    # -- decisions ----------------------------------------------------------------------

    async def _deliver(self) -> None:
        loop = await self._delivery_loop()
        try:
            await loop.run_once()
            self.metrics.deliveries_pending.set(await self.outbox.pending_count())
            self.metrics.deliveries_dead.set(await self.outbox.dead_count())
        except _REDIS_DOWN as exc:
            self.metrics.redis_up.set(0)
            log.warning("delivery poll failed: %s", exc)

    def _deliver_soon(self) -> None:
        """Send a decision just claimed now, not at the next poll: the poll's wait was a
        tenth of a second of every rollback's latency (bench/detection.py). In a task of its
        own, so a slow receiver holds up neither the readouts nor the next decision; the
        outbox leases each job once, so this and the timer's poll never send one twice."""
        if self._delivering is None or self._delivering.done():
            self._delivering = asyncio.ensure_future(self._deliver())

    def _render(self, notice: DecisionNotice, target: Target) -> bytes:
        return to_cloudevent(notice, source=f"/rampmon/{self.settings.app_id}")

    def _on_fired(self, notice: DecisionNotice) -> None:
        self.metrics.decisions_fired.labels(notice.experiment, notice.decision).inc()
        self._deliver_soon()
        log.warning(
            "%s %s at stage %g%%: %s %s %s, effect %.6g [%.6g, %.6g]",
            notice.decision.upper(),
            notice.experiment,
            notice.stage,
            notice.reason,
            notice.guardrail,
            notice.variant,
            notice.effect,
            notice.lower,
            notice.upper,
        )

    def _on_stage_moved(self, notice: DecisionNotice) -> None:
        self.metrics.decisions_stage_moved.labels(notice.experiment, notice.decision).inc()
        log.warning(
            "%s of %s at stage %g%% not claimed: Redis has moved the ramp since",
            notice.decision,
            notice.experiment,
            notice.stage,
        )

    async def _act(self, experiment: str, now: float) -> None:
        """Fire what the evaluation decided, then publish the status for every worker's API.
        Redis down: nothing is marked done, the next evaluation retries."""
        status = self.evaluator.status[experiment]
        cfg = self.config.experiment(experiment)
        try:
            await self.firer.step(
                cfg,
                status.readout,
                status.percent,
                now,
                stage_token=status.stage_token,
                episode=status.stage_episode,
            )
            if experiment not in self.evaluator.status:
                return  # released while the step waited on Redis: another worker owns it
            active = self.firer.active.get(experiment)
            if active is not None and active.decision == "rollback":
                # a rollback fired before a restart, or by another worker, still holds
                self.evaluator.rolled_back.setdefault(experiment, active.stage)
                in_force = self.evaluator.decision_in_force(
                    experiment, status.readout, status.percent
                )
                status = self.evaluator.status[experiment] = replace(status, decision=in_force)
            await self.api.publish(status)
            self.metrics.redis_up.set(1)
        except _REDIS_DOWN as exc:
            self.metrics.redis_up.set(0)
            log.warning("cannot act on %s yet: %s", experiment, exc)

    async def _push_alerts(self, now: float) -> None:
        urls = [u.strip() for u in self.settings.alertmanager_url.split(",") if u.strip()]
        if not urls:
            return
        if self._alertmanager is None:
            self._session = self._session or aiohttp.ClientSession()
            self._alertmanager = AlertmanagerClient(
                self._session, urls, timeout=self.settings.webhook_timeout_seconds
            )
        firing = firing_alerts(
            self.config, self.evaluator.status.values(), runbook_url=self.settings.runbook_url
        )
        batch = self.alert_tracker.update(firing, now)
        self.metrics.alerts_firing.set(len(self.alert_tracker.firing))
        if not batch:
            return
        try:
            await self._alertmanager.push(batch)
            self.metrics.alert_pushes.labels("ok").inc()
        except AlertmanagerError as exc:
            # sent again at the next evaluation; endsAt covers a worker that never recovers
            self.alert_tracker.requeue(batch, now)
            self.metrics.alert_pushes.labels("error").inc()
            log.warning("Alertmanager push failed: %s", exc)

    async def _delivery_loop(self) -> DeliveryLoop:
        if self._delivery is None:
            self._session = self._session or aiohttp.ClientSession()
            secret = self.settings.webhook_secret.get_secret_value().encode()

            s = self.settings
            self._delivery = DeliveryLoop(
                self.outbox,
                {
                    "webhook": _counted(
                        webhook_sender(
                            self._session,
                            secret,
                            s.webhook_timeout_seconds,
                            content_type=content_type_for,
                        ),
                        self.metrics,
                        "webhook",
                    ),
                    "kafka": _counted(
                        kafka_sender(self.decisions_topic, s.webhook_timeout_seconds),
                        self.metrics,
                        "kafka",
                    ),
                },
                max_attempts=s.webhook_max_attempts,
                base_delay=s.webhook_base_delay_seconds,
                max_delay=s.webhook_max_delay_seconds,
            )
        return self._delivery


def _store_options(s: Settings) -> dict[str, Any]:
    """Per-table store options: RocksDB's memory bounds (a new dict each time, because
    Faust's rocksdb store pops keys from the mapping it is given)."""
    if s.store != "rocksdb://":
        return {}
    return {
        "write_buffer_size": s.rocksdb_write_buffer_bytes,
        "max_write_buffer_number": 2,
        "block_cache_size": s.rocksdb_block_cache_bytes,
    }


def _raw_table(app: faust.App, name: str, partitions: int, options: dict[str, Any]) -> Any:
    """A table of bytes -> bytes whose changelog is written *and recovered* without codecs.

    Faust derives table codecs from key/value types and falls back to json even for bytes;
    our values are already msgpack or JSON, so they pass through untouched. The changelog
    topic is given explicitly (Faust's own name for it) so recovery decodes it raw too.
    """
    changelog = app.topic(
        f"{app.conf.id}-{name}-changelog",
        schema=_raw_schema(),
        partitions=partitions,
        compacting=True,
        deleting=False,
        acks=False,
        internal=True,
        maxsize=131_072,
        allow_empty=True,
    )
    table: Any = app.Table(
        name,
        default=None,
        partitions=partitions,
        schema=_raw_schema(),
        changelog_topic=changelog,
        options=options,
    )
    table.key_serializer = table.value_serializer = "raw"
    return table


def _raw_schema() -> faust.Schema:
    # one instance per topic/table: Faust updates schemas in place when it wires them
    return faust.Schema(
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


def kafka_sender(topic: Any, timeout: float) -> Callable[[Job], Awaitable[None]]:
    """Sends a job's body to ``topic``, keyed by its idempotency key, and returns once Kafka
    has acknowledged it. Faust's ``Topic.send`` returns as soon as the record is buffered,
    with a future of its delivery: a job acknowledged then would leave the outbox even if
    the broker refused the record or the worker died before the batch went out.

    Not acknowledged within ``timeout`` seconds is a failed attempt, retried with backoff
    like a webhook's. The producer may wait far longer (Faust's request timeout is 20
    minutes), and the delivery loop waits for every job of a pass: one unacknowledged
    record held every other delivery back meanwhile, a rollback webhook included, and
    outlived its outbox lease, so another worker sent it again. A late acknowledgement
    of an attempt given up on leaves a duplicate with the same key, which consumers drop
    by it."""

    async def send(job: Job) -> None:
        body = job.body if isinstance(job.body, bytes) else job.body.encode()

        async def sent() -> None:
            delivered = await topic.send(key=job.idempotency_key.encode(), value=body)
            await delivered

        await asyncio.wait_for(sent(), timeout)

    return send


def _counted(sender: Any, metrics: Metrics, target: str) -> Any:
    delivered, failed = DELIVERY_OUTCOMES

    async def send(job: Job) -> None:
        try:
            await sender(job)
        except Exception:
            metrics.deliveries.labels(target, failed).inc()
            raise
        metrics.deliveries.labels(target, delivered).inc()

    return send


def build_app(settings: Settings, config: RampmonConfig) -> Rampmon:
    return Rampmon(settings, config)
