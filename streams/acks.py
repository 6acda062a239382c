"""Acks for the ingest agent's runs: a run is acked once the broker has what it wrote.

Faust commits the acked source offsets every few seconds, and flushes its producer first
(:mod:`streams.changelog`). But a flush does not fail when a batch does: aiokafka resolves
a batch that fails for good (after the producer's request timeout,
``RAMPMON_PRODUCER_REQUEST_TIMEOUT_SECONDS``, or at once for an error no retry mends, such
as a batch above the topic's ``max.message.bytes``) with the error, the flush returns, and
the commit passes a run whose unit records never reached the changelog. The worker's table
still holds them, so nothing shows until the next owner recovers the partition without
them, and the run's events are missing from the statistics for good.

So the ingest agent iterates with Faust's acks off (``stream.noack()``) and hands each
run here with the delivery futures of its changelog batches and dead letters
(:meth:`RunAcks.ack_when_delivered`). The run is acked when every one of them succeeds.
When one fails, or the run raises, the run is never acked, so no commit can pass it, and
the worker exits at once (:func:`exit_on_lost`). It exits rather than stops: a graceful
stop flushes the producer, which would send the batches queued behind the failed one and
leave the changelog with a hole, where the next owner's windows would count the lost
units' events twice once the redelivery refills them. An exit leaves what a SIGKILL
leaves, which the worker is built to recover from exactly: a changelog that is a prefix
of its writes, and a commit before the first run it lacks (README "State and
exactness").
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

__all__ = ["EXIT_DELIVERY_LOST", "RunAcks", "exit_on_lost"]

log = logging.getLogger("rampmon")

#: the worker's exit status when a run's writes were lost (EX_SOFTWARE)
EXIT_DELIVERY_LOST = 70


class RunAcks:
    """Acks each run once its deliveries succeed; calls ``on_lost`` (once) when one
    fails."""

    def __init__(self, on_lost: Callable[[str], object]) -> None:
        self._on_lost = on_lost
        #: why the first lost delivery was lost, once one was
        self.lost: str | None = None

    def ack_when_delivered(
        self, event: Any, deliveries: Sequence[asyncio.Future[Any]], what: str
    ) -> None:
        """Ack ``event`` (a Faust event: ``ack()``) once every future in ``deliveries``
        has a result; ``what`` names the run in the message of a loss."""
        if not deliveries:
            event.ack()
            return
        waiting = len(deliveries)

        def delivered(done: asyncio.Future[Any]) -> None:
            nonlocal waiting
            if done.cancelled() or done.exception() is not None:
                reason = "cancelled" if done.cancelled() else repr(done.exception())
                self.fail(f"a write of {what} was not delivered: {reason}")
                return
            waiting -= 1
            if waiting == 0:
                event.ack()

        for delivery in deliveries:
            delivery.add_done_callback(delivered)

    def fail(self, reason: str) -> None:
        """A run's writes are lost: report it, the first time only."""
        if self.lost is None:
            self.lost = reason
            self._on_lost(reason)


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
