"""Faust's own cost on the worker's path, end to end: the most any Faust worker can reach.

Issue #6 asks envelopes of 100 events to reach 80% of the raw aiokafka + ``json.loads``
rate. :mod:`bench.floor` times, in one process, the steps exact per-unit state cannot
skip; what it cannot time is Faust itself, and its README section had to infer Faust's
per-event cost from the throughput table and a profile (anywhere from 0 to 1.3 us an
event). This measures it. On one embedded broker and one backlog (seed 000's units,
produced as :mod:`bench.throughput` produces them), each round runs, in turn:

* ``aiokafka + json``: :mod:`bench.throughput`'s baseline, unchanged;
* the worker's consumer with an agent that does nothing but one of these bodies:

  - ``none``: count the run's records (the fetch and Faust, no decode);
  - ``json``: ``json.loads`` of every message, the baseline's own work, so its ratio to
    the baseline is Faust's overhead alone;
  - ``decoder``: the worker's own :class:`streams.decode.Decoder` on the run, as
    ``Ingest.process_run`` starts: the most a worker that decodes as rampmon does can
    reach before it keeps any state.

"The worker's consumer" is :class:`streams.runs.RunApp` with the worker's settings that
decide the consume path: record runs, the fetch long-poll, the oldest-first scheduler, the
stream buffer, the collector tuned as the worker tunes it, raw bytes (no codec). It has no
tables, web server, Redis or publishing; its clock starts when Faust resumes the source
partitions after the group's rebalance, before the first fetch, as the baseline's starts
before its first ``getmany``. Every difference favours the Faust side, so its rate is an
upper bound of what a rampmon worker could reach.

Run (about 3 minutes on 2 cores with the defaults)::

    .venv/bin/python -m bench.framework --readme bench/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.readme import finish
from bench.throughput import (
    CONFIG,
    child_parser,
    code_state,
    generate,
    prepare,
    results_header,
    run_baseline,
    run_child,
    vm_hwm,
    with_rate,
)

__all__ = ["BODIES", "budget", "main", "render_markdown", "summarise"]

#: what the agent does with each run
BODIES = ("none", "json", "decoder")
#: issue #6's envelope target: this share of the baseline's rate
TARGET = 0.80
MIB = 1 << 20


# ---------------------------------------------------------------------------------------------
# The Faust side: one child process per run
# ---------------------------------------------------------------------------------------------


def body_of(body: str, exposures_topic: str) -> Callable[[str, list[bytes]], tuple[int, int]]:
    """``(topic, the run's message values) -> (events, rejected)`` for one body."""
    if body == "none":
        return lambda topic, values: (0, 0)
    if body == "json":

        def loads(topic: str, values: list[bytes]) -> tuple[int, int]:
            events = 0
            for raw in values:
                doc = json.loads(raw)
                events += len(doc) if isinstance(doc, list) else 1
            return events, 0

        return loads
    if body == "decoder":
        from monitor.config import parse_config
        from streams.decode import Decoder

        decoder = Decoder(parse_config(CONFIG.read_text(), source=str(CONFIG)))

        def decode(topic: str, values: list[bytes]) -> tuple[int, int]:
            run = decoder.exposures_run if topic == exposures_topic else decoder.telemetry_run
            decoded = run(values)
            return len(decoded.events), len(decoded.rejected)

        return decode
    raise ValueError(f"unknown body {body!r}")


def agent_main(args: argparse.Namespace) -> int:
    import faust

    from streams import gctune
    from streams.app import STREAM_BUFFER_RUNS, _raw_schema
    from streams.runs import RunApp, records_of
    from streams.scheduling import OldestFirst
    from streams.settings import Settings

    def default(name: str) -> Any:
        return Settings.model_fields[name].default

    topics = (args.exposures_topic, args.telemetry_topic)
    app = RunApp(
        args.app_id,
        datadir=args.data_dir,
        run_topics=topics,
        fetch_max_wait_seconds=default("consumer_fetch_max_wait_seconds"),
        ConsumerScheduler=OldestFirst,
        broker=f"kafka://{args.bootstrap}",
        store="memory://",
        autodiscover=False,
        web_enabled=False,
        topic_partitions=args.partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=default("broker_session_timeout_seconds"),
        broker_rebalance_timeout=default("broker_rebalance_timeout_seconds"),
        broker_heartbeat_interval=1.0,
        table_standby_replicas=0,
        stream_buffer_maxsize=STREAM_BUFFER_RUNS,
    )
    source = app.topic(*topics, partitions=args.partitions, schema=_raw_schema())
    work = body_of(args.body, args.exposures_topic)
    seen = {"messages": 0, "events": 0, "rejected": 0}
    start: dict[str, float] = {}

    @app.on_rebalance_complete.connect
    async def started(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Faust resumes the source partitions right after this signal: the clock starts
        # before the first fetch, as the baseline's does. Starting it at the agent's first
        # run instead left that fetch out, up to 8 MiB of records parsed off the clock
        # (one fetch of 1 MiB per partition): the whole of a small backlog
        if not start:
            start["wall"], start["cpu"] = time.perf_counter(), time.process_time()

    @app.agent(source, name="drain")
    async def drain(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            values = [r.value for r in records_of(msg)]
            good, bad = work(msg.topic, values)
            seen["messages"] += len(values)
            seen["events"] += good
            seen["rejected"] += bad
            if seen["messages"] >= args.messages:
                wall, cpu = time.perf_counter(), time.process_time()
                result = {
                    "body": args.body,
                    **seen,
                    "seconds": wall - start["wall"],
                    "cpu_seconds": cpu - start["cpu"],
                    "peak_rss_bytes": vm_hwm(os.getpid()) or 0,
                }
                # fd 1 itself: the Faust worker sends sys.stdout to its log
                os.write(1, json.dumps(result).encode() + b"\n")
                # the measurement is taken; a clean stop would only commit offsets of a
                # group nobody reads again (each run has its own)
                os._exit(0)

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    gctune.tune(default("gc_gen0_threshold"))
    worker.spinner = None  # as the rampmon worker: no DEBUG root logger (streams.cli)
    worker.execute_from_commandline()
    return 1  # only reached if the worker stopped before the backlog was read


def run_agent(
    bootstrap: str,
    topics: Mapping[str, str],
    partitions: int,
    messages: int,
    events: int,
    body: str,
    timeout: float,
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "bench.framework", "agent",
        "--bootstrap", bootstrap,
        "--exposures-topic", topics["exposures"],
        "--telemetry-topic", topics["telemetry"],
        "--partitions", str(partitions),
        "--messages", str(messages),
        "--body", body,
        "--app-id", f"bench-framework-{uuid.uuid4().hex[:8]}",
    ]  # fmt: skip
    what = f"Faust agent ({body})"
    # Faust's data dir defaults to one in the working directory, the repository: the
    # parent owns it, so that it goes whether the child ends, fails or is killed
    with tempfile.TemporaryDirectory(prefix="rampmon-bench-framework-") as data_dir:
        got = run_child([*cmd, "--data-dir", data_dir], what, timeout)
    result = with_rate(got, events, decoded=body != "none", what=what)
    result["cpu_us_per_event"] = result["cpu_seconds"] / events * 1e6
    return result


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def budget(baseline_rate: float, ceiling_rate: float, target: float = TARGET) -> float:
    """Microseconds an event a worker may spend beyond the ``ceiling_rate`` path and still
    reach ``target`` of ``baseline_rate`` (negative: the path alone misses it)."""
    return (1 / (target * baseline_rate) - 1 / ceiling_rate) * 1e6


def summarise(rounds: Sequence[Mapping[str, Any]], bodies: Sequence[str]) -> dict[str, Any]:
    """Per body: the median rate, the median of its ratios to the same round's baseline,
    the median CPU per event, and the per-event budget left at the median rates."""
    base = statistics.median(r["baseline"]["events_per_second"] for r in rounds)
    out: dict[str, Any] = {"baseline_events_per_second": base, "bodies": {}}
    for body in bodies:
        rates = [r[body]["events_per_second"] for r in rounds]
        paired = [r[body]["events_per_second"] / r["baseline"]["events_per_second"] for r in rounds]
        rate = statistics.median(rates)
        out["bodies"][body] = {
            "events_per_second": rate,
            "ratio": rate / base,
            "paired_ratios": paired,
            "paired_median": statistics.median(paired),
            "cpu_us_per_event": statistics.median(r[body]["cpu_us_per_event"] for r in rounds),
            "peak_rss_bytes": max(r[body]["peak_rss_bytes"] for r in rounds),
            "budget_us_per_event": budget(base, rate),
        }
    return out


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    from streams.embedded import EmbeddedBroker

    t_all = time.perf_counter()
    bodies = [b for b in args.bodies.split(",") if b]
    exposures, telemetry, _ = generate(args.units, args.seed, args.duration)
    events = len(exposures) + len(telemetry)
    results: dict[str, Any] = {
        **results_header(command),
        "parameters": {
            "units": args.units,
            "seed": args.seed,
            "duration_seconds": args.duration,
            "partitions": args.partitions,
            "envelope": args.envelope,
            "events": events,
            "rounds": args.rounds,
            "bodies": bodies,
            "target": TARGET,
        },
        "rounds": [],
    }
    with EmbeddedBroker() as broker:
        # one backlog for every run: the baseline reads without a group and each agent in
        # a group of its own, so each reads it from the start
        backlog = prepare(broker, args.envelope, exposures, telemetry, args.partitions)
        results["parameters"]["messages"] = backlog.messages
        print(f"{events:,} events in {backlog.messages:,} messages", flush=True)
        for i in range(args.rounds):
            # the order rotates, so no path always runs first after a pause
            order = ["baseline", *bodies]
            order = order[i % len(order) :] + order[: i % len(order)]
            one: dict[str, Any] = {"order": order}
            for name in order:
                if name == "baseline":
                    one[name] = run_baseline(
                        broker.bootstrap, backlog.topics, args.partitions, backlog.messages,
                        events, "json",
                    )  # fmt: skip
                else:
                    one[name] = run_agent(
                        broker.bootstrap, backlog.topics, args.partitions, backlog.messages,
                        events, name, args.timeout,
                    )  # fmt: skip
                label = "aiokafka + json" if name == "baseline" else f"Faust + {name}"
                print(
                    f"  round {i + 1} {label:16s} {one[name]['events_per_second']:>10,.0f} "
                    "events/s",
                    flush=True,
                )
            results["rounds"].append(one)
    results["summary"] = summarise(results["rounds"], bodies)
    results["runtime_seconds"] = time.perf_counter() - t_all
    if code_state() != results["code"]:
        results["code_changed_during_run"] = True
    return results


def render_markdown(results: Mapping[str, Any]) -> str:
    p, s = results["parameters"], results["summary"]
    code = results["code"]
    lines = [
        f"{results['date'][:10]}, commit {code['commit'][:10]}"
        f"{' (uncommitted changes)' if code.get('dirty_files') else ''}, "
        f"`{results['command']}`: {p['events']:,} events in {p['messages']:,} messages "
        f"({p['envelope']} event(s)/message), {p['partitions']} partitions, "
        f"{p['rounds']} rounds, {results['runtime_seconds']:.0f} s.",
        "",
        "| path | events/s (median) | vs json | paired (median) | CPU µs/event "
        f"| left for the worker's state at {p['target']:.0%}, µs/event | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| aiokafka + json | {s['baseline_events_per_second']:,.0f} | 1.000 | | | "
        f"{budget(s['baseline_events_per_second'], s['baseline_events_per_second']):.2f} | |",
    ]
    for body, b in s["bodies"].items():
        lines.append(
            f"| Faust + {body} | {b['events_per_second']:,.0f} | {b['ratio']:.3f} | "
            f"{b['paired_median']:.3f} | {b['cpu_us_per_event']:.2f} | "
            f"{b['budget_us_per_event']:.2f} | {b['peak_rss_bytes'] / MIB:.0f} |"
        )
    lines.append("")
    for body, b in s["bodies"].items():
        pairs = ", ".join(f"{x:.3f}" for x in b["paired_ratios"])
        lines.append(f"- Faust + {body}, each round against its own baseline run: {pairs}.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["agent"]:
        a = child_parser("python -m bench.framework agent")
        a.add_argument("--body", choices=BODIES, required=True)
        a.add_argument("--app-id", required=True)
        a.add_argument("--data-dir", required=True, help="Faust's data dir (the parent's)")
        return agent_main(a.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(
        prog="python -m bench.framework",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--units", type=int, default=30_000)
    parser.add_argument("--seed", type=int, default=501)
    parser.add_argument("--duration", type=float, default=1200.0, help="event-time span, seconds")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--envelope", type=int, choices=(1, 100), default=100)
    parser.add_argument("--bodies", default=",".join(BODIES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=300.0, help="per agent run")
    parser.add_argument("--out", type=Path, help="default bench/results/framework-<date>.json")
    parser.add_argument("--readme", type=Path, help="rewrite this README's framework block")
    args = parser.parse_args(argv)
    for body in args.bodies.split(","):
        if body not in BODIES:
            parser.error(f"--bodies: unknown body {body!r} (known: {', '.join(BODIES)})")
    return finish("framework", args, argv, run, render_markdown)


if __name__ == "__main__":
    sys.exit(main())
