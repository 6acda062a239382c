"""A worker restarted on its RocksDB data dir after a crash that lost changelog batches.

Faust's RocksDB store writes every ``table[key] = value`` to the local database at once;
the ChangelogBatcher queues the changelog batch beside it, and the store learns the
changelog offset it holds only once the batch is acked (``set_persisted_offset``). A
worker that dies with a run's batch unsent or lost (a SIGKILL, an OOM kill, or its own
exit 70, streams.acks) leaves that run's unit records in the local database. The
restarted worker (same container or pod, same data dir: docker-compose's
``restart: unless-stopped``, Kubernetes' ``emptyDir``) recovers by reading the changelog
*after the persisted offset* into that database, so the records stay; the redelivered
run is then skipped unit by unit as already absorbed, its offsets are committed, and
the changelog never gets the run's records. Every later owner of the partition, which
recovers from the changelog alone, lacks them for good (found by review). So the worker
discards its local copies when it starts (streams.localtables).
"""

from __future__ import annotations

import os
import subprocess
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import orjson
import pytest
from faust.streams import _current_event
from faust.types import TP

from streams.app import _raw_table
from streams.cli import discard_local_copies
from streams.runs import OneRecord
from streams.settings import Settings
from tests.unit.test_crash_replay import (
    EXPERIMENT,
    _exposure,
    _homes,
    _ingest,
    _recovered,
    _unit_records,
)


class _Event:
    """What Faust's RocksDB store reads of the event being processed: its partition."""

    def __init__(self, partition: int) -> None:
        self.message = SimpleNamespace(partition=partition)


def _worker(datadir: Path) -> tuple[Any, Any]:
    """A worker's units table on Faust's RocksDB store under ``datadir``, owning
    partition 0 (what a started app's assignor would say)."""
    app = faust.App("rampmon-restart", broker="kafka://127.0.0.1:1", store="rocksdb://",
                    datadir=str(datadir), autodiscover=False)  # fmt: skip
    table = _raw_table(app, "units", 4, {})
    topic = table.changelog_topic.get_topic_name()
    app.assignor.assigned_actives = lambda: {TP(topic, 0)}  # type: ignore[method-assign]
    return app, table


_FIRST_WORKER = """
import os, sys, weakref
import orjson
from faust.streams import _current_event
from streams.runs import OneRecord
from tests.unit.test_crash_replay import _exposure, _homes, _ingest
from tests.unit.test_rocksdb_restart import _Event, _worker
_, table = _worker(sys.argv[1])
_current_event.set(weakref.ref(event := _Event(0)))
here, _ = _homes(3, 0)
first = _ingest(table)
run = [OneRecord(i, None, orjson.dumps(_exposure(u))) for i, u in enumerate(here)]
first.process_run("x", 0, run)
first.changelog.take()  # handed to the producer, never delivered
os._exit(70)  # streams.acks.exit_on_lost: no shutdown
"""


def test_a_restart_on_the_rocksdb_data_dir_after_lost_batches_loses_no_unit_record(
    tmp_path: Path,
) -> None:
    here, _ = _homes(3, 0)
    run = [OneRecord(i, None, orjson.dumps(_exposure(u))) for i, u in enumerate(here)]
    event = _Event(0)
    token = _current_event.set(weakref.ref(event))  # type: ignore[arg-type]
    try:
        changelog: list[list[tuple[bytes, bytes | None]]] = []  # what the broker holds

        # a first worker processes the run; its changelog batch is never delivered, and
        # it exits as streams.acks.exit_on_lost does
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": root}
        died = subprocess.run([sys.executable, "-c", _FIRST_WORKER, str(tmp_path)], env=env,
                              cwd=root, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert died.returncode == 70, died.stderr

        # the restarted worker, started as the CLI starts it: it discards the database the
        # first one left, and recovers the changelog (nothing: nothing was ever acked)
        app, table = _worker(tmp_path)
        leftover = Path(app.conf.tabledir)
        assert any(leftover.iterdir())  # the first worker's database, ahead of the changelog
        discard_local_copies(Settings(store="rocksdb://", data_dir=tmp_path), app)
        assert table.data.persisted_offset(TP(table.changelog_topic.get_topic_name(), 0)) is None
        second = _ingest(table)
        second.process_run("x", 0, run)  # redelivered: its offsets were never committed
        changelog += second.changelog.take()  # delivered this time, and committed
        n = second.partition_stats(0).stats(EXPERIMENT, second.aggs[EXPERIMENT]).units.n
        assert int(n.sum()) == 3  # the restarted worker counts the run...

        # ... and so must the next owner of the partition, which recovers the changelog
        new_owner = _ingest(_recovered(changelog))
        assert len(_unit_records(new_owner.units_table.data)) == 3
        n = new_owner.partition_stats(0).stats(EXPERIMENT, new_owner.aggs[EXPERIMENT]).units.n
        assert int(n.sum()) == 3
    finally:
        _current_event.reset(token)


def test_only_the_rocksdb_store_discards_its_local_copies(tmp_path: Path) -> None:
    app, _ = _worker(tmp_path)
    tabledir = Path(app.conf.tabledir)
    tabledir.mkdir(parents=True)
    (tabledir / "units-0.db").mkdir()
    discard_local_copies(Settings(store="memory://", data_dir=tmp_path), app)
    assert (tabledir / "units-0.db").exists()
    discard_local_copies(Settings(store="rocksdb://", data_dir=tmp_path), app)
    assert not tabledir.exists() and tmp_path.exists()
    discard_local_copies(Settings(store="rocksdb://", data_dir=tmp_path), app)  # none: fine


def test_the_worker_command_discards_the_local_copies_before_faust_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wiring: ``rampmon worker`` with ``rocksdb://`` removes the tabledir a previous
    process left before the Faust worker is built (found by review: the tests above call
    the function directly)."""
    import faust

    from streams import cli, gctune

    monkeypatch.setenv("RAMPMON_STORE", "rocksdb://")
    monkeypatch.setenv("RAMPMON_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("RAMPMON_WEBHOOK_SECRET", "s" * 32)
    left = tmp_path / "v1" / "tables" / "units-0.db"
    left.mkdir(parents=True)
    seen: list[bool] = []

    class _Worker:
        def __init__(self, app: Any, **_: Any) -> None:
            seen.append(left.exists())

        def execute_from_commandline(self) -> None:
            seen.append(left.exists())

    monkeypatch.setattr(faust, "Worker", _Worker)
    monkeypatch.setattr(gctune, "tune", lambda *_: None)
    monkeypatch.setattr(cli, "dump_stacks_on_sigquit", lambda: None)
    assert cli.main(["worker"]) == 0
    assert seen == [False, False]
