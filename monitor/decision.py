"""From verdicts to one decision per experiment and ramp stage, as data.

Order of precedence (first match wins):

1. ``rollback`` -- some guardrail breached for some treatment. Under a sample-ratio
   mismatch the estimates are suspect, but a breach still rolls back: a rollback is cheap
   to undo, harm to users is not.
2. ``pause`` -- the data cannot be trusted: a sequential SRM alarm, or a guardrail whose
   inputs are not finite. A pause never advances; a human looks first.
3. At the final stage (the last with a control), once the stage is ready (its minimum
   units per variant and duration are met), the launch readout of seed 000's memo:
   ``rollback`` if the primary metric is proven worse, ``ship`` if every guardrail passes
   and the primary metric is proven better (or no primary metric is configured),
   ``iterate`` otherwise -- with the reason ``primary_not_estimable`` when a primary metric
   is configured but has no finite interval (too few units for an estimate, a ratio whose
   denominator is zero): no evidence about the primary is never a reason to ship.
4. Before it: ``advance`` when every guardrail passes its non-inferiority margin and the
   stage is ready, ``continue`` otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from monitor.config import Direction
from monitor.guardrails import GuardrailResult
from monitor.sequential import Interval

__all__ = ["Decision", "DecisionReason", "StageProgress", "decide"]

Decision = Literal["rollback", "pause", "advance", "continue", "ship", "iterate"]
DecisionReason = Literal[
    "guardrail_breach",
    "srm",
    "data_quality",
    "all_pass",
    "inconclusive",
    "no_guardrails",
    "stage_not_ready",
    "primary_improved",
    "primary_harmed",
    "primary_inconclusive",
    "primary_not_estimable",
]


@dataclass(frozen=True, slots=True)
class StageProgress:
    """How far the current stage is towards the evidence ``advance`` requires."""

    min_units: int  # the smaller arm's units in the stage
    duration_seconds: float
    required_units: int
    required_seconds: float
    final: bool

    @property
    def ready(self) -> bool:
        return (
            self.min_units >= self.required_units and self.duration_seconds >= self.required_seconds
        )


def _primary_verdict(interval: Interval, direction: Direction) -> DecisionReason:
    if not interval.lower <= interval.upper:  # NaN bounds: no estimate
        return "primary_not_estimable"
    better = interval.lower > 0 if direction == "increase" else interval.upper < 0
    worse = interval.upper < 0 if direction == "increase" else interval.lower > 0
    if better:
        return "primary_improved"
    if worse:
        return "primary_harmed"
    return "primary_inconclusive"


def decide(
    guardrails: Sequence[GuardrailResult],
    *,
    srm_mismatch: bool,
    progress: StageProgress,
    primary: Interval | None = None,
    primary_direction: Direction = "increase",
) -> tuple[Decision, DecisionReason]:
    """The decision and its reason code (see the module docstring for the rules).

    ``primary`` is the primary metric's interval, ``None`` only when no primary metric is
    configured; a configured primary without an estimate is an interval with NaN bounds.
    """
    if any(r.verdict == "breach" for r in guardrails):
        return "rollback", "guardrail_breach"
    if srm_mismatch:
        return "pause", "srm"
    if any(r.reason == "non_finite" for r in guardrails):
        return "pause", "data_quality"
    all_pass = all(r.verdict == "pass" for r in guardrails)
    if progress.final:
        if not progress.ready:
            return "continue", "stage_not_ready"
        if primary is None:  # no primary metric configured: the guardrails decide
            return ("ship", "all_pass") if all_pass else ("iterate", "inconclusive")
        verdict = _primary_verdict(primary, primary_direction)
        if verdict == "primary_harmed":
            return "rollback", verdict
        if all_pass and verdict == "primary_improved":
            return "ship", verdict
        return "iterate", verdict if all_pass else "inconclusive"
    if not guardrails:
        return "continue", "no_guardrails"
    if not all_pass:
        return "continue", "inconclusive"
    if not progress.ready:
        return "continue", "stage_not_ready"
    return "advance", "all_pass"
