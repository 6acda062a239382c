"""``rampmon webhooks list|retry`` against a real redis-server and a real webhook receiver."""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import random
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from alerts.delivery import DeliveryLoop, webhook_sender
from alerts.outbox import Job, Outbox, Target, claim_decision
from alerts.payloads import DecisionNotice
from alerts.receiver import WebhookReceiver
from alerts.signing import verify
from streams.embedded import EmbeddedRedis, free_port
from streams.webhooks_cmd import add_parser, run

pytestmark = pytest.mark.integration

SECRET = b"whsec_webhooks_cmd"


def make_notice() -> DecisionNotice:
    return DecisionNotice(
        experiment="checkout.v2",
        stage=5.0,
        decision="rollback",
        guardrail="error_rate",
        metric="errors",
        variant="treatment",
        effect=0.031,
        lower=0.012,
        upper=math.inf,
        margin=0.01,
        decided_at=time.time(),
        reason="error_rate harm 0.031 > margin 0.01 (lower bound 0.012)",
    )


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rampmon")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["webhooks", *argv])


async def cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = await run(parse(*argv), out=out)
    return code, out.getvalue()


def delivery_loop(outbox: Outbox, session: aiohttp.ClientSession, kafka: list[Job]) -> DeliveryLoop:
    async def to_kafka(job: Job) -> None:
        kafka.append(job)

    return DeliveryLoop(
        outbox,
        {"webhook": webhook_sender(session, SECRET, 2.0), "kafka": to_kafka},
        max_attempts=2,
        base_delay=0.001,
        max_delay=0.002,
        poll_interval=0.01,
        rng=random.Random(11),
    )


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def deliver_until_dead(redis: aioredis.Redis, kafka: list[Job]) -> None:
    """Run delivery (refused every time) until every job is delivered or dead."""
    outbox = Outbox(redis)
    async with aiohttp.ClientSession() as session:
        loop = delivery_loop(outbox, session, kafka)

        async def dead() -> bool:
            await loop.run_once()
            return await outbox.dead_count() == 1 and await outbox.pending_count() == 0

        await until(dead)


async def make_dead_letter(redis: aioredis.Redis, url: str, kafka: list[Job]) -> str:
    """Claim a decision for a webhook at ``url`` (nothing listens) and the decisions topic;
    deliver until the webhook job is dead. Returns its id."""
    notice = make_notice()
    targets = [Target("webhook", "pager", url), Target("kafka", "decisions")]
    assert await claim_decision(redis, notice, targets, now=time.time()) == "claimed"
    await deliver_until_dead(redis, kafka)
    assert [job.target.name for job in kafka] == ["decisions"]  # only the webhook failed
    return f"{notice.idempotency_key}:pager"


@pytest.mark.integration
def test_dead_letter_listed_retried_and_delivered_exactly_once(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAMPMON_REDIS_URL", redis_server.url)
    receiver = WebhookReceiver(SECRET, port=free_port())  # not started yet: refused
    url = f"{receiver.url}?token=s3cret-token"  # a credential in the URL, as Slack's have
    kafka: list[Job] = []

    async def break_it() -> str:
        redis = aioredis.from_url(redis_server.url)
        try:
            return await make_dead_letter(redis, url, kafka)
        finally:
            await redis.aclose()

    job_id = asyncio.run(break_it())

    # the real entry point (asyncio.run inside), as `rampmon webhooks list` runs it
    args = parse("list")
    assert args.func(args) == 0
    table = capsys.readouterr().out
    header, row = table.splitlines()
    assert header.split()[:4] == ["STATE", "ID", "TARGET", "HOST"]
    assert row.split()[:2] == ["dead", job_id]
    assert "pager (webhook)" in row
    assert f"http://127.0.0.1:{receiver.port}" in row
    assert "  2  " in row  # attempts
    assert "ClientConnectorError" in row
    assert "s3cret" not in table and "/rollback" not in table
    assert "error_rate harm" not in table  # the body (its reason) is not in the table

    args = parse("list", "--state", "all", "--format", "json")
    assert args.func(args) == 0
    text = capsys.readouterr().out
    (record,) = orjson.loads(text)
    assert (record["state"], record["id"], record["attempts"]) == ("dead", job_id, 2)
    assert record["target"] == {
        "kind": "webhook",
        "name": "pager",
        "host": f"http://127.0.0.1:{receiver.port}",
    }
    assert orjson.loads(record["body"])["decision"] == "rollback"
    assert record["dead_at"] >= record["created_at"]
    assert "s3cret" not in text

    async def repair() -> None:
        redis = aioredis.from_url(redis_server.url)
        outbox = Outbox(redis)
        await receiver.start()
        try:
            async with aiohttp.ClientSession() as session:
                # a "worker": the delivery loop running while the operator retries
                worker = delivery_loop(outbox, session, kafka)
                stop = asyncio.Event()
                task = asyncio.create_task(worker.run_forever(stop))
                try:
                    code, out = await cli("retry", "--all", "--wait", "10")
                finally:
                    stop.set()
                    await asyncio.wait_for(task, 5.0)
            assert (code, out.splitlines()) == (
                0,
                [f"moved {job_id} to the due queue", f"delivered {job_id}"],
            )
            assert (worker.delivered, await outbox.pending_count()) == (1, 0)
            assert await outbox.dead_count() == 0

            assert await cli("retry", "--all") == (0, "no dead letters to retry\n")
            assert await cli("retry", job_id) == (1, f"not a dead letter: {job_id}\n")
            assert await cli("list") == (0, "no dead letters\n")
            assert await cli("list", "--state", "all") == (0, "no jobs\n")
            assert await cli("list", "--format", "json") == (0, "[]\n")
        finally:
            await receiver.stop()
            await redis.aclose()

    asyncio.run(repair())

    # exactly one delivery reached the receiver, accepted, signed with the secret
    assert (receiver.requests, receiver.rejected, len(receiver.accepted)) == (1, 0, 1)
    (delivery,) = receiver.accepted
    verify(SECRET, delivery.body, delivery.signature)
    assert delivery.idempotency_key == job_id.split(":")[0]
    assert delivery.payload["decision"] == "rollback"
    assert delivery.event is None
    assert len(kafka) == 1  # the decision event was never re-sent


@pytest.mark.integration
def test_retry_wait_reports_jobs_no_worker_delivered(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAMPMON_REDIS_URL", redis_server.url)
    url = f"http://127.0.0.1:{free_port()}/hook"

    async def scenario() -> None:
        redis = aioredis.from_url(redis_server.url)
        try:
            job_id = await make_dead_letter(redis, url, [])
            # without --wait, retry only re-queues and says who delivers
            code, out = await cli("retry", job_id, "no-such-job")
            assert (code, out.splitlines()) == (
                1,
                [
                    f"moved {job_id} to the due queue",
                    "not a dead letter: no-such-job",
                    "1 job(s) re-queued; a running `rampmon worker` delivers them",
                ],
            )
            code, out = await cli("list", "--state", "pending")
            assert code == 0 and f"pending  {job_id}" in out

            await deliver_until_dead(redis, [])  # the receiver is still down
            # no worker runs now: re-queued, but nobody delivers it within --wait
            code, out = await cli("retry", "--all", "--wait", "0.3")
            assert code == 1
            moved, pending = out.splitlines()
            assert moved == f"moved {job_id} to the due queue"
            assert pending.startswith(f"still pending after 0.3s {job_id} (attempts 0, last")
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_retry_needs_ids_or_all_but_not_both() -> None:
    for argv in (("retry",), ("retry", "some-id", "--all")):
        args = parse(*argv)
        with pytest.raises(SystemExit) as exited:
            asyncio.run(args.webhooks_func(args, None, io.StringIO()))
        assert exited.value.code == 2


def test_unreachable_redis_exits_2_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAMPMON_REDIS_URL", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    args = parse("list")
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "ConnectionError" in err and "hunter2" not in err
