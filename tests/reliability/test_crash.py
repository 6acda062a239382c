"""The worker is SIGKILLed at three random points of a live stream and restarted each time:
the statistics equal numpy's on every event, and the rollback goes out once.

A SIGKILL runs no shutdown hook and commits no offset, so each restart recovers the tables
from their changelogs and is redelivered everything uncommitted. Exactness rests on the
applied source offsets kept inside each unit record (monitor.unitstate) and on the
changelog tail that streams.changelog.recover_tail applies; the single rollback rests on
the decision claim in Redis (alerts.outbox).
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from monitor.workload import simulate_units, to_events
from streams.workerproc import sample as value
from tests.integration.checks import processed, stage_at, wait_exact
from tests.integration.stack import EXPERIMENT, Stack, wait_for

pytestmark = pytest.mark.integration

UNITS = 36_600  # about 200,000 events: 5.47 per unit in seed 000's simulation
CHUNKS = 45
STREAM_SECONDS = 90.0


@dataclass(frozen=True)
class Kill:
    after_seconds: float
    processed: float
    chunks_sent: int


def _stream(
    stack: Stack, chunks: list[tuple[list, list]], sent: list[int], kills_done: threading.Event
) -> None:
    """Event-time chunks at a steady pace: exposures in envelopes of 100, telemetry one
    event per message (so a kill lands between single-event offsets too).

    The last chunk waits for the third kill: a restart that recovers a long changelog can
    take most of the stream's 90 s, and a kill after the stream has ended tests less."""
    began = time.monotonic()
    for i, (exposures, telemetry) in enumerate(chunks):
        if i == len(chunks) - 1:
            kills_done.wait(STREAM_SECONDS * 4)
        stack.produce("exposures", exposures)
        stack.produce("telemetry", telemetry, batch=1)
        sent[0] = i + 1
        time.sleep(max(0.0, began + (i + 1) * STREAM_SECONDS / len(chunks) - time.monotonic()))


def _chunks(exposures: list, telemetry: list, start: float, end: float) -> list[tuple[list, list]]:
    edges = np.linspace(start, end, CHUNKS + 1)
    edges[-1] = np.inf
    e_ts = np.array([e["ts"] for e in exposures])
    t_ts = np.array([t["ts"] for t in telemetry])
    out = []
    for lo, hi in itertools.pairwise(edges):
        e_idx = np.flatnonzero((e_ts >= lo) & (e_ts < hi))
        t_idx = np.flatnonzero((t_ts >= lo) & (t_ts < hi))
        out.append(([exposures[i] for i in e_idx], [telemetry[i] for i in t_idx]))
    return out


@pytest.mark.parametrize(
    ("store", "seed"),
    [
        pytest.param("memory://", None, id="memory"),
        pytest.param("rocksdb://", None, id="rocksdb"),
        # a CI failure: the first kill came before any commit, and the restarted worker
        # went on from where the fetches it dropped during recovery had left the position,
        # losing exposure offsets 19-36 of every partition (streams.seeking). The seed
        # fixes the kill times, not the timing of fetches: it lost them in 2 of 2 runs
        # before the fix. tests/unit/test_seeking.py checks the wiring every time
        pytest.param("memory://", 646227869, id="memory-seed646227869"),
    ],
)
def test_three_sigkills_mid_stream_change_no_number(
    own_stack: Stack, store: str, seed: int | None
) -> None:
    stack = own_stack  # 200k events: a broker of its own leaves the session's one light
    # tansu reports a lagging high watermark: see Settings.recovery_consistency_check
    stack.env["RAMPMON_RECOVERY_CONSISTENCY_CHECK"] = "false"
    # rocksdb: the restarted worker keeps its data dir (a persistent volume) but discards
    # its tables' databases, which may be ahead of the changelog (streams.localtables), and
    # recovers from the whole changelog, as with memory
    stack.env["RAMPMON_STORE"] = store
    if seed is None:
        seed = int(os.environ.get("RAMPMON_CRASH_SEED") or secrets.randbelow(2**31))
    print(f"kill points drawn with RAMPMON_CRASH_SEED={seed}")  # shown when the test fails
    rng = np.random.default_rng(seed)
    start = time.time() - 450
    stage_at(stack, 50, start - 60)
    # +3 pp error sessions in treatment: a rollback is due somewhere in the stream
    units = simulate_units(UNITS, seed=5, regression={"error_session": 0.03})
    exposures, telemetry = to_events(
        units, experiment=EXPERIMENT, start_ts=start, duration_s=300, seed=5
    )
    assert 195_000 <= len(exposures) + len(telemetry) <= 205_000
    chunks = _chunks(exposures, telemetry, start, start + 300)
    assert sum(len(e) + len(t) for e, t in chunks) == len(exposures) + len(telemetry)

    worker = stack.start_worker()
    sent = [0]
    kills_done = threading.Event()
    producer = threading.Thread(target=_stream, args=(stack, chunks, sent, kills_done), daemon=True)
    producer.start()
    kills: list[Kill] = []
    for _ in range(3):
        wait_for(lambda: processed(stack, worker) > 0, 240, "the worker to process events")
        after = float(rng.uniform(0.5, 6.0))
        time.sleep(after)
        kills.append(Kill(round(after, 2), processed(stack, worker), sent[0]))
        worker.kill()
        worker.start()  # the same data dir and port
    kills_done.set()
    producer.join(STREAM_SECONDS + 120)
    assert not producer.is_alive()
    print(f"kills: {kills}")
    # every kill hit a worker that was consuming a stream still being produced
    assert all(k.processed > 0 and k.chunks_sent < CHUNKS for k in kills), kills

    # the restarted worker may replay from offset 0 (the bundled broker can drop an empty
    # group's offsets)
    metrics = wait_exact(
        stack, worker, exposures, telemetry, 420,
        "the statistics to equal numpy's after three SIGKILLs",
    )  # fmt: skip
    assert not [k for k, v in metrics.items() if k[0] == "rampmon_dead_letters_total" and v]
    lags = [value(metrics, "rampmon_consumer_lag_messages", topic=stack.topics[t])
            for t in ("exposures", "telemetry")]  # fmt: skip
    assert lags == [0, 0]

    wait_for(lambda: bool(stack.receiver.accepted), 60, "the rollback")
    time.sleep(5)  # more evaluations after the last restart: none may fire again
    deliveries = [(d.payload["decision"], d.idempotency_key) for d in stack.receiver.accepted]
    # one claim, one idempotency key; a kill between the receiver's 200 and the outbox's
    # bookkeeping may repeat the same delivery (at least once), which the key makes one
    assert len(deliveries) == 1 and deliveries[0][0] == "rollback", deliveries
    print(f"webhook requests: {stack.receiver.requests}")
