"""A run is acked only once the broker has everything it wrote; a lost write ends the
worker (streams.acks). The integration with Faust's commit and a real broker is
tests/reliability/test_changelog_loss.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from streams.acks import EXIT_DELIVERY_LOST, RunAcks


class _Event:
    def __init__(self) -> None:
        self.acks = 0

    def ack(self) -> bool:
        self.acks += 1
        return True


def _run(scenario) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(scenario())


def test_a_run_is_acked_when_its_last_write_is_delivered_not_before() -> None:
    async def scenario() -> None:
        lost: list[str] = []
        acks, event = RunAcks(lost.append), _Event()
        loop = asyncio.get_running_loop()
        writes = [loop.create_future() for _ in range(3)]
        acks.ack_when_delivered(event, writes, "run 1")
        for w in writes[:2]:
            w.set_result(object())
        await asyncio.sleep(0)
        assert event.acks == 0
        writes[2].set_result(object())
        await asyncio.sleep(0)
        assert event.acks == 1 and not lost and acks.lost is None

    _run(scenario)


def test_a_run_that_wrote_nothing_is_acked_at_once() -> None:
    event = _Event()
    RunAcks(lambda reason: None).ack_when_delivered(event, [], "run 1")
    assert event.acks == 1


@pytest.mark.parametrize("how", ["failed", "cancelled"])
def test_a_lost_write_leaves_the_run_unacked_and_is_reported_once(how: str) -> None:
    async def scenario() -> None:
        lost: list[str] = []
        acks = RunAcks(lost.append)
        loop = asyncio.get_running_loop()
        first, later = _Event(), _Event()
        writes = [loop.create_future() for _ in range(3)]
        acks.ack_when_delivered(first, writes, "the run of t[2] up to offset 9")
        if how == "failed":
            writes[0].set_exception(TimeoutError("no answer"))
        else:
            writes[0].cancel()
        writes[1].set_exception(TimeoutError("no answer either"))
        writes[2].set_result(object())
        # a later run whose own writes arrive: acked (Faust commits only up to the gap)
        other = loop.create_future()
        acks.ack_when_delivered(later, [other], "the run of t[2] up to offset 12")
        other.set_result(object())
        await asyncio.sleep(0)
        assert first.acks == 0 and later.acks == 1
        assert len(lost) == 1 and lost[0] == acks.lost
        assert "the run of t[2] up to offset 9" in lost[0]
        assert ("no answer" in lost[0]) if how == "failed" else ("cancelled" in lost[0])

    _run(scenario)


def test_exit_on_lost_ends_the_process_without_a_shutdown() -> None:
    code = (
        "import atexit, logging, sys\n"
        "from streams.acks import exit_on_lost\n"
        "logging.basicConfig(stream=sys.stderr)\n"
        "atexit.register(lambda: print('shutdown ran', file=sys.stderr))\n"
        "exit_on_lost('a write of the run of t[0] up to offset 5 was not delivered')\n"
        "print('still running', file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == EXIT_DELIVERY_LOST == 70
    assert "the run of t[0] up to offset 5 was not delivered. Exiting" in done.stderr
    assert "CRITICAL" in done.stderr
    assert "shutdown ran" not in done.stderr and "still running" not in done.stderr
