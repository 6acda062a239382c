"""The decision rules, case by case: precedence, stage readiness and the final-stage memo."""

from __future__ import annotations

import math

import pytest

from monitor.decision import StageProgress, decide
from monitor.guardrails import GuardrailResult, Reason, Verdict
from monitor.sequential import Interval


def result(verdict: Verdict, reason: Reason | None = None) -> GuardrailResult:
    default: Reason = "interval_straddles_margin" if verdict == "inconclusive" else verdict  # type: ignore[assignment]
    return GuardrailResult(
        "g", "m", "treatment", verdict, reason or default, 0.0, -1.0, 1.0, 0.0, "increase",
        0.05, 1.0, 100, 100, 0.0, 0.0,
    )  # fmt: skip


READY = StageProgress(5000, 7200.0, 1000, 3600.0, final=False)
YOUNG = StageProgress(5000, 60.0, 1000, 3600.0, final=False)
SMALL = StageProgress(500, 7200.0, 1000, 3600.0, final=False)
FINAL = StageProgress(5000, 7200.0, 1000, 3600.0, final=True)
FINAL_YOUNG = StageProgress(5000, 60.0, 1000, 3600.0, final=True)

PASS, BREACH, OPEN = result("pass"), result("breach"), result("inconclusive")
BAD_DATA = result("inconclusive", "non_finite")
UP, DOWN, STRADDLE = Interval(0.1, 0.3), Interval(-0.3, -0.1), Interval(-0.1, 0.2)
NO_ESTIMATE = Interval(math.nan, math.nan)  # a primary is configured but has no estimate


@pytest.mark.parametrize(
    ("guardrails", "srm", "progress", "primary", "expected"),
    [
        # a breach wins over everything, SRM included
        ((PASS, BREACH), False, READY, None, ("rollback", "guardrail_breach")),
        ((BREACH,), True, READY, None, ("rollback", "guardrail_breach")),
        ((BREACH,), False, FINAL, UP, ("rollback", "guardrail_breach")),
        # untrustworthy data pauses, and never advances
        ((PASS,), True, READY, None, ("pause", "srm")),
        ((PASS, BAD_DATA), False, READY, None, ("pause", "data_quality")),
        ((PASS,), True, FINAL, UP, ("pause", "srm")),
        # advance needs every guardrail to pass and the stage to be ready
        ((PASS, PASS), False, READY, None, ("advance", "all_pass")),
        ((PASS, OPEN), False, READY, None, ("continue", "inconclusive")),
        ((PASS,), False, YOUNG, None, ("continue", "stage_not_ready")),
        ((PASS,), False, SMALL, None, ("continue", "stage_not_ready")),
        ((), False, READY, None, ("continue", "no_guardrails")),
        # the final stage: ship / iterate / rollback from the primary metric
        ((PASS,), False, FINAL, UP, ("ship", "primary_improved")),
        ((PASS,), False, FINAL, STRADDLE, ("iterate", "primary_inconclusive")),
        ((OPEN,), False, FINAL, UP, ("iterate", "inconclusive")),
        ((PASS,), False, FINAL, DOWN, ("rollback", "primary_harmed")),
        ((PASS,), False, FINAL, None, ("ship", "all_pass")),
        ((OPEN,), False, FINAL, None, ("iterate", "inconclusive")),
        ((), False, FINAL, None, ("ship", "all_pass")),
        # a configured primary without an estimate is no primary evidence: never ship
        ((PASS,), False, FINAL, NO_ESTIMATE, ("iterate", "primary_not_estimable")),
        ((), False, FINAL, NO_ESTIMATE, ("iterate", "primary_not_estimable")),
        ((OPEN,), False, FINAL, NO_ESTIMATE, ("iterate", "inconclusive")),
        ((PASS,), False, FINAL_YOUNG, NO_ESTIMATE, ("continue", "stage_not_ready")),
        ((PASS,), False, FINAL_YOUNG, UP, ("continue", "stage_not_ready")),
    ],
)
def test_decision_rules(
    guardrails: tuple[GuardrailResult, ...],
    srm: bool,
    progress: StageProgress,
    primary: Interval | None,
    expected: tuple[str, str],
) -> None:
    assert decide(guardrails, srm_mismatch=srm, progress=progress, primary=primary) == expected


def test_primary_direction_decrease_flips_better_and_worse() -> None:
    # a primary where lower is better (e.g. time to complete a task)
    assert decide((PASS,), srm_mismatch=False, progress=FINAL, primary=DOWN,
                  primary_direction="decrease") == ("ship", "primary_improved")  # fmt: skip
    assert decide((PASS,), srm_mismatch=False, progress=FINAL, primary=UP,
                  primary_direction="decrease") == ("rollback", "primary_harmed")  # fmt: skip


@pytest.mark.parametrize(
    ("units", "seconds", "ready"),
    [(1000, 3600.0, True), (999, 3600.0, False), (1000, 3599.0, False), (10**6, 1e9, True)],
)
def test_stage_progress_ready_at_both_minimums(units: int, seconds: float, ready: bool) -> None:
    assert StageProgress(units, seconds, 1000, 3600.0, final=False).ready is ready
