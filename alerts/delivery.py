"""The delivery loop: lease due outbox jobs, send them, retry with jittered backoff.

Each attempt's outcome is counted in plain attributes (``delivered``, ``retried``,
``dead_lettered``, ``lost_leases``, ``loop_errors``) that the metrics layer reads; this
package never imports a metrics client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping

import aiohttp

from alerts.errors import DeliveryError
from alerts.outbox import Job, Outbox
from alerts.webhook import JSON_CONTENT_TYPE, post_signed

__all__ = ["ContentType", "DeliveryLoop", "Sender", "backoff_delay", "webhook_sender"]

log = logging.getLogger(__name__)

Sender = Callable[[Job], Awaitable[None]]

# the Content-Type of a job's body: fixed, or decided per body (see webhook_sender)
ContentType = str | Callable[[bytes], str]

# beyond this, base * 2**attempt is past any sane cap; stops float overflow
_MAX_EXPONENT = 64


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter backoff: uniform in ``[0, min(cap, base * 2**attempt)]``.

    Full jitter (not "equal" or none) spreads a burst of failures -- every worker retrying
    after one receiver outage -- evenly instead of in synchronized waves.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if base < 0 or cap < 0:
        raise ValueError("base and cap must be >= 0")
    return rng.uniform(0.0, min(cap, base * 2.0 ** min(attempt, _MAX_EXPONENT)))


def webhook_sender(
    session: aiohttp.ClientSession,
    secret: bytes,
    timeout: float,
    *,
    content_type: ContentType = JSON_CONTENT_TYPE,
) -> Sender:
    """A sender for ``webhook`` targets: one signed POST per attempt, signed at send time.

    ``content_type`` is the header sent with every body, or a function of the body. Bodies
    are rendered once, when the decision is claimed, and jobs outlive restarts: a worker
    whose body format changed (plain JSON to CloudEvents) still holds jobs rendered the old
    way, which :func:`alerts.cloudevents.content_type_for` labels correctly body by body.
    """

    async def send(job: Job) -> None:
        if job.target.url is None:
            raise DeliveryError(f"webhook target {job.target.name!r} has no url")
        await post_signed(
            session,
            job.target.url,
            job.body,
            secret=secret,
            idempotency_key=job.idempotency_key,
            timeout=timeout,
            content_type=content_type if isinstance(content_type, str) else content_type(job.body),
        )

    return send


class DeliveryLoop:
    """Deliver outbox jobs through one sender per target kind; run one per worker."""

    def __init__(
        self,
        outbox: Outbox,
        senders: Mapping[str, Sender],
        *,
        max_attempts: int = 8,
        base_delay: float = 0.5,
        max_delay: float = 60.0,
        lease_seconds: float = 30.0,
        poll_interval: float = 0.2,
        batch_size: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        if max_attempts < 1 or batch_size < 1:
            raise ValueError("max_attempts and batch_size must be >= 1")
        if lease_seconds <= 0 or poll_interval <= 0:
            raise ValueError("lease_seconds and poll_interval must be positive")
        self._outbox = outbox
        self._senders = dict(senders)
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._lease_seconds = lease_seconds
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._rng = rng or random.Random()
        self.delivered = 0
        self.retried = 0
        self.dead_lettered = 0
        self.lost_leases = 0
        self.loop_errors = 0

    async def run_once(self, now: float | None = None) -> int:
        """Lease and attempt every due job (up to the batch size); return how many."""
        clock: Callable[[], float] = time.time if now is None else (lambda: now)
        jobs = await self._outbox.lease_due(clock(), self._lease_seconds, self._batch_size)
        # one slow receiver must not hold up the others: attempts run concurrently
        outcomes = await asyncio.gather(
            *(self._attempt(job, clock) for job in jobs), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                # only outbox (Redis) failures get here; the lease brings the job back
                raise outcome
        return len(jobs)

    async def run_forever(self, stop_event: asyncio.Event) -> None:
        """Poll until ``stop_event`` is set; an attempt in flight finishes first."""
        failures = 0
        while not stop_event.is_set():
            try:
                handled = await self.run_once()
                failures = 0
            except Exception:
                # Redis down or flapping: jobs are durable, so keep polling, just slower
                self.loop_errors += 1
                failures += 1
                handled = 0
                log.exception("delivery loop iteration failed (%d in a row)", failures)
            if handled >= self._batch_size:
                continue  # a full batch: more are probably due
            pause = min(self._max_delay, self._poll_interval * 2.0 ** min(failures, 16))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_event.wait(), pause)

    async def _attempt(self, job: Job, clock: Callable[[], float]) -> None:
        sender = self._senders.get(job.target.kind)
        try:
            if sender is None:
                raise DeliveryError(f"no sender for {job.target.kind!r} targets on this worker")
            await sender(job)
        except Exception as exc:
            await self._failed(job, exc, clock())
        else:
            await self._outbox.ack(job)
            self.delivered += 1

    async def _failed(self, job: Job, exc: Exception, now: float) -> None:
        error = str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
        if job.attempt + 1 >= self._max_attempts:
            kept = await self._outbox.dead_letter(job, error, now=now)
            if kept:
                self.dead_lettered += 1
                log.warning(
                    "job %s dead-lettered after %d attempts: %s", job.id, job.attempt + 1, error
                )
        else:
            delay = backoff_delay(job.attempt, self._base_delay, self._max_delay, self._rng)
            kept = await self._outbox.reschedule(job, delay, error, now=now)
            if kept:
                self.retried += 1
        if not kept:
            self.lost_leases += 1
