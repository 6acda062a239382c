"""A durable delivery outbox in Redis: decide once, deliver at least once.

:func:`claim_decision` turns a decision into side effects in ONE Lua script -- the claim, the
kill switch, a stage change and its audit entry, and one job per target -- so a crash can
never leave a claimed decision without its jobs, and a second worker or a restarted one finds
the claim and writes nothing.

:class:`Outbox` hands due jobs to delivery loops under a lease: leasing moves a job's due
time to the lease expiry, so a worker that dies mid-delivery loses the job back to the pool
instead of losing it. Reschedule and dead-letter are fenced by that lease expiry: a worker
whose lease ran out (another worker owns the job now) cannot overwrite the job's state.
Delivery is at-least-once; receivers deduplicate on the idempotency key.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson
from redis.asyncio import Redis

from alerts import keys
from alerts.audit import AUDIT_MAXLEN, audit_fields
from alerts.payloads import DecisionNotice

__all__ = [
    "Claim",
    "Job",
    "Outbox",
    "Renderer",
    "StageChange",
    "Target",
    "claim_decision",
    "claim_key",
]

TargetKind = Literal["webhook", "kafka"]

#: what a claim came to: won here; already claimed (by another worker, or before a restart);
#: or refused because the stage in force is no longer the one the decision was made at
Claim = Literal["claimed", "taken", "stage_moved"]
_CLAIMS: dict[int, Claim] = {1: "claimed", 0: "taken", -1: "stage_moved"}

# how a notice becomes the bytes one target receives; the hook for CloudEvents bodies
Renderer = Callable[[DecisionNotice, "Target"], bytes]


@dataclass(frozen=True, slots=True)
class Target:
    """Where a decision goes. ``name`` is unique per target and part of the job id; a
    ``kafka`` target is the decisions topic (``url`` unused), sent by an injected sender."""

    kind: TargetKind
    name: str
    url: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("target name must be non-empty")
        if self.kind == "webhook" and not self.url:
            raise ValueError(f"webhook target {self.name!r} needs a url")


@dataclass(frozen=True, slots=True)
class Job:
    """One pending delivery of one decision to one target.

    ``attempt`` counts failed attempts so far. ``lease_until`` is set only on jobs returned
    by :meth:`Outbox.lease_due` (it is the fencing token, never stored); ``dead_at`` only on
    dead letters.
    """

    id: str
    target: Target
    body: bytes
    idempotency_key: str
    attempt: int
    created_at: float
    last_error: str | None = None
    dead_at: float | None = None
    lease_until: float | None = None

    def to_json(self) -> bytes:
        record: dict[str, Any] = {
            "id": self.id,
            "target": {"kind": self.target.kind, "name": self.target.name, "url": self.target.url},
            "idempotency_key": self.idempotency_key,
            "attempt": self.attempt,
            "created_at": self.created_at,
            "last_error": self.last_error,
            "dead_at": self.dead_at,
        }
        try:
            record["body"] = self.body.decode("utf-8")
        except UnicodeDecodeError:
            # a future binary encoding (Avro, protobuf) must survive the JSON envelope
            record["body_b64"] = base64.b64encode(self.body).decode("ascii")
        return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, data: bytes | str) -> Job:
        raw = orjson.loads(data)
        target = raw["target"]
        body = raw["body"].encode("utf-8") if "body" in raw else base64.b64decode(raw["body_b64"])
        return cls(
            id=raw["id"],
            target=Target(kind=target["kind"], name=target["name"], url=target.get("url")),
            body=body,
            idempotency_key=raw["idempotency_key"],
            attempt=int(raw["attempt"]),
            created_at=float(raw["created_at"]),
            last_error=raw.get("last_error"),
            dead_at=raw.get("dead_at"),
        )


def _default_render(notice: DecisionNotice, target: Target) -> bytes:
    return notice.to_json()


def _killswitch_fields(notice: DecisionNotice) -> dict[str, str]:
    return {
        "decision": notice.decision,
        "reason": notice.reason,
        "stage": keys.stage_token(notice.stage),
        "guardrail": notice.guardrail,
        "metric": notice.metric,
        "decided_at": repr(notice.decided_at),
        "idempotency_key": notice.idempotency_key,
    }


# KEYS: claim, killswitch, jobs, due, stage, stage history, audit, active, override
# ARGV: claim value, JSON spec. Optional parts are absent from the spec, never null: cjson
# decodes null to a truthy lightuserdata. Returns 1 claimed, 0 taken, -1 stage moved.
_CLAIM = """
-- taken before fenced: a claim Redis ran whose reply the worker lost (a timeout, an outage)
-- has moved the stage itself, and its retry must read "taken", not "stage moved"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local spec = cjson.decode(ARGV[2])
if spec.expect_stage then
  -- '' expects no stage ever set (the first stage by default); else compared as numbers,
  -- so a hand-written "50" matches the decider's "50.0"
  local current = redis.call('HGET', KEYS[5], 'percent')
  if spec.expect_stage == '' then
    if current then
      return -1
    end
  else
    -- a hash that is not a percent (a hand edit: text, nan, inf, 150) matches nothing, not
    -- even itself; streams.stagecache reads it the same way
    local held = current and tonumber(current)
    if not held or held ~= held or held < 0 or held > 100
        or held ~= tonumber(spec.expect_stage) then
      return -1
    end
  end
end
-- a ramp back to the stage is a new episode of it: a decision read before it is stale
if spec.expect_episode and redis.call('LLEN', KEYS[6]) ~= spec.expect_episode then
  return -1
end
if not redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  return 0
end
if spec.killswitch then
  -- replace, not merge: fields of an older decision must not outlive it
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[2], unpack(spec.killswitch))
end
if spec.clear_override then
  -- an operator's override was made on the evidence before this rollback: it must not
  -- open the gate when the ramp comes back to the stage
  redis.call('DEL', KEYS[9])
end
if spec.stage then
  redis.call('HSET', KEYS[5], unpack(spec.stage.fields))
  redis.call('RPUSH', KEYS[6], spec.stage.history)
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', spec.stage.maxlen, '*', unpack(spec.stage.audit))
end
if spec.active then
  redis.call('DEL', KEYS[8])
  if #spec.active > 0 then
    redis.call('HSET', KEYS[8], unpack(spec.active))
  end
end
for _, job in ipairs(spec.jobs) do
  redis.call('HSET', KEYS[3], job[1], job[2])
  redis.call('ZADD', KEYS[4], spec.now, job[1])
end
return 1
"""

# KEYS: due, jobs. ARGV: now, lease_until, limit
_LEASE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  local job = redis.call('HGET', KEYS[2], id)
  if job then
    redis.call('ZADD', KEYS[1], ARGV[2], id)
    out[#out + 1] = job
  else
    redis.call('ZREM', KEYS[1], id)
  end
end
return out
"""

# shared fence: the job is still due at exactly our lease expiry, i.e. still ours
_FENCE = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) ~= tonumber(ARGV[2]) then
  return 0
end
"""

# KEYS: due, jobs. ARGV: id, lease_until, new json, next due
_RESCHEDULE = (
    _FENCE
    + """
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[4], ARGV[1])
return 1
"""
)

# KEYS: due, jobs, dead. ARGV: id, lease_until, dead json
_DEAD_LETTER = (
    _FENCE
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
return 1
"""
)

# KEYS: dead, jobs, due. ARGV: id, dead json as read (compare-and-move), new json, now
_RETRY_DEAD = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return 1
"""


def claim_key(notice: DecisionNotice) -> str:
    """The Redis key that makes ``notice``'s decision happen once (:func:`claim_decision`)."""
    return keys.claim(
        notice.experiment, notice.stage, notice.episode, notice.decision, notice.resolves
    )


@dataclass(frozen=True, slots=True)
class StageChange:
    """A ramp move that a decision makes itself: rollback to 0, or auto-advance."""

    percent: float
    by: str


async def claim_decision(
    redis: Redis,
    notice: DecisionNotice,
    targets: Sequence[Target],
    *,
    now: float,
    render: Renderer | None = None,
    killswitch: bool | None = None,
    stage_change: StageChange | None = None,
    active: Literal["set", "clear"] | None = None,
    expect_stage: str | None = None,
    expect_episode: int | None = None,
) -> Claim:
    """Claim ``notice``'s decision and write its side effects, or ``"taken"`` if claimed before.

    One Lua script writes, or none of them is written: the claim; the kill switch
    (``killswitch``, default: for rollbacks); ``stage_change`` with its history and audit
    entries; the ``rampmon:active`` marker that a later ``resolved`` notice ends
    (``active="set"`` / ``"clear"``); and one job per target. ``render`` builds each target's
    body (default :meth:`DecisionNotice.to_json`), here, before the claim, so every retry
    later sends identical bytes.

    ``expect_stage`` fences the claim on the stage in force: the stage hash's ``percent``
    as the decider read it (:func:`alerts.stages.stage_view`), or
    :data:`alerts.keys.NO_STAGE` for none. If Redis holds another, nothing is written and
    the result is ``"stage_moved"``: a decision made on a stale view of the ramp -- a cache
    not yet refreshed, or a claim a Redis outage held back while the ramp moved -- must not
    act on the stage now in force. ``expect_episode`` fences it on the length of the stage
    history as well: a ramp that left the stage and came back is at a new episode of it,
    and a decision read before is stale too. A claim already taken reads ``"taken"`` before any
    fence: its own stage change (a rollback's ramp to 0) must not make its retry look stale.
    """
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise ValueError(f"target names must be unique, got {names}")
    render = render or _default_render
    key = notice.idempotency_key
    jobs = []
    for target in targets:
        job = Job(
            id=f"{key}:{target.name}",
            target=target,
            body=render(notice, target),
            idempotency_key=key,
            attempt=0,
            created_at=now,
        )
        jobs.append([job.id, job.to_json().decode()])
    spec: dict[str, Any] = {"now": repr(float(now)), "jobs": jobs}
    if expect_stage is not None:
        spec["expect_stage"] = expect_stage
    if expect_episode is not None:
        spec["expect_episode"] = expect_episode
    if notice.decision == "rollback" if killswitch is None else killswitch:
        spec["killswitch"] = [x for pair in _killswitch_fields(notice).items() for x in pair]
    if stage_change is not None:
        spec["stage"] = _stage_spec(notice.experiment, stage_change, now)
    if notice.decision == "rollback":
        spec["clear_override"] = True
    if active == "set":
        spec["active"] = [
            *("stage", keys.stage_token(notice.stage)),
            *("episode", str(notice.episode)),
            *("decision", notice.decision),
            *("idempotency_key", key),
        ]
    elif active == "clear":
        spec["active"] = []
    claim_keys = [
        claim_key(notice),
        keys.killswitch(notice.experiment),
        keys.outbox_jobs(),
        keys.outbox_due(),
        keys.stage(notice.experiment),
        keys.stage_history(notice.experiment),
        keys.audit(notice.experiment),
        keys.active(notice.experiment),
        keys.override(notice.experiment),
    ]
    script = redis.register_script(_CLAIM)
    return _CLAIMS[int(await script(keys=claim_keys, args=[key, orjson.dumps(spec)]))]


def _stage_spec(experiment: str, change: StageChange, now: float) -> dict[str, Any]:
    percent = float(change.percent)
    if not 0.0 <= percent <= 100.0:
        raise ValueError(f"stage percent must be in [0, 100], got {percent}")
    token = keys.stage_token(percent)
    return {
        "fields": ["percent", token, "updated_at", repr(float(now)), "by", change.by],
        "history": orjson.dumps({"percent": percent, "at": float(now), "by": change.by}).decode(),
        "audit": [
            x for pair in audit_fields("stage", change.by, now, percent=token).items() for x in pair
        ],
        "maxlen": str(AUDIT_MAXLEN),
    }


class Outbox:
    """Lease, acknowledge, retry and dead-letter outbox jobs; safe to share between workers."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._lease = redis.register_script(_LEASE)
        self._reschedule = redis.register_script(_RESCHEDULE)
        self._dead_letter = redis.register_script(_DEAD_LETTER)
        self._retry_dead = redis.register_script(_RETRY_DEAD)

    async def lease_due(self, now: float, lease_seconds: float, limit: int) -> list[Job]:
        """Up to ``limit`` jobs due at ``now``, each invisible to others for ``lease_seconds``."""
        if lease_seconds <= 0 or limit <= 0:
            raise ValueError("lease_seconds and limit must be positive")
        lease_until = float(now) + lease_seconds
        raw = await self._lease(
            keys=[keys.outbox_due(), keys.outbox_jobs()],
            args=[repr(float(now)), repr(lease_until), limit],
        )
        return [replace(Job.from_json(item), lease_until=lease_until) for item in raw]

    async def ack(self, job: Job) -> None:
        """Forget a delivered job. Not fenced: the delivery happened even if the lease ran out."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.outbox_jobs(), job.id)
            pipe.zrem(keys.outbox_due(), job.id)
            await pipe.execute()

    async def reschedule(
        self, job: Job, delay: float, error: str, *, now: float | None = None
    ) -> bool:
        """Count a failed attempt and retry after ``delay``; False if the lease was lost."""
        now = time.time() if now is None else now
        updated = replace(job, attempt=job.attempt + 1, last_error=error)
        done = await self._reschedule(
            keys=[keys.outbox_due(), keys.outbox_jobs()],
            args=[job.id, _fence(job), updated.to_json(), repr(float(now) + delay)],
        )
        return bool(done)

    async def dead_letter(self, job: Job, error: str, *, now: float | None = None) -> bool:
        """Count the failed attempt and park the job in the dead HASH; False if lease lost."""
        now = time.time() if now is None else now
        dead = replace(job, attempt=job.attempt + 1, last_error=error, dead_at=now)
        done = await self._dead_letter(
            keys=[keys.outbox_due(), keys.outbox_jobs(), keys.outbox_dead()],
            args=[job.id, _fence(job), dead.to_json()],
        )
        return bool(done)

    async def list_dead(self) -> list[Job]:
        """Dead letters, oldest first."""
        raw = await self._redis.hvals(keys.outbox_dead())
        return sorted((Job.from_json(item) for item in raw), key=lambda j: (j.dead_at or 0, j.id))

    async def list_pending(self) -> list[Job]:
        """Jobs waiting for (or in) delivery, oldest first."""
        raw = await self._redis.hvals(keys.outbox_jobs())
        return sorted((Job.from_json(item) for item in raw), key=lambda j: (j.created_at, j.id))

    async def retry_dead(self, job_id: str, now: float) -> bool:
        """Move a dead letter back to the due queue with its attempts reset; False if absent."""
        current = await self._redis.hget(keys.outbox_dead(), job_id)
        if current is None:
            return False
        revived = replace(Job.from_json(current), attempt=0, dead_at=None)
        done = await self._retry_dead(
            keys=[keys.outbox_dead(), keys.outbox_jobs(), keys.outbox_due()],
            args=[job_id, current, revived.to_json(), repr(float(now))],
        )
        return bool(done)

    async def pending_count(self) -> int:
        return int(await self._redis.zcard(keys.outbox_due()))

    async def dead_count(self) -> int:
        return int(await self._redis.hlen(keys.outbox_dead()))


def _fence(job: Job) -> str:
    if job.lease_until is None:
        raise ValueError(f"job {job.id} was not leased; only leased jobs can be rescheduled")
    return repr(job.lease_until)
