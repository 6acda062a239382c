"""Acks for the ingest agent's runs: a run is acked once the broker has what it wrote.

Faust commits the acked source offsets every few seconds, and flushes its producer first
(:mod:`streams.changelog`). But a flush does not fail when a batch does: aiokafka resolves
a batch that fails for good (after the producer's request timeout,
``RAMPMON_PRODUCER_REQUEST_TIMEOUT_SECONDS``, or at once for an error no retry mends, such
as a batch above the topic's ``max.message.bytes``) with the error, the flush returns, and
the commit passes a run whose unit records never reached the changelog. The worker's table
still holds them, so nothing shows until the next owner recovers the partition without
them, and the run's events are missing from the statistics for good. (A batch aiokafka
cannot even queue in that time makes ``send_batch`` raise; the agent handles that as the
same loss.)

So the ingest agent iterates with Faust's acks off (``stream.noack()``) and hands each
run here with the delivery futures of its changelog batches and dead letters
(:meth:`RunAcks.ack_when_delivered`). A run is acked once every one of them succeeds and
every earlier run of its partition is acked: in order, so a commit never depends on which
callback runs first. When one fails, the run and those after it are never acked, so no
commit can pass it, and the worker exits at once (:func:`exit_on_lost`). It exits rather
than stops: a graceful stop flushes the producer, which would send the batches queued
behind the failed one and leave the changelog with a hole, where the next owner's windows
would count the lost units' events twice once the redelivery refills them. An exit
leaves what a SIGKILL leaves, which the worker is built to recover from exactly: a
changelog that is a prefix of its writes, and a commit before the first run it lacks
(README "State and exactness").

Late acks and rebalances: Faust forgets a revoked partition's acked offsets and gaps
before it waits for its streams' unacked messages, so the runs still in flight are acked
into fresh bookkeeping, without the gaps of their skipped offsets. The first of them is
committed then; the rest would stay behind, and if the partition came back, Faust's next
commit would take the gaps up to them for acked, past runs it had not processed.
:func:`forget_revoked`, called once the revoke is done, forgets them again.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn

__all__ = ["EXIT_DELIVERY_LOST", "RunAcks", "exit_on_lost", "forget_revoked"]

log = logging.getLogger("rampmon")

#: the worker's exit status when a run's writes were lost (EX_SOFTWARE)
EXIT_DELIVERY_LOST = 70


class RunAcks:
    """Acks each run once its deliveries succeed and its partition's earlier runs are
    acked; calls ``on_lost`` (once) when a delivery fails."""

    def __init__(self, on_lost: Callable[[str], object]) -> None:
        self._on_lost = on_lost
        #: why the first lost delivery was lost, once one was
        self.lost: str | None = None
        #: per partition, the runs not yet acked, oldest first: [event, deliveries left]
        self._pending: dict[Any, deque[list[Any]]] = {}

    def ack_when_delivered(
        self, event: Any, deliveries: Sequence[asyncio.Future[Any]], what: str
    ) -> None:
        """Ack ``event`` (a Faust event: ``ack()``, ``message.tp``) once every future in
        ``deliveries`` has a result and every earlier run of its partition is acked;
        ``what`` names the run in the message of a loss."""
        queue = self._pending.setdefault(event.message.tp, deque())
        entry = [event, len(deliveries)]
        queue.append(entry)
        if not deliveries:
            self._ack_ready(queue)
            return

        def delivered(done: asyncio.Future[Any]) -> None:
            if done.cancelled() or done.exception() is not None:
                reason = "cancelled" if done.cancelled() else repr(done.exception())
                self.fail(f"a write of {what} was not delivered: {reason}")
                return
            entry[1] -= 1
            self._ack_ready(queue)

        for delivery in deliveries:
            delivery.add_done_callback(delivered)

    @staticmethod
    def _ack_ready(queue: deque[list[Any]]) -> None:
        while queue and queue[0][1] == 0:
            queue.popleft()[0].ack()

    def fail(self, reason: str) -> None:
        """A run's writes are lost: report it, the first time only."""
        if self.lost is None:
            self.lost = reason
            self._on_lost(reason)


def forget_revoked(consumer: Any, revoked: Iterable[Any]) -> None:
    """Forget the acked offsets and gaps Faust's ``consumer`` holds for the ``revoked``
    partitions, as Faust itself does at the start of a revoke: called at its end, for the
    acks of runs that were still in flight (see the module docstring)."""
    for tp in revoked:
        consumer._acked.pop(tp, None)
        consumer._acked_index.pop(tp, None)
        consumer._gap.pop(tp, None)


def exit_on_lost(reason: str) -> NoReturn:
    """Log why, flush the logs, and end the process with :data:`EXIT_DELIVERY_LOST`,
    without a shutdown (see the module docstring)."""
    log.critical(
        "%s. Exiting without a shutdown: the run is not acked, so no offset commit passes "
        "it, and the next owner of its partition recovers the changelog and is "
        "redelivered the run",
        reason,
    )
    logging.shutdown()
    os._exit(EXIT_DELIVERY_LOST)
