"""The lag of the source partitions a worker holds, and where it counts from."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP
from prometheus_client import CollectorRegistry

from streams.app import build_app
from streams.cli import DEFAULT_CONFIG, load_config
from streams.metrics import Metrics
from streams.settings import Settings
from streams.sourcelag import LogStartReader, SourceLag

TOPICS = ("exposures", "telemetry")


def _source_lag(processed: dict[tuple[str, int], int], read: LogStartReader) -> SourceLag:
    metrics = Metrics(CollectorRegistry(), ["workflow_assistant"], source_topics=TOPICS)
    return SourceLag(TOPICS, processed, metrics, read)


async def _never_read(partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
    raise AssertionError(f"no log start should be read here: {partitions}")


def test_the_worker_counts_lag_from_the_offsets_its_ingest_processed() -> None:
    """The app's lag reads the ingest's processed offsets in place, as they move."""
    rampmon = build_app(Settings(webhook_secret="x" * 32), load_config(DEFAULT_CONFIG))
    settings = rampmon.settings
    assert rampmon.source_lag.topics == (settings.topic_exposures, settings.topic_telemetry)
    consumer = SimpleNamespace(
        assignment=lambda: {TP(settings.topic_telemetry, 0)},
        highwater=lambda tp: 100,
        _committed_offset={},
    )
    rampmon.ingest.last_offset[(settings.topic_telemetry, 0)] = 89
    assert rampmon.source_lag.lag(consumer) == {(settings.topic_telemetry, 0): 10}
    rampmon.ingest.revoke([0])
    assert rampmon.source_lag.lag(consumer) == {(settings.topic_telemetry, 0): None}
    assert rampmon.source_lag.metrics is rampmon.metrics


def test_the_lag_counts_held_partitions_not_yet_processed_from_their_commit() -> None:
    """A worker exports the lag of every source partition it holds. One it has processed
    nothing of since its assignment (stuck since a restart, say) counts from the group's
    committed offset: before, it counted as no lag, and RampmonProcessingStalled, which
    needs a lag, could never fire for it."""
    processed: dict[tuple[str, int], int] = {}
    source = _source_lag(processed, _never_read)
    marks = {TP("telemetry", 0): 100, TP("telemetry", 1): 50, TP("exposures", 0): 7}
    held = {*marks, TP("rampmon-partials", 0)}
    consumer = SimpleNamespace(
        assignment=lambda: held,
        highwater=marks.__getitem__,
        _committed_offset={TP("telemetry", 1): 20},
    )
    processed[("telemetry", 0)] = 89
    processed[("exposures", 0)] = 6
    lag = source.lag(consumer)
    assert lag == {("exposures", 0): 0, ("telemetry", 0): 10, ("telemetry", 1): 30}
    source.export(lag)
    value = source.metrics.registry.get_sample_value
    assert value("rampmon_consumer_lag_messages", {"topic": "telemetry"}) == 40
    assert value("rampmon_consumer_lag_messages", {"topic": "exposures"}) == 0
    assert value("rampmon_consumer_lag_unknown_partitions", {"topic": "telemetry"}) == 0
    # a partition not fetched yet (no high watermark): counted apart, not as no lag
    del marks[TP("telemetry", 1)]
    consumer.highwater = lambda tp: marks.get(tp)
    source.export(source.lag(consumer))
    assert value("rampmon_consumer_lag_messages", {"topic": "telemetry"}) == 10
    assert value("rampmon_consumer_lag_unknown_partitions", {"topic": "telemetry"}) == 1
    assert value("rampmon_consumer_lag_unknown_partitions", {"topic": "exposures"}) == 0


def test_a_new_groups_partitions_count_their_lag_from_the_log_start() -> None:
    """With no processed or committed offset, a held partition's lag counts from its log
    start, read every LOG_START_REFRESH_SECONDS: a log emptied by retention is caught up,
    not of unknown lag (the false RampmonLagUnknown of a new RAMPMON_APP_ID)."""
    # telemetry/0: expired (start = high watermark); /1: records from 40 on; /2: processed
    # already; /3: committed; exposures/0: the broker read fails until the second tick
    marks = {
        TP("telemetry", 0): 500, TP("telemetry", 1): 100, TP("telemetry", 2): 9,
        TP("telemetry", 3): 30, TP("exposures", 0): 7,
    }  # fmt: skip
    starts = {TP("telemetry", 0): 500, TP("telemetry", 1): 40, TP("exposures", 0): 0}
    asked: list[set[TP]] = []

    async def read_log_starts(partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        asked.append({TP(*tp) for tp in partitions})
        if len(asked) == 1:
            raise ConnectionError("broker away")
        return {tp: starts[TP(*tp)] for tp in partitions}

    processed: dict[tuple[str, int], int] = {}
    source = _source_lag(processed, read_log_starts)
    consumer = SimpleNamespace(
        assignment=lambda: set(marks),
        highwater=marks.__getitem__,
        _committed_offset={TP("telemetry", 3): 20},
    )
    processed[("telemetry", 2)] = 4
    unknown = {("telemetry", 0): None, ("telemetry", 1): None, ("exposures", 0): None}
    before = {("telemetry", 2): 4, ("telemetry", 3): 10}
    assert source.lag(consumer) == {**unknown, **before}
    asyncio.run(source.refresh_log_starts(consumer))
    assert source.lag(consumer) == {**unknown, **before}
    asyncio.run(source.refresh_log_starts(consumer))
    # only the partitions with no offset of their own were asked for, both times
    assert asked == [{TP("telemetry", 0), TP("telemetry", 1), TP("exposures", 0)}] * 2
    after = {("telemetry", 0): 0, ("telemetry", 1): 60, ("exposures", 0): 7}
    assert source.lag(consumer) == {**after, **before}
    source.export(source.lag(consumer))
    value = source.metrics.registry.get_sample_value
    assert value("rampmon_consumer_lag_unknown_partitions", {"topic": "telemetry"}) == 0
    assert value("rampmon_consumer_lag_messages", {"topic": "telemetry"}) == 74
    # once processed from, a partition's own offset counts, and its start is forgotten; an
    # expired log (start = high watermark) keeps its start and is not asked again, nor is
    # an empty one (high watermark 0) ever
    processed[("telemetry", 1)] = 99
    marks[TP("exposures", 1)] = 0
    asyncio.run(source.refresh_log_starts(consumer))
    assert asked[-1] == {TP("exposures", 0)}
    assert ("telemetry", 1) not in source.log_starts
    assert source.log_starts[("telemetry", 0)] == 500
    assert source.lag(consumer)[("telemetry", 1)] == 0
    assert source.lag(consumer)[("telemetry", 0)] == 0
    assert source.lag(consumer)[("exposures", 1)] == 0
    # new records on the expired log: its start is read again
    marks[TP("telemetry", 0)] = 520
    asyncio.run(source.refresh_log_starts(consumer))
    assert asked[-1] == {TP("telemetry", 0), TP("exposures", 0)}
    assert source.lag(consumer)[("telemetry", 0)] == 20
