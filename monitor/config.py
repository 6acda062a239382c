"""Experiment configuration: what each experiment declares, validated by pydantic.

The file format is YAML (see ``deploy/experiments.yaml``); :func:`parse_config` takes the
already-read text so this module stays free of I/O.
"""

from __future__ import annotations

import itertools
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from monitor.errors import ConfigError

__all__ = [
    "MAX_CONFIG_BYTES",
    "AdvanceConfig",
    "ExperimentConfig",
    "GuardrailConfig",
    "MetricConfig",
    "RampmonConfig",
    "RatioConfig",
    "SegmentConfig",
    "SequentialConfig",
    "SketchConfig",
    "WindowConfig",
    "parse_config",
]

Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
Aggregation = Literal["sum", "any"]
HarmfulDirection = Literal["increase", "decrease"]
Direction = Literal["increase", "decrease"]
Statistic = Literal["mean", "quantile"]
MarginKind = Literal["absolute", "relative"]
Pooling = Literal["combined", "current_stage"]
Alpha = Annotated[float, Field(gt=0, lt=0.5)]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricConfig(_Frozen):
    """A per-unit metric.

    ``sum`` adds the values of the unit's events (tasks, revenue); ``any`` is 1 when the unit
    had at least one event with a non-zero value (error session, support ticket). Exposed
    units without events count as 0: the denominator is every exposed unit (ITT).
    """

    name: Name
    aggregation: Aggregation = "sum"
    unit: str = ""
    description: str = ""
    #: the direction that counts as better (for the primary metric's ship decision)
    improve_direction: Direction = "increase"
    #: a pre-exposure covariate (declared in ``ExperimentConfig.covariates``) for CUPED
    cuped_covariate: Name | None = None
    #: bins of this metric's quantile sketch, if a quantile guardrail uses it
    sketch: SketchConfig = Field(default_factory=lambda: SketchConfig())
    #: the range of a plausible event value; an event outside it is dead-lettered
    #: (``invalid_value``) instead of skewing the mean -- a negative latency, a 1e12 revenue
    min_value: Annotated[float | None, Field(allow_inf_nan=False)] = None
    max_value: Annotated[float | None, Field(allow_inf_nan=False)] = None

    @model_validator(mode="after")
    def _bounds(self) -> MetricConfig:
        low, high = self.min_value, self.max_value
        if low is not None and high is not None and high <= low:
            raise ValueError("max_value must exceed min_value")
        return self


class SketchConfig(_Frozen):
    """Bins of the per-unit quantile sketch of one metric (see :mod:`monitor.quantiles`)."""

    relative_accuracy: Annotated[float, Field(gt=0, lt=0.5)] = 0.01
    min_value: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 0.01
    max_value: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1e6

    @model_validator(mode="after")
    def _range(self) -> SketchConfig:
        if self.max_value <= self.min_value:
            raise ValueError("max_value must exceed min_value")
        return self


class RatioConfig(_Frozen):
    """A ratio of two ``sum`` metrics over all units, e.g. errors per request.

    Randomisation is by unit, so the per-event ratio's observations are correlated within a
    unit; its variance comes from the delta method on per-unit sums (Deng et al. 2018).
    """

    name: Name
    numerator: Name
    denominator: Name
    improve_direction: Direction = "increase"
    description: str = ""


class SegmentConfig(_Frozen):
    """An exposure attribute whose values get exploratory per-segment effects.

    Only the listed values get their own cells (the rest share ``other``), so a producer
    sending free-form values cannot grow state or label series without bound.
    """

    attribute: Name
    values: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64)]], Field(min_length=1, max_length=16)
    ]

    @field_validator("values")
    @classmethod
    def _distinct(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError("segment values must be unique")
        if "other" in values:
            raise ValueError("`other` is reserved for undeclared values")
        return values


class GuardrailConfig(_Frozen):
    """A metric that must not regress by more than ``margin``.

    ``margin_kind`` ``absolute`` is in metric units; ``relative`` is a fraction of the
    control mean's magnitude (0.05 = 5% of ``|control|``; see :mod:`monitor.relative`).
    ``statistic: quantile`` compares the ``quantile`` of the per-unit values (e.g. p95
    latency) instead of the mean. ``alpha_weight`` is this
    guardrail's share of the experiment's ``alpha`` (see :mod:`monitor.alpha`).
    """

    metric: Name
    harmful_direction: HarmfulDirection
    margin: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    margin_kind: MarginKind = "absolute"
    statistic: Statistic = "mean"
    quantile: Annotated[float, Field(gt=0, lt=1)] | None = None
    alpha_weight: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 1.0
    #: per-unit standard deviation expected for this metric; sets the mSPRT mixture
    expected_sd: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    name: Name | None = None

    @model_validator(mode="after")
    def _quantile_given(self) -> GuardrailConfig:
        if (self.statistic == "quantile") != (self.quantile is not None):
            raise ValueError("set `quantile` exactly when `statistic: quantile`")
        if self.statistic == "quantile" and self.margin_kind == "relative":
            raise ValueError("quantile guardrails take an absolute margin")
        return self

    @property
    def id(self) -> str:
        if self.name:
            return self.name
        if self.quantile is not None:
            return f"{self.metric}_p{self.quantile * 100:g}"
        return self.metric


class SequentialConfig(_Frozen):
    """Tuning of the anytime-valid tests.

    ``tuning_units`` is the expected total number of units (both arms) at a decision: the
    asymptotic confidence sequence (Waudby-Smith et al. 2023) is tightest there, and the
    mSPRT (Johari et al. 2022) picks its mixture scale from it and ``expected_sd``.
    ``pooling: combined`` estimates within each ramp stage and combines the stages with
    unit-count weights; ``current_stage`` uses the current stage alone.
    """

    method: Literal["asymptotic_cs", "msprt"] = "asymptotic_cs"
    tuning_units: Annotated[int, Field(gt=0)] = 10_000
    min_units_per_variant: Annotated[int, Field(ge=2)] = 100
    pooling: Pooling = "combined"


class AdvanceConfig(_Frozen):
    """What a stage needs before ``advance`` (or the final ``ship``) may be decided.

    ``min_units_per_variant`` must be at least ``sequential.min_units_per_variant``, below
    which nothing is estimated: a stage must not be ready before its effects exist.
    """

    min_units_per_variant: Annotated[int, Field(ge=2)] = 1_000
    min_duration_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 3600.0


class ExperimentConfig(_Frozen):
    name: Name
    variants: Annotated[list[Name], Field(min_length=2, max_length=16)]
    control: Name
    stages: Annotated[list[float], Field(min_length=1, max_length=16)]
    metrics: Annotated[list[MetricConfig], Field(min_length=1, max_length=64)]
    guardrails: Annotated[list[GuardrailConfig], Field(max_length=64)] = []
    ratios: Annotated[list[RatioConfig], Field(max_length=32)] = []
    covariates: Annotated[list[Name], Field(max_length=16)] = []
    segments: Annotated[list[SegmentConfig], Field(max_length=4)] = []
    #: the metric or ratio whose interval gives ship / iterate at the final stage
    primary: Name | None = None
    #: family-wise error rate of all guardrails x treatment variants (split: monitor.alpha)
    alpha: Alpha = 0.05
    #: level of the primary metric's interval
    primary_alpha: Alpha = 0.05
    #: level of the sequential sample-ratio-mismatch test (a data-quality alarm: kept small)
    srm_alpha: Alpha = 0.001
    sequential: SequentialConfig = SequentialConfig()
    advance: AdvanceConfig = AdvanceConfig()
    #: an ``advance`` decision moves the ramp to the next stage itself; the dwell time per
    #: stage is ``advance.min_duration_seconds`` (a stage is not ready before it)
    auto_advance: bool = False

    @field_validator("stages")
    @classmethod
    def _stages_increase(cls, stages: list[float]) -> list[float]:
        for pct in stages:
            if not 0 < pct <= 100:
                raise ValueError(f"stage {pct} is not a percentage in (0, 100]")
        if any(b <= a for a, b in itertools.pairwise(stages)):
            raise ValueError("stages must strictly increase, e.g. [1, 5, 25, 50, 100]")
        return stages

    @model_validator(mode="after")
    def _references_resolve(self) -> ExperimentConfig:
        if len(set(self.variants)) != len(self.variants):
            raise ValueError("variants must be unique")
        if self.control not in self.variants:
            raise ValueError(f"control {self.control!r} is not one of the variants {self.variants}")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError("metric names must be unique")
        sums = {m.name for m in self.metrics if m.aggregation == "sum"}
        ratio_names = [r.name for r in self.ratios]
        if len(set(names + ratio_names)) != len(names) + len(ratio_names):
            raise ValueError("ratio names must be unique and differ from metric names")
        for r in self.ratios:
            for part in (r.numerator, r.denominator):
                if part not in sums:
                    raise ValueError(f"ratio {r.name!r}: {part!r} is not a declared `sum` metric")
        if len(set(self.covariates)) != len(self.covariates):
            raise ValueError("covariates must be unique")
        for m in self.metrics:
            if m.cuped_covariate is not None and m.cuped_covariate not in self.covariates:
                raise ValueError(
                    f"metric {m.name!r}: cuped_covariate {m.cuped_covariate!r} is not in "
                    f"covariates {self.covariates}"
                )
        attrs = [seg.attribute for seg in self.segments]
        if len(set(attrs)) != len(attrs):
            raise ValueError("segment attributes must be unique")
        ids = [g.id for g in self.guardrails]
        if len(set(ids)) != len(ids):
            raise ValueError("guardrail names must be unique (set `name` to tell them apart)")
        for g in self.guardrails:
            if g.metric not in names and g.metric not in ratio_names:
                raise ValueError(f"guardrail {g.id!r} names metric {g.metric!r}, not declared")
            if g.statistic == "quantile" and g.metric not in names:
                raise ValueError(f"guardrail {g.id!r}: quantiles need a metric, not a ratio")
            if self.sequential.method == "msprt" and g.statistic == "mean":
                if g.expected_sd is None:
                    raise ValueError(f"guardrail {g.id!r}: method msprt needs `expected_sd`")
                if g.margin_kind == "relative":
                    raise ValueError(f"guardrail {g.id!r}: method msprt takes absolute margins")
        if self.primary is not None and self.primary not in names + ratio_names:
            raise ValueError(f"primary {self.primary!r} is not a declared metric or ratio")
        if not any(pct < 100 for pct in self.stages):
            raise ValueError("at least one stage must be below 100% (a stage with a control)")
        ready, floor = self.advance.min_units_per_variant, self.sequential.min_units_per_variant
        if ready < floor:
            raise ValueError(
                f"advance.min_units_per_variant ({ready}) is below "
                f"sequential.min_units_per_variant ({floor}): a stage would be ready to advance "
                "or ship before any effect can be estimated"
            )
        return self

    @property
    def treatments(self) -> list[str]:
        return [v for v in self.variants if v != self.control]

    def variant_index(self, variant: str) -> int:
        return self.variants.index(variant)

    def metric_index(self, metric: str) -> int:
        return [m.name for m in self.metrics].index(metric)

    def stage_index(self, percent: float) -> int:
        return self.stages.index(percent)

    @property
    def final_stage_index(self) -> int:
        """The last stage that still has a control: its readout is ship / iterate / rollback.

        100% has no control arm to compare with, so moving past this stage *is* shipping.
        """
        return max(i for i, pct in enumerate(self.stages) if pct < 100)

    @property
    def quantile_metrics(self) -> list[str]:
        """Metrics that need a quantile sketch, in config order."""
        wanted = {g.metric for g in self.guardrails if g.statistic == "quantile"}
        return [m.name for m in self.metrics if m.name in wanted]

    def ratio(self, name: str) -> RatioConfig | None:
        return next((r for r in self.ratios if r.name == name), None)


class WindowConfig(_Frozen):
    """Tumbling event-time windows for time series, dashboards and per-window effects.

    An event older than the worker's event-time watermark minus ``allowed_lateness_seconds``
    no longer updates its window (which may have been reported already); it is counted as
    ``late``, and still counts in the cumulative unit-level statistics.
    """

    size_seconds: Annotated[float, Field(gt=0)] = 60.0
    expires_seconds: Annotated[float, Field(gt=0)] = 3600.0
    allowed_lateness_seconds: Annotated[float, Field(ge=0)] = 300.0

    @model_validator(mode="after")
    def _expiry_covers_window(self) -> WindowConfig:
        if self.expires_seconds < self.size_seconds:
            raise ValueError("expires_seconds must be at least size_seconds")
        if self.allowed_lateness_seconds > self.expires_seconds:
            raise ValueError("allowed_lateness_seconds must not exceed expires_seconds")
        return self


class WebhookConfig(_Frozen):
    url: Annotated[str, Field(pattern=r"^https?://[^\s]+$")]


class RampmonConfig(_Frozen):
    experiments: Annotated[list[ExperimentConfig], Field(min_length=1, max_length=256)]
    webhooks: list[WebhookConfig] = []
    windows: WindowConfig = WindowConfig()

    @model_validator(mode="after")
    def _unique_experiments(self) -> RampmonConfig:
        names = [e.name for e in self.experiments]
        if len(set(names)) != len(names):
            raise ValueError("experiment names must be unique")
        return self

    def experiment(self, name: str) -> ExperimentConfig:
        for e in self.experiments:
            if e.name == name:
                return e
        raise KeyError(name)

    @property
    def metric_names(self) -> frozenset[str]:
        return frozenset(m.name for e in self.experiments for m in e.metrics)


#: a config is a few KiB; a limit keeps a wrong file (or a YAML bomb) from eating memory
MAX_CONFIG_BYTES = 1_048_576


def parse_config(text: str, *, source: str = "<config>") -> RampmonConfig:
    """Parse and validate YAML text; raise :class:`ConfigError` naming field and reason."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters, over the {MAX_CONFIG_BYTES} limit")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with `experiments:`")
    try:
        return RampmonConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from exc


MetricConfig.model_rebuild()
