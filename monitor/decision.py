"""From guardrail verdicts to one decision per experiment and ramp stage.

The rule is deliberately asymmetric: a single breach of any guardrail by any treatment
variant rolls back, because the confidence sequences behind the verdicts stay valid under
continuous monitoring, so acting on the first breach does not inflate false alarms beyond
each guardrail's ``alpha``. Anything short of a breach keeps the ramp where it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from monitor.config import ExperimentConfig
from monitor.errors import ShapeMismatch
from monitor.guardrails import GuardrailResult, evaluate_guardrail
from monitor.moments import MomentArray

__all__ = ["Decision", "DecisionReason", "ExperimentDecision", "decide", "evaluate_experiment"]

# later: "pause", "advance", "ship", "iterate" -- consumers should match on these exhaustively
Decision = Literal["rollback", "continue"]
DecisionReason = Literal["guardrail_breach", "all_pass", "inconclusive", "no_guardrails"]


@dataclass(frozen=True, slots=True)
class ExperimentDecision:
    experiment: str
    stage: float
    decision: Decision
    reason: DecisionReason
    guardrails: tuple[GuardrailResult, ...]

    @property
    def breaches(self) -> tuple[GuardrailResult, ...]:
        return tuple(r for r in self.guardrails if r.verdict == "breach")


def decide(experiment: str, stage: float, results: Sequence[GuardrailResult]) -> ExperimentDecision:
    """Roll back on any breach; otherwise continue, saying whether everything passed."""
    results = tuple(results)
    decision: Decision
    reason: DecisionReason
    if not results:
        decision, reason = "continue", "no_guardrails"
    elif any(r.verdict == "breach" for r in results):
        decision, reason = "rollback", "guardrail_breach"
    elif all(r.verdict == "pass" for r in results):
        decision, reason = "continue", "all_pass"
    else:
        decision, reason = "continue", "inconclusive"
    return ExperimentDecision(experiment, stage, decision, reason, results)


def evaluate_experiment(
    cfg: ExperimentConfig, stage_index: int, moments: MomentArray
) -> ExperimentDecision:
    """Evaluate every guardrail for every treatment variant against control at one stage.

    ``moments`` is unit-level, shaped ``(stages, variants, metrics)`` in config order, as
    :class:`monitor.aggregation.UnitMomentAggregation` produces it. Raises
    :class:`ShapeMismatch` for a grid of another shape and ``IndexError`` for a stage
    index out of range.
    """
    expected = (len(cfg.stages), len(cfg.variants), len(cfg.metrics))
    if moments.shape != expected:
        raise ShapeMismatch(f"experiment {cfg.name!r} expects {expected}, got {moments.shape}")
    if not 0 <= stage_index < len(cfg.stages):
        raise IndexError(f"stage index {stage_index} out of range for {cfg.stages}")
    control = cfg.variant_index(cfg.control)
    results = []
    for guardrail in cfg.guardrails:
        metric = cfg.metric_index(guardrail.metric)
        for variant in cfg.treatments:
            results.append(
                evaluate_guardrail(
                    guardrail,
                    variant,
                    moments.cell(stage_index, cfg.variant_index(variant), metric),
                    moments.cell(stage_index, control, metric),
                    tuning_units=cfg.sequential.tuning_units,
                    min_units_per_variant=cfg.sequential.min_units_per_variant,
                )
            )
    return decide(cfg.name, cfg.stages[stage_index], results)
