"""A run whose processing raises leaves no trace, and only the message that raises alone is
lost to the statistics: it becomes a dead letter (``processing_error``). The oracle is a
worker that never saw that message."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from faust.exceptions import ProducerSendError
from faust.types import TP

from streams.acks import RunAcks
from streams.changelog import Records
from streams.ingest import Ingest
from streams.ingestrun import ingest_run
from streams.producer import partition_of
from streams.runs import OneRecord
from tests.unit.test_crash_replay import (
    PARTITIONS,
    _assert_same_statistics,
    _ingest,
    _late_config,
    _messages,
    _recovered,
    _runs,
    _Table,
    _unit_records,
    _windows_of,
)

# lateness as long as the windows live: a run processed message by message then finds
# late exactly what the whole run would (none), and the oracle's windows are comparable
CONFIG = _late_config()


class Poisoned(Exception):
    pass


def _poison(worker: Ingest, topic: str, partition: int, offset: int, where: str) -> None:
    """Make ``worker`` raise on any run that holds that message, after the run wrote its
    unit records (``attribution``) or after it sealed its whole changelog batch
    (``sealed``): the worst places for a bug to strike."""
    apply = {"x": worker.attributor.apply_exposures, "t": worker.attributor.apply_telemetry}
    hit = {"now": False}

    def wrapped(kind: str) -> Callable[..., Any]:
        real = apply[kind]

        def apply_run(store: Any, part: int, offsets: Any, *rest: Any) -> Any:
            result = real(store, part, offsets, *rest)
            held = offsets if isinstance(offsets, list) else [offsets]
            hit["now"] = kind == topic and part == partition and offset in held
            if hit["now"] and where == "attribution":
                raise Poisoned(f"{topic}[{partition}]@{offset}")
            return result

        return apply_run

    worker.attributor.apply_exposures = wrapped("x")  # type: ignore[method-assign]
    worker.attributor.apply_telemetry = wrapped("t")  # type: ignore[method-assign]
    seal = worker._apply

    def apply_then_raise(stats: Any, run_topic: str, result: Any) -> None:
        seal(stats, run_topic, result)
        if hit["now"] and where == "sealed":
            raise Poisoned(f"{topic}[{partition}]@{offset}, after the seal")

    worker._apply = apply_then_raise  # type: ignore[method-assign]


def _drive(worker: Ingest, runs: list[Any]) -> tuple[list[Any], list[Records], int]:
    """The runs as the ingest agent hands them over (streams.ingestrun): a run that raises
    is isolated. The dead letters, every changelog batch, and how many runs raised."""
    rejected, batches, raised = [], [], 0
    for topic, p, run, _ in runs:
        try:
            rejected += worker.process_run(topic, p, run)
        except Poisoned:
            raised += 1
            rejected += worker.isolate(topic, p, run)
        batches += worker.changelog.take()
    return rejected, batches, raised


@pytest.mark.parametrize("where", ["attribution", "sealed"])
@pytest.mark.parametrize("topic", ["t", "x"])
def test_a_run_that_raises_leaves_no_trace_and_only_its_poison_message_is_dead_lettered(
    where: str, topic: str
) -> None:
    messages = _messages()
    runs = _runs(messages, seed=11)
    # a message in the middle of a run of several (the others of its run must still
    # count), late in the stream: telemetry after the exposures, so that it moves the
    # statistics rather than waiting as pending
    _, p, run, indices = [r for r in runs if r[0] == topic and len(r[2]) >= 3 and r[1] == 2][-1]
    poison = run[1]
    worker = _ingest(_Table(), CONFIG)
    _poison(worker, topic, p, poison.offset, where)
    rejected, batches, raised = _drive(worker, runs)
    assert raised == 1

    oracle = _ingest(_Table(), CONFIG)
    poisoned_at = indices[1]
    for topic_, p_, off, raw in messages[:poisoned_at] + messages[poisoned_at + 1 :]:
        oracle.process(topic_, p_, off, None, raw)
    _assert_same_statistics(oracle, worker)
    assert _unit_records(worker.units_table.data) == _unit_records(oracle.units_table.data)
    for q in range(PARTITIONS):
        mine, theirs = worker.stats[q], oracle.stats[q]
        assert (mine.seq, mine.watermark) == (theirs.seq, theirs.watermark)
    assert worker.last_offset == {
        (t, q): max(m[2] for m in messages if m[:2] == (t, q)) for t, q, _, _ in messages
    }
    # the poison mattered: a worker that took it holds other unit records
    full = _ingest(_Table(), CONFIG)
    for m in messages:
        full.process(m[0], m[1], m[2], None, m[3])
    assert _unit_records(full.units_table.data) != _unit_records(oracle.units_table.data)
    # the changelog carries no trace of the run's taken-back writes: a worker that
    # recovers the table from it holds exactly what this one holds
    assert _recovered(batches).data == worker.units_table.data

    errors = [(record, r) for record, r in rejected if r.reason == "processing_error"]
    assert [(record.offset, r.raw, r.index) for record, r in errors] == [
        (poison.offset, poison.value, None)
    ]
    assert "Poisoned" in errors[0][1].detail
    sample = worker.metrics.registry.get_sample_value
    labels = {"topic": topic, "reason": "processing_error"}
    assert sample("rampmon_dead_letters_total", labels) == 1
    # every message counted as processed once, the dead-lettered one included
    by_topic = sum(1 for m in messages if m[0] == topic)
    assert sample("rampmon_messages_processed_total", {"topic": topic}) == by_topic


def test_a_poisoned_last_message_leaves_its_partition_publishing_and_caught_up() -> None:
    """Found by review: dropping the partition's statistics after a run raised left them
    unbuilt until its next message, so a partition whose last message raised published
    nothing (its earlier runs missing from every readout), and its lag never reached 0."""
    messages = _messages()
    worker = _ingest(_Table(), CONFIG)
    runs = _runs(messages, seed=5)
    last = max(i for i, r in enumerate(runs) if len(r[2]) >= 2)
    for topic, p, run, _ in runs[:last]:
        worker.process_run(topic, p, run)
    worker.snapshots()  # everything so far published
    topic, p, run, _ = runs[last]
    worker.process_run(topic, p, run[:-1])  # a change not yet published
    poison = run[-1]
    _poison(worker, topic, p, poison.offset, "sealed")
    rebuilt: list[Any] = []
    worker.rebuild = rebuilt.append  # type: ignore[assignment,method-assign]
    stats = worker.stats[p]
    before = (dict(stats.offsets), stats.seq, stats.watermark, _windows_of(worker, p))
    with pytest.raises(Poisoned):
        worker.process_run(topic, p, [poison])
    worker.isolate(topic, p, [poison])
    # what the statistics absorbed: not the dead letter (a rebuild from the records would
    # not count it in seq either: the owner-change bug PartitionStats.seq describes)
    assert (stats.offsets, stats.seq, stats.watermark, _windows_of(worker, p)) == before
    assert worker.last_offset[(topic, p)] == poison.offset
    assert p in {partial.partition for partial in worker.snapshots()}
    assert rebuilt == []  # put back, not rebuilt by a scan of the whole table


def test_a_run_whose_every_message_raises_writes_nothing() -> None:
    messages = _messages()
    worker = _ingest(_Table(), CONFIG)
    runs = _runs(messages, seed=3)
    for topic, p, run, _ in runs[:5]:
        worker.process_run(topic, p, run)
    before = dict(worker.units_table.data)
    worker.changelog.take()
    topic, p, run, _ = runs[5]

    def broken(*_: Any) -> Any:
        raise Poisoned("every message")

    worker.attributor.apply_exposures = broken  # type: ignore[method-assign]
    worker.attributor.apply_telemetry = broken  # type: ignore[method-assign]
    with pytest.raises(Poisoned):
        worker.process_run(topic, p, run)
    rejected = worker.isolate(topic, p, run)
    assert [record.offset for record, _ in rejected] == [record.offset for record in run]
    assert {r.reason for _, r in rejected} == {"processing_error"}
    assert worker.units_table.data == before and worker.changelog.take() == []


# --- the agent's side (streams.ingestrun) --------------------------------------------------


class _Event:
    def __init__(self, topic: str, partition: int, offset: int, value: bytes) -> None:
        self.acks = 0
        self.message = SimpleNamespace(
            topic=topic, partition=partition, offset=offset, key=None, value=value,
            tp=TP(topic, partition),
        )  # fmt: skip

    def ack(self) -> bool:
        self.acks += 1
        return True


class _DeadLetters:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[dict[str, Any]] = []
        self.fail = fail

    async def send(self, *, key: bytes | None, value: bytes) -> asyncio.Future[Any]:
        if self.fail:
            raise ProducerSendError("queue full")
        self.sent.append(orjson.loads(value))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def test_the_agent_dead_letters_a_message_that_raises_acks_its_run_and_goes_on() -> None:
    async def scenario() -> None:
        worker = _ingest(_Table(), CONFIG)
        _poison(worker, "t", 0, 5, "attribution")
        unit = next(u for u in map("u{}".format, range(100)) if partition_of(u, PARTITIONS) == 0)
        event = _Event("t", 0, 5, orjson.dumps([{"event_id": "e", "ts": 1e9, "unit_id": unit,
                                                "metric": "tasks", "value": 1.0}]))  # fmt: skip
        worker.process_run("x", 0, [OneRecord(0, None, orjson.dumps([{
            "event_id": "x", "ts": 1e9 - 1, "experiment": "workflow_assistant",
            "unit_id": unit, "variant": "control"}]))])  # fmt: skip
        worker.changelog.take()
        lost: list[str] = []
        deadletter = _DeadLetters()
        acks = RunAcks(lost.append)
        await ingest_run(
            event, ingest=worker, producer=None, deadletter=deadletter, run_acks=acks,
            lost=lost.append,
        )  # fmt: skip
        await asyncio.sleep(0)
        assert [d["reason"] for d in deadletter.sent] == ["processing_error"]
        assert deadletter.sent[0]["source"] == {
            "topic": "t", "partition": 0, "offset": 5, "index": None,
        }  # fmt: skip
        assert event.acks == 1 and not lost

    asyncio.run(scenario())


def test_the_agent_reports_a_dead_letter_it_cannot_queue_as_a_lost_write() -> None:
    async def scenario() -> None:
        worker = _ingest(_Table(), CONFIG)
        event = _Event("t", 0, 0, b"not json")
        lost: list[str] = []
        acks = RunAcks(lambda reason: None)
        await ingest_run(
            event, ingest=worker, producer=None, deadletter=_DeadLetters(fail=True),
            run_acks=acks, lost=lost.append,
        )  # fmt: skip
        assert len(lost) == 1 and "was not delivered" in lost[0]

    asyncio.run(scenario())


def test_restore_undoes_a_window_the_run_both_filled_and_expired() -> None:
    """A run can fill a window and, having moved the watermark, expire it: the journal
    must be undone newest first."""
    worker = _ingest(_Table(), CONFIG)
    stats = worker.partition_stats(0)
    exp = next(iter(stats.windows))
    agg = worker.window_aggs[exp]
    kept = agg.initialize()
    stats.windows[exp][10.0] = kept
    saved = stats.saved()
    filled = agg.initialize()
    stats.put_window(exp, 20.0, None, filled)  # new
    stats.put_window(exp, 20.0, filled, None)  # and expired
    stats.put_window(exp, 10.0, kept, None)  # an old one expired
    stats.restore(saved)
    assert stats.windows[exp] == {10.0: kept}


def test_a_partition_whose_statistics_cannot_be_built_dead_letters_its_run_in_one_go() -> None:
    """Found by review: building the statistics comes first in every message, so if it
    raises (a corrupt record), isolating the run message by message scanned the whole
    table once a message."""
    messages = _messages()
    worker = _ingest(_Table(), CONFIG)
    topic, p, run, _ = next(r for r in _runs(messages, seed=2) if len(r[2]) >= 3)
    scans: list[Any] = []

    def corrupt(parts: Any) -> Any:
        scans.append(parts)
        raise Poisoned("a record that does not decode")

    worker.rebuild = corrupt  # type: ignore[assignment,method-assign]
    with pytest.raises(Poisoned):
        worker.process_run(topic, p, run)
    rejected = worker.isolate(topic, p, run)
    assert [(record.offset, r.reason) for record, r in rejected] == [
        (record.offset, "processing_error") for record in run
    ]
    assert len(scans) == 2  # the run's, and isolate's one try
    assert worker.last_offset[(topic, p)] == run[-1].offset
