"""Which notices an evaluation sends: rollback, pause, advance, resolved (streams.decisions)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.config import parse_config
from monitor.layout import ExperimentLayout
from monitor.readout import Readout, build_readout
from monitor.unitstate import Assignment
from monitor.unitstats import ExperimentStats, UnitDeltas, UnitStatsAggregation
from streams.decisions import ADVANCE_BY, ROLLBACK_BY, Active, next_stage, plan

CONFIG = """
experiments:
  - name: e
    variants: [control, treatment]
    control: control
    stages: [10, 50, 100]
    metrics: [{name: err, aggregation: any}]
    guardrails: [{metric: err, harmful_direction: increase, margin: 0.01}]
    sequential: {tuning_units: 2000, min_units_per_variant: 100}
    advance: {min_units_per_variant: 1000, min_duration_seconds: 60}
    auto_advance: AUTO
"""
CFG = parse_config(CONFIG.replace("AUTO", "false")).experiments[0]
AUTO = parse_config(CONFIG.replace("AUTO", "true")).experiments[0]
LAYOUT = ExperimentLayout(CFG)


def readout(stage: float, rate_t: float, *, n_t: int = 6000, n_c: int | None = None) -> Readout:
    """Units at ``stage`` whose treatment error rate is ``rate_t`` (control 2%); the arms
    split as the stage allocates unless ``n_c`` says otherwise (a sample-ratio mismatch)."""
    rng = np.random.default_rng(0)
    si = CFG.stage_index(stage)
    counts = {0: round(n_t * (100 - stage) / stage) if n_c is None else n_c, 1: n_t}
    rows = [
        Assignment(v, si, 0.0, [float(rng.random() < (rate_t if v else 0.02))])
        for v in (0, 1) for _ in range(counts[v])
    ]  # fmt: skip
    agg = UnitStatsAggregation(LAYOUT)
    stats: ExperimentStats = agg.update(agg.initialize(), UnitDeltas.exposed(LAYOUT, rows))
    return build_readout(CFG, stats, si, stage_duration_seconds=3600.0)


def test_a_rollback_kills_turns_the_ramp_off_and_becomes_active() -> None:
    r = readout(50, 0.10)
    assert r.decision == "rollback"
    (action,) = plan(CFG, r, 50.0, None, now=1.0)
    assert action.notice.decision == "rollback" and action.notice.guardrail == "err"
    assert action.killswitch and action.active == "set"
    assert action.stage_change is not None and action.stage_change.percent == 0.0
    assert action.stage_change.by == ROLLBACK_BY


def test_while_off_after_a_rollback_nothing_is_sent() -> None:
    r = readout(10, 0.10)  # the evaluation at "0" uses the first stage's statistics
    assert plan(CFG, r, 0.0, Active(50.0, "rollback"), now=2.0) == []
    # back at the rolled-back stage the rollback is planned again: the Redis claim (one per
    # experiment, stage episode and decision) is what keeps it from being sent twice
    again = plan(CFG, readout(50, 0.10), 50.0, Active(50.0, "rollback"), now=2.0)
    assert [a.notice.decision for a in again] == ["rollback"]


def test_notices_carry_the_stage_episode_and_a_resolution_the_decision_it_ends() -> None:
    (rollback,) = plan(CFG, readout(50, 0.10), 50.0, None, now=1.0, episode=3)
    assert (rollback.notice.episode, rollback.notice.resolves) == (3, "")
    # the ramp moved on twice since (to 0 by the rollback, then to 10 by hand): episode 5
    resolved, *_ = plan(CFG, readout(10, 0.02), 10.0, Active(50.0, "rollback", 3), 2.0, 5)
    assert (resolved.notice.decision, resolved.notice.episode) == ("resolved", 3)
    assert resolved.notice.resolves == "rollback"


def test_a_new_stage_after_a_rollback_resolves_it_and_rewrites_the_kill_switch() -> None:
    r = readout(10, 0.02)
    actions = plan(CFG, r, 10.0, Active(50.0, "rollback"), now=3.0)
    resolved = actions[0]
    assert resolved.notice.decision == "resolved" and resolved.notice.stage == 50.0
    assert resolved.killswitch and resolved.active == "clear" and resolved.stage_change is None
    assert "ramp moved from 50% to 10%" in resolved.notice.reason
    assert math.isnan(resolved.notice.effect)


def test_a_pause_is_sent_once_and_resolved_when_it_clears() -> None:
    srm = readout(50, 0.02, n_c=7000)
    assert srm.decision == "pause" and srm.srm_mismatch
    (pause,) = plan(CFG, srm, 50.0, None, now=1.0)
    assert pause.notice.decision == "pause" and pause.notice.guardrail == "srm"
    assert not pause.killswitch and pause.stage_change is None and pause.active == "set"
    assert plan(CFG, srm, 50.0, Active(50.0, "pause"), now=2.0) == []
    fine = readout(50, 0.02)
    assert fine.decision != "pause"
    (resolved, *_) = plan(CFG, fine, 50.0, Active(50.0, "pause"), now=3.0)
    assert resolved.notice.decision == "resolved" and not resolved.killswitch
    assert "pause no longer holds at 50%" in resolved.notice.reason


def test_a_pause_that_turns_into_a_rollback_is_not_resolved_first() -> None:
    r = readout(50, 0.10)
    (action,) = plan(CFG, r, 50.0, Active(50.0, "pause"), now=1.0)
    assert action.notice.decision == "rollback"


@pytest.mark.parametrize("cfg, moves_to", [(CFG, None), (AUTO, 50.0)])
def test_advance_moves_the_ramp_only_with_auto_advance(cfg: object, moves_to: float | None) -> None:
    r = readout(10, 0.02)
    assert r.decision == "advance"
    (action,) = plan(cfg, r, 10.0, None, now=1.0)  # type: ignore[arg-type]
    assert action.notice.decision == "advance" and not action.killswitch
    if moves_to is None:
        assert action.stage_change is None
    else:
        assert action.stage_change is not None
        assert (action.stage_change.percent, action.stage_change.by) == (moves_to, ADVANCE_BY)


def test_next_stage() -> None:
    assert next_stage(CFG, 10.0) == 50.0
    assert next_stage(CFG, 50.0) == 100.0
    assert next_stage(CFG, 100.0) is None
    assert next_stage(CFG, 0.0) == 10.0


def test_an_off_config_percent_decides_nothing() -> None:
    r = readout(10, 0.10)
    assert plan(CFG, r, 30.0, None, now=1.0) == []


def test_regression_no_advance_or_pause_at_a_stage_whose_rollback_stands() -> None:
    """Review (decide path): after a rollback at 10% the decision in force stays
    ``rollback`` while the ramp is back at 10% (README "Ramp control"; the gate answers
    409 there), but :func:`plan` ignored the active rollback for every decision but a
    second rollback. Once the pooled breach faded (no running intersection of the
    confidence sequence; a transient regression diluted by healthy data):

    - ``advance``: rampmon auto-advanced the ramp to 50% by itself, with a notice;
    - ``pause``: its claim replaced the ``rampmon:active`` rollback marker with the pause,
      so when the ramp later moved on, the ``resolved`` notice ended the *pause*, without
      rewriting the kill switch: ``decision: rollback`` stayed in the kill switch at 50%,
      and a flag service reading it kept treatment off while rampmon measured the stage."""
    r = readout(10, 0.02)
    assert r.decision == "advance"
    actions = plan(AUTO, r, 10.0, Active(10.0, "rollback", 1), now=2.0, episode=3)
    assert [a.notice.decision for a in actions] == []

    srm = readout(10, 0.02, n_c=40_000)
    assert srm.decision == "pause"
    actions = plan(CFG, srm, 10.0, Active(10.0, "rollback", 1), now=2.0, episode=3)
    assert [a for a in actions if a.active == "set" and a.notice.decision != "rollback"] == []
