"""A run is acked only once the broker has everything it wrote; a lost write ends the
worker (streams.acks). The integration with Faust's commit and a real broker is
tests/reliability/test_changelog_loss.py."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from types import SimpleNamespace

import faust
import pytest
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from streams.acks import EXIT_DELIVERY_LOST, RunAcks, forget_revoked


class _Event:
    def __init__(self, partition: int = 0) -> None:
        self.acks = 0
        self.message = SimpleNamespace(tp=TP("t", partition))

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


def test_runs_of_a_partition_are_acked_in_order_and_partitions_apart() -> None:
    """A run whose writes arrive first waits for the runs before it, so that what Faust
    commits never depends on which delivery callback ran first."""

    async def scenario() -> None:
        acks = RunAcks(lambda reason: None)
        loop = asyncio.get_running_loop()
        first, second, third, other = _Event(), _Event(), _Event(), _Event(partition=1)
        slow, fast, theirs = loop.create_future(), loop.create_future(), loop.create_future()
        acks.ack_when_delivered(first, [slow], "run 1")  # say, waiting on a dead letter
        acks.ack_when_delivered(second, [fast], "run 2")
        acks.ack_when_delivered(other, [theirs], "run 1 of partition 1")
        acks.ack_when_delivered(third, [], "run 3")  # wrote nothing
        fast.set_result(object())
        theirs.set_result(object())
        await asyncio.sleep(0)
        assert (first.acks, second.acks, third.acks, other.acks) == (0, 0, 0, 1)
        slow.set_result(object())
        await asyncio.sleep(0)
        assert (first.acks, second.acks, third.acks) == (1, 1, 1)

    _run(scenario)


def test_regression_acks_of_runs_in_flight_at_a_revoke_commit_nothing_after_it() -> None:
    """Faust's own consumer bookkeeping (a review of 50774f0): Faust forgets a revoked
    partition's acks and gaps, then waits for its in-flight runs, whose acks land in fresh
    bookkeeping. When the partition came back, the commit took the gaps up to the stale
    ack for acked and passed a run fetched but not processed (261..330 here)."""

    async def commits(forget: bool) -> list[int]:
        app = faust.App("rampmon-unit-acks", broker="kafka://127.0.0.1:1", autodiscover=False)
        app.topics.add(app.topic("t"))
        await app.topics._update_indices()  # what the conductor does when it starts
        consumer, tp = app.consumer, TP("t", 0)

        def ack(offset: int) -> None:
            consumer.ack(ConsumerMessage("t", 0, offset, 0.0, 0, [], None, b"", None))

        # two runs in flight, 100..199 and 200..299 (a run is a message at its last offset)
        consumer._committed_offset[tp] = 100
        await consumer._add_gap(tp, 101, 199)
        await consumer._add_gap(tp, 200, 299)
        for kept in (consumer._gap, consumer._acked, consumer._acked_index):
            kept.pop(tp, None)  # Consumer.on_partitions_revoked
        ack(199)  # their deliveries, during the revoke's wait for unacked messages
        ack(299)
        consumer._committed_offset[tp] = consumer._new_offset(tp)  # that wait's commit
        if forget:
            forget_revoked(consumer, [tp])
        # the partition comes back from the commit at 200: run 200..260 is processed,
        # run 261..330 only fetched
        consumer._committed_offset[tp] = 200
        await consumer._add_gap(tp, 201, 260)
        await consumer._add_gap(tp, 261, 330)
        ack(260)
        out: list[int] = []
        while (offset := consumer._new_offset(tp)) is not None and offset not in out:
            out.append(offset)
            consumer._committed_offset[tp] = offset
        return out

    assert asyncio.run(commits(forget=True)) == [261]
    assert max(asyncio.run(commits(forget=False))) == 331  # the bug, without it


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
        # a later run of the partition whose own writes arrive waits behind it
        other = loop.create_future()
        acks.ack_when_delivered(later, [other], "the run of t[2] up to offset 12")
        other.set_result(object())
        await asyncio.sleep(0)
        assert first.acks == 0 and later.acks == 0
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
