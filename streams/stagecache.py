"""The worker's cached view of each experiment's ramp-stage history (kept in Redis).

An exposure's stage is the stage in force at the exposure's *event time*, looked up in the
history, so replaying the same exposure after a crash assigns the same stage.
"""

from __future__ import annotations

import bisect

from redis.asyncio import Redis

from alerts import keys
from alerts.stages import stage_at, stage_view
from monitor.config import ExperimentConfig, RampmonConfig

__all__ = ["StageCache", "stage_index_for"]


def stage_index_for(cfg: ExperimentConfig, percent: float) -> int:
    """Index of the configured stage in force at ``percent`` (the largest not above it)."""
    i = bisect.bisect_right(cfg.stages, percent) - 1
    return max(i, 0)


class StageCache:
    """The stage history and the stage hash of each experiment, as of the last refresh.

    The stage *in force* is the hash's ``percent``: what was written last, what the claim
    script fences on, and what a flag service reads. The history, sorted by time, answers
    "which stage at event time". The two agree unless writers' clocks disagree (the latest
    change by time is then not the last one written) or someone edits one of them by hand;
    deciding on the hash keeps a decision's stage and its fence the same value either way.
    """

    def __init__(self, config: RampmonConfig) -> None:
        self._configs = {e.name: e for e in config.experiments}
        self._history: dict[str, list[tuple[float, float]]] = {e: [] for e in self._configs}
        self._token: dict[str, str] = dict.fromkeys(self._configs, keys.NO_STAGE)

    def set_history(
        self, experiment: str, history: list[tuple[float, float]], token: str | None = None
    ) -> None:
        """``token``: the stage hash's ``percent`` read with ``history`` (a refresh always
        gives it); without one, the token of the history's latest change. The history's
        length is the stage's episode (:meth:`stage_episode`)."""
        self._history[experiment] = sorted(history, key=lambda change: change[0])
        if token is None:
            latest = self._history[experiment]
            token = keys.stage_token(latest[-1][1]) if latest else keys.NO_STAGE
        self._token[experiment] = token

    async def refresh(self, redis: Redis) -> None:
        for name in self._configs:
            self.set_history(name, *await stage_view(redis, name))

    def stage_token(self, experiment: str) -> str:
        """The stage hash's ``percent`` as read at the last refresh: what a decision made
        now is fenced on (``expect_stage`` of :func:`alerts.outbox.claim_decision`)."""
        return self._token[experiment]

    def stage_episode(self, experiment: str) -> int:
        """The number of stage changes as read at the last refresh, with the token: the
        episode a decision made now belongs to, and the claim's second fence
        (``expect_episode`` of :func:`alerts.outbox.claim_decision`)."""
        return len(self._history[experiment])

    def percent_at(self, experiment: str, ts: float) -> float:
        return stage_at(self._history[experiment], ts, self._configs[experiment].stages[0])

    def stage_index(self, experiment: str, ts: float) -> int:
        return stage_index_for(self._configs[experiment], self.percent_at(experiment, ts))

    def current_percent(self, experiment: str) -> float:
        """The stage in force: the hash's; without a readable one, the history's latest
        change, or the first stage when none was ever set."""
        in_force = _percent(self._token[experiment])
        if in_force is not None:
            return in_force
        history = self._history[experiment]
        return history[-1][1] if history else self._configs[experiment].stages[0]

    def evaluated_percent(self, experiment: str) -> float:
        """The stage to read out: the one in force, or while the ramp is off (0) the last
        stage that was on, whose evidence (e.g. the breach behind a rollback) is the story."""
        current = self.current_percent(experiment)
        if current > 0:
            return current
        for _, percent in reversed(self._history[experiment]):
            if percent > 0:
                return percent
        return self._configs[experiment].stages[0]

    def current_since(self, experiment: str) -> float | None:
        """When the current stage began, or None when no stage change was ever recorded."""
        history = self._history[experiment]
        return history[-1][0] if history else None


def _percent(token: str) -> float | None:
    """The hash's percent as a number; None when unset, or when it is not a percent in
    [0, 100] (a hand edit), which the claim script matches with nothing: no decision acts
    until the stage is set again."""
    if token == keys.NO_STAGE:
        return None
    try:
        value = float(token)
    except ValueError:
        return None
    return value if 0.0 <= value <= 100.0 else None
