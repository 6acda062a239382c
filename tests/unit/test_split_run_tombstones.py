"""A split run that expires many windows: its expiry tombstones must not overflow a batch.

``Ingest._split`` puts every expiry tombstone in the run's last batch, with the
watermark, and plans the other batches to leave room for them; but when the tombstones
alone take most of a batch, the last batch comes out larger than the producer's batch.
The batcher's flush then sends it in several aiokafka batches, and the first holds the
last group's window records (with that group's entries in) while a later one holds the
group's unit record: a crash between them keeps the windows and loses the unit, whose
redelivered events the windows then take twice. A quiet hour before a run (a watermark
jump past ``expires_seconds``) expires every live window of every experiment at once.
"""

from __future__ import annotations

import numpy as np
import orjson

from streams.changelog import batch_bytes, batch_ends, record_bytes
from streams.producer import partition_of
from streams.runs import OneRecord
from tests.unit.test_crash_replay import (
    EXPERIMENT,
    _exposure,
    _ingest,
    _recovered,
    _Table,
    _windows_config,
)

BATCH = 8192
CONFIG = _windows_config(size_seconds=1.0, expires_seconds=1000.0, allowed_lateness_seconds=1000.0)


def _units(n: int) -> list[str]:
    ids = (f"u{i}" for i in range(100 * n))
    return [u for u in ids if partition_of(u, 4) == 0][:n]


def _runs() -> list[list[OneRecord]]:
    units = _units(400)
    # 300 live windows, then a run 5,000 s later: it expires all of them
    first = [_exposure(units[i], ts=1e9 + i) for i in range(300)]
    later = [_exposure(u, ts=1e9 + 5000) for u in units[300:]]
    return [[OneRecord(0, None, orjson.dumps(first))], [OneRecord(1, None, orjson.dumps(later))]]


def _sent(batch: list[tuple[bytes, bytes | None]]) -> list[list[tuple[bytes, bytes | None]]]:
    """A planned batch as the producer sends it: in as many batches as its bytes take
    (ChangelogBatcher._send_records, which logs an error when there are several)."""
    sizes = np.array([record_bytes(k, v) for k, v in batch], np.int64)
    ends = batch_ends(sizes, BATCH - 61 - 1)
    return [batch[lo:hi] for lo, hi in zip([0, *ends], ends, strict=False)]


def test_a_split_run_that_expires_many_windows_keeps_every_batch_within_the_batch_size() -> None:
    live = _ingest(_Table(), CONFIG, changelog_batch_bytes=BATCH)
    for run in _runs():
        live.process_run("x", 0, run)
        batches = live.changelog.take()
        assert all(batch_bytes(b) < BATCH for b in batches), [batch_bytes(b) for b in batches]


def test_a_crash_inside_a_split_run_that_expires_many_windows_is_exact() -> None:
    whole = _ingest(_Table(), CONFIG)
    for run in _runs():
        whole.process_run("x", 0, run)
    want = {
        s: w.exposures.tolist() for s, w in whole.partition_stats(0).windows[EXPERIMENT].items()
    }

    live = _ingest(_Table(), CONFIG, changelog_batch_bytes=BATCH)
    first, later = _runs()
    live.process_run("x", 0, first)
    log = [b for planned in live.changelog.take() for b in _sent(planned)]
    live.process_run("x", 0, later)
    sent = [b for planned in live.changelog.take() for b in _sent(planned)]
    for k in range(1, len(sent)):  # a crash after each batch the producer sent
        second = _ingest(_recovered(log + sent[:k]), CONFIG)
        second.process_run("x", 0, later)  # redelivered
        got = second.partition_stats(0).windows[EXPERIMENT]
        assert {s: w.exposures.tolist() for s, w in got.items()} == want, k
