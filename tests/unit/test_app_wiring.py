"""How the Faust app is configured, where a setting carries a measured consequence."""

from __future__ import annotations

import asyncio

from streams.app import STREAM_BUFFER_RUNS, build_app
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
