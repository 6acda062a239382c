"""Review fuzz helpers: generate message streams, run an oracle and a crashing worker."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import orjson
from prometheus_client import CollectorRegistry

from monitor.unitstate import decode_unit
from streams.ingest import Ingest
from streams.metrics import Metrics
from streams.producer import partition_of
from streams.runs import OneRecord
from streams.windowrecords import is_unit_key
from tests.unit.test_crash_replay import CONFIG, _recovered, _Table

OPTIONS: dict[str, Any] = {"max_pending": 64}


def _ingest(units: Any, config: Any = CONFIG, **options: Any) -> Ingest:
    return Ingest(
        config,
        units=units,
        metrics=Metrics(CollectorRegistry()),
        stage_index=lambda _e, _ts: 3,
        topics={"exposures": "x", "telemetry": "t"},
        partitions=4,
        max_message_bytes=10**7,
        **OPTIONS,
        **options,
    )


PARTITIONS = 4
EXP = "workflow_assistant"


def config(
    two: bool = False, size: float = 10.0, lateness: float = 300.0, expires: float = 3600.0
) -> Any:
    w = CONFIG.windows.model_copy(
        update={
            "size_seconds": size,
            "allowed_lateness_seconds": lateness,
            "expires_seconds": expires,
        }
    )
    exps = list(CONFIG.experiments)
    if two:
        exps.append(exps[0].model_copy(update={"name": "second"}))
    return CONFIG.model_copy(update={"windows": w, "experiments": exps})


def units_by_partition(n: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
    i = 0
    while min(len(v) for v in out.values()) < n:
        u = f"u{i}"
        out[partition_of(u, PARTITIONS)].append(u)
        i += 1
    return {p: v[:n] for p, v in out.items()}


def stream(
    seed: int,
    cfg: Any,
    *,
    n_units: int = 6,
    n_messages: int = 60,
    ts_spread: float = 60.0,
    jitter: float = 0.0,
    poison: float = 0.05,
    per_message: int = 4,
) -> list[tuple[str, int, int, bytes]]:
    """(topic, partition, offset, value) in global delivery order."""
    rng = random.Random(seed)
    units = units_by_partition(n_units)
    exps = [e.name for e in cfg.experiments]
    metrics = ["tasks", "revenue", "latency_ms", "error_session"]
    offsets: dict[tuple[str, int], int] = {}
    out = []
    t = 1e9
    ids = 0
    for _ in range(n_messages):
        topic = rng.choice("xttt")
        p = rng.randrange(PARTITIONS)
        off = offsets[(topic, p)] = offsets.get((topic, p), -1) + 1
        if rng.random() < poison:
            out.append((topic, p, off, b"{broken"))
            continue
        events = []
        for _ in range(rng.randint(1, per_message)):
            t += rng.random() * ts_spread / n_messages
            ts = t - (rng.random() * jitter if jitter else 0.0)
            u = rng.choice(units[p])
            if topic == "x":
                events.append(
                    {
                        "event_id": f"x{ids}",
                        "ts": ts,
                        "experiment": rng.choice(exps),
                        "unit_id": u,
                        "variant": rng.choice(["control", "treatment"]),
                        "covariates": {"pre_tasks_28": rng.random()},
                    }
                )
            else:
                ev: dict[str, Any] = {
                    "event_id": f"t{rng.randrange(ids + 1) if rng.random() < 0.1 else ids}",
                    "ts": ts,
                    "unit_id": u,
                    "metric": rng.choice(metrics),
                    "value": float(rng.randint(0, 1)) if rng.random() < 0.5 else rng.random(),
                }
                if rng.random() < 0.2:
                    ev["experiment"] = rng.choice(exps)
                events.append(ev)
            ids += 1
        out.append((topic, p, off, orjson.dumps(events)))
    return out


def runs_of(
    messages: list[tuple[str, int, int, bytes]], rng: random.Random, max_len: int = 6
) -> list[tuple[str, int, list[Any]]]:
    """Consecutive messages of one topic partition, cut at random; the global order of
    the first message of each run is kept (a run is emitted when the next message is on
    another topic partition or its length is reached)."""
    out: list[tuple[str, int, list[Any]]] = []
    cur: tuple[str, int] | None = None
    run: list[Any] = []
    limit = rng.randint(1, max_len)
    for topic, p, off, raw in messages:
        if cur != (topic, p) or len(run) >= limit:
            if run:
                out.append((cur[0], cur[1], run))  # type: ignore[index]
            cur, run, limit = (topic, p), [], rng.randint(1, max_len)
        run.append(OneRecord(off, None, raw))
    if run:
        out.append((cur[0], cur[1], run))  # type: ignore[index]
    return out


def snapshot_state(ingest: Any) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for p in range(PARTITIONS):
        s = ingest.partition_stats(p)
        part: dict[str, Any] = {"wm": s.watermark, "seq": s.seq, "offsets": dict(s.offsets)}
        for exp in ingest.aggs:
            st = s.stats(exp, ingest.aggs[exp])
            part[exp] = (
                st.units.n.tolist(),
                st.units.sum,
                st.units.gram,
                [sk for sk in st.sketches],
                st.segments,
            )
            part["w:" + exp] = {
                k: (w.exposures.tolist(), w.events.to_wire()) for k, w in s.windows[exp].items()
            }
        out[p] = part
    units = {}
    for k, v in ingest.units_table.data.items():
        if is_unit_key(k):
            d = decode_unit(v)
            units[k] = d
    out["units"] = units
    return out


def diff(a: dict[Any, Any], b: dict[Any, Any]) -> list[str]:
    bad = []
    for p in range(PARTITIONS):
        pa, pb = a[p], b[p]
        for key in ("wm", "seq", "offsets"):
            if pa[key] != pb[key]:
                bad.append(f"p{p} {key}: {pa[key]} != {pb[key]}")
        for k in pa:
            if k in ("wm", "seq", "offsets"):
                continue
            if k.startswith("w:"):
                wa, wb = pa[k], pb[k]
                if wa.keys() != wb.keys():
                    bad.append(f"p{p} {k} starts {sorted(wa)} != {sorted(wb)}")
                    continue
                for s in wa:
                    if (
                        wa[s][0] != wb[s][0]
                        or wa[s][1]["n"] != wb[s][1]["n"]
                        or not np.allclose(wa[s][1]["sum"], wb[s][1]["sum"], rtol=1e-9, atol=1e-9)
                    ):
                        bad.append(
                            f"p{p} {k} {s}: {wa[s][0]} n={wa[s][1]['n']} != "
                            f"{wb[s][0]} n={wb[s][1]['n']}"
                        )
            else:
                na, sa, ga, ska, sega = pa[k]
                nb, sb, gb, skb, segb = pb[k]
                wa_, wb_ = sega.to_wire(), segb.to_wire()
                if wa_["n"] != wb_["n"] or not np.allclose(wa_["sum"], wb_["sum"], atol=1e-9):
                    bad.append(f"p{p} {k} segments")
                if (
                    na != nb
                    or not np.allclose(sa, sb, rtol=1e-9, atol=1e-9)
                    or not np.allclose(ga, gb, rtol=1e-9, atol=1e-6)
                ):
                    bad.append(f"p{p} {k} unit stats n {na} != {nb}")
                if not all(x == y for x, y in zip(ska, skb, strict=True)):
                    bad.append(f"p{p} {k} sketches")
    ua, ub = a["units"], b["units"]
    if ua.keys() != ub.keys():
        bad.append(f"unit keys {sorted(ua.keys() ^ ub.keys())}")
    for k in ua.keys() & ub.keys():
        x, y = ua[k], ub[k]
        if (x.exposure_offset, x.telemetry_offset, x.pending) != (
            y.exposure_offset,
            y.telemetry_offset,
            y.pending,
        ):
            bad.append(f"unit {k}: {x} != {y}")
        elif {e: (v.variant, v.stage, v.exposed_at) for e, v in x.assignments.items()} != {
            e: (v.variant, v.stage, v.exposed_at) for e, v in y.assignments.items()
        } or not all(
            np.allclose(x.assignments[e].values, y.assignments[e].values) for e in x.assignments
        ):
            bad.append(f"unit {k} assignments: {x.assignments} != {y.assignments}")
    return bad


def oracle(cfg: Any, runs: list[tuple[str, int, list[Any]]]) -> Any:
    w = _ingest(_Table(), cfg)
    for topic, p, recs in runs:
        w.process_run(topic, p, recs)
        w.changelog.take()
    return w


def crashing(
    cfg: Any,
    runs: list[tuple[str, int, list[Any]]],
    rng: random.Random,
    *,
    batch_bytes: int,
    crashes: int = 2,
) -> tuple[Any, list[str]]:
    """Process ``runs`` with ``crashes`` crashes at random points: each keeps, per
    partition, a random prefix of the changelog batches not covered by the restart point,
    recovers a fresh worker from them and redelivers the same runs from a run at or
    before the first one not wholly kept."""
    log: dict[int, list[Any]] = {p: [] for p in range(PARTITIONS)}
    #: per run index, per partition, how many batches that partition's log had before it
    marks: list[dict[int, int]] = []
    w = _ingest(_Table(), cfg, changelog_batch_bytes=batch_bytes)
    notes = []
    crash_at = sorted(rng.sample(range(len(runs)), min(crashes, len(runs))))
    i = 0
    while i < len(runs):
        topic, p, recs = runs[i]
        if len(marks) <= i:
            marks.append({q: len(log[q]) for q in range(PARTITIONS)})
        else:
            marks[i] = {q: len(log[q]) for q in range(PARTITIONS)}
        w.process_run(topic, p, recs)
        batches = w.changelog.take()
        log[p].extend(batches)
        if crash_at and crash_at[0] == i:
            crash_at.pop(0)
            # restart from run r0 <= i; everything before r0 is kept
            r0 = rng.randint(max(0, i - 4), i)
            kept: dict[int, list[Any]] = {}
            for q in range(PARTITIONS):
                lo = marks[r0][q]
                kept[q] = log[q][: rng.randint(lo, len(log[q]))]
            notes.append(
                f"crash after run {i} (p{p}, {len(batches)} batches), restart {r0}, "
                f"kept {[len(kept[q]) for q in kept]} of {[len(log[q]) for q in log]}"
            )
            log = kept
            table = _recovered([b for q in range(PARTITIONS) for b in log[q]])
            w = _ingest(table, cfg, changelog_batch_bytes=batch_bytes)
            i = r0
            continue
        i += 1
    return w, notes


class Poison(Exception):
    pass


def poisoned(w: Any, poison: set[tuple[str, int, int]], where: str) -> Any:
    """Make ``w`` raise, at ``where``, on any run holding a poisoned message."""
    state = {"hit": False}
    real_run = w._process_run

    def process_run(topic: str, partition: int, records: Any, stats: Any) -> Any:
        state["hit"] = any((topic, partition, r.offset) in poison for r in records)
        if state["hit"] and where == "start":
            raise Poison("start")
        return real_run(topic, partition, records, stats)

    w._process_run = process_run
    # the step that raises, after it has run, on a poisoned run; its result is passed on
    # (a wrapper that dropped _split's plan sealed every split run whole)
    steps = {
        "apply": [(w, "_apply")],
        "expire": [(w, "_expire")],
        "split": [(w, "_split")],
        "attrib": [(w.attributor, "apply_exposures"), (w.attributor, "apply_telemetry")],
    }
    for owner, name in steps.get(where, []):
        real = getattr(owner, name)

        def wrapped(*a: Any, _real: Any = real) -> Any:
            out = _real(*a)
            if state["hit"]:
                raise Poison(where)
            return out

        setattr(owner, name, wrapped)
    return w


DEAD: set[tuple[str, int, int]] = set()


def drive(w: Any, topic: str, p: int, recs: Any) -> None:
    try:
        w.process_run(topic, p, recs)
    except Poison:
        for rec, r in w.isolate(topic, p, recs):
            if r.reason == "processing_error":
                DEAD.add((topic, p, rec.offset))


def crashing2(
    cfg: Any,
    runs: list[tuple[str, int, list[Any]]],
    rng: random.Random,
    *,
    batch_bytes: int,
    crashes: int = 2,
    poison: set | None = None,
    where: str = "apply",
    resplit: bool = False,
    check_rebuild: bool = False,
) -> tuple[Any, list[str]]:
    """As crashing, with a poisoned message (a bug) handled as the agent does, runs
    re-cut at random after a restart (``resplit``), and a rebuild compared with the live
    worker after each run (``check_rebuild``)."""
    poison = poison or set()

    def new(table: Any) -> Any:
        return poisoned(_ingest(table, cfg, changelog_batch_bytes=batch_bytes), poison, where)

    log: dict[int, list[Any]] = {p: [] for p in range(PARTITIONS)}
    w = new(_Table())
    notes: list[str] = []
    crash_at = sorted(rng.sample(range(len(runs)), min(crashes, len(runs))))
    todo = list(runs)
    marks: list[dict[int, int]] = []
    done = 0  # runs of todo processed since the last restart
    i = 0
    while i < len(todo):
        topic, p, recs = todo[i]
        marks = [*marks[:i], {q: len(log[q]) for q in range(PARTITIONS)}]
        drive(w, topic, p, recs)
        batches = w.changelog.take()
        log[p].extend(batches)
        if check_rebuild:
            fresh = _ingest(_recovered([b for q in range(PARTITIONS) for b in log[q]]), cfg)
            bad = diff(snapshot_state(fresh), snapshot_state(w))
            if bad:
                notes.append(f"rebuild differs after run {i}: {bad[:3]}")
        done += 1
        if crash_at and done >= crash_at[0]:
            crash_at.pop(0)
            r0 = rng.randint(max(0, i - 4), i)
            kept = {q: log[q][: rng.randint(marks[r0][q], len(log[q]))] for q in range(PARTITIONS)}
            notes.append(f"crash after run {i} (p{p}, {len(batches)} batches), restart {r0}")
            log = kept
            w = new(_recovered([b for q in range(PARTITIONS) for b in log[q]]))
            rest = todo[r0:]
            if resplit:
                msgs = [(t, q, r.offset, r.value) for t, q, rs in rest for r in rs]
                rest = runs_of(msgs, rng)
            todo = todo[:r0] + rest
            marks = marks[: r0 + 1]
            i = r0
            done = 0
            continue
        i += 1
    return w, notes


def interleave(by_tp: dict[tuple[str, int], list[Any]], rng: random.Random) -> list[Any]:
    """The messages of each topic partition, in order, interleaved at random."""
    queues = {tp: list(ms) for tp, ms in by_tp.items() if ms}
    out = []
    while queues:
        tp = rng.choice(sorted(queues))
        take = rng.randint(1, 4)
        out += queues[tp][:take]
        queues[tp] = queues[tp][take:]
        if not queues[tp]:
            del queues[tp]
    return out


def crashing_reordered(
    cfg: Any, msgs: list[Any], rng: random.Random, *, batch_bytes: int, crashes: int = 2
) -> tuple[Any, list[str]]:
    """Crashes at random points, each followed by a redelivery from per-topic-partition
    commit points (at or before each one's first message not wholly written), the topic
    partitions interleaved at random."""
    log: dict[int, list[Any]] = {p: [] for p in range(PARTITIONS)}
    w = _ingest(_Table(), cfg, changelog_batch_bytes=batch_bytes)
    notes: list[str] = []
    pending_msgs = list(msgs)
    all_by_tp: dict[tuple[str, int], list[Any]] = {}
    for m in msgs:
        all_by_tp.setdefault((m[0], m[1]), []).append(m)
    commit: dict[tuple[str, int], int] = {}
    for c in range(crashes + 1):
        runs = runs_of(pending_msgs, rng)
        base = {q: len(log[q]) for q in range(PARTITIONS)}
        #: per run: its tp, first offset, partition, the log length of its partition after it
        done = []
        stop = rng.randrange(len(runs)) if c < crashes and runs else len(runs)
        for topic, p, recs in runs[: stop + 1] if c < crashes else runs:
            w.process_run(topic, p, recs)
            log[p].extend(w.changelog.take())
            done.append(((topic, p), recs[0].offset, p, len(log[p])))
        if c == crashes:
            break
        kept = {q: rng.randint(base[q], len(log[q])) for q in range(PARTITIONS)}
        # the first message of each tp a run not wholly kept holds
        first_lost: dict[tuple[str, int], int] = {}
        for tp, off, p, end in done:
            if end > kept[p] and tp not in first_lost:
                first_lost[tp] = off
        new_commit: dict[tuple[str, int], int] = {}
        for tp in all_by_tp:
            hi = first_lost.get(tp)
            if hi is None:
                # every run of it kept: up to past its last processed message
                offs = [r.offset for t, p_, rs in runs[: stop + 1] for r in rs if (t, p_) == tp]
                hi = max(offs) + 1 if offs else commit.get(tp, 0)
            lo = commit.get(tp, 0)
            new_commit[tp] = rng.randint(max(lo, hi - 6), hi) if hi > lo else lo
        commit = new_commit
        log = {q: log[q][: kept[q]] for q in range(PARTITIONS)}
        notes.append(f"crash {c}: kept {kept}, commit {commit}")
        w = _ingest(
            _recovered([b for q in range(PARTITIONS) for b in log[q]]),
            cfg,
            changelog_batch_bytes=batch_bytes,
        )
        by_tp = {tp: [m for m in ms if m[2] >= commit[tp]] for tp, ms in all_by_tp.items()}
        pending_msgs = interleave(by_tp, rng)
    return w, notes
