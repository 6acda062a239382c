"""Ingest after a crash, in-process: a recovered unit table plus redelivery is exact.

The worker dies after its unit records reached the changelog but before its offsets were
committed; the next worker recovers the table, rebuilds its partition statistics from
the records, and is redelivered messages it already absorbed. The per-unit applied
offsets must make the result identical to an uninterrupted run. The table also holds the
window records (streams.windowrecords), which a run writes in the same changelog batch.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest
from prometheus_client import CollectorRegistry

from monitor.events import Exposure, Telemetry
from monitor.replayer import Replayer
from monitor.unitstate import STATE_VERSION
from monitor.workload import simulate_units, to_events
from streams.changelog import batch_bytes
from streams.cli import DEFAULT_CONFIG, load_config
from streams.evaluator import Evaluator
from streams.ingest import Ingest
from streams.metrics import Metrics
from streams.partials import Partial
from streams.producer import partition_of
from streams.runs import OneRecord, Record
from streams.stagecache import StageCache
from streams.windowrecords import is_unit_key, window_key

CONFIG = load_config(DEFAULT_CONFIG)
EXPERIMENT = "workflow_assistant"
PARTITIONS = 4


class _Table:
    """The part of a Faust table Ingest uses here: its store."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}


def _ingest(units: _Table, config: Any = CONFIG, **options: Any) -> Ingest:
    return Ingest(
        config, units=units, metrics=Metrics(CollectorRegistry()),
        stage_index=lambda _e, _ts: 3, topics={"exposures": "x", "telemetry": "t"},
        partitions=PARTITIONS, max_message_bytes=10**7, max_pending=64, **options,
    )  # fmt: skip


def _unit_records(data: dict[bytes, bytes]) -> dict[bytes, bytes]:
    return {k: v for k, v in data.items() if is_unit_key(k)}


def _unit_keys(table: _Table) -> set[str]:
    return {k.decode() for k in _unit_records(table.data)}


def _messages() -> list[tuple[str, int, int, bytes]]:
    units = simulate_units(3_000, seed=21)
    exposures, telemetry = to_events(
        units, experiment=EXPERIMENT, start_ts=1e9, duration_s=300.0, seed=21
    )
    out, offsets = [], {}
    # telemetry interleaved with exposures, so some of it waits as pending in unit records
    for topic, events in (("t", telemetry[:2000]), ("x", exposures), ("t", telemetry[2000:])):
        by_partition: dict[int, list[dict]] = {}
        for e in events:
            by_partition.setdefault(partition_of(e["unit_id"], PARTITIONS), []).append(e)
        for p, evs in by_partition.items():
            for i in range(0, len(evs), 100):
                off = offsets[(topic, p)] = offsets.get((topic, p), -1) + 1
                out.append((topic, p, off, orjson.dumps(evs[i : i + 100])))
    return out


def _uninterrupted(messages: list[tuple[str, int, int, bytes]], config: Any = CONFIG) -> Ingest:
    """A worker that took every message, one at a time, without a crash."""
    whole = _ingest(_Table(), config)
    for m in messages:
        whole.process(*m[:3], None, m[3])
    return whole


@pytest.mark.parametrize(("crash", "redeliver_from"), [(0.7, 0.6), (0.5, 0.1), (0.9, 0.0)])
def test_recovered_table_plus_redelivery_is_exact(crash: float, redeliver_from: float) -> None:
    messages = _messages()
    whole = _uninterrupted(messages)

    table = _Table()
    first = _ingest(table)
    for m in messages[: int(len(messages) * crash)]:
        first.process(*m[:3], None, m[3])
    second = _ingest(table)  # a new worker over the recovered table
    for m in messages[int(len(messages) * redeliver_from) :]:
        second.process(*m[:3], None, m[3])

    for p in range(PARTITIONS):
        a = whole.partition_stats(p).stats(EXPERIMENT, whole.aggs[EXPERIMENT]).units
        b = second.partition_stats(p).stats(EXPERIMENT, second.aggs[EXPERIMENT]).units
        assert np.array_equal(a.n, b.n)
        np.testing.assert_allclose(b.sum, a.sum, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(b.gram, a.gram, rtol=1e-12, atol=1e-6)


def test_deferred_statistics_equal_the_offline_engine() -> None:
    """Ingest folds delta rows in at publish time; the result equals Replayer's, which
    applies them message by message."""
    messages = _messages()
    ingest = _ingest(_Table())
    for m in messages:
        ingest.process(*m[:3], None, m[3])
    merged = None
    for p in range(PARTITIONS):
        s = ingest.partition_stats(p).stats(EXPERIMENT, ingest.aggs[EXPERIMENT])
        merged = s if merged is None else merged + s
    assert merged is not None
    replayer = Replayer(CONFIG, lambda _e, _ts: 3, chunk=100)
    replayer.feed([
        (Exposure if topic == "x" else Telemetry)(**e)
        for topic, _p, _o, raw in messages for e in orjson.loads(raw)
    ])  # fmt: skip
    offline = replayer.stats[EXPERIMENT]
    assert np.array_equal(merged.units.n, offline.units.n)
    np.testing.assert_allclose(merged.units.sum, offline.units.sum, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(merged.units.gram, offline.units.gram, rtol=1e-12, atol=1e-6)
    assert all(a == b for a, b in zip(merged.sketches, offline.sketches, strict=True))


def _runs(
    messages: list[tuple[str, int, int, bytes]], seed: int, first: int = 0
) -> list[tuple[str, int, list[Record], list[int]]]:
    """The messages from index ``first`` as the consumer delivers them: consecutive
    messages of one topic partition in runs of random length, partitions interleaved;
    with each run, the messages' indices.

    The order between the two topics is kept: it decides whether telemetry waits as
    pending or is attributed directly, and a window's record dedups per topic, so windows
    *ahead* of the unit records are exact only under the same order
    (test_a_crash_between_a_runs_changelog_batches_leaves_the_windows_exact)."""
    rng = np.random.default_rng(seed)
    open_runs: dict[tuple[str, int], tuple[list[Record], list[int]]] = {}
    limits: dict[tuple[str, int], int] = {}
    out = []
    for i, (topic, p, off, raw) in enumerate(messages[first:], start=first):
        if open_runs and next(iter(open_runs))[0] != topic:
            out.extend((t, q, run, ix) for (t, q), (run, ix) in open_runs.items())
            open_runs.clear()
            limits.clear()
        run, indices = open_runs.setdefault((topic, p), ([], []))
        run.append(OneRecord(off, None, raw))
        indices.append(i)
        if len(run) >= limits.setdefault((topic, p), int(rng.integers(1, 12))):
            out.append((topic, p, run, indices))
            del open_runs[(topic, p)], limits[(topic, p)]
    out.extend((topic, p, run, indices) for (topic, p), (run, indices) in open_runs.items())
    return out


def _windows_of(ingest: Ingest, partition: int) -> dict[float, Any]:
    return {
        start: (w.exposures.tolist(), w.events.to_wire())
        for start, w in ingest.partition_stats(partition).windows[EXPERIMENT].items()
    }


def _assert_same_statistics(expected: Ingest, actual: Ingest) -> None:
    """Unit statistics, sketches and every window, partition by partition."""
    for p in range(PARTITIONS):
        a = expected.partition_stats(p).stats(EXPERIMENT, expected.aggs[EXPERIMENT])
        b = actual.partition_stats(p).stats(EXPERIMENT, actual.aggs[EXPERIMENT])
        assert np.array_equal(a.units.n, b.units.n)
        np.testing.assert_allclose(b.units.sum, a.units.sum, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(b.units.gram, a.units.gram, rtol=1e-12, atol=1e-6)
        assert all(x == y for x, y in zip(a.sketches, b.sketches, strict=True))
        wa, wb = _windows_of(expected, p), _windows_of(actual, p)
        assert wa.keys() == wb.keys() and len(wa) > 3
        for window in wa:
            assert wa[window][0] == wb[window][0]  # exposures
            assert wa[window][1]["n"] == wb[window][1]["n"]
            np.testing.assert_allclose(
                wb[window][1]["sum"], wa[window][1]["sum"], rtol=1e-12, atol=1e-9
            )


def _crash(
    worker: Ingest, messages: list[tuple[str, int, int, bytes]], crash: float, at: float, seed: int
) -> tuple[set[int], dict[bytes, bytes] | None, set[int]]:
    """Runs of the first ``crash`` of the messages through ``worker``; the indices it
    absorbed, and its table and absorbed indices as they stood at the start of the first
    run once ``at`` of the messages were absorbed (None: never)."""
    snapshot: dict[bytes, bytes] | None = None
    absorbed: set[int] = set()
    kept: set[int] = set()
    for topic, p, run, indices in _runs(messages[: int(len(messages) * crash)], seed):
        if snapshot is None and len(absorbed) >= len(messages) * at:
            snapshot, kept = dict(worker.units_table.data), set(absorbed)
        worker.process_run(topic, p, run)
        absorbed.update(indices)
    return absorbed, snapshot, kept


def _late_config(config: Any = CONFIG) -> Any:
    """Lateness as long as the windows live, so that a reordered redelivery makes no event
    late: then the windows are the same whatever the order."""
    return config.model_copy(
        update={
            "windows": config.windows.model_copy(
                update={"allowed_lateness_seconds": config.windows.expires_seconds}
            )
        }
    )


def _recovered(batches: list[list[tuple[bytes, bytes | None]]]) -> _Table:
    """The table a worker recovers from these changelog batches, applied in order."""
    table = _Table()
    for batch in batches:
        for key, value in batch:
            if value is None:
                table.data.pop(key, None)
            else:
                table.data[key] = value
    return table


#: small enough that most runs of _messages() need several changelog batches
SPLIT_BATCH_BYTES = 12 * 1024


@pytest.mark.parametrize("reorder", [False, True], ids=["same-order", "telemetry-first"])
@pytest.mark.parametrize(
    ("crash", "redeliver_from", "seed"),
    [(0.7, 0.6, 1), (0.5, 0.1, 2), (0.8, 0.8, 3), (0.3, 0.0, 4), (0.9, 0.85, 5)],
)
def test_a_crash_between_a_split_runs_batches_is_exact(
    crash: float, redeliver_from: float, seed: int, reorder: bool
) -> None:
    """A run too large for one changelog batch is written in several (Ingest._split), each
    with its windows as they stand once its own and the earlier batches' units are in. A
    crash between them keeps a prefix of the batches; the redelivery then gives the lost
    units' events back to the unit records and, through them, to the windows: once, in
    either topic order. Before (found by review), the first batch carried every window
    record and the windows skipped redelivered events by offsets of their own: a crash
    half-way through an exposures run, then telemetry redelivered first, left a window
    with 90 events where the uninterrupted worker had 165."""
    config = _late_config()
    messages = _messages()
    whole = _uninterrupted(messages, config)

    live = _ingest(_Table(), config, changelog_batch_bytes=SPLIT_BATCH_BYTES)
    log: list[list[tuple[bytes, bytes | None]]] = []
    split: list[tuple[int, int, int]] = []  # (run, its first batch, its batches)
    runs = _runs(messages[: int(len(messages) * crash)], seed)
    for i, (topic, p, run, _) in enumerate(runs):
        live.process_run(topic, p, run)
        batches = live.changelog.take()
        assert all(batch_bytes(b) <= SPLIT_BATCH_BYTES for b in batches)
        if len(batches) > 1:
            split.append((i, len(log), len(batches)))
        log.extend(batches)
    assert len(split) > len(runs) / 3
    # the crash: inside the last split run, after its first batch
    crashed, at, count = split[-1]
    rng = np.random.default_rng(seed)
    table = _recovered(log[: at + int(rng.integers(1, count))])
    # every message the runs before the crashed one did not absorb, and, from
    # ``redeliver_from`` on, those they did (offsets committed earlier)
    absorbed = {i for _, _, _, indices in runs[:crashed] for i in indices}
    start = int(len(messages) * redeliver_from)
    redelivered = [m for i, m in enumerate(messages) if i >= start or i not in absorbed]
    if reorder:
        redelivered = sorted(redelivered, key=lambda m: m[0] != "t")
    second = _ingest(table, config)
    for topic, p, run, _ in _runs(redelivered, seed + 100):
        second.process_run(topic, p, run)

    _assert_same_statistics(whole, second)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_crash_inside_a_split_run_keeps_the_watermark_the_run_judged_lateness_by(
    seed: int,
) -> None:
    """The watermark and the expiry tombstones go in a split run's last batch. Recovered
    after a crash between its batches, the watermark is the one the run judged lateness
    by, so its redelivered events are late or on time as they were. In the first batch, it
    made the redelivery find late events the uninterrupted worker had counted."""
    config = CONFIG.model_copy(
        update={
            "windows": CONFIG.windows.model_copy(
                update={"size_seconds": 60.0, "allowed_lateness_seconds": 5.0}
            )
        }
    )
    runs = _runs(_messages(), seed)
    whole = _ingest(_Table(), config)
    for topic, p, run, _ in runs:
        whole.process_run(topic, p, run)

    live = _ingest(_Table(), config, changelog_batch_bytes=SPLIT_BATCH_BYTES)
    log: list[list[tuple[bytes, bytes | None]]] = []
    crashes = []  # (run, the log's length at a crash inside it)
    for i, (topic, p, run, _) in enumerate(runs):
        before = live.partition_stats(p).watermark
        live.process_run(topic, p, run)
        batches = live.changelog.take()
        if len(batches) > 1 and live.partition_stats(p).watermark > before:
            crashes.append((i, len(log) + len(batches) - 1))
        log.extend(batches)
    assert len(crashes) > 3
    for i, kept in crashes[:: max(len(crashes) // 4, 1)]:
        second = _ingest(_recovered(log[:kept]), config)
        for topic, p, run, _ in runs[i:]:  # the same runs again, from the crashed one
            second.process_run(topic, p, run)
        _assert_same_statistics(whole, second)


def test_a_split_runs_batches_leave_the_table_its_store_holds() -> None:
    """Without a crash, the batches of every run, applied in order, are the worker's own
    store: the last batch to write a window writes its final record."""
    live = _ingest(_Table(), changelog_batch_bytes=SPLIT_BATCH_BYTES)
    log = []
    for topic, p, run, _ in _runs(_messages(), seed=7):
        live.process_run(topic, p, run)
        log.extend(live.changelog.take())
    assert _recovered(log).data == live.units_table.data


@pytest.mark.parametrize(
    ("crash", "lost_after", "seed"), [(0.9, 0.2, 1), (0.6, 0.15, 2), (0.4, 0.05, 3)]
)
def test_regression_a_crash_then_a_redelivery_that_reorders_the_topics_is_exact(
    crash: float, lost_after: float, seed: int
) -> None:
    """Regression (window records in a table of their own, ``windows-v2``): a crash kept a
    run's window record and lost its unit records, and the redelivery brought telemetry
    ahead of the exposures it had followed. Telemetry that had waited in a unit's record
    and gone into a window under its exposure's offset then went in again under its own
    offset, or the other way round. Now a run's unit and window records are lost
    together, at a run boundary, and the redelivery may come in any order.

    Lateness is as long as the windows live (_late_config)."""
    config = _late_config()
    messages = _messages()
    whole = _uninterrupted(messages, config)

    units = _Table()
    _, snapshot, kept = _crash(_ingest(units, config), messages, crash, lost_after, seed)
    assert snapshot is not None
    units.data, absorbed = snapshot, kept  # what recovery finds: the batches up to a run
    second = _ingest(units, config)
    redelivered = [m for i, m in enumerate(messages) if i not in absorbed]
    # telemetry first: what waited for an exposure arrives before it, and the reverse
    reordered = sorted(redelivered, key=lambda m: m[0] != "t")
    assert [m[0] for m in reordered] != [m[0] for m in redelivered]
    for topic, p, run, _ in _runs(reordered, seed + 100):
        second.process_run(topic, p, run)

    _assert_same_statistics(whole, second)


def test_a_run_equals_its_messages_one_by_one() -> None:
    messages = _messages()
    single, batched = _ingest(_Table()), _ingest(_Table())
    for m in messages:
        single.process(*m[:3], None, m[3])
    for topic, p, run, _ in _runs(messages, seed=7):
        batched.process_run(topic, p, run)
    _assert_same_statistics(single, batched)  # windows too, to rounding: sums in other orders
    assert _unit_records(single.units_table.data) == _unit_records(batched.units_table.data)


def test_a_worker_given_back_its_partitions_reads_the_records_written_meanwhile() -> None:
    """Partitions that go to another worker and come back: the table then holds that
    worker's unit and window records (recovery writes them into the same stores), and
    nothing the first worker kept from before -- partition statistics, window mirrors,
    decoded records -- may shadow them."""
    messages = _messages()
    whole = _uninterrupted(messages)

    units = _Table()
    first, other = _ingest(units), _ingest(units)
    a, b = int(len(messages) * 0.4), int(len(messages) * 0.7)
    for m in messages[:a]:
        first.process(*m[:3], None, m[3])
    first.revoke(range(PARTITIONS))
    for m in messages[a:b]:
        other.process(*m[:3], None, m[3])
    other.revoke(range(PARTITIONS))
    for m in messages[b:]:  # back to the first worker, its kept records now stale
        first.process(*m[:3], None, m[3])

    _assert_same_statistics(whole, first)
    assert units.data == whole.units_table.data


def test_a_partition_with_no_new_message_after_a_restart_still_publishes() -> None:
    """Regression (3-SIGKILL crash test): a restarted worker published only the partitions
    that got a message, so a partition whose messages were all committed before the kill
    kept the snapshot its last owner published -- older than that owner's last unit
    records -- and the totals stayed short for good. ``ensure``, run when recovery ends,
    publishes every owned partition from the recovered records."""
    messages = _messages()
    table = _Table()
    first = _ingest(table)
    for m in messages:
        first.process(*m[:3], None, m[3])
    expected = {p.partition: p.stats for p in first.snapshots()}

    second = _ingest(table)  # recovered the table; no message arrives on any partition
    assert second.snapshots() == []
    second.ensure(range(PARTITIONS))
    published = {p.partition: p.stats for p in second.snapshots()}
    assert sorted(published) == list(range(PARTITIONS))
    for p in range(PARTITIONS):
        a, b = expected[p].units, published[p].units
        assert np.array_equal(a.n, b.n)
        np.testing.assert_allclose(b.sum, a.sum, rtol=1e-12, atol=1e-9)
    second.ensure(range(PARTITIONS))  # already built: nothing rebuilt, nothing republished
    assert second.snapshots() == []


def test_regression_each_table_has_one_recovery_callback() -> None:
    """Faust keeps a table's recovery callbacks in a set and calls them in set order. The
    units table once had two -- the changelog tail and the publish of every owned partition
    -- so the publish could run first, on a table still missing the tail. One callback per
    table runs them in the order written (streams.app: recover_units)."""
    from streams.app import build_app
    from streams.settings import Settings

    rampmon = build_app(Settings(webhook_secret="x" * 32), CONFIG)
    callbacks = {t.name: len(t._recover_callbacks) for t in rampmon.app.tables.values()}
    assert all(n <= 1 for n in callbacks.values()), callbacks
    assert callbacks[f"units-{STATE_VERSION}"] == 1


def test_events_on_a_partition_their_unit_does_not_hash_to_are_dead_lettered() -> None:
    """A unit's record lives on the partition its id hashes to. A message keyed by its unit
    is trusted (the producer partitioned by that key); otherwise each event must hash to the
    message's partition, in a single-event message and in an envelope alike."""
    units = [f"u{i}" for i in range(40)]
    home = {u: partition_of(u, PARTITIONS) for u in units}
    here = [u for u in units if home[u] == 0][:2]
    away = [u for u in units if home[u] != 0][:2]

    def exposure(unit: str) -> dict[str, Any]:
        return {"event_id": f"x-{unit}", "ts": 1e9, "experiment": EXPERIMENT,
                "unit_id": unit, "variant": "control"}  # fmt: skip

    ingest = _ingest(_Table())
    run = [
        OneRecord(0, away[0].encode(), orjson.dumps(exposure(away[0]))),  # keyed: kept
        OneRecord(1, None, orjson.dumps(exposure(away[1]))),  # unkeyed, wrong home
        OneRecord(2, None, orjson.dumps(exposure(here[0]))),
        OneRecord(3, here[1].encode(), orjson.dumps([exposure(here[1]), exposure(away[1])])),
    ]
    rejected = ingest.process_run("x", 0, run)
    assert [(record.offset, r.reason, r.index) for record, r in rejected] == [
        (1, "misrouted", 0),
        (3, "misrouted", 1),
    ]
    assert orjson.loads(rejected[0][1].raw)["unit_id"] == away[1]
    stored = _unit_keys(ingest.units_table)
    assert stored == {away[0], here[0], here[1]}


def test_a_run_of_single_event_messages_dead_letters_as_its_messages_one_by_one() -> None:
    """Runs of single-event messages are decoded in one call (streams.decode): rejections
    and misrouted events still come out per message, in offset order, as when each
    message is processed alone."""
    units = [f"u{i}" for i in range(40)]
    here = [u for u in units if partition_of(u, PARTITIONS) == 0][:3]
    away = [u for u in units if partition_of(u, PARTITIONS) != 0][:1]

    def exposure(unit: str, **extra: Any) -> bytes:
        return orjson.dumps({"event_id": f"x-{unit}", "ts": 1e9, "experiment": EXPERIMENT,
                             "unit_id": unit, "variant": "control", **extra})  # fmt: skip

    run = [
        OneRecord(0, None, exposure(here[0], variant="nope")),
        OneRecord(1, None, exposure(away[0])),
        OneRecord(2, here[1].encode(), exposure(here[1])),
        OneRecord(3, None, exposure(here[2], experiment="nope")),
        OneRecord(4, None, exposure(here[2])),
    ]
    together = _ingest(_Table())
    rejected = [(rec.offset, r.reason, r.index) for rec, r in together.process_run("x", 0, run)]
    assert rejected == [(0, "unknown_variant", None), (1, "misrouted", 0),
                        (3, "unknown_experiment", None)]  # fmt: skip
    alone = _ingest(_Table())
    one_by_one = [
        (rec.offset, r.reason, r.index)
        for rec in run
        for r in alone.process("x", 0, rec.offset, rec.key, rec.value)
    ]
    assert one_by_one == rejected
    assert together.units_table.data == alone.units_table.data
    assert _unit_keys(together.units_table) == {here[1], here[2]}


def test_regression_units_the_route_cache_forgets_mid_run_are_hashed_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The route cache is emptied when full. Emptied while a run's new units are added,
    it also forgets units of that run it already held; those are hashed again with the
    new ones, so the run is routed as with an empty cache (a draft raised KeyError)."""
    import streams.ingest

    monkeypatch.setattr(streams.ingest, "ROUTE_CACHE_SIZE", 4)
    here, away = _homes(4, 2)

    ingest = _ingest(_Table())
    first = [_exposure(u) for u in (*here[:2], away[0])]  # 3 cached of at most 4
    assert ingest.process_run("x", 0, [OneRecord(0, None, orjson.dumps(first))])
    again = [_exposure(u) for u in (here[0], *here[2:], away[1])]  # 3 new: the cache empties
    rejected = ingest.process_run("x", 0, [OneRecord(1, None, orjson.dumps(again))])
    assert [(r.reason, r.index) for _, r in rejected] == [("misrouted", 3)]
    assert f"hashes to partition {partition_of(away[1], PARTITIONS)}" in rejected[0][1].detail
    assert _unit_keys(ingest.units_table) == set(here)
    assert len(ingest._route_cache) == 4


def test_a_misrouted_event_after_multi_event_messages_has_its_position_in_its_message() -> None:
    """The position of a misrouted event counts from its own message's first decoded
    event, however many events earlier messages of the run held."""
    here, away = _homes(4, 2)

    run = [
        OneRecord(0, None, orjson.dumps([_exposure(here[0]), _exposure(here[1])])),
        OneRecord(1, None, orjson.dumps([_exposure(here[2]), _exposure(away[0])])),
        OneRecord(2, None, orjson.dumps([_exposure(away[1]), _exposure(here[3])])),
    ]
    rejected = _ingest(_Table()).process_run("x", 0, run)
    assert [(rec.offset, r.reason, r.index) for rec, r in rejected] == [
        (1, "misrouted", 1),
        (2, "misrouted", 0),
    ]


def test_regression_a_misrouted_event_is_numbered_as_its_messages_rejections_are() -> None:
    """Found by review: a misrouted event's index counted only its message's decoded
    events, while decode rejections count every element. In ``[bad, misrouted]`` both
    dead letters said index 0, so their ``source`` (topic, partition, offset, index), which
    the README says identifies a dead letter, was the same for two events."""
    here, away = _homes(1, 2)

    envelope = [_exposure(here[0], variant="nope"), _exposure(away[0]), _exposure(here[0])]
    ndjson = b"\n".join([b"{broken", b"", orjson.dumps(_exposure(away[1]))])
    run = [OneRecord(0, None, orjson.dumps(envelope)), OneRecord(1, None, ndjson)]
    rejected = _ingest(_Table()).process_run("x", 0, run)
    assert [(rec.offset, r.reason, r.index) for rec, r in rejected] == [
        (0, "unknown_variant", 0),
        (0, "misrouted", 1),
        (1, "bad_json", 0),
        (1, "misrouted", 2),  # its line, the empty one counted
    ]


def test_regression_a_new_owner_s_snapshots_win_after_messages_that_left_no_unit_record() -> None:
    """Found by review: ``seq`` was the sum of the offsets a worker had processed, dead
    letters included, but a new owner rebuilt it from the unit records, which only know
    the offsets they absorbed. After a handover whose last messages were dead letters the
    new owner's ``seq`` was lower, and the evaluator dropped its snapshots -- with new
    exposures in them -- until its offsets passed the old owner's (never, on a quiet
    partition): readouts and rollbacks ran on stale statistics."""
    here, _ = _homes(15, 0)
    evaluator = Evaluator(
        CONFIG, Metrics(CollectorRegistry()), StageCache(CONFIG), partitions=PARTITIONS
    )

    def publish(worker: Ingest) -> Partial:
        (snapshot,) = [s for s in worker.snapshots() if s.experiment == EXPERIMENT]
        assert snapshot.partition == 0
        return snapshot

    def exposures(offsets: range) -> list[Record]:
        return [OneRecord(i, None, orjson.dumps(_exposure(here[i]))) for i in offsets]

    units = _Table()
    old = _ingest(units)
    old.process_run("x", 0, exposures(range(10)))
    telemetry = [
        {"event_id": f"t{i}", "ts": 1e9 + 1, "unit_id": here[i], "metric": "tasks", "value": 1}
        for i in range(5)
    ]
    old.process_run("t", 0, [OneRecord(i, None, orjson.dumps(e)) for i, e in enumerate(telemetry)])
    # the old owner's last messages leave no unit record
    assert (
        len(old.process_run("t", 0, [OneRecord(i, None, b"{broken") for i in range(5, 25)])) == 20
    )
    last_of_old = publish(old)
    assert evaluator.accept(last_of_old)

    old.revoke([0])  # the partition moves; the new owner recovers the same tables
    new = _ingest(units)
    new.ensure([0])
    rebuilt = publish(new)
    evaluator.accept(rebuilt)
    new.process_run("x", 0, exposures(range(10, 15)))
    newer = publish(new)
    assert evaluator.accept(newer), (newer.seq, last_of_old.seq)
    assert int(evaluator.latest[EXPERIMENT][0].stats.units.n.sum()) == 15
    # the old owner's snapshot, arriving late, is stale: it must not undo the new data
    assert not evaluator.accept(last_of_old)
    assert evaluator.latest[EXPERIMENT][0] is newer
    # the same data has the same place in the order, whichever worker built it
    assert rebuilt.seq == last_of_old.seq


def test_a_partitions_seq_is_the_one_a_rebuild_from_its_unit_records_gives() -> None:
    """The ``seq`` a worker publishes is a function of the unit records alone, so any
    owner that recovers them publishes the same one: whatever the messages left no record
    of (dead letters, misrouted events) and whatever was redelivered."""
    here, away = _homes(1, 1)
    stream: list[tuple[str, int, bytes]] = []
    for i, (topic, p, _, raw) in enumerate(_messages()):
        stream.append((topic, p, raw))
        if i % 7 == 0:  # a dead letter and a misrouted event after some of the messages
            stray = away[0] if p == 0 else here[0]
            stream += [(topic, p, b"{broken"), ("x", p, orjson.dumps(_exposure(stray)))]
    # and after the last one of each topic partition
    stream += [(topic, p, b"{broken") for topic in ("x", "t") for p in range(PARTITIONS)]
    offsets: dict[tuple[str, int], int] = {}
    messages = []
    for topic, p, raw in stream:
        offset = offsets[(topic, p)] = offsets.get((topic, p), -1) + 1
        messages.append((topic, p, offset, raw))

    worker = _ingest(_Table())
    for m in [*messages, *messages[: len(messages) // 3]]:  # with a redelivery
        worker.process(*m[:3], None, m[3])
    published = {s.partition: s.seq for s in worker.snapshots() if s.experiment == EXPERIMENT}
    assert sorted(published) == list(range(PARTITIONS))
    rebuilt = _ingest(worker.units_table)
    rebuilt.ensure(range(PARTITIONS))
    assert {s.partition: s.seq for s in rebuilt.snapshots() if s.experiment == EXPERIMENT} == (
        published
    )


def _homes(here: int, away: int) -> tuple[list[str], list[str]]:
    """Unit ids whose records live on partition 0, and ids that hash elsewhere."""
    units = [f"u{i}" for i in range(400)]
    return (
        [u for u in units if partition_of(u, PARTITIONS) == 0][:here],
        [u for u in units if partition_of(u, PARTITIONS) != 0][:away],
    )


def _exposure(unit: str, **extra: Any) -> dict[str, Any]:
    return {"event_id": f"x-{unit}", "ts": 1e9, "experiment": EXPERIMENT,
            "unit_id": unit, "variant": "control", **extra}  # fmt: skip


def _windows_config(**windows: float) -> Any:
    return CONFIG.model_copy(update={"windows": CONFIG.windows.model_copy(update=windows)})


def test_a_split_run_deletes_a_window_it_both_fills_and_expires() -> None:
    """Found by review: a split run whose last group fills a window the same run expires.
    The last batch holds that window's record and its tombstone, the tombstone after it,
    so the table recovered from the batches is the worker's store, without the window."""
    config = _windows_config(size_seconds=10.0, allowed_lateness_seconds=100.0,
                             expires_seconds=20.0)  # fmt: skip
    here, _ = _homes(41, 0)
    live = _ingest(_Table(), config, changelog_batch_bytes=2048)
    live.process_run("x", 0, [OneRecord(0, None, orjson.dumps(_exposure(here[0], ts=1e9)))])
    log = live.changelog.take()
    # on time at the old watermark (1e9), expired at the new one (1e9 + 200)
    late_window = [_exposure(here[40], ts=1e9 - 50)]
    run = [_exposure(u, ts=1e9 + 200) for u in here[1:40]] + late_window
    live.process_run("x", 0, [OneRecord(1, None, orjson.dumps(run))])
    batches = live.changelog.take()
    key = window_key(EXPERIMENT, 0, 1e9 - 50)
    assert len(batches) > 1 and (key, None) in batches[-1]
    assert any(k == key and v for k, v in batches[-1])  # filled in the same batch
    assert _recovered(log + batches).data == live.units_table.data
    assert key not in live.units_table.data


def test_a_run_touching_too_many_windows_to_reserve_room_for_all_still_packs_units() -> None:
    """Found by review: each batch kept room for every window the run touched, so a run
    touching many windows went out one unit a batch. Past half a batch of windows, the
    plan reckons each group with the windows its own units touch; a crash between its
    batches is still exact."""
    config = _late_config(_windows_config(size_seconds=2.0, expires_seconds=3600.0))
    messages = _messages()
    whole = _uninterrupted(messages, config)
    live = _ingest(_Table(), config, changelog_batch_bytes=SPLIT_BATCH_BYTES)
    log: list[list[tuple[bytes, bytes | None]]] = []
    runs = _runs(messages, seed=6)
    crashes = []
    for i, (topic, p, run, _) in enumerate(runs):
        live.process_run(topic, p, run)
        batches = live.changelog.take()
        units = sum(is_unit_key(k) for batch in batches for k, _ in batch)
        assert all(batch_bytes(b) < SPLIT_BATCH_BYTES for b in batches)
        if len(batches) > 1:
            assert len(batches) < units / 4  # many units a batch, not one
            crashes.append((i, len(log) + 1))
        log.extend(batches)
    assert len(crashes) > len(runs) / 3
    for i, kept in crashes[:: max(len(crashes) // 3, 1)]:
        second = _ingest(_recovered(log[:kept]), config)
        absorbed = {j for _, _, _, indices in runs[:i] for j in indices}
        redelivered = [m for j, m in enumerate(messages) if j not in absorbed]
        for topic, p, run, _ in _runs(sorted(redelivered, key=lambda m: m[0] != "t"), i):
            second.process_run(topic, p, run)
        _assert_same_statistics(whole, second)


def test_windows_past_their_expiry_leave_the_mirror_and_the_table() -> None:
    """A window expires once it ended more than ``expires_seconds`` before the newest
    event: the one that ended exactly then stays. Expiry writes a tombstone into the run's
    changelog batch, so a worker that recovers the table does not bring the window back
    (nor does the table grow)."""
    size, expires = CONFIG.windows.size_seconds, CONFIG.windows.expires_seconds
    here, _ = _homes(4, 0)
    units = _Table()
    ingest = _ingest(units)

    def expose(offset: int, unit: str, ts: float) -> None:
        ingest.process_run("x", 0, [OneRecord(offset, None, orjson.dumps(_exposure(unit, ts=ts)))])

    def starts(worker: Ingest) -> set[float]:
        return set(worker.partition_stats(0).windows[EXPERIMENT])

    first = math.floor(1e9 / size) * size
    edge = first + size
    kept = first + expires
    for offset, ts in enumerate([first, edge, kept]):
        expose(offset, here[offset], ts)
    assert starts(ingest) == {first, edge, kept}
    ingest.changelog.take()
    newest = kept + 2 * size  # `first` ended size + expires before it; `edge`, expires
    expose(3, here[3], newest)
    assert starts(ingest) == {edge, kept, newest}
    written = dict(r for batch in ingest.changelog.take() for r in batch)
    assert written[window_key(EXPERIMENT, 0, first)] is None
    assert written[window_key(EXPERIMENT, 0, newest)] is not None
    assert window_key(EXPERIMENT, 0, first) not in units.data
    assert starts(_ingest(units)) == {edge, kept, newest}


@pytest.mark.parametrize("crash", [0.4, 0.7])
def test_regression_a_restarted_worker_judges_lateness_by_the_recovered_watermark(
    crash: float,
) -> None:
    """Found by review: a rebuilt partition's watermark started at -inf, so after a crash
    the redelivered events the uninterrupted worker had found late went into their windows
    (one window's count went from 7 to 165 with 5 s of allowed lateness). The watermark is
    now a record in the units table, written in each run's batch."""
    config = CONFIG.model_copy(
        update={
            "windows": CONFIG.windows.model_copy(
                update={"size_seconds": 60.0, "allowed_lateness_seconds": 5.0}
            )
        }
    )
    messages = _messages()
    runs = _runs(messages, seed=101)
    whole = _ingest(_Table(), config)
    for topic, p, run, _ in runs:
        whole.process_run(topic, p, run)
    late = whole.metrics.registry.get_sample_value(
        "rampmon_attribution_events_total", {"experiment": EXPERIMENT, "outcome": "late"}
    )
    assert late  # the workload has events the uninterrupted worker finds late

    units = _Table()
    first = _ingest(units, config)
    for topic, p, run, _ in runs[: int(len(runs) * crash)]:
        first.process_run(topic, p, run)
    second = _ingest(units, config)  # everything redelivered, in the same runs
    for topic, p, run, _ in runs:
        second.process_run(topic, p, run)
    _assert_same_statistics(whole, second)


def test_the_recovered_watermark_is_the_live_one_after_every_run() -> None:
    """Found by review: a watermark written on some runs only (exposures, say) passes the
    crash tests above at their crash points; compared after every run, it cannot."""
    units = _Table()
    live = _ingest(units)
    for topic, p, run, _ in _runs(_messages(), seed=9):
        live.process_run(topic, p, run)
        recovered = _ingest(units).rebuild(range(PARTITIONS))
        assert {q: recovered[q].watermark for q in live.stats} == {
            q: s.watermark for q, s in live.stats.items()
        }
