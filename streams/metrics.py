"""Prometheus metrics, bundled in one object built from a registry the caller passes in.

Naming follows Prometheus conventions: ``rampmon_`` prefix, base units (seconds), ``_total``
for counters. Label values come only from the validated configuration or from closed
``Literal`` code sets, so an unknown experiment on the wire can never create a series.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge

from alerts.outbox import TargetKind
from streams.decode import RejectReason

__all__ = ["DELIVERY_OUTCOMES", "FIRED_DECISIONS", "Metrics", "SeriesCache"]

#: the decisions a claim can fire (streams.decisions.plan): the ``decision`` label values of
#: ``rampmon_decisions_fired_total`` and ``rampmon_decisions_stage_moved_total``
FIRED_DECISIONS = ("rollback", "pause", "advance", "resolved")
#: the ``outcome`` label values of ``rampmon_deliveries_total`` (streams.app._counted)
DELIVERY_OUTCOMES = ("delivered", "failed_attempt")


class Metrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        experiments: Iterable[str] = (),
        *,
        source_topics: Iterable[str] = (),
    ) -> None:
        """``experiments``: the configured experiment names, whose per-decision counters
        are created at 0 from the start; ``source_topics``: the topics ingest reads, whose
        per-reason dead-letter counters are too."""
        self.registry = registry
        g, c = _factory(registry)
        # --- worker health -------------------------------------------------------
        self.messages = c("messages_processed_total", "Kafka messages processed.", ["topic"])
        self.events = c("events_processed_total", "Valid events decoded.", ["topic"])
        self.dead_letters = c(
            "dead_letters_total", "Events sent to the dead-letter topic.", ["topic", "reason"]
        )
        for topic in source_topics:
            for reason in get_args(RejectReason):
                # at 0 from the start: a child born at N by its first inc() is no increase,
                # so a first burst of bad input would never page RampmonDeadLetters
                self.dead_letters.labels(topic, reason)
        self.attribution = c(
            "attribution_events_total",
            "Events by attribution outcome (attributed, pre_exposure, conflicting_assignment...).",
            ["experiment", "outcome"],
        )
        self.lag_seconds = g(
            "processing_lag_seconds",
            "Wall clock minus the event time of the newest processed event.",
            ["topic"],
        )
        self.consumer_lag = g(
            "consumer_lag_messages", "Messages behind the partition high-water marks.", ["topic"]
        )
        self.consumer_lag_unknown = g(
            "consumer_lag_unknown_partitions",
            "Held source partitions whose lag is not known (not fetched since their "
            "assignment, or neither a committed offset nor the log start read yet): not in "
            "consumer_lag_messages.",
            ["topic"],
        )
        self.changelog_split_runs = c(
            "changelog_split_runs_total",
            "Source runs whose unit and window records took more than one changelog batch "
            "(planned so that each leaves the windows in step with the unit records).",
        )
        self.partials_published = c(
            "partials_published_total", "Per-partition statistic snapshots published."
        )
        self.redis_up = g("redis_up", "1 if the last Redis call of this worker succeeded.")
        self.last_evaluation = g(
            "last_evaluation_timestamp_seconds", "When the guardrails were last evaluated."
        )
        # from the process start, not 0: Faust serves /metrics during table recovery but
        # starts the evaluate timer after it, and a gauge at 0 paged RampmonEvaluationStalled
        # with "not evaluated for 56 years" instead of how long the worker has been blind
        self.last_evaluation.set_to_current_time()
        self.readouts = c(
            "readouts_total",
            "Experiment readouts (partials merged, guardrails tested), by trigger: arrival "
            "(a new snapshot) or periodic (the clock).",
            ["trigger"],
        )
        self.readout_seconds = c(
            "readout_seconds_total",
            "Event-loop seconds spent computing readouts, by trigger (ingest waits meanwhile).",
            ["trigger"],
        )
        for trigger in ("arrival", "periodic"):
            # both series from the start: a rate() over a series not yet born is empty
            self.readouts.labels(trigger)
            self.readout_seconds.labels(trigger)
        self.readout_budget_wait = c(
            "readout_budget_wait_seconds_total",
            "Seconds readouts of new snapshots waited for the readout budget "
            "(RAMPMON_READOUT_LOOP_SHARE).",
        )
        # --- statistics ----------------------------------------------------------
        self.stage_percent = g(
            "experiment_stage_percent", "Current ramp stage (treatment %).", ["experiment"]
        )
        self.exposures = g("exposures", "Exposed units.", ["experiment", "variant", "stage"])
        self.metric_units = g(
            "metric_units",
            "Units in the metric's denominator (n).",
            ["experiment", "variant", "stage", "metric"],
        )
        self.metric_mean = g(
            "metric_mean", "Per-unit metric mean.", ["experiment", "variant", "stage", "metric"]
        )
        self.metric_stddev = g(
            "metric_stddev",
            "Per-unit metric standard deviation (ddof=1).",
            ["experiment", "variant", "stage", "metric"],
        )
        gl = ["experiment", "guardrail", "metric", "variant", "stage"]
        self.effect = g(
            "guardrail_effect",
            "Treatment minus control: metric units (relative margin: fraction of |control|).",
            gl,
        )
        self.lower = g("guardrail_interval_lower", "Anytime-valid interval lower bound.", gl)
        self.upper = g("guardrail_interval_upper", "Anytime-valid interval upper bound.", gl)
        self.margin = g("guardrail_margin", "Tolerated regression (signed, harmful side).", gl)
        self.p_value = g("guardrail_p_value", "Always-valid p-value for no difference.", gl)
        self.verdict = g(
            "guardrail_verdict",
            "1 for the current verdict (breach, pass, inconclusive).",
            [*gl, "verdict"],
        )
        rl = ["experiment", "metric", "variant", "kind", "scale"]
        self.row_effect = g(
            "metric_effect", "Treatment minus control (relative: fraction of |control|).", rl
        )
        self.row_lower = g("metric_effect_lower", "Interval lower bound of the effect.", rl)
        self.row_upper = g("metric_effect_upper", "Interval upper bound of the effect.", rl)
        self.srm_p_value = g(
            "srm_p_value",
            "Always-valid p-value of the sequential sample-ratio-mismatch test.",
            ["experiment", "stage"],
        )
        self.stage_ready = g(
            "stage_ready",
            "1 when the current stage has its minimum units and duration.",
            ["experiment"],
        )
        self.decision = g(
            "experiment_decision",
            "1 for the experiment's current decision (a rollback holds until the stage changes).",
            ["experiment", "decision"],
        )
        self.rollback = g(
            "rollback_info",
            "1 per cause of the rollback in force, for as long as it holds (the ramp is at 0 "
            "after it): the stage rolled back and each breached guardrail with its metric "
            "and variant; guardrail primary:METRIC for a primary metric proven worse; no "
            "guardrail when the evaluation that decided it ran elsewhere and this worker's "
            "does not show the cause.",
            ["experiment", "stage", "guardrail", "metric", "variant"],
        )
        self.decisions_fired = c(
            "decisions_fired_total",
            "Decisions claimed and fired (once per stage episode).",
            ["experiment", "decision"],
        )
        self.decisions_stage_moved = c(
            "decisions_stage_moved_total",
            "Decisions dropped unclaimed: Redis had moved the ramp past the stage they were "
            "made at (the next evaluation decides on the stage in force).",
            ["experiment", "decision"],
        )
        for experiment in experiments:
            for fired in FIRED_DECISIONS:
                # at 0 from the start: a counter child born at 1 by its first inc() is no
                # change to changes() / increase(), so the first rollback of a worker would
                # be invisible to the dashboard annotation and the fence alert
                self.decisions_fired.labels(experiment, fired)
                self.decisions_stage_moved.labels(experiment, fired)
        self.window_exposures = g(
            "window_exposures",
            "Units first exposed in the last complete window.",
            ["experiment", "variant"],
        )
        self.window_events = g(
            "window_events",
            "Attributed telemetry events in the last complete window.",
            ["experiment", "variant", "metric"],
        )
        self.window_event_mean = g(
            "window_event_mean",
            "Mean event value in the last complete window.",
            ["experiment", "variant", "metric"],
        )
        self.window_start = g(
            "window_start_timestamp_seconds", "Start of the last complete window.", ["experiment"]
        )
        # --- delivery --------------------------------------------------------------
        self.deliveries = c(
            "deliveries_total", "Decision deliveries by outcome.", ["target", "outcome"]
        )
        for target in get_args(TargetKind):
            for outcome in DELIVERY_OUTCOMES:
                # at 0 from the start: a worker's first delivery is usually a rollback's,
                # and a child born at 1 is no change to the dashboard's rate()
                self.deliveries.labels(target, outcome)
        self.alert_pushes = c(
            "alertmanager_pushes_total",
            "Alert batches pushed to Alertmanager (API v2), by outcome (ok, error).",
            ["outcome"],
        )
        self.alerts_firing = g(
            "alerts_firing", "Alerts this worker currently reports firing to Alertmanager."
        )
        self.deliveries_pending = g("deliveries_pending", "Deliveries waiting in the outbox.")
        self.deliveries_dead = g(
            "deliveries_dead", "Deliveries that exhausted their retries (kept in Redis)."
        )


def _factory(registry: CollectorRegistry) -> tuple[Any, Any]:
    def gauge(name: str, doc: str, labels: list[str] | None = None) -> Gauge:
        return Gauge(f"rampmon_{name}", doc, labels or [], registry=registry)

    def counter(name: str, doc: str, labels: list[str] | None = None) -> Counter:
        return Counter(f"rampmon_{name}", doc, labels or [], registry=registry)

    return gauge, counter


class SeriesCache:
    """The children of labelled metrics, each looked up once.

    ``labels()`` takes the metric's lock and converts every value to ``str`` on each call
    (~5 us); an evaluation sets ~250 series per experiment, 20 experiments several times a
    second in bench/detection.py. A series removed or cleared goes through here too, so a
    later set registers a new child instead of writing to a detached one.
    """

    def __init__(self) -> None:
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def __call__(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def remove(self, metric: Any, *labels: str) -> None:
        self._children.pop((metric, labels), None)
        metric.remove(*labels)

    def clear(self, metric: Any) -> None:
        for key in [k for k in self._children if k[0] is metric]:
            del self._children[key]
        metric.clear()
