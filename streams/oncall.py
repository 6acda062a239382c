"""What rampmon pushes to Alertmanager: the alerts firing at one evaluation.

A guardrail alert fires while the guardrail is breached *at the stage in force*: a rollback
sets the ramp to 0, which ends the regression for users, so the page resolves; the
``rollback`` decision itself stays visible (``rampmon_experiment_decision`` and the
``RampmonRollbackDecision`` rule in ``deploy/``) until someone ramps again.
Label values come from the configuration only (guardrail ids, variants, stages), so the
number of alert identities is bounded.
"""

from __future__ import annotations

from collections.abc import Iterable

from alerts.alertmanager import Firing, guardrail_alert, srm_alert
from monitor.config import RampmonConfig
from streams.evaluator import Status

__all__ = ["firing_alerts"]


def firing_alerts(
    config: RampmonConfig, statuses: Iterable[Status], *, runbook_url: str | None
) -> list[Firing]:
    out: list[Firing] = []
    for status in statuses:
        r = status.readout
        if status.percent != r.stage:
            continue  # off (or an off-config percent): nothing is exposed to harm
        cfg = config.experiment(r.experiment)
        for g in r.breaches:
            out.append(
                guardrail_alert(
                    experiment=r.experiment,
                    stage=r.stage,
                    guardrail=g.guardrail,
                    variant=g.variant,
                    metric=g.metric,
                    effect=g.effect,
                    lower=g.lower,
                    upper=g.upper,
                    margin=g.margin if g.harmful_direction == "increase" else -g.margin,
                    runbook_url=runbook_url and f"{runbook_url}#rampmonguardrailbreach",
                )
            )
        for s in r.srm:
            if s.stage == r.stage and s.mismatch:
                res = s.result
                out.append(
                    srm_alert(
                        experiment=r.experiment,
                        stage=s.stage,
                        observed=dict(zip(cfg.variants, res.counts, strict=True)),
                        expected=dict(zip(cfg.variants, res.expected, strict=True)),
                        p_value=res.p_value,
                        alpha=res.alpha,
                        runbook_url=runbook_url and f"{runbook_url}#rampmonsampleratiomismatch",
                    )
                )
    return out
