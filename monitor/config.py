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
    "ExperimentConfig",
    "GuardrailConfig",
    "MetricConfig",
    "RampmonConfig",
    "SequentialConfig",
    "WindowConfig",
    "parse_config",
]

Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]
Aggregation = Literal["sum", "any"]
HarmfulDirection = Literal["increase", "decrease"]


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


class GuardrailConfig(_Frozen):
    """A metric that must not regress by more than ``margin`` (absolute, in metric units)."""

    metric: Name
    harmful_direction: HarmfulDirection
    margin: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    alpha: Annotated[float, Field(gt=0, lt=0.5)] = 0.05
    name: Name | None = None

    @property
    def id(self) -> str:
        return self.name or self.metric


class SequentialConfig(_Frozen):
    """Tuning of the anytime-valid test.

    ``tuning_units`` is the total number of units (both arms) at which the confidence
    sequence is tightest (Waudby-Smith et al. 2023, eq. for the optimal rho).
    """

    method: Literal["asymptotic_cs"] = "asymptotic_cs"
    tuning_units: Annotated[int, Field(gt=0)] = 10_000
    min_units_per_variant: Annotated[int, Field(ge=2)] = 100


class ExperimentConfig(_Frozen):
    name: Name
    variants: Annotated[list[Name], Field(min_length=2, max_length=16)]
    control: Name
    stages: Annotated[list[float], Field(min_length=1, max_length=16)]
    metrics: Annotated[list[MetricConfig], Field(min_length=1, max_length=64)]
    guardrails: Annotated[list[GuardrailConfig], Field(max_length=64)] = []
    sequential: SequentialConfig = SequentialConfig()

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
        ids = [g.id for g in self.guardrails]
        if len(set(ids)) != len(ids):
            raise ValueError("guardrail names must be unique (set `name` to tell them apart)")
        for g in self.guardrails:
            if g.metric not in names:
                raise ValueError(f"guardrail {g.id!r} names metric {g.metric!r}, not declared")
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


class WindowConfig(_Frozen):
    """Tumbling event-time windows for time series and dashboards."""

    size_seconds: Annotated[float, Field(gt=0)] = 60.0
    expires_seconds: Annotated[float, Field(gt=0)] = 3600.0

    @model_validator(mode="after")
    def _expiry_covers_window(self) -> WindowConfig:
        if self.expires_seconds < self.size_seconds:
            raise ValueError("expires_seconds must be at least size_seconds")
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


def parse_config(text: str, *, source: str = "<config>") -> RampmonConfig:
    """Parse and validate YAML text; raise :class:`ConfigError` naming field and reason."""
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
