"""The ingest agent's work on one delivered run: process it, write what it changed, ack it.

A run is processed whole (:meth:`streams.ingest.Ingest.process_run`). Its changelog batches
and dead letters are then queued, and the run is acked once the broker has them all
(:mod:`streams.acks`). Three things can go wrong:

* **A write is lost** (aiokafka cannot queue or deliver a batch): the worker exits, as
  :func:`streams.acks.exit_on_lost` explains.
* **Processing raises** (a bug, or an input that meets one): the run leaves no trace
  (``process_run`` takes its writes back) and is processed again one message at a time
  (:meth:`~streams.ingest.Ingest.isolate`). A message that raises alone becomes a dead
  letter with reason ``processing_error``, kept for a replay once the bug is fixed; the
  rest count as if nothing had happened. Skipping the whole run, as Faust does when it
  restarts a crashed agent, lost every event in it, up to a megabyte of messages, with
  only a log line to show. Exiting instead would hand the run to every worker in turn and
  stop them all.
* **Anything else raises** outside processing (``flush`` refusing a table value larger
  than a batch, say): logged, and the run is acked as it stands. The store may then hold
  writes the changelog lacks until the partition is next recovered: not solved here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka.errors import KafkaError
from faust.exceptions import ProducerSendError

from streams.acks import RunAcks
from streams.deadletter import dead_letter
from streams.ingest import Ingest
from streams.runs import records_of

__all__ = ["ingest_run"]

log = logging.getLogger("rampmon")


async def ingest_run(
    event: Any,
    *,
    ingest: Ingest,
    producer: Any,
    deadletter: Any,
    run_acks: RunAcks,
    lost: Callable[[str], None],
) -> None:
    """Process the run ``event`` delivered, queue its writes on ``producer`` (aiokafka) and
    its dead letters on ``deadletter`` (a Faust topic), and hand them to ``run_acks``.
    ``lost`` is called with the reason when a write cannot be queued
    (:func:`streams.acks.exit_on_lost`)."""
    msg = event.message
    run = f"the run of {msg.topic}[{msg.partition}] up to offset {msg.offset}"
    writes: list[asyncio.Future[Any]] = []
    try:
        records = records_of(msg)
        try:
            rejected = ingest.process_run(msg.topic, msg.partition, records)
        except Exception:
            log.exception("%s raised: processing its messages one at a time", run)
            rejected = None
        if rejected is None:  # outside the except: its traceback is logged once
            rejected = ingest.isolate(msg.topic, msg.partition, records)
        # a run too large for one batch is written in several, each leaving the table
        # consistent (Ingest._split), not processed in parts that each fit one: parts
        # cost a fifth of the CPU on a backlog (README "State and exactness")
        writes += await ingest.changelog.flush(producer, msg.partition)
        if len(writes) > 1:
            ingest.metrics.changelog_split_runs.inc()
        for record, r in rejected:
            sent = await deadletter.send(
                key=record.key, value=dead_letter(msg.topic, msg.partition, record.offset, r)
            )
            writes.append(asyncio.ensure_future(sent))
    except (KafkaError, ProducerSendError) as exc:
        # aiokafka could not queue a changelog batch in time (the one before it is still
        # unacknowledged), or refused a write
        lost(f"a write of {run} was not delivered: {exc!r}")
    except Exception:
        log.exception("%s failed outside processing; acked as it stands", run)
    run_acks.ack_when_delivered(event, writes, run)
