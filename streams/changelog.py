"""One changelog batch per run of messages for a Faust table, not one send per key.

A Faust ``table[key] = value`` sends its changelog record through Faust's per-record
producer path (``Topic.send_soon`` -> buffer -> ``publish_message`` -> aiokafka ``send``):
about 100 us of Python per record, and a batched envelope touches dozens of units. The
profile in ``bench/results/profile-100-summary.txt`` puts that path at most of the worker.

:class:`ChangelogBatcher` writes the value into the table's store directly and appends
the record to one aiokafka batch per run (``streams.runs``), sent to the table's own
changelog topic and partition (the source partition, as Faust's ``use_partitioner=False``
tables do). Nothing else changes:

* recovery is Faust's: it replays the same changelog topic, same raw key and value bytes;
* ordering with offsets: before committing source offsets Faust flushes its producer
  (``Consumer._commit_offsets`` -> ``app.producer.flush()``), which flushes the aiokafka
  producer these batches go through. A flush does not fail when a batch does, so the
  ingest agent also acks a run only once the broker has every batch :meth:`flush`
  returned a future for (:mod:`streams.acks`). A committed offset then never runs ahead
  of the unit records it produced -- provided recovery reads them all back, which
  :func:`recover_tail` makes sure of on a broker that misreports end offsets;
* a persistent store (rocksdb) still learns the changelog offset it holds, as Faust's
  ``Table._on_changelog_sent`` would tell it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import MutableMapping, Sequence
from functools import cached_property
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
from faust.stores.memory import Store as MemoryStore
from faust.types import TP

__all__ = [
    "BATCH_BYTES",
    "TAIL_DEADLINE_SECONDS",
    "ChangelogBatcher",
    "Records",
    "batch_bytes",
    "batch_ends",
    "kafka_producer",
    "record_bytes",
    "recover_tail",
]

log = logging.getLogger("rampmon")

#: how long recovery waits for a changelog partition's highwater record before it gives up
TAIL_DEADLINE_SECONDS = 120.0
#: bytes of records the producer batches per partition. aiokafka's default (16 KiB) holds one
#: snapshot (12-40 KiB), and a partition's next batch waits until the last one is acked: 80
#: snapshots of 12 KiB to 4 partitions took 48-59 ms on an idle tansu, 9-10 ms with 512 KiB.
#: A batch is appended whole, and a full fetch (1 MiB a partition) writes about 1.3 MiB of
#: unit and window records, so the larger the batch, the fewer runs are written in two
#: (``Ingest`` plans those). Below the producer's request limit, and so below Kafka's
#: default message.max.bytes (1 MiB + 12)
BATCH_BYTES = 960 * 1024
#: a v2 record batch's header (aiokafka's ``DefaultRecordBatchBuilder.HEADER_STRUCT``)
_BATCH_HEADER_BYTES = 61
#: the most a v2 record adds to its key and value in a batch below 1 MiB: attributes (1),
#: timestamp delta (1: a batch's records share one timestamp), offset delta, key length,
#: value length and record length (zigzag varints, at most 3 bytes below 1 MiB), header
#: count (1). The conservative 32 of a record with any timestamp split 10 to 13 of the
#: throughput bench's runs, where aiokafka's own sizes split 8 or 9
_RECORD_OVERHEAD_BYTES = 15
#: zigzag varints of at most 3 bytes hold lengths and offset deltas below this
_MAX_BATCH_BYTES = 1 << 20

Records = list[tuple[bytes, bytes | None]]


def batch_bytes(records: Sequence[tuple[bytes, bytes | None]]) -> int:
    """An upper bound on the bytes of one v2 batch holding ``records``: aiokafka's builder
    takes them in one batch if this is below its batch size (its C builder refuses a
    record that would bring the batch to the size itself; the Python one, above it)."""
    return (
        _BATCH_HEADER_BYTES
        + _RECORD_OVERHEAD_BYTES * len(records)
        + sum(len(k) + len(v or b"") for k, v in records)
    )


def batch_ends(sizes: np.ndarray, room: int) -> list[int]:
    """Where to cut items of these sizes, in order, into batches of at most ``room``
    bytes, each as full as it can be: the end index of each batch. An item larger than
    ``room`` has a batch of its own; no items make one empty batch (``[0]``)."""
    if sizes.size == 0:
        return [0]
    total = np.cumsum(sizes)
    ends, start = [], 0
    while start < sizes.size:
        before = int(total[start - 1]) if start else 0
        end = max(int(np.searchsorted(total, before + room, side="right")), start + 1)
        ends.append(end)
        start = end
    return ends


def record_bytes(key: bytes, value: bytes | None) -> int:
    """An upper bound on what one record adds to a batch (:func:`batch_bytes`)."""
    return _RECORD_OVERHEAD_BYTES + len(key) + len(value or b"")


def kafka_producer(app: Any) -> Any:
    """The aiokafka producer behind Faust's aiokafka transport: the one Faust flushes
    before it commits offsets (``faust.transport.drivers.aiokafka.Producer``)."""
    return app.producer._ensure_producer()


class ChangelogBatcher:
    def __init__(self, table: Any, batch_bytes: int = BATCH_BYTES) -> None:
        if not 0 < batch_bytes < _MAX_BATCH_BYTES:
            raise ValueError(f"batch_bytes {batch_bytes} is not below {_MAX_BATCH_BYTES}")
        self.table = table
        self.batch_bytes = batch_bytes
        self._first: dict[bytes, bytes | None] = {}
        self._pending: dict[bytes, bytes] = {}
        #: the batches of ended runs, not yet sent
        self._sealed: list[Records] = []
        #: since :meth:`begin`: each key written, with its value before (None: absent),
        #: and how many batches were sealed then (:meth:`rollback`)
        self._undo: dict[bytes, bytes | None] = {}
        self._sealed_at_begin = 0

    @property
    def topic(self) -> str:
        return str(self.table.changelog_topic.get_topic_name())

    @cached_property
    def mapping(self) -> MutableMapping[bytes, bytes]:
        """The table's store. A write straight to it, not through :meth:`put`, sends
        nothing to the changelog."""
        # Faust creates a table's store once. Its memory store is a dict behind mode's
        # Python-level mapping, whose get() runs __getitem__ and raises and catches KeyError
        # for every unit not seen yet: two calls per unit touch, read straight from the dict
        store = self.table.data
        return store.data if isinstance(store, MemoryStore) else store

    def begin(self) -> None:
        """A run starts: what it writes from now on, :meth:`rollback` can take back."""
        self._undo = {}
        self._sealed_at_begin = len(self._sealed)

    def rollback(self) -> None:
        """Take back every write since :meth:`begin`, in the store and in the batches not
        yet sent: the store holds what it held before, and nothing of it reaches the
        changelog. For a run that raised half-way (streams.ingest)."""
        # the batches first: a store that fails half-way must not leave them to be sent
        self._first, self._pending = {}, {}
        del self._sealed[self._sealed_at_begin :]
        undo, self._undo = self._undo, {}
        mapping = self.mapping
        for key, value in undo.items():
            if value is None:
                mapping.pop(key, None)
            else:
                mapping[key] = value

    def _remember(self, keys: Sequence[bytes]) -> None:
        """The values ``keys`` have before their first write since :meth:`begin`."""
        undo, get = self._undo, self.mapping.get
        if not undo:
            # a run's unit records, its first writes: one pass in C
            undo.update(zip(keys, map(get, keys), strict=True))
            return
        for key in keys:
            if key not in undo:
                undo[key] = get(key)

    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Write each (key, value) to the store and to the run's changelog batch, in order:
        a key written twice in one run sends one record, its last value."""
        self._remember([key for key, _ in items])
        mapping = self.mapping
        if type(mapping) is dict:
            mapping.update(items)
        else:
            # not update(): on Faust's RocksDB store it is mode's FastUserDict.update, which
            # calls self.data.update, and that store has no ``data``
            for key, value in items:
                mapping[key] = value
        self._pending.update(items)

    def put_first(self, items: Sequence[tuple[bytes, bytes | None]]) -> None:
        """Like :meth:`put_many`, for records that go ahead of the run's others in its
        batch (the window and watermark records, streams.windowrecords); a value of None
        deletes the key (a tombstone in the changelog)."""
        self._remember([key for key, _ in items])
        mapping = self.mapping
        for key, value in items:
            if value is None:
                mapping.pop(key, None)
            else:
                mapping[key] = value
        self._first.update(items)

    def __len__(self) -> int:
        """Records written and not yet sent."""
        return len(self._first) + len(self._pending) + sum(map(len, self._sealed))

    def run(self) -> tuple[Records, list[tuple[bytes, bytes]]]:
        """The current run's records: those put first, and the rest (unit records)."""
        return list(self._first.items()), list(self._pending.items())

    def fits(self) -> bool:
        """Whether the current run's records fit one batch."""
        first, rest = self._first, self._pending
        size = sum(map(len, first)) + sum(len(v or b"") for v in first.values())
        size += sum(map(len, rest)) + sum(map(len, rest.values()))
        count = len(first) + len(rest)
        return _BATCH_HEADER_BYTES + _RECORD_OVERHEAD_BYTES * count + size < self.batch_bytes

    def seal(self, batches: Sequence[Records] | None = None) -> None:
        """End the run: its records become one changelog batch, or, for a run too large
        for one, ``batches``, which the caller planned to hold the same final values (the
        store already has them) and to leave the table consistent after any of them."""
        if batches is None:
            records = [*self._first.items(), *self._pending.items()]
            batches = [records] if records else []
        self._sealed.extend(list(b) for b in batches if b)
        self._first, self._pending = {}, {}

    def take(self) -> list[Records]:
        """The batches written since the last take, the current run's sealed as one, and
        forget them. Consecutive batches that fit one together are joined: each leaves the
        table consistent, so their union does too, and it is one send, not several (a run
        processed message by message seals a batch a message: Ingest.isolate)."""
        self.seal()
        sealed, self._sealed = self._sealed, []
        # handed to the producer: no rollback can take them back
        self._undo, self._sealed_at_begin = {}, 0
        if len(sealed) < 2:  # a run's batch, as nearly always: nothing to size
            return sealed
        joined: list[Records] = []
        size = 0
        for records in sealed:
            more = batch_bytes(records) - _BATCH_HEADER_BYTES
            if joined and size + more < self.batch_bytes:
                joined[-1].extend(records)
                size += more
            else:
                joined.append(list(records))
                size = _BATCH_HEADER_BYTES + more
        return joined

    async def flush(self, producer: Any, partition: int) -> list[asyncio.Future[Any]]:
        """Queue the runs' batches on ``producer`` (aiokafka); does not wait for acks.
        Returns each batch's delivery future: one a run, unless a run was sealed in
        several (none if nothing was written)."""
        sent: list[asyncio.Future[Any]] = []
        for records in self.take():
            batches = await self._send_records(producer, partition, records)
            if len(batches) > 1:
                # Ingest plans every batch to fit, unless one unit's windows alone fill one
                log.error(
                    "%d changelog records of %s took %d batches, not one: a crash between "
                    "them can leave windows out of step with their unit records",
                    len(records), self.topic, len(batches),
                )  # fmt: skip
            sent += batches
        return sent

    async def _send_records(
        self, producer: Any, partition: int, records: Records
    ) -> list[asyncio.Future[Any]]:
        # one timestamp for the batch's records: each then adds a 1-byte delta, as
        # record_bytes reckons (aiokafka's own default is the clock at each append)
        now = int(time.time() * 1000)
        batch, count, sent = producer.create_batch(), 0, []
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=now) is None:
                sent.append(await self._send(producer, batch, partition, count))
                batch, count = producer.create_batch(), 0
                if batch.append(key=key, value=value, timestamp=now) is None:
                    size = len(value or b"")
                    raise ValueError(f"a {size}-byte table value exceeds the batch size")
            count += 1
        if count:
            sent.append(await self._send(producer, batch, partition, count))
        return sent

    async def _send(
        self, producer: Any, batch: Any, partition: int, count: int
    ) -> asyncio.Future[Any]:
        tp = TP(self.topic, partition)
        fut: asyncio.Future[Any] = await producer.send_batch(batch, tp.topic, partition=partition)
        store = self.table.data

        def persisted(done: asyncio.Future[Any]) -> None:
            if not done.cancelled() and done.exception() is None:
                store.set_persisted_offset(tp, done.result().offset + count - 1)

        fut.add_done_callback(persisted)
        return fut


class _ChangelogEvent(NamedTuple):
    """What a Faust store's ``apply_changelog_batch`` reads of a changelog event."""

    key: bytes
    value: bytes | None
    message: SimpleNamespace

    @classmethod
    def of(cls, record: Any) -> _ChangelogEvent:
        message = SimpleNamespace(
            tp=TP(record.topic, record.partition),
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
        )
        return cls(record.key, record.value, message)


async def recover_tail(
    app: Any,
    table: Any,
    client_options: dict[str, Any],
    *,
    deadline_seconds: float = TAIL_DEADLINE_SECONDS,
) -> int:
    """Apply the changelog records past the high watermark Faust recovered to.

    Faust's recovery reads each changelog partition up to ``end offset - 1`` as the broker
    reports it. The bundled tansu broker reports the end of a partition as the *base*
    offset of its last batch plus one, so the rest of that batch -- all but the first unit
    record of the last message before a crash or a rebalance -- was never applied, while
    the source offsets that produced it were committed: the loss behind issue #5's SIGKILL
    test. This reads from Faust's highwater on, before the stream partitions resume, and
    applies what it finds. On a broker whose end offsets are right it re-applies one record.

    It stops once every partition has delivered its highwater record (and so that record's
    whole batch) and two fetches in a row come back empty. Empty fetches alone do not end
    it: a broker slow to answer returns nothing for a while, and ending then lost the tail
    for good (``test_regression_a_slow_broker_does_not_end_the_tail_before_the_highwater``).
    After ``deadline_seconds`` (without the highwater, or with records still arriving) it
    logs an error and ends rather than hold recovery forever. Returns the number of records
    applied.
    """
    from aiokafka import AIOKafkaConsumer, TopicPartition

    recovery = app.tables.recovery
    tps = sorted(recovery.actives_for_table.get(table, ()))
    if not tps:
        return 0
    consumer = AIOKafkaConsumer(
        enable_auto_commit=False, group_id=None, auto_offset_reset="earliest", **client_options
    )
    await consumer.start()
    try:
        parts = [TopicPartition(tp.topic, tp.partition) for tp in tps]
        consumer.assign(parts)
        #: per partition, the highwater record the tail must have read before it may end
        waiting: dict[TopicPartition, int] = {}
        for part, tp in zip(parts, tps, strict=True):
            highwater = recovery.active_highwaters.get(tp)
            # the highwater itself is a real record (the last batch's base): from there the
            # broker returns the whole batch
            consumer.seek(part, max(int(highwater) if highwater is not None else 0, 0))
            if highwater is not None and highwater >= 0:
                waiting[part] = int(highwater)
        give_up = time.monotonic() + deadline_seconds
        applied, empty = 0, 0
        while waiting or empty < 2:
            if time.monotonic() > give_up:
                log.error(
                    "changelog tail of %s not done after %.0f s (%s); records past it may "
                    "be missing from the recovered table",
                    table.name,
                    deadline_seconds,
                    ", ".join(f"{p.topic}[{p.partition}] waits for offset {h}"
                              for p, h in waiting.items()) or "records still arriving",
                )  # fmt: skip
                break
            batches = await consumer.getmany(timeout_ms=250)
            records = [r for rs in batches.values() for r in rs]
            empty = 0 if records else empty + 1
            if records:
                _apply(table, sorted(records, key=lambda r: (r.partition, r.offset)))
                applied += len(records)
            for part, highwater in list(waiting.items()):
                if await consumer.position(part) > highwater:
                    del waiting[part]
        return applied
    finally:
        await consumer.stop()


def _apply(table: Any, ordered: list[Any]) -> None:
    if isinstance(table.data, MemoryStore):
        # plain writes, as ChangelogBatcher.put makes them. Two CI failures of
        # test_rebalance were once blamed on the memory store's changelog path (it also
        # registers each key for its on_recovery_completed clean-up); the slow-broker end
        # of the tail above is the likelier cause. RocksDB needs the changelog path below
        for r in ordered:
            if r.value is None:
                table.data.pop(r.key, None)
            else:
                table.data[r.key] = r.value
    else:
        # the store's own changelog path, as Faust's recovery uses: RocksDB puts each record
        # in its partition's database and stores the offsets it holds
        table.apply_changelog_batch(_ChangelogEvent.of(r) for r in ordered)
