"""The Redis key layout rampmon writes: the contract with flag services and operators.

Every key starts with ``rampmon:``. Experiment names match ``[A-Za-z][A-Za-z0-9_.-]*`` (see
:mod:`monitor.config`), so they never contain ``:`` and keys split unambiguously. Stages are
percents written with :func:`stage_token` (``5`` and ``5.0`` are the same stage). All
numbers are decimal strings; times are unix epoch seconds (float).

``rampmon:killswitch:{experiment}`` -- HASH, read by the flag service. Present once a
    guardrail was breached; a later decision overwrites it (latest wins). Fields:
    ``decision`` (e.g. ``rollback``), ``reason`` (human text), ``stage`` (percent in force),
    ``guardrail``, ``metric``, ``decided_at`` (epoch seconds), ``idempotency_key``.
``rampmon:claim:{experiment}:{stage}:{episode}:{decision}`` -- STRING, value = idempotency
    key, no TTL; a resolution's key ends ``:resolved:{pause|rollback}``, the decision it
    ends. ``SET NX`` by whichever worker decides first; its existence means the decision's
    side effects (kill switch, outbox jobs) were written, so restarts and other workers skip
    it. ``episode`` is the length of the stage history when the decision was made: a ramp
    that comes back to a stage decides afresh there.
``rampmon:stage:{experiment}`` -- HASH, the ramp stage in force: ``percent``,
    ``updated_at`` (epoch seconds), ``by`` (who set it: ``cli``, a user name, ...).
``rampmon:stage_history:{experiment}`` -- LIST, append-only, one JSON object per change:
    ``{"percent": float, "at": epoch seconds, "by": str}``. Its length numbers the stage's
    episodes.
``rampmon:audit:{experiment}`` -- STREAM (capped near 10,000 entries), one entry per
    operator or automatic action: ``action`` (``stage``, ``acknowledge``, ``override``,
    ``clear_override``), ``by``, ``at`` (epoch seconds) and the action's fields (``percent``,
    ``decision``, ``stage``, ``reason``). ``rampmon ramp EXP`` prints it.
``rampmon:override:{experiment}`` -- HASH, an operator's override of the decision at one
    stage: ``decision``, ``stage``, ``by``, ``reason``, ``at``. It applies while that stage is
    in force; the gate endpoint obeys it. A rollback's claim deletes it.
``rampmon:active:{experiment}`` -- HASH, the pause or rollback in force that a ``resolved``
    notice will end: ``stage``, ``episode``, ``decision``, ``idempotency_key``.
``rampmon:readout:{experiment}`` -- STRING, JSON of the latest readout, written by the worker
    that evaluates the experiment (expires after 60 s), so any worker's API can answer.
``rampmon:outbox:jobs`` -- HASH, job id -> job JSON (see :class:`alerts.outbox.Job`). Job ids
    are ``{idempotency_key}:{target name}``.
``rampmon:outbox:due`` -- ZSET, job id -> epoch seconds when it may next be attempted. A
    leased job's score is its lease expiry, so a crashed worker's job comes due again.
``rampmon:outbox:dead`` -- HASH, job id -> job JSON plus ``dead_at``, for jobs that
    exhausted their attempts (``rampmon webhooks list`` / ``retry``).

The scripts in :mod:`alerts.outbox` touch several of these keys atomically, so they assume
one Redis primary (standalone or Sentinel); Redis Cluster would need a shared hash tag.
"""

from __future__ import annotations

__all__ = [
    "PREFIX",
    "active",
    "audit",
    "claim",
    "killswitch",
    "outbox_dead",
    "outbox_due",
    "outbox_jobs",
    "override",
    "readout",
    "stage",
    "stage_history",
    "stage_token",
]

PREFIX = "rampmon:"

#: the stage token of an experiment whose stage was never set (the first stage applies)
NO_STAGE = ""


def stage_token(percent: float) -> str:
    """Canonical text of a stage percent: ``repr`` of the float round-trips exactly."""
    return repr(float(percent))


def killswitch(experiment: str) -> str:
    return f"{PREFIX}killswitch:{experiment}"


def claim(experiment: str, stage: float, episode: int, decision: str, resolves: str = "") -> str:
    key = f"{PREFIX}claim:{experiment}:{stage_token(stage)}:{episode}:{decision}"
    return f"{key}:{resolves}" if resolves else key


def stage(experiment: str) -> str:
    return f"{PREFIX}stage:{experiment}"


def stage_history(experiment: str) -> str:
    return f"{PREFIX}stage_history:{experiment}"


def outbox_jobs() -> str:
    return f"{PREFIX}outbox:jobs"


def outbox_due() -> str:
    return f"{PREFIX}outbox:due"


def outbox_dead() -> str:
    return f"{PREFIX}outbox:dead"


def audit(experiment: str) -> str:
    return f"{PREFIX}audit:{experiment}"


def override(experiment: str) -> str:
    return f"{PREFIX}override:{experiment}"


def active(experiment: str) -> str:
    return f"{PREFIX}active:{experiment}"


def readout(experiment: str) -> str:
    return f"{PREFIX}readout:{experiment}"
