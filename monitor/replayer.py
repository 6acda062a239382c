"""Offline replay: validated events in, the same statistics and readout as the live worker.

No I/O here (``rampmon replay`` in :mod:`streams.replay` reads the files): events are fed
in order through the same :class:`monitor.attribution.Attributor` and aggregations the
worker uses, over an in-memory unit store.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from monitor.aggregation import WindowMomentAggregation, WindowMoments
from monitor.attribution import Attributor, BatchResult, Outcome, exposure_stage
from monitor.config import RampmonConfig
from monitor.events import Exposure, Telemetry
from monitor.layout import ExperimentLayout
from monitor.readout import Readout, build_readout
from monitor.unitstate import UnitState
from monitor.unitstats import ExperimentStats, UnitStatsAggregation

__all__ = ["MemoryUnitStore", "Replayer"]


class MemoryUnitStore:
    def __init__(self) -> None:
        self.units: dict[str, UnitState] = {}

    def get_many(self, unit_ids: Sequence[str]) -> list[UnitState | None]:
        return [self.units.get(u) for u in unit_ids]

    def put_many(self, records: Iterable[tuple[str, UnitState]]) -> None:
        self.units.update(records)


class Replayer:
    """Feeds events in order, as messages of up to ``chunk`` consecutive events of one kind.

    Chunking only batches the numpy work; attribution does not depend on it (a unit's
    events keep their order, and telemetry that precedes its exposure waits as it would
    live). Window lateness is judged against the watermark before each chunk.
    """

    def __init__(
        self,
        config: RampmonConfig,
        stage_index: Callable[[str, float], int],
        *,
        chunk: int = 1000,
    ) -> None:
        self.config = config
        self.chunk = chunk
        self.stage_index = stage_index
        self.attributor = Attributor(config)
        self.store = MemoryUnitStore()
        self.aggs = {e.name: UnitStatsAggregation(ExperimentLayout(e)) for e in config.experiments}
        self.window_aggs = {
            e.name: WindowMomentAggregation(len(e.variants), len(e.metrics))
            for e in config.experiments
        }
        self.stats: dict[str, ExperimentStats] = {n: a.initialize() for n, a in self.aggs.items()}
        self.windows: dict[str, dict[float, WindowMoments]] = {n: {} for n in self.aggs}
        self.outcomes: Counter[tuple[str, Outcome]] = Counter()
        self.watermark = -math.inf
        #: per experiment and stage index: first exposure time, for the stage's duration
        self.stage_start: dict[tuple[str, int], float] = {}
        self._offsets = {"exposure": -1, "telemetry": -1}

    def feed(self, events: Sequence[Exposure | Telemetry]) -> None:
        run: list[Any] = []
        for e in events:
            if run and (type(e) is not type(run[0]) or len(run) >= self.chunk):
                self._message(run)
                run = []
            run.append(e)
        if run:
            self._message(run)

    def _message(self, run: list[Any]) -> None:
        if isinstance(run[0], Exposure):
            self._offsets["exposure"] += 1
            result = self.attributor.apply_exposures(
                self.store, 0, self._offsets["exposure"], run, self.stage_index, self.watermark
            )
            for e in run:
                cfg = self.config.experiment(e.experiment)
                key = (e.experiment, exposure_stage(cfg, e, self.stage_index))
                self.stage_start[key] = min(self.stage_start.get(key, math.inf), e.ts)
        else:
            self._offsets["telemetry"] += 1
            result = self.attributor.apply_telemetry(
                self.store, 0, self._offsets["telemetry"], run, self.watermark
            )
        self._apply(result)

    def _apply(self, result: BatchResult) -> None:
        for exp, batch in result.experiments.items():
            self.stats[exp] = self.aggs[exp].update(self.stats[exp], batch.unit_deltas())
            agg = self.window_aggs[exp]
            for start, events in batch.window_batches().items():
                current = self.windows[exp].get(start) or agg.initialize()
                self.windows[exp][start] = agg.update(current, events)
        self.outcomes.update(result.outcomes)
        self.watermark = max(self.watermark, result.max_ts)

    def readout(self, experiment: str, stage_index: int, *, fixed_horizon: bool) -> Readout:
        cfg = self.config.experiment(experiment)
        start = self.stage_start.get((experiment, stage_index), self.watermark)
        return build_readout(
            cfg,
            self.stats[experiment],
            stage_index,
            stage_duration_seconds=max(self.watermark - start, 0.0),
            windows=self.windows[experiment],
            late_events=self.outcomes[(experiment, "late")],
            fixed_horizon=fixed_horizon,
        )
