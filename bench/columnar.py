"""A sketch of a columnar unit store: the least an exact worker could do per event.

:mod:`bench.floor` shows that the current design's two unavoidable steps, decode and the
unit record round trip, already exceed the envelope target's budget. A store that keeps
units as rows of numpy arrays (one row per unit, a dict from unit id to row) would skip
the round trip. This sketch measures what such a store would still do per run, so the
floor does not rest on one design:

* decode the run with the worker's own :class:`streams.decode.Decoder`;
* exposures: a row for each new unit, its variant kept from its first exposure;
* telemetry: each event's row (one dict lookup), the row's applied offset compared with
  the event's message offset (exactness under redelivery, vectorised), the values added
  into a unit x metric array with ``np.bincount``, and the changed rows' values and
  offsets out as bytes (what a per-run changelog record would carry);
* optionally, producer re-sends: an event id seen before is skipped (a dict of ids, as a
  lower bound of a store that must also expire them and survive restarts).

Left out, so the figure is a lower bound: windows, the statistics' co-moment updates,
telemetry held until its unit's exposure, tagged events, several experiments, covariates
and segments, lateness, outcome counters, metrics, and producing the changelog. Every
event is assumed to name a known metric, as the benchmark's do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import count, repeat
from operator import attrgetter
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["ColumnarSketch", "truth"]

_unit, _event_id = attrgetter("unit_id"), attrgetter("event_id")
_metric, _value = attrgetter("metric"), attrgetter("value")


class ColumnarSketch:
    """Units as rows: ``values[row, metric]`` sums, ``variant[row]``, applied offsets."""

    def __init__(
        self,
        decoder: Any,
        variants: Mapping[str, int],
        metrics: Mapping[str, int],
        *,
        dedup: bool = False,
        capacity: int = 1024,
    ) -> None:
        self.decoder = decoder
        self.variants = dict(variants)
        self.metrics = dict(metrics)
        self.dedup = dedup
        self.rows: dict[str, int] = {}
        self.values = np.zeros((capacity, len(self.metrics)))
        self.variant = np.full(capacity, -1, np.int64)
        self.exposure_offset = np.full(capacity, -1, np.int64)
        self.telemetry_offset = np.full(capacity, -1, np.int64)
        self.seen: dict[str, int] = {}
        self.ids_offered = 0
        #: bytes of the per-run changelog records the sketch would have written
        self.changelog_bytes = 0

    def unit_values(self) -> dict[str, tuple[int, list[float]]]:
        """Each unit's variant index and metric sums."""
        return {u: (int(self.variant[r]), self.values[r].tolist()) for u, r in self.rows.items()}

    def _grow(self, size: int) -> None:
        capacity = len(self.variant)
        if size <= capacity:
            return
        extra = max(size, 2 * capacity) - capacity
        self.values = np.vstack([self.values, np.zeros((extra, self.values.shape[1]))])
        for name in ("variant", "exposure_offset", "telemetry_offset"):
            old = getattr(self, name)
            setattr(self, name, np.concatenate([old, np.full(extra, -1, np.int64)]))

    def exposures(self, raws: Sequence[bytes], first_offset: int) -> None:
        """A run of exposure messages at offsets ``first_offset, first_offset + 1, ...``."""
        run = self.decoder.exposures_run(raws)
        events = run.events
        rows = self.rows
        units = list(map(_unit, events))
        rows.update(zip(dict.fromkeys([u for u in units if u not in rows]), count(len(rows))))
        self._grow(len(rows))
        k = len(events)
        row = np.fromiter(map(rows.__getitem__, units), np.int64, k)
        offset = np.asarray(run.origin, np.int64) + first_offset
        variant = np.fromiter((self.variants[e.variant] for e in events), np.int64, k)
        fresh = offset > self.exposure_offset[row]
        # a unit keeps its first variant: the first of its fresh exposures, if it had none
        first = np.unique(row[fresh], return_index=True)[1]
        chosen, pick = row[fresh][first], variant[fresh][first]
        unset = self.variant[chosen] < 0
        self.variant[chosen[unset]] = pick[unset]
        np.maximum.at(self.exposure_offset, row, offset)
        self.changelog_bytes += len(chosen.tobytes() + self.variant[chosen].tobytes())

    def telemetry(self, raws: Sequence[bytes], first_offset: int) -> None:
        """A run of telemetry messages, as :meth:`exposures`. Telemetry of a unit with no
        exposure yet is dropped (the worker holds it: left out of the sketch)."""
        run = self.decoder.telemetry_run(raws)
        events = run.events
        k = len(events)
        row = np.fromiter(map(self.rows.get, map(_unit, events), repeat(-1)), np.int64, k)
        offset = np.asarray(run.origin, np.int64) + first_offset
        keep = row >= 0
        keep[keep] &= offset[keep] > self.telemetry_offset[row[keep]]
        if self.dedup:
            # each event offers a number no earlier event had: it gets its own back if new
            mine = np.arange(self.ids_offered, self.ids_offered + k)
            self.ids_offered += k
            first = map(self.seen.setdefault, map(_event_id, events), mine.tolist())
            keep &= np.fromiter(first, np.int64, k) == mine
        metric = np.fromiter(map(self.metrics.__getitem__, map(_metric, events)), np.intp, k)
        value = np.fromiter(map(_value, events), np.float64, k)
        self._add(row[keep], metric[keep], value[keep], offset[keep])

    def _add(
        self,
        row: npt.NDArray[np.int64],
        metric: npt.NDArray[np.intp],
        value: npt.NDArray[np.float64],
        offset: npt.NDArray[np.int64],
    ) -> None:
        width = self.values.shape[1]
        touched, local = np.unique(row, return_inverse=True)
        added = np.bincount(local * width + metric, weights=value, minlength=len(touched) * width)
        after = self.values[touched] + added.reshape(-1, width)
        self.values[touched] = after
        np.maximum.at(self.telemetry_offset, row, offset)
        changed = touched.tobytes() + after.tobytes() + self.telemetry_offset[touched].tobytes()
        self.changelog_bytes += len(changed)


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
