"""A worker's local table copies (RocksDB) start empty: the changelog is the tables' truth.

Faust's RocksDB store writes each table write to the local database at once, and the
changelog batch that carries it is sent after the run (:mod:`streams.changelog`). Within one
process the two meet again: a batch that cannot be delivered makes the worker exit
(:mod:`streams.acks`). But a process that ends between a run's local writes and their
delivery (that exit, a SIGKILL, an OOM kill) leaves a database ahead of the changelog, and
Faust, started again on the same data dir (docker-compose's ``restart: unless-stopped``,
a Kubernetes ``emptyDir``), reads the changelog only past the offset the database holds.
The restarted worker would then find the lost run's unit records, skip its redelivery as
already absorbed and commit it, and the changelog would never get those records: every
later owner of the partition, which recovers from the changelog alone, would lack them.
(Its own windows could lack the run too: the database takes a run's records one key at a
time.)

So a starting worker discards its local copies and recovers every table from the
changelog, as the memory store always does. A restart costs that recovery, a replay of
the compacted changelog; RocksDB still bounds the memory a million units take. (Keeping the
copies after a clean stop alone would need a marker written once every run's writes are
delivered: not built.)
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

__all__ = ["discard_local_tables"]

log = logging.getLogger("rampmon")


def discard_local_tables(tabledir: Path) -> bool:
    """Remove the table databases under ``tabledir`` (Faust's ``app.conf.tabledir``) before
    the worker opens them; True if there were any."""
    if not tabledir.exists():
        return False
    shutil.rmtree(tabledir)
    log.info("discarded the local table copies in %s: recovering from the changelog", tabledir)
    return True
