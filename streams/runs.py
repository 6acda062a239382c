"""Record runs: one Faust message per fetched run of a source partition's records.

Why: Faust delivers every Kafka record as its own message. Its consumer awaits
``wait_first(callback(message), suspend_flow.wait())`` once per record, which costs about
500 Python calls, three event-loop turns and four asyncio tasks, some 220 us of CPU per
record whatever the agent does (``../shared/MEASUREMENTS.md``; our own profile in
``bench/results/profile-1-summary.txt``). ``stream.take()`` batches *after* that path, so
it cannot help. The client underneath has already fetched the records in batches.

So the consumer hands Faust each partition's fetched records as one :class:`RunMessage`
(offset = the run's last offset; ``records`` = the run), and the agent processes the run
in one call. Everything else stays Faust's: the consumer group, the rebalance protocol,
flow control, table changelogs and recovery, and the commit of acked offsets. To Faust's
offset bookkeeping a run is a message followed by a jump in offsets, as on a compacted
topic: ``Consumer._drain_messages`` records the skipped offsets as a gap
(``Consumer._add_gap``) and ``Consumer._new_offset`` counts gaps as acked, so the commit
after a run is its last offset + 1, as if its records had come one by one
(``tests/integration/test_runs.py`` checks the committed offsets on the broker, from a
fresh group and after a restart).

Only the topics named in ``RunApp(run_topics=...)`` are delivered as runs; changelogs and
every other topic keep Faust's per-record path.

The same consumer takes its fetch long-poll from ``RunApp(fetch_max_wait_seconds=...)``:
Faust hard-codes aiokafka's ``fetch_max_wait_ms=1500``, which costs nothing on Apache
Kafka (the broker answers a waiting fetch as soon as a record arrives) but on the bundled
tansu broker delays every record that lands on an idle partition until the wait runs out
(README "Latency on the bundled broker").

Its consumer thread also seeks, once recovery ends, the partitions that aiokafka's
``seek_to_committed`` skips (no committed offset): by the reset policy, so the records
Faust dropped while recovering are read again (streams.seeking).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import faust
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from faust.types.tuples import ConsumerMessage

from streams.seeking import seek_to_committed_or_reset

__all__ = [
    "OneRecord",
    "Record",
    "RecordRun",
    "RunApp",
    "RunConsumer",
    "RunConsumerThread",
    "RunMessage",
    "records_of",
]


class Record(Protocol):
    """What the agent needs of a Kafka record (aiokafka's ``ConsumerRecord`` has it)."""

    @property
    def offset(self) -> int: ...

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes: ...


class OneRecord(NamedTuple):
    """A record outside a run, or in tests."""

    offset: int
    key: bytes | None
    value: bytes


class RecordRun:
    """Consecutive fetched records of one partition, shaped like the client's record."""

    __slots__ = ("offset", "partition", "records", "timestamp", "topic")

    timestamp_type = 0
    key = None
    value = b""
    checksum = None

    def __init__(self, records: Sequence[Any]) -> None:
        last = records[-1]
        self.topic: str = last.topic
        self.partition: int = last.partition
        self.offset: int = last.offset
        self.timestamp: int | None = last.timestamp
        # the client's records themselves: copying them costs more than the agent's work
        self.records: Sequence[Record] = records

    @property
    def serialized_key_size(self) -> int:
        return sum(len(r.key or b"") for r in self.records)

    @property
    def serialized_value_size(self) -> int:
        return sum(len(r.value) for r in self.records)


class RunMessage(ConsumerMessage):
    """A Faust message standing for a run of records; ``offset`` is the run's last."""

    __slots__ = ("records",)

    records: Sequence[Record]


def records_of(message: Any) -> Sequence[Record]:
    """The records a delivered message stands for: the run's, or the message itself."""
    if isinstance(message, RunMessage):
        return message.records
    return [OneRecord(message.offset, message.key, message.value)]


class RunConsumer(aiokafka_driver.Consumer):
    """Faust's aiokafka consumer, delivering each fetched run of a run topic as one message."""

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        fetched: Mapping[TP, list[Any]] = await super()._getmany(active_partitions, timeout)
        topics: frozenset[str] = getattr(self.app, "run_topics", frozenset())
        if not topics:
            return fetched
        return {
            tp: [RecordRun(records)] if tp.topic in topics and len(records) > 1 else records
            for tp, records in fetched.items()
        }

    def _new_consumer_thread(self) -> RunConsumerThread:
        return RunConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def _to_message(self, tp: TP, record: Any) -> ConsumerMessage:
        if not isinstance(record, RecordRun):
            return super()._to_message(tp, record)
        message = RunMessage(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp / 1000.0 if record.timestamp is not None else None,  # type: ignore[arg-type]
            record.timestamp_type,
            [],
            None,
            b"",
            None,
            record.serialized_key_size,
            record.serialized_value_size,
            tp,
            generation_id=self.app.consumer_generation_id,
        )
        message.records = record.records
        return message


class RunConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread, with the app's fetch long-poll instead of Faust's 1.5 s,
    and a seek after recovery that covers partitions with no committed offset
    (streams.seeking)."""

    async def seek_to_committed(self) -> Mapping[TP, int]:
        return await self.call_thread(
            seek_to_committed_or_reset,
            self._ensure_consumer(),
            self.app.conf.consumer_auto_offset_reset,
            leave=self.app.tables.changelog_topics,
        )

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait: float | None = getattr(self.app, "fetch_max_wait_seconds", None)
        if wait is not None:
            # Faust passes no way to set it; aiokafka hands this to its Fetcher in start()
            if not hasattr(consumer, "_fetch_max_wait_ms"):
                raise RuntimeError("aiokafka's consumer no longer has _fetch_max_wait_ms")
            consumer._fetch_max_wait_ms = max(1, round(wait * 1000))
        return consumer


class RunTransport(aiokafka_driver.Transport):
    Consumer = RunConsumer


class RunApp(faust.App):
    """A Faust app whose consumer delivers ``run_topics`` as record runs and long-polls
    fetches for at most ``fetch_max_wait_seconds`` (``None``: Faust's 1.5 s)."""

    def __init__(
        self,
        *args: Any,
        run_topics: Iterable[str] = (),
        fetch_max_wait_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.run_topics = frozenset(run_topics)
        self.fetch_max_wait_seconds = fetch_max_wait_seconds
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        return RunTransport(self.conf.broker_consumer, self)
