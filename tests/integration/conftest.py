from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.embedded import EmbeddedBroker, EmbeddedRedis
from tests.integration.stack import Stack


@contextlib.contextmanager
def running_stack(broker: EmbeddedBroker, redis: EmbeddedRedis, tmp: Path) -> Iterator[Stack]:
    s = Stack(broker, redis, tmp)
    # the receiver runs on its own event loop thread, like a separate service
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(s.receiver.start(), loop).result(10)
    try:
        yield s
    finally:
        s.stop()
        asyncio.run_coroutine_threadsafe(s.receiver.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@pytest.fixture
def stack(
    kafka_broker: EmbeddedBroker, redis_server: EmbeddedRedis, tmp_path: Path
) -> Iterator[Stack]:
    with running_stack(kafka_broker, redis_server, tmp_path) as s:
        yield s
