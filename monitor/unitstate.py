"""Per-unit state: the single source of truth for unit-level statistics.

A unit's record holds its assignment per experiment (variant, stage, exposure time and the
running value of every metric) and the highest source offsets it has absorbed per topic.
Because the record and its offsets are written as one table value, a replayed message can
be recognised and skipped exactly, unit by unit (see :mod:`monitor.attribution`).

Records are msgpack-encoded msgspec structs (array-like, so field names are not repeated in
every record): about 45 bytes plus 9 bytes per metric value and covariate, plus 14 bytes per
telemetry event inside the deduplication horizon (12 once a unit keeps more than
:data:`PACK_ABOVE` and packs them).
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from operator import itemgetter

import msgspec

__all__ = [
    "PACK_ABOVE",
    "STATE_VERSION",
    "Assignment",
    "PendingEvent",
    "UnitState",
    "decode_unit",
    "decode_units",
    "encode_unit",
    "encode_units",
    "recent_events",
]

#: bump when the meaning of a field changes, or a table's keys gain a kind of record; it is
#: part of the table names. v3: the window records moved into the units table
#: (streams.windowrecords), which a v2 worker would read as unit records
STATE_VERSION = "v3"


class Assignment(msgspec.Struct, array_like=True, gc=False):
    """A unit's assignment in one experiment.

    ``covariates`` (pre-exposure, for CUPED) and ``segments`` (slot per declared segment
    attribute) are fixed at the first exposure; ``values`` move as telemetry arrives.
    """

    variant: int
    stage: int
    exposed_at: float
    values: list[float]
    covariates: list[float] = msgspec.field(default_factory=list)
    segments: list[int] = msgspec.field(default_factory=list)


class PendingEvent(msgspec.Struct, array_like=True, gc=False):
    """Telemetry that arrived before any exposure of its unit was processed."""

    ts: float
    metric: str
    value: float
    experiment: str | None = None
    variant: str | None = None


class UnitState(msgspec.Struct, array_like=True):
    partition: int
    exposure_offset: int = -1
    telemetry_offset: int = -1
    assignments: dict[str, Assignment] = msgspec.field(default_factory=dict)
    pending: list[PendingEvent] = msgspec.field(default_factory=list)
    #: the resend ids as records were first written, (crc32 of event_id, event time)
    #: pairs: decode_unit moves them to the lists below and records are written with it empty
    recent: list[tuple[int, float]] = msgspec.field(default_factory=list)
    #: the crc32 of the event_id and the event time of the unit's recent telemetry, in
    #: event-time order (ties: arrival order), for producer-resend deduplication
    #: (:meth:`seen`). Kept as two lists while they are short; a unit keeping more than
    #: :data:`PACK_ABOVE` keeps them packed in ``seen_ids``/``seen_ts`` instead, the lists
    #: empty (never both). Trailing fields with defaults, so records written before them
    #: decode unchanged
    recent_ids: list[int] = msgspec.field(default_factory=list)
    recent_ts: list[float] = msgspec.field(default_factory=list)
    #: packed: each crc32 a little-endian uint32, each time a little-endian float64
    seen_ids: bytes = b""
    seen_ts: bytes = b""

    def seen(self, key: int, ts: float, horizon: float, most: int) -> bool:
        """True if ``key``, the crc32 of an event id, is among the unit's recent ids. Else
        remember it at event time ``ts``, then forget the ids more than ``horizon`` seconds
        older than the newest event time and all but the newest ``most``."""
        if self.seen_ids:
            return self._seen_packed(key, ts, horizon, most)
        ids = self.recent_ids
        if key in ids:
            return True
        times = self.recent_ts
        if not times or ts >= times[-1]:
            ids.append(key)
            times.append(ts)
        else:
            at = bisect_right(times, ts)
            ids.insert(at, key)
            times.insert(at, ts)
        cutoff = times[-1] - horizon
        if times[0] < cutoff:
            drop = bisect_left(times, cutoff)
            del ids[:drop], times[:drop]
        if len(times) > most:
            drop = len(times) - most
            del ids[:drop], times[:drop]
        if len(times) > PACK_ABOVE:
            self.seen_ids, self.seen_ts = _packed(ids, times)
            self.recent_ids, self.recent_ts = [], []
        return False

    def _seen_packed(self, key: int, ts: float, horizon: float, most: int) -> bool:
        packed = _U32.pack(key)
        ids = self.seen_ids
        at = ids.find(packed)
        while at > 0 and at & 3:  # a match straddling two ids is not an id
            at = ids.find(packed, at + 1)
        if at >= 0:
            return True
        times = self.seen_ts
        newest = _F64.unpack_from(times, len(times) - 8)[0]
        if ts >= newest:
            newest = ts
            ids += packed
            times += _F64.pack(ts)
        else:
            at = bisect_right(_times(times), ts)
            ids = ids[: 4 * at] + packed + ids[4 * at :]
            times = times[: 8 * at] + _F64.pack(ts) + times[8 * at :]
        cutoff = newest - horizon
        if _F64.unpack_from(times)[0] < cutoff:
            drop = bisect_left(_times(times), cutoff)
            ids, times = ids[4 * drop :], times[8 * drop :]
        if len(ids) > 4 * most:
            drop = len(ids) // 4 - most
            ids, times = ids[4 * drop :], times[8 * drop :]
        if len(ids) > 2 * PACK_ABOVE:  # 4 bytes an id: more than half of PACK_ABOVE
            self.seen_ids, self.seen_ts = ids, times
        else:
            # back to lists, with hysteresis: a unit near the limit does not flip per event
            self.seen_ids, self.seen_ts = b"", b""
            self.recent_ids, self.recent_ts = _unpacked(ids, times)
        return False


#: a unit keeping more recent ids than this keeps them packed. Packed, a record decodes
#: and encodes in about the same time whatever number of ids it keeps; as lists of Python
#: ints and floats, a touch of a unit keeping 64 cost 2.4 times one keeping 2 (in
#: instructions, issue #6, 2026-12-03). Packed, it costs half. But a quiet unit's few ids
#: are cheaper as lists: a bytes search and a ``memoryview`` each cost more than a short
#: list's scan, and keeping every unit packed ran 1.063 of the hot path's instructions on
#: the throughput benchmark's quiet units, against 1.009 and 1.011 (two runs) with lists up
#: to 16.
PACK_ABOVE = 16

_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")

if sys.byteorder == "little":

    def _times(packed: bytes) -> Sequence[float]:
        return memoryview(packed).cast("d")

else:  # pragma: no cover - no big-endian machine runs the tests

    def _times(packed: bytes) -> Sequence[float]:
        out = array("d", packed)
        out.byteswap()
        return out


def _packed(ids: Sequence[int], times: Sequence[float]) -> tuple[bytes, bytes]:
    n = len(ids)
    return struct.pack(f"<{n}I", *ids), struct.pack(f"<{n}d", *times)


def _unpacked(ids: bytes, times: bytes) -> tuple[list[int], list[float]]:
    n = len(ids) // 4
    return list(struct.unpack(f"<{n}I", ids)), list(struct.unpack(f"<{n}d", times))


def recent_events(state: UnitState) -> list[tuple[int, float]]:
    """The (crc32, event time) pairs a record keeps for deduplication, oldest first,
    whether it keeps them as lists or packed."""
    packed = zip(*_unpacked(state.seen_ids, state.seen_ts), strict=True)
    return [*zip(state.recent_ids, state.recent_ts, strict=True), *packed]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(UnitState)


def encode_unit(state: UnitState) -> bytes:
    return _encoder.encode(state)


def decode_unit(raw: bytes) -> UnitState:
    return _migrated(_decoder.decode(raw))


def decode_units(raws: Iterable[bytes | None]) -> list[UnitState | None]:
    """:func:`decode_unit` of each record, None for a missing one, in one call: the hot
    path reads a run's records at once. Against a call per record: 1.19 instead of 1.61 us
    per record in a micro-benchmark, 0.991 of the hot path's instructions
    (``bench.instructions``, 2026-12-03)."""
    decode = _decoder.decode
    states = [decode(raw) if raw else None for raw in raws]
    for state in states:
        if state is not None and state.recent:
            _migrated(state)
    return states


def encode_units(states: Iterable[UnitState], scratch: bytearray) -> list[bytes]:
    """:func:`encode_unit` of each record, in one call. ``scratch``, a buffer its owner
    reuses from run to run (never from two threads at once), saves allocating and then
    shrinking a fresh 512-byte buffer per record: about a third of an encode's time on the
    worker's hot path."""
    into = _encoder.encode_into
    out = []
    for state in states:
        into(state, scratch)
        out.append(bytes(scratch))
    return out


def _migrated(state: UnitState) -> UnitState:
    if state.recent:
        # a record written with pairs, kept in event-time order only by later versions
        pairs = sorted(state.recent, key=itemgetter(1))
        state.recent_ids = [key for key, _ in pairs] + state.recent_ids
        state.recent_ts = [ts for _, ts in pairs] + state.recent_ts
        state.recent = []
    return state
