"""The ramp stage control plane in Redis: which percent is in force, and since when.

Events are judged against the stage in force at their event time (:func:`stage_at`), not
at processing time, so a lagging consumer never blames a new stage for old traffic.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

import orjson
from redis.asyncio import Redis

from alerts import keys
from alerts.audit import AUDIT_MAXLEN, audit_fields

__all__ = ["current_stage", "set_stage", "stage_at", "stage_history", "stage_view"]


# KEYS: stage, history, audit. ARGV: percent token, updated_at, by, history entry, audit
# maxlen, then the audit entry's fields and values
_SET_STAGE = """
-- the percent in force already (compared as numbers: "50" is "50.0"): not a change, so no
-- new stage episode (alerts.payloads.DecisionNotice)
local current = tonumber(redis.call('HGET', KEYS[1], 'percent'))
if current and current == tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'percent', ARGV[1], 'updated_at', ARGV[2], 'by', ARGV[3])
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', unpack(ARGV, 6))
return 1
"""


async def set_stage(
    redis: Redis, experiment: str, percent: float, *, now: float, by: str = "cli"
) -> bool:
    """Put ``percent`` in force from ``now`` on; current value, history and audit change
    together (one script). False, and nothing written, if ``percent`` is in force already:
    the history records changes, and its length numbers a stage's episodes, so an
    automation that re-asserts the stage it set neither restarts the stage's decisions
    nor fences the ones being made."""
    percent = float(percent)
    if not (math.isfinite(percent) and 0.0 <= percent <= 100.0):
        raise ValueError(f"stage percent must be in [0, 100], got {percent}")
    token = keys.stage_token(percent)
    change = orjson.dumps({"percent": percent, "at": float(now), "by": by})
    audit = audit_fields("stage", by, now, percent=token)
    script = redis.register_script(_SET_STAGE)
    written = await script(
        keys=[keys.stage(experiment), keys.stage_history(experiment), keys.audit(experiment)],
        args=[token, repr(float(now)), by, change, AUDIT_MAXLEN,
              *[x for pair in audit.items() for x in pair]],
    )  # fmt: skip
    return bool(written)


async def stage_history(redis: Redis, experiment: str) -> list[tuple[float, float]]:
    """Every change as ``(at, percent)``, in time order (ties keep the order they were set)."""
    return _changes(await redis.lrange(keys.stage_history(experiment), 0, -1))


async def stage_view(redis: Redis, experiment: str) -> tuple[list[tuple[float, float]], str]:
    """The history (as :func:`stage_history`) and the stage hash's ``percent`` as stored
    (:data:`alerts.keys.NO_STAGE` when unset), read in one MULTI/EXEC.

    The hash is the stage in force (the last one written; with skewed clocks the latest
    change by time need not be). A worker decides on it and fences the claim on the same
    token (``expect_stage`` of :func:`alerts.outbox.claim_decision`), so a decision's stage
    and its fence are one value (streams.stagecache.StageCache).
    """
    async with redis.pipeline(transaction=True) as pipe:
        pipe.lrange(keys.stage_history(experiment), 0, -1)
        pipe.hget(keys.stage(experiment), "percent")
        raw, token = await pipe.execute()
    if token is None:
        return _changes(raw), keys.NO_STAGE
    return _changes(raw), token.decode() if isinstance(token, bytes) else str(token)


def _changes(raw: Sequence[bytes | str]) -> list[tuple[float, float]]:
    changes = [orjson.loads(item) for item in raw]
    # sorted by `at`, not append order: two operators' clocks may disagree slightly
    return sorted(((float(c["at"]), float(c["percent"])) for c in changes), key=lambda c: c[0])


async def current_stage(redis: Redis, experiment: str) -> float | None:
    value = await redis.hget(keys.stage(experiment), "percent")
    return None if value is None else float(value)


def stage_at(history: Sequence[tuple[float, float]], ts: float, default: float) -> float:
    """Percent in force at ``ts``: the last change at or before it, ``default`` before any.

    ``history`` must be sorted by time, as :func:`stage_history` returns it; O(log n) so it
    can run per event.
    """
    index = bisect.bisect_right(history, ts, key=lambda change: change[0])
    return default if index == 0 else history[index - 1][1]
