"""Intention-to-treat attribution of exposures and telemetry to experiment variants.

Rules (issue #2, and Kohavi, Tang & Xu, *Trustworthy Online Controlled Experiments*, ch. 3):

* A unit keeps the first variant it was exposed to; a later, different assignment is
  counted as ``conflicting_assignment`` and not applied.
* Telemetry counts only from the unit's exposure time on; earlier telemetry is
  ``pre_exposure`` and never attributed.
* Untagged telemetry goes to every experiment the unit is exposed to that declares the
  metric; tagged telemetry only to the named experiment.
* Telemetry for a unit with no processed exposure yet is held (bounded) in the unit's record
  and attributed when the first exposure arrives, because exposures and telemetry travel on
  different topics and may be consumed in either order.

Every outcome is returned as data (:data:`Outcome` codes with counts), never raised.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

import numpy as np

from monitor.aggregation import EventBatch, next_unit_value
from monitor.config import ExperimentConfig, RampmonConfig
from monitor.events import Exposure, Telemetry
from monitor.layout import ExperimentLayout
from monitor.unitstate import Assignment, PendingEvent, UnitState
from monitor.unitstats import UnitDeltas

__all__ = [
    "Attributor",
    "BatchResult",
    "ExperimentBatch",
    "Outcome",
    "UnitStore",
    "exposure_stage",
]

Outcome = Literal[
    "exposure_applied",
    "exposure_repeat",
    "conflicting_assignment",
    "attributed",
    "pre_exposure",
    "variant_mismatch",
    "pending",
    "pending_overflow",
    "not_exposed",
    "replayed",
    "late",
    "covariate_missing",
    "duplicate",
    "layout_changed",
]

E = TypeVar("E", Exposure, Telemetry)

#: the experiment label used for outcomes that belong to no single experiment
NO_EXPERIMENT = ""


def exposure_stage(
    cfg: ExperimentConfig, e: Exposure, stage_index: Callable[[str, float], int]
) -> int:
    """The stage index of a first exposure: the stage the flag service says it assigned
    under, when the event carries it (exact), else the stage history at the event time.

    The history is exact only if every worker learns of a stage change before the first
    exposure under the new allocation is processed; a worker that refreshes its history
    every second mislabels the exposures of that second, and SRM flags the stage. The
    assigning service knows the allocation it used, so its word wins.
    """
    if e.stage is not None:
        return cfg.stage_index(e.stage)
    return stage_index(e.experiment, e.ts)


class UnitStore(Protocol):
    """Unit records by unit id, read for a whole run before it and written after it: one
    call each per run, not two per unit, because the hot path touches about one unit per
    event. A run that raises writes nothing (the worker then crashes and is redelivered
    the run); a store whose records are the objects themselves keeps their changes."""

    def get_many(self, unit_ids: Sequence[str]) -> list[UnitState | None]: ...

    def put_many(self, records: Iterable[tuple[str, UnitState]]) -> None: ...


@dataclass
class ExperimentBatch:
    """What one run of messages changed in one experiment, before vectorising.

    Window entries are kept as flat columns, one row per event, in event order; they are
    split by window with numpy once per run (:meth:`window_runs`), not per event. Each row
    names its unit: an entry exists only because its unit's record absorbed its event, so
    a window that takes exactly the entries of the unit records written beside it stays
    in step with them (streams.windowrecords).
    """

    layout: ExperimentLayout
    #: tumbling window size in seconds
    window: float
    #: unit -> (its assignment, its metric values before the run; None if newly exposed)
    units: dict[str, tuple[Assignment, list[float] | None]] = field(default_factory=dict)
    #: on-time first exposures: event time, variant, unit
    exposure_ts: list[float] = field(default_factory=list)
    exposure_variant: list[int] = field(default_factory=list)
    exposure_unit: list[str] = field(default_factory=list)
    #: on-time attributed events: event time, variant, metric, value, unit
    event_ts: list[float] = field(default_factory=list)
    event_variant: list[int] = field(default_factory=list)
    event_metric: list[int] = field(default_factory=list)
    event_value: list[float] = field(default_factory=list)
    event_unit: list[str] = field(default_factory=list)
    #: attributed events, on time or late: counted here, not per event in the outcome
    #: Counter (a tuple key hashed twice per event), and folded in by BatchResult.settle
    attributed: int = 0

    @property
    def exposures(self) -> list[tuple[int, int]]:
        """(stage, variant) of each unit first exposed in this message."""
        return [(a.stage, a.variant) for a, before in self.units.values() if before is None]

    def unit_deltas(self) -> UnitDeltas:
        return UnitDeltas.build(self.layout, list(self.units.values()))

    def window_batches(self) -> dict[float, EventBatch]:
        return dict(self.window_runs())

    def window_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """The window start of each exposure row and of each event row."""
        w = self.window
        # the same float arithmetic as math.floor(ts / w) * w, element by element
        return (
            np.floor(np.asarray(self.exposure_ts, np.float64) / w) * w,
            np.floor(np.asarray(self.event_ts, np.float64) / w) * w,
        )

    def window_runs(
        self, exposure_rows: np.ndarray | None = None, event_rows: np.ndarray | None = None
    ) -> Iterator[tuple[float, EventBatch]]:
        """Each window's entries, in window order: of every row, or of the rows the two
        boolean masks select (a run written in several changelog batches applies each
        batch's units' rows in turn)."""
        e_start, t_start = self.window_starts()
        e_var = np.asarray(self.exposure_variant, np.intp)
        t_var = np.asarray(self.event_variant, np.intp)
        t_met = np.asarray(self.event_metric, np.intp)
        t_val = np.asarray(self.event_value, np.float64)
        e_all = np.ones(e_start.size, bool) if exposure_rows is None else exposure_rows
        t_all = np.ones(t_start.size, bool) if event_rows is None else event_rows
        for value in np.unique(np.concatenate([e_start[e_all], t_start[t_all]])):
            e_keep, t_keep = e_all & (e_start == value), t_all & (t_start == value)
            yield (
                float(value),
                EventBatch(e_var[e_keep], t_var[t_keep], t_met[t_keep], t_val[t_keep]),
            )


@dataclass
class BatchResult:
    layouts: dict[str, ExperimentLayout]
    window: float
    experiments: dict[str, ExperimentBatch] = field(default_factory=dict)
    outcomes: Counter[tuple[str, Outcome]] = field(default_factory=Counter)
    #: the newest event time among the batch's events, replayed ones included. A run too
    #: large for one changelog batch writes its watermark in its last (streams.ingest):
    #: after a crash between them, the redelivered run must move the watermark as far as
    #: the whole run did, though the unit records skip part of it
    max_ts: float = -math.inf
    #: the highest message offset a unit record absorbed in this batch (-1: none): a
    #: replayed message, or one whose events all became dead letters, leaves it alone
    absorbed: int = -1

    def batch(self, experiment: str) -> ExperimentBatch:
        b = self.experiments.get(experiment)
        if b is None:
            b = self.experiments[experiment] = ExperimentBatch(
                self.layouts[experiment], self.window
            )
        return b

    def settle(self) -> BatchResult:
        """Fold the batches' attributed counts into the outcomes; the result, complete."""
        for exp, b in self.experiments.items():
            if b.attributed:
                self.outcomes[(exp, "attributed")] += b.attributed
                b.attributed = 0
        return self


class Attributor:
    """Applies validated events to unit records and reports the statistic deltas."""

    def __init__(
        self,
        config: RampmonConfig,
        *,
        max_pending: int = 64,
        window_seconds: float | None = None,
        lateness_seconds: float | None = None,
        dedup_horizon_seconds: float = 300.0,
        dedup_max_per_unit: int = 64,
    ) -> None:
        """``dedup_horizon_seconds``: a telemetry event whose ``event_id`` the unit saw
        within this much event time of its newest event (and among its last
        ``dedup_max_per_unit``) is a producer's re-send: counted as ``duplicate``, not
        applied. The ids live in the unit's record, so the check survives restarts."""
        self.config = config
        self.max_pending = max_pending
        self.dedup_horizon = dedup_horizon_seconds
        self.dedup_max = dedup_max_per_unit
        self.window = window_seconds or config.windows.size_seconds
        windows = config.windows
        self.lateness = (
            windows.allowed_lateness_seconds if lateness_seconds is None else lateness_seconds
        )
        self._experiments: dict[str, ExperimentConfig] = {e.name: e for e in config.experiments}
        self.layouts = {e.name: ExperimentLayout(e) for e in config.experiments}
        self._metric_index = {
            e.name: {m.name: (i, m.aggregation) for i, m in enumerate(e.metrics)}
            for e in config.experiments
        }

    def apply_exposures(
        self,
        store: UnitStore,
        partition: int,
        offset: int | Sequence[int],
        events: Sequence[Exposure],
        stage_index: Callable[[str, float], int],
        watermark: float = -math.inf,
    ) -> BatchResult:
        """Apply exposures; ``offset`` is their message's offset, or each event's own
        when the events come from a run of messages (in offset order)."""
        result = BatchResult(self.layouts, self.window)
        on_time_from = watermark - self.lateness
        result.max_ts = max((e.ts for e in events), default=-math.inf)
        grouped = _by_unit(events, offset)
        written: list[tuple[str, UnitState]] = []
        for (unit_id, unit_events), found in zip(
            grouped.items(), store.get_many(list(grouped)), strict=True
        ):
            state = found or UnitState(partition)
            applied = state.exposure_offset
            if unit_events[-1][0] <= applied:
                result.outcomes[(NO_EXPERIMENT, "replayed")] += len(unit_events)
                continue
            had_assignment = bool(state.assignments)
            new: list[str] = []
            message = -1
            for off, e in unit_events:
                if off <= applied:
                    result.outcomes[(NO_EXPERIMENT, "replayed")] += 1
                    continue
                if off != message:
                    # a message boundary inside a run: settle the previous message first,
                    # exactly as if the messages had come one by one
                    if new and not had_assignment:
                        self._release_pending(unit_id, state, result, on_time_from, new)
                    had_assignment, new, message = bool(state.assignments), [], off
                cfg = self._experiments[e.experiment]
                variant = cfg.variant_index(e.variant)
                current = state.assignments.get(e.experiment)
                if current is None:
                    stage = exposure_stage(cfg, e, stage_index)
                    layout = self.layouts[e.experiment]
                    covariates, missing = layout.covariate_vector(e.covariates)
                    a = Assignment(
                        variant,
                        stage,
                        e.ts,
                        [0.0] * len(cfg.metrics),
                        covariates,
                        layout.segment_codes(e.attributes),
                    )
                    state.assignments[e.experiment] = a
                    new.append(e.experiment)
                    batch = result.batch(e.experiment)
                    batch.units[unit_id] = (a, None)
                    if missing:
                        result.outcomes[(e.experiment, "covariate_missing")] += missing
                    if e.ts >= on_time_from:
                        batch.exposure_ts.append(e.ts)
                        batch.exposure_variant.append(variant)
                        batch.exposure_unit.append(unit_id)
                    else:
                        result.outcomes[(e.experiment, "late")] += 1
                    result.outcomes[(e.experiment, "exposure_applied")] += 1
                elif current.variant == variant:
                    result.outcomes[(e.experiment, "exposure_repeat")] += 1
                else:
                    result.outcomes[(e.experiment, "conflicting_assignment")] += 1
            if new and not had_assignment:
                self._release_pending(unit_id, state, result, on_time_from, new)
            state.exposure_offset = unit_events[-1][0]
            written.append((unit_id, state))
        store.put_many(written)
        result.absorbed = max((record.exposure_offset for _, record in written), default=-1)
        return result.settle()

    def _release_pending(
        self,
        unit_id: str,
        state: UnitState,
        result: BatchResult,
        on_time_from: float,
        new: list[str],
    ) -> None:
        """Attribute the telemetry a unit held until its first exposing message, to the
        experiments that message exposed it to."""
        pending, state.pending = state.pending, []
        for p in pending:
            self._attribute(unit_id, state, p, result, on_time_from, only=new)

    def apply_telemetry(
        self,
        store: UnitStore,
        partition: int,
        offset: int | Sequence[int],
        events: Sequence[Telemetry],
        watermark: float = -math.inf,
    ) -> BatchResult:
        """Apply telemetry; ``offset`` as in :meth:`apply_exposures`.

        The hot path (most events are telemetry): one pass in event order, each unit's
        record read once and written once, its applied offset checked per event."""
        result = BatchResult(self.layouts, self.window)
        outcomes = result.outcomes
        offsets = [offset] * len(events) if isinstance(offset, int) else offset
        unit_ids = list(dict.fromkeys([e.unit_id for e in events]))
        #: unit -> (its record, the telemetry offset it had absorbed before this call)
        units: dict[str, tuple[UnitState, int]] = {}
        for unit_id, found in zip(unit_ids, store.get_many(unit_ids), strict=True):
            state = found or UnitState(partition)
            units[unit_id] = (state, state.telemetry_offset)
        last: dict[str, int] = {}
        max_ts = -math.inf
        on_time_from = watermark - self.lateness
        # a producer's re-send: its event id among the unit's recent ones (UnitState.seen)
        crc32, horizon, most = zlib.crc32, self.dedup_horizon, self.dedup_max
        for off, e in zip(offsets, events, strict=True):
            unit_id = e.unit_id
            state, applied = units[unit_id]
            if e.ts > max_ts:
                max_ts = e.ts
            if off <= applied:
                outcomes[(NO_EXPERIMENT, "replayed")] += 1
                continue
            last[unit_id] = off
            if state.seen(crc32(e.event_id.encode()), e.ts, horizon, most):
                outcomes[(e.experiment or NO_EXPERIMENT, "duplicate")] += 1
                continue
            if not state.assignments:
                if len(state.pending) < self.max_pending:
                    state.pending.append(
                        PendingEvent(e.ts, e.metric, e.value, e.experiment, e.variant)
                    )
                    outcomes[(e.experiment or NO_EXPERIMENT, "pending")] += 1
                else:
                    outcomes[(e.experiment or NO_EXPERIMENT, "pending_overflow")] += 1
                continue
            self._attribute(unit_id, state, e, result, on_time_from)
        written = [(unit_id, units[unit_id][0]) for unit_id in last]
        for (_, state), off in zip(written, last.values(), strict=True):
            state.telemetry_offset = off
        store.put_many(written)
        result.max_ts = max_ts
        result.absorbed = max(last.values(), default=-1)
        return result.settle()

    def _attribute(
        self,
        unit_id: str,
        state: UnitState,
        e: Telemetry | PendingEvent,
        result: BatchResult,
        on_time_from: float,
        only: list[str] | None = None,
    ) -> None:
        """One event to each experiment it counts in; on time if at or after
        ``on_time_from`` (the watermark less the allowed lateness)."""
        # the innermost loop of the worker: names are looked up once, not per target
        tagged = e.experiment
        assignments = state.assignments
        targets: Iterable[str]
        if tagged:
            targets = () if only is not None and tagged not in only else (tagged,)
        else:
            targets = assignments if only is None else only
        ts, name, value = e.ts, e.metric, e.value
        reached = False
        metric_index = self._metric_index
        for exp in targets:
            a = assignments.get(exp)
            # a record keeps the assignments of experiments since taken out of the config,
            # which count nowhere (as Ingest.rebuild skips them)
            metrics = metric_index.get(exp) if a is not None else None
            found = metrics.get(name) if metrics is not None else None
            if a is None or found is None:
                continue
            reached = True
            if ts < a.exposed_at:
                result.outcomes[(exp, "pre_exposure")] += 1
                continue
            batch = result.experiments.get(exp) or result.batch(exp)
            values = a.values
            if unit_id not in batch.units:
                if not batch.layout.fits(a):
                    # written under another config of the experiment: counts nowhere, as
                    # Ingest.rebuild leaves it out (a unit that fits is checked at its first
                    # event of the run only)
                    result.outcomes[(exp, "layout_changed")] += 1
                    continue
                batch.units[unit_id] = (a, values.copy())  # its values before this run
            if e.variant is not None and e.variant != self._experiments[exp].variants[a.variant]:
                result.outcomes[(exp, "variant_mismatch")] += 1
            metric, aggregation = found
            current = values[metric]
            # the common "sum" inline: a call per event costs more than the addition
            values[metric] = (
                current + value
                if aggregation == "sum"
                else next_unit_value(aggregation, current, value)
            )
            if ts >= on_time_from:
                batch.event_ts.append(ts)
                batch.event_variant.append(a.variant)
                batch.event_metric.append(metric)
                batch.event_value.append(value)
                batch.event_unit.append(unit_id)
            else:
                result.outcomes[(exp, "late")] += 1
            batch.attributed += 1
        if not reached:
            result.outcomes[(tagged or NO_EXPERIMENT, "not_exposed")] += 1


def _by_unit(events: Sequence[E], offset: int | Sequence[int]) -> dict[str, list[tuple[int, E]]]:
    """Each unit's (message offset, event) pairs, in message order."""
    offsets = [offset] * len(events) if isinstance(offset, int) else offset
    grouped: dict[str, list[tuple[int, E]]] = {}
    for off, e in zip(offsets, events, strict=True):
        grouped.setdefault(e.unit_id, []).append((off, e))
    return grouped
