"""Where each quantity of an experiment lives in the statistics arrays.

A unit's vector (the columns of :class:`monitor.comoments.CoMoments`) is its metric values
in config order, then its covariates in config order. Segment slots flatten the declared
values of every segment attribute, each followed by an ``other`` slot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from monitor.config import ExperimentConfig

if TYPE_CHECKING:
    from monitor.unitstate import Assignment

__all__ = ["OTHER", "ExperimentLayout"]

#: the slot for attribute values not declared in the config (and for missing attributes)
OTHER = "other"


@dataclass(frozen=True)
class ExperimentLayout:
    config: ExperimentConfig
    metrics: tuple[str, ...] = field(init=False)
    covariates: tuple[str, ...] = field(init=False)
    #: (attribute, value) per segment slot, in slot order
    segment_slots: tuple[tuple[str, str], ...] = field(init=False)
    quantile_metrics: tuple[str, ...] = field(init=False)
    _slot: dict[tuple[str, str], int] = field(init=False, repr=False)
    #: what :meth:`fits` compares: (metrics, covariates, segment attributes), variants, stages
    _shape: tuple[tuple[int, int, int], int, int] = field(init=False, repr=False)
    #: per segment attribute, the range of its slots: where :meth:`fits` wants its code
    _segment_ranges: tuple[tuple[int, int], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        cfg = self.config
        slots: list[tuple[str, str]] = []
        ranges: list[tuple[int, int]] = []
        for seg in cfg.segments:
            lo = len(slots)
            slots.extend((seg.attribute, v) for v in seg.values)
            slots.append((seg.attribute, OTHER))
            ranges.append((lo, len(slots)))
        object.__setattr__(self, "metrics", tuple(m.name for m in cfg.metrics))
        object.__setattr__(self, "covariates", tuple(cfg.covariates))
        object.__setattr__(self, "segment_slots", tuple(slots))
        object.__setattr__(self, "quantile_metrics", tuple(cfg.quantile_metrics))
        object.__setattr__(self, "_slot", {s: i for i, s in enumerate(slots)})
        widths = (len(cfg.metrics), len(cfg.covariates), len(cfg.segments))
        object.__setattr__(self, "_shape", (widths, len(cfg.variants), len(cfg.stages)))
        object.__setattr__(self, "_segment_ranges", tuple(ranges))

    @property
    def stages(self) -> int:
        return len(self.config.stages)

    @property
    def variants(self) -> int:
        return len(self.config.variants)

    @property
    def columns(self) -> int:
        return len(self.metrics) + len(self.covariates)

    def fits(self, assignment: Assignment) -> bool:
        """Whether a unit record's assignment has this layout's shape: its values, covariates
        and segment slots as many as the config's, its variant and stage among them, each
        segment slot among its attribute's. A record keeps them by position, so one written
        under another config of the experiment (a metric added, a segment value removed)
        does not fit, and counts nowhere. A shift that stays in range (a stage, variant or
        segment value removed before the last) is not detected."""
        # the attributor asks once a unit and run: lengths compared as one tuple
        if not (
            (len(assignment.values), len(assignment.covariates), len(assignment.segments))
            == self._shape[0]
            and 0 <= assignment.variant < self._shape[1]
            and 0 <= assignment.stage < self._shape[2]
        ):
            return False
        # a slot code indexes the experiment's segment array: one past its attribute's lands
        # in another attribute's, variant's or stage's cell, or past the array
        ranges = self._segment_ranges
        for i, code in enumerate(assignment.segments):
            lo, hi = ranges[i]
            if not lo <= code < hi:
                return False
        return True

    def column(self, name: str) -> int:
        """Column of a metric or covariate."""
        if name in self.metrics:
            return self.metrics.index(name)
        return len(self.metrics) + self.covariates.index(name)

    def covariate_vector(self, covariates: Mapping[str, float]) -> tuple[list[float], int]:
        """The unit's covariates in column order, and how many were missing.

        A missing (or non-finite) covariate is imputed as 0: CUPED stays unbiased with any
        fixed pre-exposure value, it only loses variance reduction on those units.
        """
        out, missing = [], 0
        for name in self.covariates:
            x = covariates.get(name)
            if x is None or not math.isfinite(x):
                out.append(0.0)
                missing += 1
            else:
                out.append(float(x))
        return out, missing

    def segment_codes(self, attributes: Mapping[str, str]) -> list[int]:
        """One slot per segment attribute: the value's own slot, or the attribute's ``other``."""
        codes = []
        for seg in self.config.segments:
            value = attributes.get(seg.attribute, OTHER)
            slot = self._slot.get((seg.attribute, value))
            codes.append(slot if slot is not None else self._slot[(seg.attribute, OTHER)])
        return codes
