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

Outside this budget: the final-stage readout also rolls back when the *primary* metric is
proven worse, at ``primary_alpha`` (two-sided, so at most ``primary_alpha / 2`` on the
harmful side). The worst-case false-rollback rate at the final stage is therefore
``alpha + primary_alpha / 2``; before it, only the guardrails can roll back.
"""

from __future__ import annotations

from monitor.config import ExperimentConfig

__all__ = ["guardrail_alpha", "segment_alpha"]


def guardrail_alpha(cfg: ExperimentConfig, guardrail_id: str) -> float:
    """The level of one guardrail's test for one treatment variant."""
    total = sum(g.alpha_weight for g in cfg.guardrails)
    weight = next(g.alpha_weight for g in cfg.guardrails if g.id == guardrail_id)
    return cfg.alpha * weight / total / len(cfg.treatments)


def segment_alpha(cfg: ExperimentConfig, comparisons: int) -> float:
    """Bonferroni level for exploratory per-segment intervals (``comparisons`` of them)."""
    return cfg.primary_alpha / max(comparisons, 1)
