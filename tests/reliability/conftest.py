"""The reliability suite runs against the same real servers as the integration suite.

``own_broker`` and ``own_stack`` give a test a broker of its own: one that restarts it, or
one that streams hundreds of thousands of events, leaves the session's broker as it was.
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.embedded import EmbeddedBroker, EmbeddedRedis
from tests.integration.conftest import running_stack, stack
from tests.integration.stack import Stack

__all__ = ["own_broker", "own_stack", "stack"]


@pytest.fixture
def own_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as broker:
        yield broker


@pytest.fixture
def own_stack(
    own_broker: EmbeddedBroker, redis_server: EmbeddedRedis, tmp_path: Path
) -> Iterator[Stack]:
    with running_stack(own_broker, redis_server, tmp_path) as s:
        yield s
