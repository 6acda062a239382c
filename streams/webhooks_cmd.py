"""``rampmon webhooks list|retry``: look at the delivery outbox and re-queue dead letters.

A delivery job that ran out of attempts (the receiver was down for longer than the backoff
schedule) stays in ``rampmon:outbox:dead`` with its last error (see :mod:`alerts.keys`).
``list`` shows the jobs; ``retry`` moves dead letters back to the due queue with their
attempts reset (:meth:`alerts.outbox.Outbox.retry_dead`), where a worker's delivery loop picks
them up within its 0.2 s tick and sends the *same* body, signed anew, with the same
``Idempotency-Key`` -- so a receiver that did get an earlier attempt drops the repeat.

Deliberately no ``--now`` (delivering from the CLI): the delivery loop leases every due job,
not just the ones retried, and decision-event jobs need the worker's Kafka producer, so a CLI
loop would either copy the worker's wiring (and bypass its delivery metrics) or burn attempts
on jobs it cannot send. With no worker running, start one -- it delivers the outbox as soon as
it is up. ``retry --wait SECONDS`` instead watches Redis until the jobs are delivered, so a
script can tell "re-queued" from "arrived".

Output never shows a target's full URL (webhook URLs often embed a credential): only its
origin, ``scheme://host:port``. Job bodies (the signed payloads) appear only with
``--format json``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import orjson
from redis.exceptions import RedisError

from alerts.outbox import Job, Outbox
from alerts.webhook import origin

__all__ = [
    "JobState",
    "Listed",
    "RetryResult",
    "add_parser",
    "format_json",
    "format_table",
    "list_jobs",
    "retry_dead",
    "run",
    "wait_delivered",
]

JobState = Literal["dead", "pending"]
_MAX_ERROR = 100  # characters of the last error in the table; JSON has it whole
_POLL_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class Listed:
    """A job and whether it is a dead letter or still pending (waiting for, or in, delivery)."""

    state: JobState
    job: Job


@dataclass(slots=True)
class RetryResult:
    """Ids moved back to the due queue, and requested ids that were not dead letters."""

    moved: list[str] = field(default_factory=list)
    not_dead: list[str] = field(default_factory=list)


async def list_jobs(outbox: Outbox, state: Literal["dead", "pending", "all"]) -> list[Listed]:
    """Dead letters (oldest death first), then pending jobs (oldest first)."""
    out: list[Listed] = []
    if state in ("dead", "all"):
        out += [Listed("dead", job) for job in await outbox.list_dead()]
    if state in ("pending", "all"):
        out += [Listed("pending", job) for job in await outbox.list_pending()]
    return out


async def retry_dead(outbox: Outbox, job_ids: Sequence[str] | None, now: float) -> RetryResult:
    """Move ``job_ids`` (every dead letter if None) back to the due queue."""
    ids = [job.id for job in await outbox.list_dead()] if job_ids is None else list(job_ids)
    result = RetryResult()
    for job_id in dict.fromkeys(ids):  # each id once, in the order given
        if await outbox.retry_dead(job_id, now):
            result.moved.append(job_id)
        else:  # unknown, still pending, or retried by someone else meanwhile
            result.not_dead.append(job_id)
    return result


async def wait_delivered(
    outbox: Outbox, job_ids: Sequence[str], timeout: float
) -> dict[str, Listed | None]:
    """Watch ``job_ids`` until none is pending or ``timeout`` passes.

    Maps each id to None once delivered (acknowledged jobs leave Redis), else to where it is
    now: still pending (with its latest error) or dead again.
    """
    deadline = time.monotonic() + timeout
    while True:
        where = {item.job.id: item for item in await list_jobs(outbox, "all")}
        status = {job_id: where.get(job_id) for job_id in job_ids}
        waiting = any(s is not None and s.state == "pending" for s in status.values())
        if not waiting or time.monotonic() >= deadline:
            return status
        await asyncio.sleep(_POLL_SECONDS)


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _where(job: Job) -> str:
    return origin(job.target.url) if job.target.url else "-"


def format_table(items: Sequence[Listed]) -> str:
    """A fixed-width table, one job per line; URL origins only, never bodies."""
    header = ("STATE", "ID", "TARGET", "HOST", "ATTEMPTS", "CREATED", "DEAD", "LAST ERROR")
    rows = [header]
    for item in items:
        job = item.job
        error = job.last_error or "-"
        if len(error) > _MAX_ERROR:
            error = error[: _MAX_ERROR - 3] + "..."
        rows.append(
            (
                item.state,
                job.id,
                f"{job.target.name} ({job.target.kind})",
                _where(job),
                str(job.attempt),
                _when(job.created_at),
                _when(job.dead_at),
                error,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    # the last column (the error) is not padded: no trailing blanks
    return "\n".join(
        "  ".join([*(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)), row[-1]])
        for row in rows
    )


def format_json(items: Sequence[Listed]) -> str:
    """A JSON array with everything, bodies included (URL origins only)."""
    records: list[dict[str, Any]] = []
    for item in items:
        job = item.job
        record: dict[str, Any] = {
            "state": item.state,
            "id": job.id,
            "target": {"kind": job.target.kind, "name": job.target.name, "host": _where(job)},
            "idempotency_key": job.idempotency_key,
            "attempts": job.attempt,
            "created_at": job.created_at,
            "dead_at": job.dead_at,
            "last_error": job.last_error,
        }
        try:
            record["body"] = job.body.decode("utf-8")
        except UnicodeDecodeError:
            record["body_b64"] = base64.b64encode(job.body).decode("ascii")
        records.append(record)
    return orjson.dumps(records, option=orjson.OPT_INDENT_2).decode()


async def _list(args: argparse.Namespace, outbox: Outbox, out: TextIO) -> int:
    items = await list_jobs(outbox, args.state)
    if args.format == "json":
        print(format_json(items), file=out)
    elif items:
        print(format_table(items), file=out)
    else:
        empty = {"dead": "no dead letters", "pending": "no pending jobs"}
        print(empty.get(args.state, "no jobs"), file=out)
    return 0


async def _retry(args: argparse.Namespace, outbox: Outbox, out: TextIO) -> int:
    if bool(args.job_ids) == bool(args.all):
        args.retry_parser.error("give JOB_ID... or --all (not both)")
    result = await retry_dead(outbox, None if args.all else args.job_ids, time.time())
    for job_id in result.moved:
        print(f"moved {job_id} to the due queue", file=out)
    for job_id in result.not_dead:
        print(f"not a dead letter: {job_id}", file=out)
    if not result.moved and not result.not_dead:
        print("no dead letters to retry", file=out)
        return 0
    ok = not result.not_dead
    if result.moved and args.wait > 0:
        status = await wait_delivered(outbox, result.moved, args.wait)
        for job_id, where in status.items():
            if where is None:
                print(f"delivered {job_id}", file=out)
                continue
            ok = False
            if where.state == "dead":
                print(f"dead again {job_id}: {where.job.last_error}", file=out)
            else:
                print(
                    f"still pending after {args.wait:g}s {job_id} "
                    f"(attempts {where.job.attempt}, last error {where.job.last_error or '-'})",
                    file=out,
                )
    elif result.moved:
        print(
            f"{len(result.moved)} job(s) re-queued; a running `rampmon worker` delivers them",
            file=out,
        )
    return 0 if ok else 1


async def run(args: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run ``webhooks list`` or ``webhooks retry`` against ``RAMPMON_REDIS_URL``.

    Exit codes: 0 done; 1 some job was not a dead letter or (with ``--wait``) was not
    delivered; 2 Redis unreachable (or a configuration error, raised for ``rampmon``'s
    handler).
    """
    from streams.cli import load_settings  # lazy: cli imports this module
    from streams.connections import redis_client

    out = out or sys.stdout
    settings = load_settings()
    redis = redis_client(settings)
    try:
        return int(await args.webhooks_func(args, Outbox(redis), out))
    except RedisError as exc:
        # the URL may hold a password: name the origin only
        print(
            f"rampmon: Redis at {origin(settings.redis_url)}: {type(exc).__name__}",
            file=sys.stderr,
        )
        return 2
    finally:
        await redis.aclose()


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``webhooks`` (with ``list`` and ``retry``) on ``rampmon``'s subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "webhooks",
        help="list outbox jobs, retry dead letters (Redis)",
        description="Delivery jobs out of attempts stay in Redis as dead letters "
        "(rampmon:outbox:dead) with their last error. `list` shows them (and pending jobs); "
        "`retry` puts them back in the due queue, where a worker delivers the same body "
        "with the same Idempotency-Key, so receivers drop repeats.",
    )
    sub = parser.add_subparsers(dest="webhooks_command", required=True)

    ls = sub.add_parser(
        "list",
        help="show dead letters and/or pending jobs",
        description="Show outbox jobs. URLs are shown as scheme://host:port only; "
        "bodies only with --format json.",
    )
    ls.add_argument(
        "--state",
        choices=("dead", "pending", "all"),
        default="dead",
        help="dead letters (default), jobs waiting for delivery, or both",
    )
    ls.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="table (default) or JSON with every field and the bodies",
    )
    ls.set_defaults(webhooks_func=_list)

    retry = sub.add_parser(
        "retry",
        help="move dead letters back to the due queue",
        description="Move dead letters back to the due queue with their attempts reset. "
        "Exit 1 if some JOB_ID is not a dead letter (or, with --wait, was not delivered).",
        epilog="Delivery is the worker's: a running `rampmon worker` sends re-queued jobs "
        "within 0.2 s (same body and Idempotency-Key, signed anew with "
        "RAMPMON_WEBHOOK_SECRET). There is no --now: if no worker runs, start one; it "
        "delivers the outbox as soon as it is up. --wait only watches Redis.",
    )
    retry.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="ids from `webhooks list`")
    retry.add_argument("--all", action="store_true", help="every dead letter")
    retry.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="then wait up to SECONDS for a worker to deliver them; exit 1 if it did not",
    )
    retry.set_defaults(webhooks_func=_retry, retry_parser=retry)

    parser.set_defaults(func=lambda args: asyncio.run(run(args)))
    return parser
