"""Window records: kept in the units table, beside the unit records they summarise.

A window record holds one tumbling window's event moments and exposures for one experiment
and source partition. It lives in the units table, under a key no unit can have, and a
run writes it in the same aiokafka batch as the unit records whose events it took in,
which the broker appends whole: recovery finds both or neither. A run too large for one
batch is written in several, each with the window records as they stand once that
batch's units and the earlier batches' are in (``Ingest``), so that after a crash
between them the windows again hold exactly the events of the unit records recovered.
The redelivered events then enter the windows as they enter the unit records: once.
The partition's watermark, the newest event time its runs have seen, is a record of the
same table, written in a run's last batch: lateness and window expiry are judged against
it, and a worker that recovered the records without it judged a redelivery's events as
on time that the uninterrupted worker had found late.

Why: in a table of their own (``windows-v2``) the window records had a changelog topic of
their own, written through Faust's buffered send. A crash could keep a run's unit records
and lose its window update, which the redelivered events could then never repair (the
unit records skip them as absorbed); and on the bundled broker the windows changelog's
tail was not recovered at all. A crash that kept the window record and lost the unit
records counted telemetry twice when the redelivery reordered the topics: released from a
unit's pending list under its exposure's offset the first time, attributed under its own
offset the second. The first v3 workers put all of a split run's window records in its
first batch, and the windows skipped redelivered events by per-topic offsets of their
own; after a crash between the batches, a redelivery that reordered the topics made them
miss or repeat events.
"""

from __future__ import annotations

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


def encode_window(moments: WindowMoments) -> bytes:
    # "offsets" is what the first v3 workers filtered redelivered entries by. Empty,
    # it makes such a worker filter nothing, which is right now that a window record is
    # always in step with the unit records written with it
    return orjson.dumps(
        {
            "offsets": {},
            "exposures": moments.exposures.tolist(),
            "events": moments.events.to_wire(),
        }
    )


def decode_window(raw: bytes) -> WindowMoments:
    doc = orjson.loads(raw)
    events = MomentArray.from_wire(doc["events"])
    return WindowMoments(events, np.asarray(doc["exposures"], np.int64))
