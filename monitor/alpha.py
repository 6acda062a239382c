"""Splitting an experiment's false-alarm budget across its guardrails.

An experiment rolls back when *any* guardrail breaches for *any* treatment variant, so the
error that matters is family-wise: the chance that some guardrail ever falsely breaches.
Each guardrail ``g`` and treatment ``v`` gets a weighted Bonferroni share

    alpha_{g,v} = alpha * w_g / sum_h(w_h) / (number of treatments),

with ``w_g`` the guardrail's ``alpha_weight`` (default 1, an equal split). Because every
confidence sequence is time-uniform, the union bound holds over all guardrails *and* all
looks: P(any false breach, ever) <= sum alpha_{g,v} = alpha, whatever the dependence
between metrics (Bonferroni needs no independence; Holm's step-down would not stay valid
once a guardrail's verdict is acted on mid-stream). Weights let an SRE spend more of the
budget on the guardrail that must react fastest.

The union over looks needs one sequence per guardrail for the whole ramp. Under ``pooling:
combined`` a mean guardrail has one: the stages' estimates are combined, and its time
counts every stage's units. A quantile guardrail, and every guardrail under ``pooling:
current_stage``, starts a fresh sequence at each stage, so its share is split again over
the stages (as the SRM test's alpha is): with the full share at each of k stages, the
chance of a false breach over the ramp is up to k times the share (0.089 for a guardrail
at 0.05 over 8 stages in a simulation of the engine's sequence, issue #6's review).

Outside this budget: the final-stage readout also rolls back when the *primary* metric is
proven worse, at ``primary_alpha`` (two-sided, so at most ``primary_alpha / 2`` on the
harmful side). The worst-case false-rollback rate at the final stage is therefore
``alpha + primary_alpha / 2``; before it, only the guardrails can roll back.
"""

from __future__ import annotations

from monitor.config import ExperimentConfig

__all__ = ["guardrail_alpha", "segment_alpha"]


def guardrail_alpha(cfg: ExperimentConfig, guardrail_id: str) -> float:
    """The level of one guardrail's test for one treatment variant at one stage."""
    total = sum(g.alpha_weight for g in cfg.guardrails)
    guardrail = next(g for g in cfg.guardrails if g.id == guardrail_id)
    share = cfg.alpha * guardrail.alpha_weight / total / len(cfg.treatments)
    restarts = guardrail.statistic == "quantile" or cfg.sequential.pooling == "current_stage"
    return share / len(cfg.stages) if restarts else share


def segment_alpha(cfg: ExperimentConfig, comparisons: int) -> float:
    """Bonferroni level for exploratory per-segment intervals (``comparisons`` of them)."""
    return cfg.primary_alpha / max(comparisons, 1)
