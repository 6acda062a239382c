"""Claim, kill switch, outbox and delivery against a real redis-server and a real HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from alerts import keys
from alerts.delivery import DeliveryLoop, webhook_sender
from alerts.outbox import Job, Outbox, StageChange, Target, claim_decision, claim_key
from alerts.payloads import DecisionNotice
from alerts.signing import SIGNATURE_HEADER, verify
from alerts.stages import current_stage, set_stage, stage_at, stage_history, stage_view
from streams.embedded import EmbeddedRedis, free_port

SECRET = b"whsec_integration"
T0 = 1_700_000_000.25


def make_notice(stage: float = 5.0, decision: str = "rollback") -> DecisionNotice:
    return DecisionNotice(
        experiment="checkout.v2",
        stage=stage,
        decision=decision,
        guardrail="error_rate",
        metric="errors",
        variant="treatment",
        effect=0.031,
        lower=0.012,
        upper=math.inf,
        margin=0.01,
        decided_at=T0,
        reason="error_rate harm 0.031 > margin 0.01 (lower bound 0.012)",
    )


def client(server: EmbeddedRedis) -> aioredis.Redis:
    return aioredis.from_url(server.url)


class Receiver:
    """A real aiohttp webhook receiver answering a scripted list of statuses, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[int, bytes, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        status = self.statuses.pop(0) if self.statuses else 200
        self.requests.append((status, body, dict(request.headers)))
        return web.Response(status=status)

    @property
    def delivered(self) -> list[tuple[int, bytes, dict[str, str]]]:
        return [r for r in self.requests if 200 <= r[0] < 300]


@contextlib.asynccontextmanager
async def serve(receiver: Receiver, port: int = 0) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook/{token}", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        bound = runner.addresses[0][1]
        yield f"http://127.0.0.1:{bound}/hook/s3cret-token"
    finally:
        await runner.cleanup()


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def test_idempotency_key_is_deterministic_and_json_round_trips() -> None:
    a, b = make_notice(stage=5), make_notice(stage=5.0)
    assert a.idempotency_key == b.idempotency_key
    assert len(a.idempotency_key) == 32
    assert a.idempotency_key != make_notice(stage=25.0).idempotency_key
    assert a.idempotency_key != make_notice(decision="hold").idempotency_key
    raw = orjson.loads(a.to_json())
    assert list(raw) == sorted(raw)
    assert raw["idempotency_key"] == a.idempotency_key
    assert raw["decided_at_iso"] == "2023-11-14T22:13:20.250Z"
    assert raw["upper"] is None  # JSON has no infinity
    assert DecisionNotice.from_json(a.to_json()) == a


def test_idempotency_keys_tell_episodes_and_resolutions_apart() -> None:
    """A decision is once per stage episode, and a resolution once per decision it ends."""
    a = make_notice()
    assert a.idempotency_key != replace(a, episode=3).idempotency_key
    assert replace(a, episode=3).idempotency_key == replace(a, episode=3).idempotency_key
    pause = make_notice(decision="resolved")
    ends_pause, ends_rollback = (
        replace(pause, resolves="pause"),
        replace(pause, resolves="rollback"),
    )
    assert ends_pause.idempotency_key != ends_rollback.idempotency_key
    assert claim_key(ends_pause) == "rampmon:claim:checkout.v2:5.0:0:resolved:pause"
    assert claim_key(replace(a, episode=3)) == "rampmon:claim:checkout.v2:5.0:3:rollback"
    with pytest.raises(ValueError, match="episode"):
        replace(a, episode=-1)
    for notice in (replace(a, episode=3), ends_rollback):
        assert DecisionNotice.from_json(notice.to_json()) == notice


@pytest.mark.integration
def test_regression_the_claim_is_fenced_on_the_stage_episode(redis_server: EmbeddedRedis) -> None:
    """A ramp back to a stage is a new episode of it: a decision read before it must not be
    claimed (its claim key is the old episode's), and one read after it is. Re-asserting
    the stage in force is no change: no new episode, nothing fenced."""

    async def scenario() -> None:
        r = client(redis_server)
        await set_stage(r, "checkout.v2", 5.0, now=T0 - 60, by="alice")
        await set_stage(r, "checkout.v2", 25.0, now=T0 - 40, by="argo")
        await set_stage(r, "checkout.v2", 5.0, now=T0 - 30, by="argo")  # episode 3
        assert not await set_stage(r, "checkout.v2", 5, now=T0 - 20, by="argo")  # no change
        assert await r.llen(keys.stage_history("checkout.v2")) == 3
        assert (await r.hgetall(keys.stage("checkout.v2")))[b"by"] == b"argo"
        stale = replace(make_notice(), episode=1)
        kafka = [Target("kafka", "decisions")]
        got = await claim_decision(r, stale, kafka, now=T0, expect_stage="5.0", expect_episode=1)
        assert got == "stage_moved"
        assert await r.exists(claim_key(stale), keys.killswitch("checkout.v2")) == 0
        fresh = replace(make_notice(), episode=3)
        got = await claim_decision(r, fresh, kafka, now=T0, expect_stage="5.0", expect_episode=3)
        assert got == "claimed"
        assert await r.get(claim_key(fresh)) == fresh.idempotency_key.encode()
        await r.aclose()

    asyncio.run(scenario())


@pytest.mark.integration
def test_claim_fires_once_across_concurrent_workers(redis_server: EmbeddedRedis) -> None:
    targets = [Target("webhook", "pager", "http://127.0.0.1:9/a"), Target("kafka", "decisions")]

    async def scenario() -> None:
        workers = [client(redis_server), client(redis_server)]
        try:
            claims = [
                claim_decision(
                    workers[i % 2], make_notice(stage=5 if i % 3 else 5.0), targets, now=T0 + i
                )
                for i in range(40)
            ]
            results = await asyncio.gather(*claims)
            assert results.count("claimed") == 1 and results.count("taken") == 39
            r = workers[0]
            key = make_notice().idempotency_key
            assert await r.get(keys.claim("checkout.v2", 5, 0, "rollback")) == key.encode()
            assert await r.hlen(keys.outbox_jobs()) == 2
            assert await Outbox(r).pending_count() == 2
            assert {j.id for j in await Outbox(r).list_pending()} == {
                f"{key}:pager",
                f"{key}:decisions",
            }
        finally:
            for w in workers:
                await w.aclose()

    asyncio.run(scenario())


@pytest.mark.integration
@pytest.mark.parametrize(
    ("in_force", "expect", "outcome"),
    [
        (None, "", "claimed"),  # no stage ever set, and none expected
        (5.0, "5.0", "claimed"),
        (None, "5.0", "stage_moved"),
        (5.0, "", "stage_moved"),  # decided on the default stage; one was set since
        ("5", "5.0", "claimed"),  # tokens compare as numbers: "5" is "5.0"
        ("junk", "junk", "stage_moved"),  # not a percent (a hand edit): matches nothing
        ("inf", "inf", "stage_moved"),
        ("nan", "nan", "stage_moved"),
        ("150", "150", "stage_moved"),
        (25.0, "5.0", "stage_moved"),  # the ramp moved on
        (0.0, "5.0", "stage_moved"),  # rolled back by hand meanwhile
    ],
)
def test_the_claim_is_fenced_on_the_stage_in_force(
    redis_server: EmbeddedRedis, in_force: float | str | None, expect: str, outcome: str
) -> None:
    async def scenario() -> None:
        r = client(redis_server)
        if isinstance(in_force, str):
            await r.hset(keys.stage("checkout.v2"), "percent", in_force)
        elif in_force is not None:
            await set_stage(r, "checkout.v2", in_force, now=T0 - 60, by="alice")
        got = await claim_decision(
            r, make_notice(), [Target("kafka", "decisions")], now=T0, expect_stage=expect
        )
        assert got == outcome
        written = await r.exists(
            keys.claim("checkout.v2", 5.0, 0, "rollback"), keys.killswitch("checkout.v2")
        )
        assert written == (2 if outcome == "claimed" else 0)
        assert await Outbox(r).pending_count() == (1 if outcome == "claimed" else 0)
        await r.aclose()

    asyncio.run(scenario())


@pytest.mark.integration
def test_regression_a_retried_claim_reads_taken_after_its_own_stage_change(
    redis_server: EmbeddedRedis,
) -> None:
    """A rollback's claim moves the ramp to 0. When its reply is lost (a timeout, an outage)
    the worker retries with the fence of the stage it decided at, which is no longer in
    force: the retry must read "taken" (done, not retried forever), not "stage_moved"."""

    async def scenario() -> None:
        r = client(redis_server)
        await set_stage(r, "checkout.v2", 5.0, now=T0 - 60, by="alice")
        _, token = await stage_view(r, "checkout.v2")
        notice, off = make_notice(), StageChange(0.0, "rampmon:rollback")
        first = await claim_decision(r, notice, [], now=T0, stage_change=off, expect_stage=token)
        assert first == "claimed" and await current_stage(r, "checkout.v2") == 0.0
        again = await claim_decision(
            r, notice, [], now=T0 + 1, stage_change=off, expect_stage=token
        )
        assert again == "taken"
        await r.aclose()

    asyncio.run(scenario())


@pytest.mark.integration
def test_stage_view_reads_the_hash_as_written_with_the_history(
    redis_server: EmbeddedRedis,
) -> None:
    async def scenario() -> None:
        r = client(redis_server)
        assert await stage_view(r, "checkout.v2") == ([], keys.NO_STAGE)
        await set_stage(r, "checkout.v2", 25.0, now=T0, by="alice")
        # a second operator whose clock runs 10 s behind: the history sorts by time, so
        # its latest change is 25%; the hash holds what was written last, 5%
        await set_stage(r, "checkout.v2", 5.0, now=T0 - 10, by="bob")
        history, token = await stage_view(r, "checkout.v2")
        assert history == [(T0 - 10, 5.0), (T0, 25.0)] and token == "5.0"
        await r.aclose()

    asyncio.run(scenario())


@pytest.mark.integration
def test_killswitch_hash_and_latest_decision_wins(redis_server: EmbeddedRedis) -> None:
    async def scenario() -> None:
        r = client(redis_server)
        notice = make_notice()
        assert await claim_decision(r, notice, [], now=T0) == "claimed"
        assert await r.hgetall(keys.killswitch("checkout.v2")) == {
            b"decision": b"rollback",
            b"reason": notice.reason.encode(),
            b"stage": b"5.0",
            b"guardrail": b"error_rate",
            b"metric": b"errors",
            b"decided_at": repr(T0).encode(),
            b"idempotency_key": notice.idempotency_key.encode(),
        }
        await r.aclose()

        # a restarted worker (fresh connection) finds the claim and writes nothing
        r = client(redis_server)
        await r.hset(keys.killswitch("checkout.v2"), "decision", "manually-cleared")
        taken = await claim_decision(r, notice, [Target("kafka", "decisions")], now=T0 + 60)
        assert taken == "taken"
        assert await r.hget(keys.killswitch("checkout.v2"), "decision") == b"manually-cleared"
        assert await Outbox(r).pending_count() == 0

        # a later stage is a new decision: it claims and replaces the kill switch
        later = make_notice(stage=25.0)
        assert (
            await claim_decision(r, later, [Target("kafka", "decisions")], now=T0 + 120)
            == "claimed"
        )
        switch = await r.hgetall(keys.killswitch("checkout.v2"))
        assert switch[b"stage"] == b"25.0"
        assert switch[b"idempotency_key"] == later.idempotency_key.encode()
        await r.aclose()

    asyncio.run(scenario())


@pytest.mark.integration
def test_lease_prevents_double_pickup(redis_server: EmbeddedRedis) -> None:
    targets = [Target("webhook", f"hook{i}", f"http://127.0.0.1:9/{i}") for i in range(12)]

    async def scenario() -> None:
        r1, r2 = client(redis_server), client(redis_server)
        assert await claim_decision(r1, make_notice(), targets, now=T0) == "claimed"
        first, second = await asyncio.gather(
            Outbox(r1).lease_due(T0, 30.0, 100), Outbox(r2).lease_due(T0, 30.0, 100)
        )
        ids1, ids2 = {j.id for j in first}, {j.id for j in second}
        assert not ids1 & ids2
        assert len(ids1 | ids2) == 12
        assert await Outbox(r1).lease_due(T0 + 29.0, 30.0, 100) == []
        # a worker that died mid-delivery: its jobs come due again when the lease ends
        again = await Outbox(r2).lease_due(T0 + 30.0, 30.0, 5)
        assert len(again) == 5
        assert all(j.attempt == 0 and j.lease_until == T0 + 60.0 for j in again)
        await r1.aclose()
        await r2.aclose()

    asyncio.run(scenario())


@pytest.mark.integration
def test_reschedule_dead_letter_retry_dead_round_trip(redis_server: EmbeddedRedis) -> None:
    async def scenario() -> None:
        r = client(redis_server)
        outbox = Outbox(r)
        await claim_decision(r, make_notice(), [Target("webhook", "pager", "http://x/y")], now=T0)
        (job,) = await outbox.lease_due(T0, 30.0, 10)
        assert await outbox.reschedule(job, 5.0, "POST http://x answered 503", now=T0)
        assert await outbox.lease_due(T0 + 4.9, 30.0, 10) == []
        (job2,) = await outbox.lease_due(T0 + 5.0, 30.0, 10)
        assert (job2.attempt, job2.last_error) == (1, "POST http://x answered 503")
        assert job2.body == job.body == make_notice().to_json()

        # the first lease is stale now: its holder may not overwrite the job any more
        assert not await outbox.reschedule(job, 1.0, "late", now=T0 + 6)
        assert not await outbox.dead_letter(job, "late", now=T0 + 6)

        assert await outbox.dead_letter(job2, "gave up", now=T0 + 7)
        assert (await outbox.pending_count(), await outbox.dead_count()) == (0, 1)
        (dead,) = await outbox.list_dead()
        assert (dead.attempt, dead.last_error, dead.dead_at) == (2, "gave up", T0 + 7)

        assert await outbox.retry_dead(dead.id, now=T0 + 100)
        assert not await outbox.retry_dead(dead.id, now=T0 + 100)
        assert not await outbox.retry_dead("no-such-job", now=T0 + 100)
        assert (await outbox.pending_count(), await outbox.dead_count()) == (1, 0)
        (revived,) = await outbox.lease_due(T0 + 100, 30.0, 10)
        assert (revived.attempt, revived.dead_at, revived.body) == (0, None, job.body)
        await outbox.ack(revived)
        assert await outbox.pending_count() == 0
        assert await r.hlen(keys.outbox_jobs()) == 0
        await r.aclose()

    asyncio.run(scenario())


@pytest.mark.integration
def test_delivery_retries_503_then_delivers_exactly_once(redis_server: EmbeddedRedis) -> None:
    receiver = Receiver([503, 503])
    to_kafka: list[Job] = []

    async def kafka_sender(job: Job) -> None:
        to_kafka.append(job)

    async def scenario() -> None:
        r = client(redis_server)
        outbox = Outbox(r)
        notice = make_notice()
        async with serve(receiver) as url, aiohttp.ClientSession() as session:
            targets = [Target("webhook", "pager", url), Target("kafka", "decisions")]
            assert await claim_decision(r, notice, targets, now=time.time()) == "claimed"
            loop = DeliveryLoop(
                outbox,
                {"webhook": webhook_sender(session, SECRET, 2.0), "kafka": kafka_sender},
                base_delay=0.01,
                max_delay=0.05,
                poll_interval=0.01,
                rng=random.Random(7),
            )
            stop = asyncio.Event()
            runner = asyncio.create_task(loop.run_forever(stop))

            async def drained() -> bool:
                return await outbox.pending_count() == 0

            await wait_until(drained)
            stop.set()
            await asyncio.wait_for(runner, 5.0)

        assert [status for status, _, _ in receiver.requests] == [503, 503, 200]
        (delivered,) = receiver.delivered
        _, body, headers = delivered
        assert body == notice.to_json()
        verify(SECRET, body, headers[SIGNATURE_HEADER])
        assert headers["Content-Type"] == "application/json"
        assert {h["Idempotency-Key"] for _, _, h in receiver.requests} == {notice.idempotency_key}
        assert [j.body for j in to_kafka] == [notice.to_json()]
        assert (loop.delivered, loop.retried, loop.dead_lettered) == (2, 2, 0)
        assert await outbox.dead_count() == 0
        await r.aclose()

    asyncio.run(scenario())


@pytest.mark.integration
def test_unreachable_receiver_dead_letters_then_retry_delivers_once(
    redis_server: EmbeddedRedis,
) -> None:
    port = free_port()  # nothing listens here yet: connection refused
    url = f"http://127.0.0.1:{port}/hook/s3cret-token"
    receiver = Receiver()

    async def scenario() -> None:
        r = client(redis_server)
        outbox = Outbox(r)
        notice = make_notice()
        async with aiohttp.ClientSession() as session:
            loop = DeliveryLoop(
                outbox,
                {"webhook": webhook_sender(session, SECRET, 1.0)},
                max_attempts=3,
                base_delay=0.01,
                max_delay=0.02,
                rng=random.Random(3),
            )

            async def step_until(condition: Callable[[], Awaitable[bool]]) -> bool:
                await loop.run_once()
                return await condition()

            async def is_dead() -> bool:
                return await outbox.dead_count() == 1

            assert (
                await claim_decision(r, notice, [Target("webhook", "pager", url)], now=time.time())
                == "claimed"
            )
            await wait_until(lambda: step_until(is_dead))
            assert (loop.delivered, loop.retried, loop.dead_lettered) == (0, 2, 1)
            (dead,) = await outbox.list_dead()
            assert dead.attempt == 3
            assert dead.last_error is not None and "ClientConnectorError" in dead.last_error
            assert "s3cret-token" not in dead.last_error  # URL credentials stay out of errors
            assert await outbox.pending_count() == 0

            async with serve(receiver, port):
                assert await outbox.retry_dead(dead.id, now=time.time())

                async def drained() -> bool:
                    return await outbox.pending_count() == 0

                await wait_until(lambda: step_until(drained))
                assert await loop.run_once() == 0
            assert len(receiver.requests) == len(receiver.delivered) == 1
            _, body, headers = receiver.delivered[0]
            verify(SECRET, body, headers[SIGNATURE_HEADER])
            assert headers["Idempotency-Key"] == notice.idempotency_key
            assert (loop.delivered, await outbox.dead_count()) == (1, 0)
        await r.aclose()

    asyncio.run(scenario())


@pytest.mark.integration
def test_stage_control_plane_round_trip(redis_server: EmbeddedRedis) -> None:
    async def scenario() -> None:
        r = client(redis_server)
        assert await current_stage(r, "checkout.v2") is None
        assert await stage_history(r, "checkout.v2") == []
        await set_stage(r, "checkout.v2", 1, now=T0, by="alice")
        await set_stage(r, "checkout.v2", 25.0, now=T0 + 200)
        await set_stage(r, "checkout.v2", 5.0, now=T0 + 100)  # a skewed clock, set late
        assert await current_stage(r, "checkout.v2") == 5.0  # current = last written
        history = await stage_history(r, "checkout.v2")
        assert history == [(T0, 1.0), (T0 + 100, 5.0), (T0 + 200, 25.0)]
        assert stage_at(history, T0 + 150, default=0.0) == 5.0
        current = await r.hgetall(keys.stage("checkout.v2"))
        assert current == {
            b"percent": b"5.0",
            b"updated_at": repr(T0 + 100).encode(),
            b"by": b"cli",
        }
        with pytest.raises(ValueError):
            await set_stage(r, "checkout.v2", 101, now=T0)
        await r.aclose()

    asyncio.run(scenario())
