"""Which decision notices an evaluation sends, and what each one changes in Redis.

A decision is an action, sent once per (experiment, stage episode, decision) -- the claim in
Redis makes it once across workers and restarts. An episode is one stretch of a stage in
force (:class:`alerts.payloads.DecisionNotice`): a ramp that comes back to a stage where the
evidence still says rollback rolls back again, and a resolution is sent once per decision
it ends.

- ``rollback``: kill switch, the ramp set to 0 and a notice, in one Lua script; the
  rollback stays *active* until the ramp moves to a new non-zero stage.
- ``pause`` (SRM or non-finite inputs): a notice; active while the pause holds.
- ``advance``: a notice; with ``auto_advance: true`` the ramp moves to the next stage in the
  same script. The dwell per stage is ``advance.min_duration_seconds``, which the engine
  already requires before it decides ``advance``.
- ``resolved``: the active pause or rollback no longer holds (the pause cleared, or the ramp
  moved on after a rollback). A rollback's resolution also rewrites the kill switch, so a
  flag service that reads ``decision == rollback`` lets the feature back in.

:func:`plan` is pure; :class:`DecisionFirer` executes its plan against Redis.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from alerts import keys
from alerts.outbox import Renderer, StageChange, Target, claim_decision, claim_key
from alerts.payloads import DecisionNotice
from monitor.config import ExperimentConfig
from monitor.readout import Readout

__all__ = ["Action", "Active", "DecisionFirer", "decision_notice", "load_active", "plan"]

ActiveDecision = Literal["pause", "rollback"]
#: how long a claim found done is not asked of Redis again: a Redis that lost it (a
#: failover to a replica the claim never reached) gets it claimed again within this
DONE_RECHECK_SECONDS = 10.0
ROLLBACK_BY = "rampmon:rollback"
ADVANCE_BY = "rampmon:auto_advance"


@dataclass(frozen=True, slots=True)
class Active:
    """A pause or rollback in force at ``stage`` (in its ``episode``) that a ``resolved``
    notice will end."""

    stage: float
    decision: ActiveDecision
    episode: int = 0


@dataclass(frozen=True, slots=True)
class Action:
    notice: DecisionNotice
    killswitch: bool = False
    stage_change: StageChange | None = None
    active: Literal["set", "clear"] | None = None


def decision_notice(readout: Readout, now: float, episode: int = 0) -> DecisionNotice:
    """The notice of ``readout``'s decision, with the evidence behind it.

    A rollback names its first breached guardrail (or the harmed primary metric); a pause for
    sample-ratio mismatch names ``srm``; other decisions name no guardrail.
    """
    nan = math.nan
    what: tuple[str, str, str, float, float, float, float] = ("", "", "", nan, nan, nan, nan)
    if readout.decision == "rollback" and readout.breaches:
        b = readout.breaches[0]
        what = (b.guardrail, b.metric, b.variant, b.effect, b.lower, b.upper, b.margin)
    elif readout.decision == "rollback" and readout.primary is not None:
        p = readout.primary
        what = (f"primary:{p.metric}", p.metric, p.variant, p.effect, p.lower, p.upper, 0.0)
    elif readout.decision == "pause" and readout.srm_mismatch:
        what = ("srm", "", "", nan, nan, nan, nan)
    guardrail, metric, variant, effect, lower, upper, margin = what
    return DecisionNotice(
        experiment=readout.experiment,
        stage=readout.stage,
        decision=readout.decision,
        guardrail=guardrail,
        metric=metric,
        variant=variant,
        effect=effect,
        lower=lower,
        upper=upper,
        margin=margin,
        decided_at=now,
        reason=readout.reason,
        episode=episode,
    )


def _resolved(experiment: str, active: Active, percent: float, now: float) -> DecisionNotice:
    why = (
        f"ramp moved from {active.stage:g}% to {percent:g}%"
        if percent != active.stage
        else f"{active.decision} no longer holds at {active.stage:g}%"
    )
    nan = math.nan
    return DecisionNotice(
        experiment=experiment,
        stage=active.stage,
        decision="resolved",
        guardrail="",
        metric="",
        variant="",
        effect=nan,
        lower=nan,
        upper=nan,
        margin=nan,
        decided_at=now,
        reason=f"{active.decision} resolved: {why}",
        episode=active.episode,
        resolves=active.decision,
    )


def next_stage(cfg: ExperimentConfig, percent: float) -> float | None:
    later = [s for s in cfg.stages if s > percent]
    return later[0] if later else None


def plan(
    cfg: ExperimentConfig,
    readout: Readout,
    percent: float,
    active: Active | None,
    now: float,
    episode: int = 0,
) -> list[Action]:
    """The actions one evaluation calls for, before deduplication by the Redis claim.

    ``percent`` is the ramp in force (0 = off), in its ``episode`` (the stage history's
    length); ``readout`` was computed at that stage.
    """
    actions: list[Action] = []
    decision = readout.decision
    if active is not None:
        if active.decision == "rollback":
            over = percent not in (active.stage, 0.0)
        else:
            over = percent != active.stage or decision not in ("pause", "rollback")
        if over:
            actions.append(
                Action(
                    _resolved(cfg.name, active, percent, now),
                    killswitch=active.decision == "rollback",
                    active="clear",
                )
            )
    if percent == 0.0 or readout.stage != percent:
        # off (after a rollback or by hand), or an off-config percent: nothing new to decide
        return actions
    if decision == "rollback":
        off = StageChange(0.0, ROLLBACK_BY)
        actions.append(Action(decision_notice(readout, now, episode), True, off, "set"))
    elif active is not None and active.decision == "rollback" and percent == active.stage:
        # the ramp is back at the stage it rolled back from: the rollback stays in force
        # there (streams.evaluator.Evaluator.decision_in_force), so the ramp does not
        # advance past it, and a pause must not replace its marker (whose resolution
        # rewrites the kill switch)
        pass
    elif decision == "pause" and not (active and active.decision == "pause"):
        actions.append(Action(decision_notice(readout, now, episode), active="set"))
    elif decision == "advance":
        target = next_stage(cfg, percent) if cfg.auto_advance else None
        change = None if target is None else StageChange(target, ADVANCE_BY)
        actions.append(Action(decision_notice(readout, now, episode), stage_change=change))
    return actions


async def load_active(redis: Redis, experiment: str) -> Active | None:
    raw = await redis.hgetall(keys.active(experiment))
    fields = {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in raw.items()
    }
    decision = fields.get("decision")
    if decision not in ("pause", "rollback") or "stage" not in fields:
        return None
    # a marker written before episodes has none: episode 0
    return Active(float(fields["stage"]), decision, int(fields.get("episode", 0)))  # type: ignore[arg-type]


class DecisionFirer:
    """Executes :func:`plan` against Redis, once per claim, remembering what it has done.

    ``on_fired(notice)`` is called for each claim this worker won; a claim another worker (or
    an earlier run) won is remembered too, so it is not retried every second -- for
    :data:`DONE_RECHECK_SECONDS`, after which the claim script runs again: a claim Redis lost
    is then claimed afresh (same idempotency key), and one it holds reads ``taken``.
    ``on_stage_moved(notice)`` is called for each claim refused by the stage fence.
    """

    def __init__(
        self,
        redis: Redis,
        targets: Sequence[Target],
        render: Renderer,
        on_fired: Callable[[DecisionNotice], None],
        on_stage_moved: Callable[[DecisionNotice], None] = lambda notice: None,
    ) -> None:
        self._redis = redis
        self._targets = list(targets)
        self._render = render
        self._on_fired = on_fired
        self._on_stage_moved = on_stage_moved
        #: claim key -> when this worker last found it claimed (by itself or another)
        self._done: dict[str, float] = {}
        self.active: dict[str, Active | None] = {}
        #: bumped by forget(), so a step that was waiting on Redis meanwhile leaves no trace
        self._generation: dict[str, int] = {}

    async def step(
        self,
        cfg: ExperimentConfig,
        readout: Readout,
        percent: float,
        now: float,
        *,
        stage_token: str,
        episode: int,
    ) -> None:
        """Raises Redis/connection errors: the caller counts them and the next evaluation
        retries (nothing is marked done before its claim succeeded).

        ``percent`` is the stage in force as the evaluation read it, and ``stage_token``
        the stage hash's ``percent`` from the same read
        (:meth:`streams.stagecache.StageCache.stage_token`), and ``episode`` the stage
        history's length from it. Every claim is fenced on both: if Redis has moved the ramp
        since, the action is dropped, not marked done, and the next evaluation decides
        again on a fresh view.
        """
        name = cfg.name
        # a forget() while this step waits on Redis must win: the experiment has moved to
        # another worker, and what this step learnt may be stale by the time it comes back
        generation = self._generation.get(name, 0)
        if name not in self.active:
            loaded = await load_active(self._redis, name)
            if self._generation.get(name, 0) != generation:
                return
            self.active[name] = loaded
        for action in plan(cfg, readout, percent, self.active[name], now, episode):
            key = claim_key(action.notice)
            if not 0.0 <= now - self._done.get(key, -math.inf) < DONE_RECHECK_SECONDS:
                outcome = await claim_decision(
                    self._redis,
                    action.notice,
                    self._targets,
                    now=now,
                    render=self._render,
                    killswitch=action.killswitch,
                    stage_change=action.stage_change,
                    active=action.active,
                    expect_stage=stage_token,
                    expect_episode=episode,
                )
                if outcome == "stage_moved":
                    self._on_stage_moved(action.notice)
                    return  # later actions of this plan rest on the same stale view
                self._done[key] = now
                if outcome == "claimed":
                    self._on_fired(action.notice)
            if self._generation.get(name, 0) != generation:
                return
            if action.active == "set":
                notice = action.notice
                self.active[name] = Active(notice.stage, notice.decision, notice.episode)  # type: ignore[arg-type]
            elif action.active == "clear":
                self.active[name] = None

    def forget(self, experiments: Iterable[str]) -> None:
        """Drop what this worker remembers of the active decisions of ``experiments``, whose
        evaluation moved to another worker: when one comes back, its marker is read from
        Redis afresh, as the other worker may have set or ended it meanwhile."""
        for name in experiments:
            self.active.pop(name, None)
            self._generation[name] = self._generation.get(name, 0) + 1
