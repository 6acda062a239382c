"""Validated event records (the wire contract) shared by the live worker and offline tools.

Decoding and validation of raw bytes lives in :mod:`streams.decode`; these are the typed
results, already checked (finite numbers, tz-aware timestamps, bounded strings).

They are frozen msgspec structs, not frozen dataclasses: one is built per event on the
worker's hot path, and a frozen dataclass's ``__init__`` (one ``object.__setattr__`` per
field) costs 0.69 us there against 0.05 us for a struct.
"""

from __future__ import annotations

import msgspec

__all__ = ["Exposure", "Telemetry"]


class Exposure(msgspec.Struct, frozen=True, gc=False):
    """Unit ``unit_id`` got ``variant`` of ``experiment`` at ``ts`` (epoch seconds)."""

    event_id: str
    ts: float
    experiment: str
    unit_id: str
    variant: str
    attributes: dict[str, str] = msgspec.field(default_factory=dict)
    covariates: dict[str, float] = msgspec.field(default_factory=dict)
    #: the ramp percent the assigning flag service used, when it says so; otherwise the
    #: stage comes from the stage history at ``ts``
    stage: float | None = None


class Telemetry(msgspec.Struct, frozen=True, gc=False):
    """One observation of ``metric`` for ``unit_id``; optionally tagged by the producer."""

    event_id: str
    ts: float
    unit_id: str
    metric: str
    value: float
    experiment: str | None = None
    variant: str | None = None
