"""Evaluation: merge the per-partition partials, run the guardrail tests, export metrics.

Runs on whichever worker owns the (single, by default) partition of the partials topic, so
exactly one worker speaks for each experiment; firing is additionally claimed in Redis.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import get_args

import numpy as np

from alerts.alertmanager import stage_label
from alerts.outbox import Target
from monitor.config import RampmonConfig
from monitor.decision import Decision
from monitor.guardrails import GuardrailResult
from monitor.readout import Readout, build_readout
from streams.metrics import Metrics, SeriesCache
from streams.partials import Partial, merge_partials
from streams.producer import partition_of
from streams.stagecache import StageCache, stage_index_for

__all__ = ["Evaluator", "Status", "rollback_causes", "targets_for"]

_VERDICTS = ("breach", "pass", "inconclusive")
_DECISIONS: tuple[str, ...] = get_args(Decision)


@dataclass(frozen=True, slots=True)
class Status:
    """What the API and the gate report for one experiment: the latest evaluation."""

    readout: Readout
    #: the ramp in force (0 = off), which may differ from ``readout.stage`` when off
    percent: float
    #: the decision in force: the engine's, or ``rollback`` while a fired rollback holds
    decision: Decision
    evaluated_at: float
    #: the stage as Redis stored it when this evaluation read the history: the fence for
    #: the claims it leads to (streams.stagecache.StageCache.stage_token)
    stage_token: str
    #: the stage history's length from the same read: the episode of the stage in force
    stage_episode: int = 0


class Evaluator:
    def __init__(
        self, config: RampmonConfig, metrics: Metrics, stages: StageCache, *, partitions: int
    ) -> None:
        self.config = config
        self.partitions = partitions
        self.metrics = metrics
        self.stages = stages
        self.latest: dict[str, dict[int, Partial]] = {}
        #: experiments with a snapshot newer than their last evaluation
        self.changed: set[str] = set()
        self.evaluated_at: dict[str, float] = {}
        self.decisions: dict[str, Readout] = {}
        #: experiment -> stage at which it rolled back: the exported decision stays
        #: `rollback` there and while the ramp is off (a fired rollback is an action, not a
        #: verdict that may flap as a confidence sequence near its margin moves); a new
        #: non-zero stage clears it
        self.rolled_back: dict[str, float] = {}
        self.status: dict[str, Status] = {}
        self._guardrail_series: dict[str, set[tuple[str, ...]]] = {}
        #: the rampmon_rollback_info series exported per experiment
        self._rollback_series: dict[str, frozenset[tuple[str, ...]]] = {}
        self._series = SeriesCache()

    def accept(self, partial: Partial) -> bool:
        """Keep the newest snapshot per (experiment, partition); ignore stale ones.

        An equal ``seq`` is the same point in the partition's history (an owner's repeat,
        or a new owner's rebuild of the records the old one wrote), so it replaces the one
        held; only a lower one is stale."""
        try:
            self.config.experiment(partial.experiment)
        except KeyError:
            return False
        per_partition = self.latest.setdefault(partial.experiment, {})
        current = per_partition.get(partial.partition)
        if current is not None and current.seq > partial.seq:
            return False
        per_partition[partial.partition] = partial
        self.changed.add(partial.experiment)
        return True

    def load(self, partials: Iterable[Partial]) -> None:
        for p in partials:
            self.accept(p)

    def release(self, partitions: Iterable[int]) -> list[str]:
        """Forget the experiments whose partials partition an assignment moved away:
        another worker evaluates them now, and this one must stop exporting their series.
        Returns them."""
        released = set(partitions)
        if not released:
            return []
        gone = [e for e in self.latest if partition_of(e, self.partitions) in released]
        for exp in gone:
            del self.latest[exp]
            self.changed.discard(exp)
            self.evaluated_at.pop(exp, None)
            self.decisions.pop(exp, None)
            self.rolled_back.pop(exp, None)
            self.status.pop(exp, None)
            self._guardrail_series.pop(exp, None)
            self._rollback_series.pop(exp, None)
        if gone:
            # prometheus_client cannot drop series by one label value; re-export the rest
            m = self.metrics
            for gauge in (
                m.stage_percent,
                m.exposures,
                m.metric_units,
                m.metric_mean,
                m.metric_stddev,
                m.effect,
                m.lower,
                m.upper,
                m.margin,
                m.p_value,
                m.verdict,
                m.decision,
                m.rollback,
                m.row_effect,
                m.row_lower,
                m.row_upper,
                m.srm_p_value,
                m.stage_ready,
                m.window_exposures,
                m.window_events,
                m.window_event_mean,
                m.window_start,
            ):
                self._series.clear(gauge)
        return gone

    def take_changed(self, now: float = math.inf, gap: float = 0.0) -> set[str]:
        """The experiments with new snapshots since their last evaluation (and forget them),
        but for those evaluated less than ``gap`` seconds before ``now``: they stay changed
        for a later call.

        The collect agent learns of a snapshot the moment it arrives; evaluating those at
        once, instead of at the next tick of a one-second timer, takes half a second off
        the median time to a decision (``bench/detection.py``). The gap bounds the readouts
        of an experiment (~2-5 ms each) however many workers publish it, per experiment:
        one bound across experiments held all but the first snapshot of a publish (one
        message per experiment) for the whole gap."""
        ready = {e for e in self.changed if self._not_within(e, now, gap)}
        self.changed -= ready
        return ready

    def held_until(self, now: float, gap: float) -> float | None:
        """Seconds from ``now`` until :meth:`take_changed` with this ``gap`` would return an
        experiment it holds back (0: one is ready now); None if none has changed."""
        if not self.changed:
            return None
        waits = [
            0.0 if self._not_within(e, now, gap) else self.evaluated_at[e] + gap - now
            for e in self.changed
        ]
        return max(min(waits), 0.0)

    def due(self, now: float, interval: float) -> set[str]:
        """Experiments not evaluated for ``interval``: the periodic evaluation's share
        (stage durations, staleness and dwell move with the clock, not with snapshots)."""
        return {e for e in self.latest if self._not_within(e, now, interval)}

    def _not_within(self, experiment: str, now: float, seconds: float) -> bool:
        # a wall clock stepped back makes the elapsed time negative: that is not "recent",
        # or every experiment would wait until the clock passed its old stamp again
        return not 0 <= now - self.evaluated_at.get(experiment, -math.inf) < seconds

    def evaluate(self, now: float, only: Collection[str] | None = None) -> list[Readout]:
        """Read out every experiment this worker evaluates, or those in ``only``."""
        out = []
        for exp, partials in self.latest.items():
            if not partials or (only is not None and exp not in only):
                continue
            self.evaluated_at[exp] = now
            self.changed.discard(exp)
            cfg = self.config.experiment(exp)
            stats, windows = merge_partials(list(partials.values()))
            percent = self.stages.current_percent(exp)
            stage = stage_index_for(cfg, self.stages.evaluated_percent(exp))
            since = self.stages.current_since(exp)
            complete = {
                s: w for s, w in windows.items() if s + self.config.windows.size_seconds <= now
            }
            last = {max(complete): complete[max(complete)]} if complete else {}
            readout = build_readout(
                cfg,
                stats,
                stage,
                stage_duration_seconds=0.0 if since is None else max(now - since, 0.0),
                windows=last,
            )
            self.decisions[exp] = readout
            out.append(readout)
            m, series = self.metrics, self._series
            series(m.stage_percent, exp).set(percent)
            units = stats.units
            n = units.n.tolist()
            # every metric column at once: (stage, variant, metric) arrays, as plain floats
            columns = [units.column_moments(mi) for mi in range(len(cfg.metrics))]
            means = np.stack([c.mean for c in columns], axis=-1).tolist()
            with np.errstate(invalid="ignore"):
                sds = np.sqrt(np.stack([c.variance for c in columns], axis=-1)).tolist()
            for si, stage_pct in enumerate(cfg.stages):
                label = stage_label(stage_pct)
                for vi, variant in enumerate(cfg.variants):
                    units_n = n[si][vi]
                    series(m.exposures, exp, variant, label).set(units_n)
                    for mi, metric in enumerate(cfg.metrics):
                        key = (exp, variant, label, metric.name)
                        series(m.metric_units, *key).set(units_n)
                        series(m.metric_mean, *key).set(means[si][vi][mi])
                        series(m.metric_stddev, *key).set(sds[si][vi][mi])
            # guardrail series exist only for the stage in force: a stage left behind (or a
            # ramp turned off) must not keep a breach series alive for alert rules
            exported = set()
            if percent == readout.stage:
                for r in readout.guardrails:
                    exported.add(self._export_guardrail(exp, stage_label(percent), r))
            for labels in self._guardrail_series.get(exp, set()) - exported:
                self._remove_guardrail(labels)
            self._guardrail_series[exp] = exported
            for row in readout.metrics:
                labels = (exp, row.metric, row.variant, row.kind, row.scale)
                series(m.row_effect, *labels).set(row.effect)
                series(m.row_lower, *labels).set(row.lower)
                series(m.row_upper, *labels).set(row.upper)
            for srm in readout.srm:
                series(m.srm_p_value, exp, stage_label(srm.stage)).set(srm.result.p_value)
            series(m.stage_ready, exp).set(1.0 if readout.progress.ready else 0.0)
            if readout.decision == "rollback" and percent == readout.stage:
                self.rolled_back[exp] = percent
            elif exp in self.rolled_back and percent not in (self.rolled_back[exp], 0.0):
                del self.rolled_back[exp]  # the ramp moved on: a new episode
            self._export_rollback(exp, readout)
            current = self.decision_in_force(exp, readout, percent)
            token, episode = self.stages.stage_token(exp), self.stages.stage_episode(exp)
            self.status[exp] = Status(readout, percent, current, now, token, episode)
            for d in _DECISIONS:
                series(m.decision, exp, d).set(1.0 if current == d else 0.0)
            for start, w in last.items():
                series(m.window_start, exp).set(start)
                for vi, variant in enumerate(cfg.variants):
                    series(m.window_exposures, exp, variant).set(int(w.exposures[vi]))
                    for mi, metric in enumerate(cfg.metrics):
                        ev = w.events.cell(vi, mi)
                        series(m.window_events, exp, variant, metric.name).set(ev.n)
                        series(m.window_event_mean, exp, variant, metric.name).set(ev.mean)
        self.metrics.last_evaluation.set(now)
        return out

    def decision_in_force(self, exp: str, readout: Readout, percent: float) -> Decision:
        at = self.rolled_back.get(exp)
        if at is not None and percent in (at, 0.0):
            return "rollback"
        return readout.decision

    def _export_rollback(self, exp: str, readout: Readout) -> None:
        """``rampmon_rollback_info``: the rollback in force and its causes, for the page.
        Right after a rollback the ramp is at 0 and the stage's guardrail series are gone,
        so neither says which stage rolled back or why. The causes are those of the
        evaluation that decided it, kept while it holds (a verdict may fade meanwhile); a
        rollback taken over (a restart, another worker's claim) takes them from the readout
        at its stage once that shows the rollback, and has no guardrail until then."""
        at = self.rolled_back.get(exp)
        held = self._rollback_series.get(exp, frozenset())
        want: frozenset[tuple[str, ...]] = frozenset()
        if at is not None:
            stage = stage_label(at)
            if held and all(labels[1] == stage and labels[2] for labels in held):
                want = held
            elif readout.decision == "rollback" and readout.stage == at:
                want = frozenset((exp, stage, *cause) for cause in rollback_causes(readout))
            else:
                want = frozenset({(exp, stage, "", "", "")})
        for labels in held - want:
            self._series.remove(self.metrics.rollback, *labels)
        for labels in want:
            self._series(self.metrics.rollback, *labels).set(1.0)
        self._rollback_series[exp] = want

    def _remove_guardrail(self, labels: tuple[str, ...]) -> None:
        m = self.metrics
        for gauge in (m.effect, m.lower, m.upper, m.margin, m.p_value):
            self._series.remove(gauge, *labels)
        for v in _VERDICTS:
            self._series.remove(m.verdict, *labels, v)

    def _export_guardrail(self, exp: str, stage: str, r: GuardrailResult) -> tuple[str, ...]:
        m, series = self.metrics, self._series
        labels = (exp, r.guardrail, r.metric, r.variant, stage)
        series(m.effect, *labels).set(r.effect)
        series(m.lower, *labels).set(r.lower)
        series(m.upper, *labels).set(r.upper)
        series(m.margin, *labels).set(r.margin if r.harmful_direction == "increase" else -r.margin)
        series(m.p_value, *labels).set(r.p_value)
        for v in _VERDICTS:
            series(m.verdict, *labels, v).set(1.0 if r.verdict == v else 0.0)
        return labels


def rollback_causes(readout: Readout) -> list[tuple[str, str, str]]:
    """(guardrail, metric, variant) of each cause of a rollback readout: its breached
    guardrails, else the primary metric proven worse as ``primary:METRIC`` (the guardrail
    its decision notice names, streams.decisions.decision_notice)."""
    if readout.breaches:
        return [(b.guardrail, b.metric, b.variant) for b in readout.breaches]
    if readout.primary is not None:
        p = readout.primary
        return [(f"primary:{p.metric}", p.metric, p.variant)]
    return [("", "", "")]


def targets_for(config: RampmonConfig) -> list[Target]:
    targets = [Target("webhook", f"webhook-{i}", w.url) for i, w in enumerate(config.webhooks)]
    return [*targets, Target("kafka", "decisions")]
