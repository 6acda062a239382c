"""Window records: kept in the units table, beside the unit records they summarise.

A window record holds one tumbling window's event moments and exposures for one experiment
and source partition, and the per-topic offsets it has absorbed. It lives in the units
table, under a key no unit can have, so that a run's window records and its unit records
go to the changelog in the same aiokafka batch, which the broker appends whole: recovery
finds both or neither (``streams.changelog``; a run too large for one batch puts its
window records in the first, README "State and exactness"). So does the partition's watermark, the
newest event time its runs have seen: lateness and window expiry are judged against it,
and a worker that recovered the records without it judged a redelivery's events as on
time that the uninterrupted worker had found late.

Why: in a table of their own (``windows-v2``) the window records had a changelog topic of
their own, written through Faust's buffered send. A crash could keep a run's unit records
and lose its window update, which the redelivered events could then never repair (the
unit records skip them as absorbed); and on the bundled broker the windows changelog's
tail was not recovered at all. A crash that kept the window record and lost the unit
records counted telemetry twice when the redelivery reordered the topics: released from a
unit's pending list under its exposure's offset the first time, attributed under its own
offset the second.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import orjson

from monitor.aggregation import WindowMoments
from monitor.moments import MomentArray

__all__ = [
    "WATERMARK_KEY_PREFIX",
    "WINDOW_KEY_PREFIX",
    "decode_window",
    "encode_window",
    "is_unit_key",
    "parse_watermark_key",
    "parse_window_key",
    "watermark_key",
    "window_key",
]

#: the first byte of every window key. Unit keys are a unit id's UTF-8, in which the byte
#: 0xFF never occurs, so no unit id can collide with a window
WINDOW_KEY_PREFIX = b"\xff"
#: the first byte of a partition's watermark key: 0xFE never occurs in UTF-8 either
WATERMARK_KEY_PREFIX = b"\xfe"


def is_unit_key(key: bytes) -> bool:
    """Whether a units-table key is a unit's (not a window's or a watermark's)."""
    return not key.startswith((WINDOW_KEY_PREFIX, WATERMARK_KEY_PREFIX))


def window_key(experiment: str, partition: int, start: float) -> bytes:
    """The table key of a window record. The partition is part of it: one worker's store
    holds every partition it owns, and rebuilding a partition reads only its own."""
    return WINDOW_KEY_PREFIX + orjson.dumps([experiment, partition, start])


def parse_window_key(key: bytes) -> tuple[str, int, float] | None:
    """(experiment, partition, window start) of a window key; None for a unit's key."""
    if not key.startswith(WINDOW_KEY_PREFIX):
        return None
    experiment, partition, start = orjson.loads(key[len(WINDOW_KEY_PREFIX) :])
    return str(experiment), int(partition), float(start)


def watermark_key(partition: int) -> bytes:
    return WATERMARK_KEY_PREFIX + str(partition).encode()


def parse_watermark_key(key: bytes) -> int | None:
    """The partition of a watermark key; None for any other key."""
    if not key.startswith(WATERMARK_KEY_PREFIX):
        return None
    return int(key[len(WATERMARK_KEY_PREFIX) :])


def encode_window(offsets: Mapping[str, int], moments: WindowMoments) -> bytes:
    return orjson.dumps(
        {
            "offsets": dict(offsets),
            "exposures": moments.exposures.tolist(),
            "events": moments.events.to_wire(),
        }
    )


def decode_window(raw: bytes) -> tuple[dict[str, int], WindowMoments]:
    """The window's per-topic applied offsets and its moments."""
    doc = orjson.loads(raw)
    events = MomentArray.from_wire(doc["events"])
    return doc["offsets"], WindowMoments(events, np.asarray(doc["exposures"], np.int64))
