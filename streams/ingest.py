"""Ingest: one Kafka message in, unit records and per-partition statistics updated.

Exactness under redelivery (the bundled broker has no transactions):

* Unit records are the source of truth. Each carries the highest exposure and telemetry
  offsets it has absorbed, written in the same table value, so a replayed message is
  skipped unit by unit (:class:`monitor.attribution.Attributor`).
* Per-partition cumulative statistics are *derived* from the unit records: rebuilt by a scan
  when a partition is (re)assigned, then maintained incrementally. They can never disagree
  with the units they summarise; nor can their snapshots' ``seq`` (PartitionStats.seq).
* Window records take in exactly the events their unit records absorb, and live in the
  units table beside them: a run's unit and window records reach the changelog in one
  batch, or, for a run too large for one, in batches each of which leaves the windows in
  step with the unit records written so far (:meth:`Ingest._split`,
  streams.windowrecords).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import orjson

from monitor.aggregation import WindowMomentAggregation, WindowMoments
from monitor.attribution import Attributor, BatchResult
from monitor.config import RampmonConfig
from monitor.layout import ExperimentLayout
from monitor.unitstate import Assignment, UnitState, decode_unit, decode_units, encode_units
from monitor.unitstats import ExperimentStats, UnitDeltas, UnitStatsAggregation
from streams import gctune
from streams.changelog import (
    BATCH_BYTES,
    ChangelogBatcher,
    Records,
    batch_bytes,
    batch_ends,
    record_bytes,
)
from streams.decode import DecodedRun, Decoder, Rejected
from streams.metrics import Metrics
from streams.partials import Partial
from streams.partitioner import partitions_of
from streams.runs import OneRecord, Record
from streams.windowrecords import (
    decode_window,
    encode_window,
    parse_watermark_key,
    parse_window_key,
    watermark_key,
    window_key,
)

__all__ = ["Ingest", "PartitionStats", "TableUnitStore"]

log = logging.getLogger("rampmon")

#: units whose partition (murmur2) is remembered for checking envelope routing; emptied when
#: full, so it costs at most ~15 MiB however many units there are
ROUTE_CACHE_SIZE = 1 << 17


class TableUnitStore:
    """Adapts a Faust table (bytes -> msgpack) to :class:`monitor.attribution.UnitStore`.

    Writes go through a :class:`streams.changelog.ChangelogBatcher`: the caller flushes the
    run's unit records after each run (streams.runs), in one changelog batch, or in the
    several :meth:`Ingest._split` plans for a run too large for one.

    Records are decoded afresh on every read. Keeping the last-written ones decoded ran
    0.911 of the hot path's instructions and took 1.331 times its CPU time
    (``bench.instructions``, 2026-12-03): a kept record's objects lie scattered over
    megabytes of heap, while a fresh decode builds them in memory the last one just
    freed.
    """

    def __init__(self, changelog: ChangelogBatcher) -> None:
        self.changelog = changelog
        self._scratch = bytearray()

    def get_many(self, unit_ids: Sequence[str]) -> list[UnitState | None]:
        get = self.changelog.mapping.get
        return decode_units([get(u.encode()) for u in unit_ids])

    def put_many(self, records: Iterable[tuple[str, UnitState]]) -> None:
        pairs = list(records)
        values = encode_units([state for _, state in pairs], self._scratch)
        self.changelog.put_many(list(zip([u.encode() for u, _ in pairs], values, strict=True)))


class _Saved(NamedTuple):
    applied: dict[str, ExperimentStats]
    offsets: dict[str, int]
    watermark: float
    dirty: set[str]
    pending: dict[str, int]


@dataclass
class PartitionStats:
    partition: int
    #: applied statistics; rows of later messages may still wait in ``pending``
    applied: dict[str, ExperimentStats]
    #: exp -> window start -> moments; mirrors the partition's window records
    #: (streams.windowrecords)
    windows: dict[str, dict[float, WindowMoments]]
    #: per source topic, the highest offset any of the partition's unit records absorbed
    offsets: dict[str, int] = field(default_factory=dict)
    watermark: float = -math.inf
    dirty: set[str] = field(default_factory=set)
    #: per experiment, the delta rows of messages not yet folded into ``applied``: the numpy
    #: update costs ~200 us per call whatever its size, so it runs once per publish
    pending: dict[str, list[UnitDeltas]] = field(default_factory=dict)
    #: since :meth:`saved`: each window the run replaced or dropped, with its moments
    #: before (None: it had none), for :meth:`restore`
    _journal: list[tuple[str, float, WindowMoments | None]] = field(
        default_factory=list, repr=False
    )

    def saved(self) -> _Saved:
        """What a run may change, to put back if it raises (:meth:`restore`). Shallow: the
        statistics and window moments are immutable, and a run replaces them. Windows
        are journalled as the run changes them (:meth:`put_window`), not copied: a
        partition may hold thousands."""
        self._journal = []
        return _Saved(
            dict(self.applied),
            dict(self.offsets),
            self.watermark,
            set(self.dirty),
            {exp: len(rows) for exp, rows in self.pending.items()},
        )

    def restore(self, saved: _Saved) -> None:
        for exp, start, old in reversed(self._journal):
            if old is None:
                self.windows[exp].pop(start, None)
            else:
                self.windows[exp][start] = old
        self._journal = []
        self.applied, self.offsets = saved.applied, saved.offsets
        self.watermark, self.dirty = saved.watermark, saved.dirty
        # a run only appends delta rows
        self.pending = {exp: rows[: saved.pending[exp]] for exp, rows in self.pending.items()
                        if exp in saved.pending}  # fmt: skip

    def put_window(
        self, exp: str, start: float, old: WindowMoments | None, new: WindowMoments | None
    ) -> None:
        """Window ``start`` of ``exp`` goes from ``old`` (its moments now) to ``new`` (None:
        it leaves the mirror), journalled for :meth:`restore`."""
        self._journal.append((exp, start, old))
        if new is None:
            del self.windows[exp][start]
        else:
            self.windows[exp][start] = new

    def stats(self, experiment: str, aggregation: UnitStatsAggregation) -> ExperimentStats:
        """The experiment's statistics with every absorbed message applied."""
        rows = self.pending.pop(experiment, None)
        if rows:
            self.applied[experiment] = aggregation.update(
                self.applied[experiment], UnitDeltas.concat(rows)
            )
        return self.applied[experiment]

    @property
    def seq(self) -> int:
        """Where the snapshot stands in the partition's history, for the evaluator to keep
        the newest (streams.partials): the sum over source topics of the highest offset
        the partition's unit records absorbed, plus one.

        A function of the unit records alone, so every owner of the partition agrees on
        it: a new owner rebuilds exactly the ``seq`` the old one reached on the records it
        recovered, and each message a record absorbs raises it. It used to be the sum of
        the offsets *processed*: a message that left no unit record (a dead letter, a
        misrouted event) raised the old owner's ``seq`` but not the rebuilt one, and the
        evaluator dropped the new owner's snapshots, new data and all, until its offsets
        passed the old ones. Such a message changes no statistic, so it need not move
        ``seq``; persisting the processed offsets beside the records would be a second
        state to keep in step with them, and one more changelog record per run.
        """
        return sum(o + 1 for o in self.offsets.values())


class Ingest:
    """All per-message work of one worker. Synchronous: called inside stream iteration."""

    def __init__(
        self,
        config: RampmonConfig,
        *,
        units: Any,
        metrics: Metrics,
        stage_index: Callable[[str, float], int],
        topics: Mapping[str, str],
        partitions: int,
        max_message_bytes: int,
        max_pending: int,
        max_age_seconds: float | None = None,
        max_future_seconds: float | None = None,
        dedup_horizon_seconds: float = 300.0,
        changelog_batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.config = config
        self.units_table = units
        self.changelog = ChangelogBatcher(units, changelog_batch_bytes)
        self.store = TableUnitStore(self.changelog)
        self.metrics = metrics
        self.stage_index = stage_index
        self.exposures_topic = topics["exposures"]
        self.telemetry_topic = topics["telemetry"]
        self.partitions = partitions
        self.decoder = Decoder(
            config,
            max_message_bytes=max_message_bytes,
            max_age_seconds=max_age_seconds,
            max_future_seconds=max_future_seconds,
        )
        self.attributor = Attributor(
            config, max_pending=max_pending, dedup_horizon_seconds=dedup_horizon_seconds
        )
        self.window_size = config.windows.size_seconds
        self.layouts = {e.name: ExperimentLayout(e) for e in config.experiments}
        self.aggs = {name: UnitStatsAggregation(lay) for name, lay in self.layouts.items()}
        #: a window record's key (0xFF + orjson [experiment, partition, start], generously)
        #: and record overhead, for planning a run too large for one batch (_split)
        self._window_overhead = record_bytes(b"", None) + 64 + max(map(len, self.aggs), default=0)
        self.window_aggs = {
            e.name: WindowMomentAggregation(len(e.variants), len(e.metrics))
            for e in config.experiments
        }
        self.stats: dict[int, PartitionStats] = {}
        self.last_offset: dict[tuple[str, int], int] = {}
        self._route_cache: dict[str, int] = {}

    # -- partition lifecycle ------------------------------------------------------------

    def partition_stats(self, partition: int) -> PartitionStats:
        stats = self.stats.get(partition)
        if stats is None:
            stats = self.stats[partition] = self.rebuild([partition])[partition]
        return stats

    def ensure(self, partitions: Iterable[int]) -> None:
        """Statistics for each of ``partitions``, built now from the recovered tables.

        Called once recovery has ended: a partition that gets no new message after a restart
        must still publish, because the snapshot its last owner published may predate that
        owner's last unit records (a SIGKILL between a write and the next publish).
        """
        missing = sorted(set(partitions) - set(self.stats))
        if missing:
            self.stats.update(self.rebuild(missing))

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.stats.pop(p, None)
            # another worker owns its lag now
            for topic in (self.exposures_topic, self.telemetry_topic):
                self.last_offset.pop((topic, p), None)

    def rebuild(self, partitions: Sequence[int]) -> dict[int, PartitionStats]:
        """Derive the partitions' statistics from the unit records they own, and read
        their window records (one scan)."""
        wanted = set(partitions)
        assignments: dict[int, dict[str, list[Assignment]]] = {
            p: {e: [] for e in self.aggs} for p in wanted
        }
        offsets = {p: {self.exposures_topic: -1, self.telemetry_topic: -1} for p in wanted}
        windows: dict[int, dict[str, dict[float, WindowMoments]]] = {
            p: {exp: {} for exp in self.aggs} for p in wanted
        }
        watermarks = dict.fromkeys(wanted, -math.inf)
        for key, raw in self.units_table.data.items():
            window = parse_window_key(key)
            if window is not None:
                exp, part, start = window
                if part in wanted and exp in self.aggs and raw:
                    moments, agg = decode_window(raw), self.window_aggs[exp]
                    if moments.events.shape != agg.shape or moments.exposures.shape != (
                        agg.shape[0],
                    ):
                        # written under another config of the experiment (a metric added, a
                        # variant removed): its events count nowhere, as its units' do
                        # ("layout_changed"); held empty, so the window expires as any other
                        moments = agg.initialize()
                    windows[part][exp][start] = moments
                continue
            of = parse_watermark_key(key)
            if of is not None:
                if of in wanted and raw:
                    watermarks[of] = float(orjson.loads(raw))
                continue
            state = decode_unit(raw)
            if state.partition not in wanted:
                continue
            seen = offsets[state.partition]
            seen[self.exposures_topic] = max(seen[self.exposures_topic], state.exposure_offset)
            seen[self.telemetry_topic] = max(seen[self.telemetry_topic], state.telemetry_offset)
            for exp, a in state.assignments.items():
                # an experiment since taken out of the config, or an assignment written
                # under another config of it (Attributor: "layout_changed"), counts nowhere
                if exp in self.aggs and self.layouts[exp].fits(a):
                    assignments[state.partition][exp].append(a)
        return {
            p: PartitionStats(
                p,
                {
                    exp: agg.update(
                        agg.initialize(),
                        UnitDeltas.exposed(self.layouts[exp], assignments[p][exp]),
                    )
                    for exp, agg in self.aggs.items()
                },
                windows[p],
                offsets[p],
                watermark=watermarks[p],
                dirty=set(self.aggs),
            )
            for p in wanted
        }

    # -- the hot path -----------------------------------------------------------------

    def process(
        self, topic: str, partition: int, offset: int, key: bytes | None, value: bytes
    ) -> list[Rejected]:
        """One message: a run of one."""
        return [r for _, r in self.process_run(topic, partition, [OneRecord(offset, key, value)])]

    def process_run(
        self, topic: str, partition: int, records: Sequence[Record]
    ) -> list[tuple[Record, Rejected]]:
        """Consecutive messages of one partition, in offset order, in one pass.

        The unit records skip what they absorbed message by message (offsets), and the
        windows take only what the unit records absorb, so the statistics equal those of
        the messages processed one at a time, however a redelivery splits the runs, but
        for lateness: the watermark moves per run, not per message. The run's changelog
        records end sealed in their batches (streams.changelog), for the agent to flush.
        """
        stats = self.partition_stats(partition)
        saved = stats.saved()
        self.changelog.begin()
        try:
            # every object the run allocates lives until it ends (streams.gctune)
            with gctune.paused():
                return self._process_run(topic, partition, records, stats)
        except Exception:
            # a bug: the run leaves no trace. The partition's statistics go back to where
            # they stood (first: nothing can fail there), then its table writes
            stats.restore(saved)
            self.changelog.rollback()
            raise

    def isolate(
        self, topic: str, partition: int, records: Sequence[Record]
    ) -> list[tuple[Record, Rejected]]:
        """A run that raised (and left no trace), one message at a time: each message that
        raises alone becomes a dead letter (``processing_error``) and the others count as
        they would have. Per-unit offsets make the result that of the whole run, but for
        lateness, which moves per message here (:meth:`process_run`)."""
        rejected: list[tuple[Record, Rejected]] = []
        failed: list[int] = []

        def dead(record: Record, exc: Exception) -> None:
            detail = f"{type(exc).__name__}: {exc}"
            rejected.append((record, Rejected("processing_error", detail, None, record.value)))
            self.metrics.messages.labels(topic).inc()
            self.metrics.dead_letters.labels(topic, "processing_error").inc()
            # processed, as far as the lag goes
            self.last_offset[(topic, partition)] = record.offset
            failed.append(record.offset)

        try:
            # the partition's statistics come first in every message: if building them
            # raises, every message would, each after a scan of the table
            self.partition_stats(partition)
        except Exception as exc:
            log.exception("%s[%d]: its statistics cannot be built", topic, partition)
            for record in records:
                dead(record, exc)
            return rejected
        for record in records:
            try:
                rejected += self.process_run(topic, partition, [record])
            except Exception as exc:
                if not failed:  # one traceback a run: a bug may strike every message
                    log.exception(
                        "message %s[%d]@%d raised alone: a dead letter (processing_error)",
                        topic, partition, record.offset,
                    )  # fmt: skip
                dead(record, exc)
        if len(failed) > 1:
            log.error(
                "%d messages of %s[%d] raised alone, offsets %d to %d: dead letters",
                len(failed), topic, partition, failed[0], failed[-1],
            )  # fmt: skip
        return rejected

    def _process_run(
        self, topic: str, partition: int, records: Sequence[Record], stats: PartitionStats
    ) -> list[tuple[Record, Rejected]]:
        is_exposure = topic == self.exposures_topic
        decode: Callable[[Sequence[bytes]], DecodedRun[Any]] = (
            self.decoder.exposures_run if is_exposure else self.decoder.telemetry_run
        )
        run = decode([r.value for r in records])
        events, offsets, rejected = self._routed(run, partition, records)
        if is_exposure:
            result = self.attributor.apply_exposures(
                self.store, partition, offsets, events, self.stage_index, stats.watermark
            )
        else:
            result = self.attributor.apply_telemetry(
                self.store, partition, offsets, events, stats.watermark
            )
        last = records[-1].offset
        self._apply(stats, topic, result)
        m = self.metrics
        m.messages.labels(topic).inc(len(records))
        m.events.labels(topic).inc(len(events))
        for (exp, outcome), count in result.outcomes.items():
            m.attribution.labels(exp, outcome).inc(count)
        for _, r in rejected:
            m.dead_letters.labels(topic, r.reason).inc()
        if result.max_ts > -math.inf:
            m.lag_seconds.labels(topic).set(max(time.time() - result.max_ts, 0.0))
        self.last_offset[(topic, partition)] = last
        return rejected

    def _routed(
        self, run: DecodedRun[Any], partition: int, records: Sequence[Record]
    ) -> tuple[list[Any], list[int], list[tuple[Record, Rejected]]]:
        """The run's events whose unit belongs to this partition, each with its message's
        offset; the rest become dead letters, after their message's decode rejections.

        A unit's state lives on the partition its id hashes to; an envelope that mixes units
        from several partitions would otherwise split a unit's state across partitions. An
        event of a message keyed by its own unit (the producer's common case) is where the
        producer's partitioner put its unit, whatever that partitioner is; any other event's
        unit is hashed here, the run's new units in one numpy call.
        """
        events, origin = run.events, run.origin
        keys = [r.key.decode(errors="replace") if r.key else None for r in records]
        doubt = [
            j for j, (e, i) in enumerate(zip(events, origin, strict=True)) if e.unit_id != keys[i]
        ]
        wrong: list[tuple[int, int]] = []
        if doubt:
            homes = self._partitions_of([events[j].unit_id for j in doubt])
            wrong = [(j, h) for j, h in zip(doubt, homes, strict=True) if h != partition]
        message_offset = [r.offset for r in records]
        bad = run.rejected
        if not wrong:
            return events, [message_offset[i] for i in origin], [(records[i], r) for i, r in bad]
        misrouted: list[tuple[int, Rejected]] = []
        for j, home in wrong:
            e, i = events[j], origin[j]
            detail = (
                f"unit {e.unit_id!r} hashes to partition {home}, "
                f"message is on {partition}: key or batch envelopes by unit_id"
            )
            raw = orjson.dumps({"event_id": e.event_id, "unit_id": e.unit_id})
            misrouted.append((i, Rejected("misrouted", detail, run.position[j], raw)))
        # stable: a message's decode rejections, then its misrouted events
        bad = sorted([*bad, *misrouted], key=lambda pair: pair[0])
        dropped = {j for j, _ in wrong}
        kept = [j for j in range(len(events)) if j not in dropped]
        return (
            [events[j] for j in kept],
            [message_offset[origin[j]] for j in kept],
            [(records[i], r) for i, r in bad],
        )

    def _partitions_of(self, unit_ids: list[str]) -> list[int]:
        """Each unit's partition, remembered for the next runs; the cache is emptied when
        full, so it holds at most ``ROUTE_CACHE_SIZE`` units plus one run's."""
        cache = self._route_cache
        unique = dict.fromkeys(unit_ids)
        new = [u for u in unique if u not in cache]
        if new:
            if len(cache) + len(new) > ROUTE_CACHE_SIZE:
                cache.clear()
                new = list(unique)
            # the Java/aiokafka default partitioner, so any standard producer agrees
            cache.update(zip(new, partitions_of(new, self.partitions), strict=True))
        return [cache[u] for u in unit_ids]

    def _apply(self, stats: PartitionStats, topic: str, result: BatchResult) -> None:
        #: each window the run changed: its moments before the run (None: new)
        before: dict[tuple[str, float], WindowMoments | None] = {}
        #: and the bytes of its record after the run
        sizes: dict[tuple[str, float], int] = {}
        for exp, batch in result.experiments.items():
            # built now: the rows read the unit records' values, which later messages change
            stats.pending.setdefault(exp, []).append(batch.unit_deltas())
            windows, agg = stats.windows[exp], self.window_aggs[exp]
            records = []
            # the mirror holds every live window (rebuilt from the table on assignment), so
            # the table is only written here, never read back on the hot path
            for start, events in batch.window_runs():
                current = before[(exp, start)] = windows.get(start)
                updated = agg.update(current or agg.initialize(), events)
                stats.put_window(exp, start, current, updated)
                records.append((window_key(exp, stats.partition, start), encode_window(updated)))
                sizes[(exp, start)] = len(records[-1][1])
            self.changelog.put_first(records)
            stats.dirty.add(exp)
        # what the records absorbed, not the run's last offset: rebuild sees only the records
        stats.offsets[topic] = max(stats.offsets.get(topic, -1), result.absorbed)
        if result.max_ts > stats.watermark:
            stats.watermark = result.max_ts
            self._expire(stats)
            key = watermark_key(stats.partition)
            self.changelog.put_first([(key, orjson.dumps(stats.watermark))])
        if self.changelog.fits():
            self.changelog.seal()
        else:
            self.changelog.seal(self._split(stats.partition, result, before, sizes))

    def _expire(self, stats: PartitionStats) -> None:
        """Windows past ``expires_seconds`` behind the watermark leave the mirror and the
        table, their tombstones in the run's changelog batch (a split run: in the last
        batch for the windows it wrote, in batches ahead of its own for the rest,
        :meth:`_split`)."""
        cutoff = stats.watermark - self.config.windows.expires_seconds - self.window_size
        gone = []
        for exp, exp_windows in stats.windows.items():
            for start in [s for s in exp_windows if s < cutoff]:
                stats.put_window(exp, start, exp_windows[start], None)
                gone.append((window_key(exp, stats.partition, start), None))
        if gone:
            self.changelog.put_first(gone)

    def _split(
        self,
        partition: int,
        result: BatchResult,
        before: Mapping[tuple[str, float], WindowMoments | None],
        sizes: Mapping[tuple[str, float], int],
    ) -> list[Records]:
        """The run's changelog records in batches that each fit one producer batch, for a
        run too large for one (a fetch of a backlog writes up to ~1.3 MiB).

        The run's unit records are cut into groups, in order. Batch ``j`` holds group ``j``
        and the windows its units' entries fall in, each as it stands with the entries of
        groups ``0..j`` in. A crash after any batch therefore leaves every window holding
        exactly the events of the unit records recovered, and the redelivery, which the
        unit records let through for the lost units only, fills the windows as the
        uninterrupted run did (as exactly as after a crash between runs: README "State
        and exactness"). The last batch also carries the
        watermark and the tombstones of the windows the run both wrote and expired (after
        its window records: a window the run expires must end deleted); before it, the
        recovered watermark is the one the run judged lateness by. The tombstones of the
        windows the run expired without writing them go ahead, in batches of their own.
        A window's record in the batch of the last group that touches it is its final
        record, the one a run written whole sends.
        """
        first, units = self.changelog.run()
        written = {window_key(exp, partition, start) for exp, start in sizes}
        # the watermark and the tombstones of windows the run wrote (after their records);
        # the window records are rebuilt per batch
        tail = [
            (k, v) for k, v in first if parse_window_key(k) is None or (v is None and k in written)
        ]
        # the tombstones of the windows the run expired without writing them go ahead of
        # the run's batches, in batches of their own (take joins them to the next one when
        # they fit). In the last batch, a mass expiry (a watermark jump past
        # expires_seconds: every live window of every experiment) could fill it past a
        # producer batch, which flush would send in several, a crash between them keeping
        # window records without their units. Deleted early, a window the run leaves alone
        # is deleted as the whole run deletes it: a redelivery, judged by the watermark
        # before the run, touches it no more than the run did
        expired: Records = [(k, v) for k, v in first if v is None and k not in written]
        # aiokafka's C builder refuses a record that would bring the batch to its size
        limit = self.changelog.batch_bytes - 1
        keys, values = [k for k, _ in units], [v for _, v in units]
        unit_ids = [k.decode() for k in keys]
        unit_bytes = record_bytes(b"", b"") + (
            np.fromiter(map(len, keys), np.int64, len(units))
            + np.fromiter(map(len, values), np.int64, len(units))
        )
        #: per experiment, the window start of each exposure row and each event row
        starts = {exp: b.window_starts() for exp, b in result.experiments.items()}
        free = limit - batch_bytes(tail)
        for slack in (2, 4, 8):
            # a window record part-way through the run holds other numbers than its final
            # one: it is reckoned at ``slack`` times the final record's bytes
            cost = {w: self._window_overhead + slack * n for w, n in sizes.items()}
            reserve = sum(cost.values())
            if reserve <= free // 2:
                # each batch keeps room for every window the run touched
                ends = batch_ends(unit_bytes, free - reserve)
            else:
                # so many windows that such room would leave few units a batch (one, past
                # the whole batch): room for the windows each group's units touch
                ends = _ends_by_windows(unit_ids, unit_bytes, result, starts, cost, free)
            group = np.repeat(np.arange(len(ends)), np.diff(ends, prepend=0)).tolist()
            group_of = dict(zip(unit_ids, group, strict=True))
            #: per experiment, each exposure and event row's window start and unit's group
            rows: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
            for exp, b in result.experiments.items():
                e_group = np.fromiter(map(group_of.__getitem__, b.exposure_unit), np.intp)
                t_group = np.fromiter(map(group_of.__getitem__, b.event_unit), np.intp)
                rows[exp] = (*starts[exp], e_group, t_group)
            final = dict(first)
            batches: list[Records] = []
            sizes_ok = True
            for g, (lo, hi) in enumerate(zip([0, *ends], ends, strict=False)):
                batch = self._windows_of_group(partition, result, before, rows, g, final)
                if hi == len(units):
                    batch.extend(tail)
                size = batch_bytes(batch) + int(unit_bytes[lo:hi].sum())
                sizes_ok = sizes_ok and size <= limit
                batch.extend(units[lo:hi])
                batches.append(batch)
            if sizes_ok:
                break
        if expired:
            gone = np.fromiter((record_bytes(k, v) for k, v in expired), np.int64, len(expired))
            ends = batch_ends(gone, limit - batch_bytes([]))
            batches[:0] = [expired[lo:hi] for lo, hi in zip([0, *ends], ends, strict=False)]
        return batches

    def _windows_of_group(
        self,
        partition: int,
        result: BatchResult,
        before: Mapping[tuple[str, float], WindowMoments | None],
        rows: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
        group: int,
        final: Mapping[bytes, bytes | None],
    ) -> Records:
        """The records of the windows group ``group``'s entries fall in, each with the
        entries of groups ``0..group`` in: a window no later group touches has its final
        record (in ``final``, unless the run expired it), any other is computed."""
        records: Records = []
        for exp, b in result.experiments.items():
            e_start, t_start, e_group, t_group = rows[exp]
            here = np.union1d(e_start[e_group == group], t_start[t_group == group])
            later = np.union1d(e_start[e_group > group], t_start[t_group > group])
            compute = []
            for start in here.tolist():
                key = window_key(exp, partition, start)
                value = final.get(key) if start not in later else None
                if value is None:
                    compute.append(start)
                else:
                    records.append((key, value))
            if not compute:
                continue
            e_rows = (e_group <= group) & np.isin(e_start, compute)
            t_rows = (t_group <= group) & np.isin(t_start, compute)
            agg = self.window_aggs[exp]
            for start, events in b.window_runs(e_rows, t_rows):
                moments = agg.update(before[(exp, start)] or agg.initialize(), events)
                records.append((window_key(exp, partition, start), encode_window(moments)))
        return records

    # -- publishing ---------------------------------------------------------------------

    def snapshots(self) -> list[Partial]:
        """Snapshots of changed experiments, at each publish (streams.pacing).

        Only the current and previous window travel: the evaluator exports the last
        complete one, and a snapshot of every window up to expiry would grow the partials
        topic by hundreds of windows a second.
        """
        out = []
        for stats in self.stats.values():
            recent = stats.watermark - 2 * self.window_size
            for exp in sorted(stats.dirty):
                windows = {s: w for s, w in stats.windows[exp].items() if s >= recent}
                unit_stats = stats.stats(exp, self.aggs[exp])
                out.append(Partial(exp, stats.partition, stats.seq, unit_stats, windows))
            stats.dirty.clear()
        return out


def _ends_by_windows(
    unit_ids: Sequence[str],
    unit_bytes: np.ndarray,
    result: BatchResult,
    starts: Mapping[str, tuple[np.ndarray, np.ndarray]],
    cost: Mapping[tuple[str, float], int],
    free: int,
) -> list[int]:
    """Where to cut a run's unit records (``unit_ids``, in order) so that each group fits
    ``free`` bytes with the records of the windows its units' entries fall in, each
    window at its ``cost`` (Ingest._split). One Python step per entry: for a run that
    touches too many windows to keep room for all of them in every batch."""
    windows_of: dict[str, set[tuple[str, float]]] = {}
    for exp, b in result.experiments.items():
        e_start, t_start = starts[exp]
        for unit, start in zip(b.exposure_unit, e_start.tolist(), strict=True):
            windows_of.setdefault(unit, set()).add((exp, start))
        for unit, start in zip(b.event_unit, t_start.tolist(), strict=True):
            windows_of.setdefault(unit, set()).add((exp, start))
    ends: list[int] = []
    used, seen = 0, set[tuple[str, float]]()
    for i, unit in enumerate(unit_ids):
        windows = windows_of.get(unit, set())
        more = int(unit_bytes[i]) + sum(cost[w] for w in windows - seen)
        if used and used + more > free:
            ends.append(i)
            used, seen = 0, set()
            more = int(unit_bytes[i]) + sum(cost[w] for w in windows)
        used += more
        seen |= windows
    return [*ends, len(unit_ids)]
