"""Validated event records (the wire contract) shared by the live worker and offline tools.

Decoding and validation of raw bytes lives in :mod:`streams.decode`; these are the typed
results, already checked (finite numbers, tz-aware timestamps, bounded strings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Exposure", "Telemetry"]


@dataclass(frozen=True, slots=True)
class Exposure:
    """Unit ``unit_id`` got ``variant`` of ``experiment`` at ``ts`` (epoch seconds)."""

    event_id: str
    ts: float
    experiment: str
    unit_id: str
    variant: str
    attributes: dict[str, str] = field(default_factory=dict)
    covariates: dict[str, float] = field(default_factory=dict)
    #: the ramp percent the assigning flag service used, when it says so; otherwise the
    #: stage comes from the stage history at ``ts``
    stage: float | None = None


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One observation of ``metric`` for ``unit_id``; optionally tagged by the producer."""

    event_id: str
    ts: float
    unit_id: str
    metric: str
    value: float
    experiment: str | None = None
    variant: str | None = None
