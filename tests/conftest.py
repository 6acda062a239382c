"""Shared fixtures: real embedded servers on free loopback ports (never mocks)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator

import pytest

from streams.embedded import EmbeddedBroker, EmbeddedRedis


def pytest_configure(config: pytest.Config) -> None:
    # fixtures start servers in their own sessions; a SIGTERM (CI timeout, `timeout`)
    # must run fixture teardown instead of orphaning them
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


@pytest.fixture
def redis_server() -> Iterator[EmbeddedRedis]:
    """A fresh redis-server per test: tests never see each other's keys."""
    with EmbeddedRedis() as server:
        yield server  # type: ignore[misc]


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[EmbeddedBroker]:
    """One tansu broker per session; tests isolate themselves by topic and app names."""
    with EmbeddedBroker() as broker:
        yield broker  # type: ignore[misc]
