"""A sketch of a columnar unit store: the least an exact worker could do per event.

:mod:`bench.floor` shows that the current design's two unavoidable steps, decode and the
unit record round trip, already exceed the envelope target's budget. A store that keeps
units as rows of numpy arrays (one row per unit, a dict from unit id to row) would skip
the round trip. This sketch measures what such a store would still do per run, so the
floor does not rest on one design:

* decode the run as the worker's :class:`streams.decode.Decoder` would, for less: each
  message by one typed msgspec decode into structs that check what a type can (known
  metric, experiment and variant names, untagged telemetry, no exposure stage, a positive
  time), then the rest of the decoder's screen (each metric's bounds, a variant of its
  experiment, live time limits) on the run's columns. A run that fails any of it is
  decoded by the Decoder's own ``telemetry_run`` / ``exposures_run``, so the events
  taken are the Decoder's, always;
* exposures: a row for each new unit, its variant kept from its first exposure;
* telemetry: each event's row (one dict lookup), the row's applied offset compared with
  the event's message offset (exactness under redelivery, vectorised), the values added
  into a unit x metric array with ``np.bincount``, and (unless ``records``) the changed
  rows' values and offsets out as bytes, a stand-in for what the changelog carries;
* optionally, producer re-sends, in one of two ways. ``dedup``: an event id seen before is
  skipped, by a set of every id the sketch has seen. That set grows with the events and is
  lost on a restart, which the worker may do neither of (issue #6: memory independent of
  the event count; README "State and exactness": re-sends are skipped across restarts).
  ``recent=K``: as the worker must, each unit keeps the crc32 and event time of its last
  ``K`` events in its row (and so in its record), and an id is a re-send if the unit
  kept it within ``horizon`` seconds of its newest event (:meth:`UnitState.seen`, with
  ``K`` for its ``dedup_max_per_unit``). The slots are written in arrival order, and a
  run's events are checked against the slots as the run found them, then among
  themselves. That skips what the worker skips when a unit's events arrive in event-time
  order, never more than ``K`` of them within the horizon, and no kept id's horizon ends
  inside a run (``tests/unit/test_bench_columnar.py``); otherwise the two differ only on a
  re-send that arrives as its id is being forgotten;
* optionally (``moments``), what the statistics and the windows need, kept as the worker
  keeps them, vectorised: per variant the units, the sums of their values and the Gram
  matrix of their values (sums of squares and the co-moments between metrics), moved by
  each run's changed rows (new minus old), and per tumbling window, variant and metric
  the events, the sums and the sums of squares of their values, plus the units first
  exposed in it;
* optionally (``layout``), the worker's own statistics in place of those per-variant moments:
  its :class:`monitor.unitstats.UnitStatsAggregation` (per stage and variant the co-moments
  of metrics and covariates, per segment slot the metrics' moments, the p95 guardrail's
  quantile sketch), fed the changed rows as the worker feeds it unit deltas, and applied
  once a publish (:meth:`ColumnarSketch.statistics`). Each row then keeps its stage,
  covariates and segment slots from its first exposure, and each metric its own
  aggregation (``sum``, or ``any``);
* optionally (``records``), each run's changed rows as one table record per unit: the
  unit id for key (a compacted changelog keeps a key's last value, so a unit's state needs
  a key of its own) and its row packed as the value (:data:`ROW_FIELDS`), in
  :attr:`ColumnarSketch.run_records`. The caller writes them to a store and a changelog
  batch, as the worker's :class:`streams.changelog.ChangelogBatcher` does.

Left out, so the figure is a lower bound: telemetry held until its unit's exposure, tagged
events, several experiments, lateness and expiry, outcome counters, metrics, the window
and watermark records the worker writes into the same changelog batches (so the sketch's
windows could not be recovered from its records), and (unless ``layout``) covariates,
segments and the p95 guardrail's quantile sketch, and (unless ``records``) the table
records. Every event is assumed to name a known metric, and (unless ``layout``) every
metric to be a unit's sum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import count, filterfalse, repeat
from operator import attrgetter, methodcaller
from typing import Annotated, Any, Literal, get_type_hints
from zlib import crc32

import msgspec
import numpy as np
import numpy.typing as npt

from monitor.events import Exposure, Text
from monitor.layout import OTHER, ExperimentLayout
from monitor.unitstats import ExperimentStats, UnitDeltas, UnitStatsAggregation

__all__ = ["ROW_FIELDS", "ColumnarSketch", "moments_truth", "row_dtype", "truth"]

#: a unit's table record in the sketch (``records``), little-endian: its variant index,
#: the exposure and telemetry offsets it has absorbed, and its metric values (with the
#: worker's statistics, then its stage, covariates and segment slots: :func:`row_dtype`)
ROW_FIELDS = ("variant", "exposure_offset", "telemetry_offset", "values")


def row_dtype(
    metrics: int, covariates: int = 0, segments: int = 0, recent: int = 0
) -> np.dtype[Any]:
    """The packed record of :data:`ROW_FIELDS` for ``metrics`` metric values; with the
    worker's statistics (``layout``), also the stage, covariates and segment slots; with
    ``recent`` slots for re-sends, the unit's recent ids, their event times and how many
    it has kept in all (the next slot to write, modulo ``recent``)."""
    fields: list[tuple[Any, ...]] = [
        ("variant", "<i8"), ("exposure_offset", "<i8"), ("telemetry_offset", "<i8"),
        ("values", "<f8", (metrics,)),
    ]  # fmt: skip
    if covariates or segments:
        fields += [("stage", "<i8"), ("covariates", "<f8", (covariates,)),
                   ("segments", "<i8", (segments,))]  # fmt: skip
    if recent:
        fields += [("recent_ids", "<u4", (recent,)), ("recent_ts", "<f8", (recent,)),
                   ("recent_kept", "<i8")]  # fmt: skip
    return np.dtype(fields)


_unit, _event_id = attrgetter("unit_id"), attrgetter("event_id")
_metric, _value = attrgetter("metric"), attrgetter("value")
_ts, _experiment, _variant = attrgetter("ts"), attrgetter("experiment"), attrgetter("variant")
_covariates, _attributes = attrgetter("covariates"), attrgetter("attributes")
_EXPOSURE_TYPES = get_type_hints(Exposure, include_extras=True)


class ColumnarSketch:
    """Units as rows: ``values[row, metric]`` sums, ``variant[row]``, applied offsets."""

    def __init__(
        self,
        decoder: Any,
        variants: Mapping[str, int],
        metrics: Mapping[str, int],
        *,
        dedup: bool = False,
        recent: int = 0,
        horizon: float = 300.0,
        moments: bool = False,
        records: bool = False,
        layout: ExperimentLayout | None = None,
        stage: int = 0,
        window_seconds: float = 60.0,
        capacity: int = 1024,
    ) -> None:
        """``moments`` or ``layout`` keeps the windows; ``layout`` (the experiment's, whose
        metrics must be ``metrics`` in order) the worker's statistics, with every unit at
        ``stage``. ``dedup`` or ``recent`` (slots a unit, with ``horizon``) skips re-sends
        (the module docstring); not both."""
        if dedup and recent:
            raise ValueError("re-sends are skipped by a set (dedup) or per unit (recent)")
        self.decoder = decoder
        self.variants = dict(variants)
        self.metrics = dict(metrics)
        self.dedup = dedup
        self.layout = layout
        # the windows: kept whenever statistics are
        self.moments = moments or layout is not None
        self.window_seconds = window_seconds
        shape = (len(self.variants), len(self.metrics))
        #: per variant: exposed units, the sums of their values, and the Gram matrix of
        #: their values (sums of squares on its diagonal)
        self.units = np.zeros(shape[0], np.int64)
        self.sums = np.zeros(shape)
        self.gram = np.zeros((shape[0], shape[1], shape[1]))
        #: window start -> (events, sums, sums of squares) per (variant, metric)
        self.windows: dict[float, npt.NDArray[np.float64]] = {}
        #: window start -> units first exposed in it, per variant
        self.window_exposures: dict[float, npt.NDArray[np.int64]] = {}
        self.rows: dict[str, int] = {}
        #: per row, its unit id as a table key
        self.keys: list[bytes] = []
        self.records = records
        covariates = len(layout.covariates) if layout else 0
        dims = len(layout.config.segments) if layout else 0
        self.row_dtype = row_dtype(len(self.metrics), covariates, dims, recent)
        #: per row, its last ``recent`` telemetry events (crc32 of the id, event time) in
        #: slots written in turn, how many it has kept in all, and its newest event time
        self.recent, self.horizon = recent, horizon
        self.recent_ids = np.zeros((capacity, recent), np.uint32)
        # an empty slot's time is NaN: no comparison takes it for a kept id
        self.recent_ts = np.full((capacity, recent), math.nan)
        self.recent_kept = np.zeros(capacity, np.int64)
        self.newest = np.full(capacity, -math.inf)
        self.stage = stage
        self.covariates = np.zeros((capacity, covariates))
        self.segments = np.zeros((capacity, dims), np.intp)
        #: the worker's statistics, and the unit deltas of runs not yet applied
        self.aggregation = UnitStatsAggregation(layout) if layout else None
        self.stats = self.aggregation.initialize() if self.aggregation else None
        #: per row: changed since the last publish; in the statistics yet; its metric
        #: values as the statistics hold them
        self.dirty = np.zeros(capacity, bool)
        self.entered = np.zeros(capacity, bool)
        self.published = np.zeros((capacity, len(self.metrics)))
        self._any = np.zeros(len(self.metrics), bool)
        if layout is not None:
            if layout.metrics != tuple(self.metrics):
                raise ValueError(f"metrics {list(self.metrics)} are not {layout.metrics}")
            self._any = np.array([m.aggregation == "any" for m in layout.config.metrics])
        #: per segment attribute: its name, value -> slot, and its ``other`` slot
        self._slots: list[tuple[str, dict[str, int], int]] = []
        segments_of = layout.config.segments if layout else []
        for j, segment in enumerate(segments_of):
            # the layout's own codes: of each declared value, and of ``other``
            assert layout is not None
            attribute = segment.attribute
            slots = {v: layout.segment_codes({attribute: v})[j]
                     for v in (*segment.values, OTHER)}  # fmt: skip
            self._slots.append((attribute, slots, slots[OTHER]))
        #: the last run's records, (unit key, packed row) per unit it changed (``records``)
        self.run_records: list[tuple[bytes, bytes]] = []
        self.values = np.zeros((capacity, len(self.metrics)))
        self.variant = np.full(capacity, -1, np.int64)
        self.exposure_offset = np.full(capacity, -1, np.int64)
        self.telemetry_offset = np.full(capacity, -1, np.int64)
        self.seen: set[str] = set()
        #: bytes of the per-run changelog records the sketch would have written
        self.changelog_bytes = 0
        # the Decoder's screen as arrays: each metric's bounds, by the sketch's metric index
        bounds = decoder._finite_bounds
        self._low = np.array([bounds[m][0] for m in self.metrics], np.float64)
        self._high = np.array([bounds[m][1] for m in self.metrics], np.float64)
        self._live = decoder._max_age is not None or decoder._max_future is not None
        # the worker's event structs as far as a typed decode can screen them: names as
        # Literals (interned strings: nothing to allocate, and a dict lookup by identity),
        # no telemetry tags and no exposure stage (a run with one goes to the Decoder), and
        # a positive time unless the decoder bounds times against its clock (then the
        # run's times are screened in numpy)
        ts: Any = float if self._live else Annotated[float, msgspec.Meta(gt=0)]
        names: Any = Literal.__getitem__(tuple(decoder._variants))
        variant_names = sorted({v for vs in decoder._variants.values() for v in vs})
        telemetry: list[tuple[Any, ...]] = [
            ("event_id", Text),
            ("ts", ts),
            ("unit_id", Text),
            ("metric", Literal.__getitem__(tuple(self.metrics))),
            ("value", float),
            ("experiment", None, None),
            ("variant", None, None),
        ]
        exposure: list[tuple[Any, ...]] = [
            ("event_id", Text),
            ("ts", ts),
            ("experiment", names),
            ("unit_id", Text),
            ("variant", Literal.__getitem__(tuple(variant_names))),
            *(
                (f, _EXPOSURE_TYPES[f], msgspec.field(default_factory=dict))
                for f in ("attributes", "covariates")
            ),
            ("stage", None, None),
        ]
        self._telemetry_decoder = _list_decoder("ScreenedTelemetry", telemetry)
        self._exposure_decoder = _list_decoder("ScreenedExposure", exposure)

    def unit_values(self) -> dict[str, tuple[int, list[float]]]:
        """Each unit's variant index and metric sums."""
        return {u: (int(self.variant[r]), self.values[r].tolist()) for u, r in self.rows.items()}

    def statistics(self) -> ExperimentStats:
        """The worker's statistics with every run applied, as the worker applies its unit
        deltas: once a publish, in one numpy update. Each unit changed since the last
        call is one row of it, from the values the statistics hold to its own, however
        many runs changed it (the worker's rows are one a unit and message).
        """
        if self.aggregation is None or self.stats is None:
            raise ValueError("the sketch keeps the worker's statistics only with a layout")
        rows = np.flatnonzero(self.dirty)
        if rows.size:
            covariates, values = self.covariates[rows], self.values[rows]
            deltas = UnitDeltas(
                np.full(rows.size, self.stage, np.intp),
                self.variant[rows].astype(np.intp),
                ~self.entered[rows],
                np.concatenate([self.published[rows], covariates], axis=1),
                np.concatenate([values, covariates], axis=1),
                self.segments[rows],
            )
            self.stats = self.aggregation.update(self.stats, deltas)
            self.published[rows], self.entered[rows], self.dirty[rows] = values, True, False
        return self.stats

    def _grow(self, size: int) -> None:
        capacity = len(self.variant)
        if size <= capacity:
            return
        extra = max(size, 2 * capacity) - capacity
        self.values = np.vstack([self.values, np.zeros((extra, self.values.shape[1]))])
        for name in ("variant", "exposure_offset", "telemetry_offset"):
            old = getattr(self, name)
            setattr(self, name, np.concatenate([old, np.full(extra, -1, np.int64)]))
        for name in ("covariates", "segments", "published", "recent_ids"):
            old = getattr(self, name)
            setattr(self, name, np.vstack([old, np.zeros((extra, old.shape[1]), old.dtype)]))
        self.recent_ts = np.vstack([self.recent_ts, np.full((extra, self.recent), math.nan)])
        self.recent_kept = np.concatenate([self.recent_kept, np.zeros(extra, np.int64)])
        self.newest = np.concatenate([self.newest, np.full(extra, -math.inf)])
        for name in ("dirty", "entered"):
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(extra, bool)]))

    def _typed(
        self, raws: Sequence[bytes], typed: msgspec.json.Decoder[Any]
    ) -> tuple[list[Any], npt.NDArray[np.int64]] | None:
        """Every message's events by ``typed`` alone and each event's message index; None
        if a message is over the size limit, not ASCII (the Decoder checks UTF-8 first),
        not a JSON array, or fails the type: the Decoder then decodes the run."""
        limit = self.decoder.max_message_bytes
        events: list[Any] = []
        counts = []
        for raw in raws:
            if len(raw) > limit or not raw.isascii():
                return None
            try:
                got = typed.decode(raw)
            except (msgspec.DecodeError, RecursionError):  # ValidationError included
                return None
            events += got
            counts.append(len(got))
        return events, np.repeat(np.arange(len(raws), dtype=np.int64), counts)

    def _times_pass(self, events: list[Any]) -> bool:
        """The Decoder's time screen, ``low <= ts <= high``, over the run at once."""
        low, high = self.decoder._ts_window(self.decoder._now())
        ts = np.fromiter(map(_ts, events), np.float64, len(events))
        return bool(((ts >= low) & (ts <= high)).all())

    def _exposures_pass(self, events: list[Any]) -> bool:
        """The rest of :meth:`streams.decode.Decoder._screen_exposures` passes every event:
        each variant is one of its experiment's (one experiment a run here, as the
        benchmark's runs are; any other run falls back), and live times. A typed decode
        gives no infinite covariate: msgspec refuses an out-of-range number."""
        experiments = set(map(_experiment, events))
        if len(experiments) != 1:
            return False
        (name,) = experiments
        return set(map(_variant, events)) <= self.decoder._variants[name] and (
            not self._live or self._times_pass(events)
        )

    def exposures(self, raws: Sequence[bytes], first_offset: int) -> None:
        """A run of exposure messages at offsets ``first_offset, first_offset + 1, ...``."""
        typed = self._typed(raws, self._exposure_decoder)
        if typed is not None and self._exposures_pass(typed[0]):
            events, origin = typed
        else:
            run = self.decoder.exposures_run(raws)
            events, origin = run.events, np.asarray(run.origin, np.int64)
        rows = self.rows
        units = list(map(_unit, events))
        new = list(dict.fromkeys(filterfalse(rows.__contains__, units)))
        rows.update(zip(new, count(len(rows))))
        self.keys += [u.encode() for u in new]
        self._grow(len(rows))
        k = len(events)
        row = np.fromiter(map(rows.__getitem__, units), np.int64, k)
        offset = origin + first_offset
        variant = np.fromiter(map(self.variants.__getitem__, map(_variant, events)), np.int64, k)
        fresh = offset > self.exposure_offset[row]
        # a unit keeps its first variant: the first of its fresh exposures, if it had none
        first = np.unique(row[fresh], return_index=True)[1]
        chosen, pick = row[fresh][first], variant[fresh][first]
        unset = self.variant[chosen] < 0
        self.variant[chosen[unset]] = pick[unset]
        np.maximum.at(self.exposure_offset, row, offset)
        if self.layout is not None:
            self._enter(chosen[unset], np.flatnonzero(fresh)[first][unset], events)
        if self.moments:
            # a new unit's values are all 0 (the sketch drops telemetry before exposure),
            # so only the unit counts move
            assigned = pick[unset]
            ts = np.fromiter(map(_ts, events), np.float64, k)[fresh][first][unset]
            if self.layout is None:
                self.units += np.bincount(assigned, minlength=len(self.units))
            for start, per in self._by_window(ts, assigned, None, np.ones(len(ts))):
                exposed = per[0, :, 0].astype(np.int64)
                self.window_exposures[start] = self.window_exposures.get(start, 0) + exposed
        if self.records:
            self.run_records = self.records_of(np.unique(row[fresh]))
        else:
            self.changelog_bytes += len(chosen.tobytes() + self.variant[chosen].tobytes())

    def telemetry(self, raws: Sequence[bytes], first_offset: int) -> None:
        """A run of telemetry messages, as :meth:`exposures`. Telemetry of a unit with no
        exposure yet is dropped (the worker holds it: left out of the sketch)."""
        typed = self._typed(raws, self._telemetry_decoder)
        if typed is not None:
            events, origin = typed
            metric, value = self._columns(events)
        if typed is None or not self._telemetry_pass(events, metric, value):
            run = self.decoder.telemetry_run(raws)
            events, origin = run.events, np.asarray(run.origin, np.int64)
            metric, value = self._columns(events)
        k = len(events)
        row = np.fromiter(map(self.rows.get, map(_unit, events), repeat(-1)), np.int64, k)
        offset = origin + first_offset
        keep = row >= 0
        keep[keep] &= offset[keep] > self.telemetry_offset[row[keep]]
        ts = np.fromiter(map(_ts, events), np.float64, k) if self.moments or self.recent else None
        if self.dedup:
            keep &= self._first_sent(list(map(_event_id, events)))
        elif self.recent:
            assert ts is not None
            keep[keep] = self._fresh(events, row, ts, np.flatnonzero(keep))
        self._add(row[keep], metric[keep], value[keep], offset[keep])
        if self.moments:
            assert ts is not None
            ts = ts[keep]
            variant, metric, value = self.variant[row[keep]], metric[keep], value[keep]
            for start, per in self._by_window(ts, variant, metric, value):
                self.windows[start] = self.windows.get(start, 0) + per

    def _enter(
        self,
        rows: npt.NDArray[np.int64],
        at: npt.NDArray[np.intp],
        events: list[Any],
    ) -> None:
        """Newly assigned ``rows``, first exposed by ``events[at]``: their covariates and
        segment slots, as the worker's assignment fixes them (``covariate_vector``: a
        missing or non-finite covariate is 0; ``segment_codes``: an undeclared or missing
        value is the attribute's ``other``), a column at a time; they enter the statistics
        at the next publish."""
        assert self.layout is not None
        layout, n = self.layout, len(rows)
        exposures = [events[i] for i in at.tolist()]
        given = list(map(_covariates, exposures))
        covariates = np.empty((n, len(layout.covariates)))
        for j, name in enumerate(layout.covariates):
            covariates[:, j] = np.fromiter(
                map(methodcaller("get", name, math.nan), given), float, n
            )
        covariates[~np.isfinite(covariates)] = 0.0
        attributes = list(map(_attributes, exposures))
        segments = np.empty((n, len(self._slots)), np.intp)
        for j, (attribute, slots, other) in enumerate(self._slots):
            values = map(methodcaller("get", attribute, OTHER), attributes)
            segments[:, j] = np.fromiter(map(slots.get, values, repeat(other)), np.intp, n)
        self.covariates[rows], self.segments[rows] = covariates, segments
        self.dirty[rows] = True

    def _by_window(
        self,
        ts: npt.NDArray[np.float64],
        variant: npt.NDArray[np.int64],
        metric: npt.NDArray[np.intp] | None,
        value: npt.NDArray[np.float64],
    ) -> list[tuple[float, npt.NDArray[np.float64]]]:
        """Per window the events touch: (events, sums, sums of squares) per (variant,
        metric), by one ``np.bincount`` each over the run; ``metric`` None: one column."""
        size = self.window_seconds
        starts, window = np.unique(np.floor(ts / size) * size, return_inverse=True)
        width = 1 if metric is None else len(self.metrics)
        cells = len(self.variants) * width
        index = window * cells + variant * width + (0 if metric is None else metric)
        n = len(starts) * cells
        stacked = np.stack([
            np.bincount(index, minlength=n).astype(np.float64),
            np.bincount(index, weights=value, minlength=n),
            np.bincount(index, weights=value * value, minlength=n),
        ]).reshape(3, len(starts), len(self.variants), width)  # fmt: skip
        return [(float(start), stacked[:, i]) for i, start in enumerate(starts)]

    def _columns(self, events: list[Any]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        """Each telemetry event's metric index and value."""
        k = len(events)
        metric = np.fromiter(map(self.metrics.__getitem__, map(_metric, events)), np.intp, k)
        return metric, np.fromiter(map(_value, events), np.float64, k)

    def _telemetry_pass(
        self, events: list[Any], metric: npt.NDArray[np.intp], value: npt.NDArray[np.float64]
    ) -> bool:
        """The rest of :meth:`streams.decode.Decoder._screen_telemetry` passes every event:
        each metric's bounds, and live times."""
        inside = (value >= self._low[metric]) & (value <= self._high[metric])
        return bool(inside.all()) and (not self._live or self._times_pass(events))

    def _first_sent(self, ids: list[str]) -> npt.NDArray[np.bool_] | bool:
        """Per id, whether no earlier event had it (in this run or before); every id is
        then seen. A run of new, distinct ids (the common case) costs one lookup and one
        insert of each."""
        seen = self.seen
        before = len(seen)
        if seen.isdisjoint(ids):
            seen.update(ids)
            if len(seen) - before == len(ids):
                return True
            seen.difference_update(ids)  # a re-send inside the run: back to before it
        first = np.empty(len(ids), np.bool_)
        for i, event_id in enumerate(ids):
            first[i] = event_id not in seen
            seen.add(event_id)
        return first

    def _fresh(
        self,
        events: list[Any],
        row: npt.NDArray[np.int64],
        ts: npt.NDArray[np.float64],
        at: npt.NDArray[np.intp],
    ) -> npt.NDArray[np.bool_]:
        """Of the events ``at``, each not a re-send: its id's crc32 is neither among its
        unit's kept ids within the horizon of the unit's newest event, nor earlier in the
        run for the same unit. Those events then take their units' next slots (the last
        ``recent`` of a unit's, if the run brings more) and move its newest event time."""
        slots = self.recent
        r, t = row[at], ts[at]
        crc = np.fromiter(
            map(crc32, map(str.encode, map(_event_id, map(events.__getitem__, at.tolist())))),
            np.uint32,
            len(at),
        )
        live = self.recent_ts[r] >= (self.newest[r] - self.horizon)[:, None]
        fresh = ~((self.recent_ids[r] == crc[:, None]) & live).any(axis=1)
        # the first of a unit's events with one id in the run: np.unique's first index
        first = np.zeros(len(at), np.bool_)
        first[np.unique((r << 32) | crc.astype(np.int64), return_index=True)[1]] = True
        fresh &= first
        r, t, crc = r[fresh], t[fresh], crc[fresh]
        order = np.argsort(r, kind="stable")
        r, t, crc = r[order], t[order], crc[order]
        starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]]) if len(r) else np.empty(0, int)
        counts = np.diff(np.r_[starts, len(r)])
        rank = np.arange(len(r)) - np.repeat(starts, counts)
        # only a unit's last ``slots`` events of the run: no slot is written twice
        last = rank >= np.repeat(counts, counts) - slots
        slot = (self.recent_kept[r] + rank) % slots
        self.recent_ids[r[last], slot[last]] = crc[last]
        self.recent_ts[r[last], slot[last]] = t[last]
        self.recent_kept[r[starts]] += counts
        np.maximum.at(self.newest, r, t)
        return fresh

    def _add(
        self,
        row: npt.NDArray[np.int64],
        metric: npt.NDArray[np.intp],
        value: npt.NDArray[np.float64],
        offset: npt.NDArray[np.int64],
    ) -> None:
        width = self.values.shape[1]
        touched, local = np.unique(row, return_inverse=True)
        index, size = local * width + metric, len(touched) * width
        added = np.bincount(index, weights=value, minlength=size)
        before = self.values[touched]
        after = before + added.reshape(-1, width)
        if self._any.any():
            # ``any``: 1 once the unit had an event of non-zero value, else 0
            hit = np.bincount(index, weights=value != 0, minlength=size).reshape(-1, width)
            after[:, self._any] = ((before[:, self._any] != 0) | (hit[:, self._any] > 0)) * 1.0
        self.values[touched] = after
        if self.layout is not None:
            self.dirty[touched] = True
        elif self.moments:
            # the statistics move by the changed rows, new minus old, one matrix product
            # per variant (the worker's unit deltas, monitor.unitstats)
            variant = self.variant[touched]
            np.add.at(self.sums, variant, after - before)
            for v in range(len(self.units)):
                mine = variant == v
                new, old = after[mine], before[mine]
                self.gram[v] += new.T @ new - old.T @ old
        np.maximum.at(self.telemetry_offset, row, offset)
        if self.records:
            self.run_records = self.records_of(touched)
        else:
            changed = [touched, after, self.telemetry_offset[touched]]
            self.changelog_bytes += len(b"".join(a.tobytes() for a in changed))

    def records_of(self, rows: npt.NDArray[np.int64]) -> list[tuple[bytes, bytes]]:
        """The table records of ``rows``: each row packed, keyed by its unit."""
        packed = np.empty(len(rows), self.row_dtype)
        packed["variant"] = self.variant[rows]
        packed["exposure_offset"] = self.exposure_offset[rows]
        packed["telemetry_offset"] = self.telemetry_offset[rows]
        packed["values"] = self.values[rows]
        if self.layout is not None:
            packed["stage"] = self.stage
            packed["covariates"] = self.covariates[rows]
            packed["segments"] = self.segments[rows]
        if self.recent:
            packed["recent_ids"] = self.recent_ids[rows]
            packed["recent_ts"] = self.recent_ts[rows]
            packed["recent_kept"] = self.recent_kept[rows]
        buf, width = packed.tobytes(), self.row_dtype.itemsize
        keys = self.keys
        return list(
            zip(
                [keys[r] for r in rows.tolist()],
                [buf[i : i + width] for i in range(0, len(buf), width)],
                strict=True,
            )
        )


def _list_decoder(name: str, fields: list[tuple[Any, ...]]) -> msgspec.json.Decoder[Any]:
    struct = msgspec.defstruct(name, fields, frozen=True, gc=False)
    return msgspec.json.Decoder(list[struct])  # type: ignore[valid-type]


def truth(
    exposures: Sequence[Mapping[str, Any]],
    telemetry: Sequence[Mapping[str, Any]],
    variants: Mapping[str, int],
    metrics: Mapping[str, int],
) -> dict[str, tuple[int, list[float]]]:
    """What :meth:`ColumnarSketch.unit_values` must hold after every event, each once:
    per exposed unit, its first variant and the sums of its telemetry, by plain Python."""
    out: dict[str, tuple[int, list[float]]] = {}
    for e in exposures:
        if e["unit_id"] not in out:
            out[e["unit_id"]] = (variants[e["variant"]], [0.0] * len(metrics))
    for t in telemetry:
        if t["unit_id"] in out:
            out[t["unit_id"]][1][metrics[t["metric"]]] += t["value"]
    return out


def moments_truth(
    exposures: Sequence[Mapping[str, Any]],
    telemetry: Sequence[Mapping[str, Any]],
    variants: Mapping[str, int],
    metrics: Mapping[str, int],
    window_seconds: float,
) -> dict[str, Any]:
    """What a ``moments`` sketch must hold after every event, each once, by plain Python
    and numpy on :func:`truth`: per variant the units, sums and Gram matrix of their
    values; per window the events, sums and sums of squares per (variant, metric), and the
    units whose first exposure fell in it."""
    units = truth(exposures, telemetry, variants, metrics)
    shape = (len(variants), len(metrics))
    out: dict[str, Any] = {
        "units": np.zeros(shape[0], np.int64),
        "sums": np.zeros(shape),
        "gram": np.zeros((shape[0], shape[1], shape[1])),
        "windows": {},
        "window_exposures": {},
    }
    for variant, values in units.values():
        x = np.array(values)
        out["units"][variant] += 1
        out["sums"][variant] += x
        out["gram"][variant] += np.outer(x, x)
    first: set[str] = set()
    for e in exposures:
        if e["unit_id"] not in first:
            first.add(e["unit_id"])
            start = math.floor(e["ts"] / window_seconds) * window_seconds
            per = out["window_exposures"].setdefault(start, np.zeros(shape[0], np.int64))
            per[variants[e["variant"]]] += 1
    for t in telemetry:
        if t["unit_id"] in units:
            start = math.floor(t["ts"] / window_seconds) * window_seconds
            cell = (units[t["unit_id"]][0], metrics[t["metric"]])
            per = out["windows"].setdefault(start, np.zeros((3, *shape)))
            per[(0, *cell)] += 1
            per[(1, *cell)] += t["value"]
            per[(2, *cell)] += t["value"] ** 2
    return out
