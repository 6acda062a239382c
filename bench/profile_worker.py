"""Where the worker's per-message time goes: py-spy samples of ``rampmon worker`` on a backlog.

Same set-up as :mod:`bench.throughput` (embedded broker and Redis, seed 000's events produced
to fresh topics before the worker starts, stage history set first). For each envelope mode,
``py-spy record --nonblocking`` attaches to the real worker process as soon as its /metrics
shows a processed event and is stopped (SIGINT) when a scrape shows them all, so the samples
cover exactly the drain. The raw collapsed stacks (one line per distinct stack, by function)
are kept in ``bench/results/profile-<envelope>.txt``, the summary in
``bench/results/profile-<envelope>-summary.txt`` and both modes' figures in
``bench/results/throughput-profile-<date>.json``. Summarised three ways:

* **self time by module** (the leaf frame's package: faust, mode, aiokafka, asyncio, monitor,
  streams, msgspec/orjson, numpy, prometheus_client, ...);
* **inclusive time by stage of the per-message path** (a sample counts for the first rule
  whose function is on its stack, rules ordered from the most specific): table write ->
  changelog send, our decode, attribution, unit-state codec, statistics/numpy, Faust's
  consumer/drain path, acking, sensors, the aiokafka fetcher thread, timers...;
* **top functions**, self and inclusive.

Shares are of samples; "us" columns multiply them by the worker's CPU time per event over
the same interval (utime + stime from /proc). Without ``--native`` the time of C extensions
(msgspec, orjson, numpy internals) is charged to the Python frame that called them.

Run (about 3 minutes on 2 cores with the defaults)::

    .venv/bin/python -m bench.profile_worker [--units 30000] [--envelope 1|100|both]
        [--rate 250] [--native] [--worker-env NAME=VALUE] [--tag SUFFIX]

Needs ``py-spy`` in the venv (``pip install 'py-spy>=0.3.14'``) and ptrace rights over a
child process (root, or ``kernel.yama.ptrace_scope`` <= 1 for one's own children).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.throughput import (
    RESULTS,
    ROOT,
    code_state,
    extra_env,
    generate,
    machine,
    prepare,
    run_rampmon,
    set_bench_stage,
    truth_of,
    worker_env,
)

Frame = tuple[str, str]  # (function, file)

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

#: self-time categories by the top-level package of the leaf frame's file
MODULE_CATEGORIES: dict[str, str] = {
    "faust": "faust",
    "mode": "mode",
    "aiokafka": "aiokafka",
    "kafka": "aiokafka",
    "monitor": "monitor (ours)",
    "streams": "streams (ours)",
    "alerts": "alerts (ours)",
    "msgspec": "msgspec/orjson",
    "orjson": "msgspec/orjson",
    "numpy": "numpy",
    "prometheus_client": "prometheus_client",
    "redis": "redis/aiohttp",
    "aiohttp": "redis/aiohttp",
    "yarl": "redis/aiohttp",
    "multidict": "redis/aiohttp",
    "async_timeout": "redis/aiohttp",
    "asyncio": "asyncio + selectors (stdlib)",
    "selectors": "asyncio + selectors (stdlib)",
    "logging": "logging (stdlib)",
}

EVENT_LOOP = "asyncio event loop: scheduling, selectors"

#: inclusive stages of the per-message path: (name, [(function, file substring), ...]).
#: A sample counts for the first stage any of whose frames is on its stack, so the order
#: goes from the most specific (a changelog send inside a table write inside Ingest) out.
STAGES: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    (
        "logging: LogRecords for DEBUG calls (root logger left at DEBUG)",
        (("Logger._log", "logging/"), ("Logger.makeRecord", "logging/")),
    ),
    ("decode: streams.decode.Decoder (msgspec + checks)", (("", "streams/decode.py"),)),
    ("unit state codec: monitor.unitstate (msgpack)", (("", "monitor/unitstate.py"),)),
    (
        "table write, sync: Table.__setitem__ -> on_key_set -> send_changelog",
        (
            ("__setitem__", "faust/tables/"),
            ("__setitem__", "mode/utils/collections.py"),
            ("on_key_set", "faust/tables/"),
            ("send_changelog", "faust/tables/"),
        ),
    ),
    (
        "table read: Table.get / on_key_get",
        (("get", "faust/tables/"), ("__getitem__", "faust/tables/"), ("on_key_get", "faust/")),
    ),
    (
        "window record: numpy moments + orjson (Ingest._update_window)",
        (("_update_window", "streams/ingest.py"),),
    ),
    (
        "statistics: UnitDeltas + UnitStatsAggregation.update (numpy)",
        (("_apply", "streams/ingest.py"),),
    ),
    ("attribution: monitor.attribution", (("", "monitor/attribution.py"),)),
    ("Ingest.process, rest (routing, prometheus counters)", (("process", "streams/ingest.py"),)),
    ("agent body, rest (streams/app.py ingest)", (("ingest", "streams/app.py"),)),
    ("publish timer: Ingest.snapshots + Partial.encode", (("publish", "streams/app.py"),)),
    ("collect agent: partials table", (("collect", "streams/app.py"),)),
    ("evaluate timer: merge_partials + build_readout + gauges", (("evaluate", "streams/app.py"),)),
    ("/metrics scrape: generate_latest", (("generate_latest", "prometheus_client/"),)),
    (
        "Redis timers: stage refresh, outbox delivery",
        (("refresh_stages", "streams/app.py"), ("deliver", "streams/app.py"), ("", "redis/")),
    ),
    ("Faust sensors / Monitor", (("", "faust/sensors/"),)),
    (
        "aiokafka producer: send(), batches, Sender task, socket writes",
        (("", "aiokafka/producer/"), ("send", "aiokafka/conn.py"), ("send", "aiokafka/client.py")),
    ),
    (
        "Faust send path: Topic.publish_message -> Producer.send (buffered changelog/partials)",
        (
            ("publish_message", "faust/"),
            ("", "faust/transport/producer.py"),
            ("send", "faust/transport/drivers/aiokafka.py"),
        ),
    ),
    (
        "Faust acking / offset commit",
        (
            ("ack", "faust/"),
            ("commit", "faust/transport/"),
            ("_commit", "faust/transport/"),
            ("_commit_offsets", "faust/transport/"),
            ("_commit_handler", "faust/transport/"),
            ("_commit_tps", "faust/transport/"),
            ("_commit_livelock_detector", "faust/transport/"),
        ),
    ),
    (
        "Faust consumer drain path: _drain_messages, wait_first, on_message -> channel",
        (
            ("_drain_messages", "faust/transport/consumer.py"),
            ("on_message", "faust/transport/conductor.py"),
            ("", "faust/transport/consumer.py"),
            ("", "faust/transport/conductor.py"),
            ("", "faust/transport/drivers/aiokafka.py"),
        ),
    ),
    (
        "Faust stream/agent machinery: Stream.__aiter__, Event, Channel",
        (
            ("", "faust/streams.py"),
            ("", "faust/events.py"),
            ("", "faust/agents/"),
            ("", "faust/channels.py"),
            ("", "faust/topics.py"),
        ),
    ),
    ("aiokafka consumer: fetch, record parsing, network", (("", "aiokafka/"),)),
    ("mode services / timers", (("", "mode/"),)),
    (EVENT_LOOP, (("", "asyncio/"), ("", "selectors.py"))),
)


def parse_frame(text: str) -> Frame:
    m = _FRAME.match(text.strip())
    if not m:
        return text.strip(), ""
    return m.group("func"), m.group("file")


@dataclass
class Profile:
    """Collapsed stacks (root first) with their sample counts."""

    stacks: list[tuple[tuple[Frame, ...], int]] = field(default_factory=list)
    threads: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.stacks)


def parse_collapsed(lines: Iterable[str]) -> Profile:
    """py-spy ``--format raw`` output (``frame;frame;... count``, root first)."""
    prof = Profile()
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        stack_text, _, count_text = line.rpartition(" ")
        try:
            count = int(count_text)
        except ValueError:
            continue
        parts = stack_text.split(";")
        thread = ""
        if parts and (parts[0].startswith("thread (") or parts[0].startswith("process ")):
            # --threads / --subprocesses put "process N:..." and "thread (0x..)" roots first
            while parts and (parts[0].startswith("thread (") or parts[0].startswith("process ")):
                if parts[0].startswith("thread ("):
                    thread = parts[0]
                parts = parts[1:]
        frames = tuple(parse_frame(p) for p in parts)
        prof.stacks.append((frames, count))
        prof.threads[thread] += count
    return prof


def module_category(file: str) -> str:
    """Category of a py-spy file name (``faust/topics.py``, ``selectors.py``, ``<string>``)."""
    for marker in ("site-packages/", "dist-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    top = file.split("/", 1)[0].removesuffix(".py")
    if top in MODULE_CATEGORIES:
        return MODULE_CATEGORIES[top]
    if top.startswith("<frozen") or top in sys.stdlib_module_names:
        return "python stdlib, other"
    if top.startswith("<"):
        return "generated code (<string>: dataclass __init__ etc.)"
    return "other"


def by_module(prof: Profile) -> Counter[str]:
    out: Counter[str] = Counter()
    for frames, n in prof.stacks:
        out[module_category(frames[-1][1]) if frames else "(no Python frame)"] += n
    return out


_LOOP_FRAMES = {"Handle._run", "BaseEventLoop._run_once"}


def task_frames(frames: Sequence[Frame]) -> Sequence[Frame]:
    """The frames of the task or callback the event loop was running (below its last turn).

    Every stack starts with the worker's entry points (``mode/worker.py``, ``run_forever``),
    which must not count for any stage; what a loop turn runs is below ``Handle._run``.
    """
    for i in range(len(frames) - 1, -1, -1):
        func, file = frames[i]
        if func in _LOOP_FRAMES and "asyncio/" in file:
            return frames[i + 1 :]
    return frames


def stage_of(frames: Sequence[Frame]) -> str:
    frames = task_frames(frames)
    if not frames:
        return EVENT_LOOP
    for name, rules in STAGES:
        for func, file in frames:
            for want_func, want_file in rules:
                if want_file in file and (
                    not want_func or func == want_func or func.endswith("." + want_func)
                ):
                    return name
    return "other"


def by_stage(prof: Profile) -> Counter[str]:
    out: Counter[str] = Counter()
    for frames, n in prof.stacks:
        out[stage_of(frames)] += n
    return out


def short(frame: Frame) -> str:
    func, file = frame
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{func} ({file})"


def top_functions(
    prof: Profile, k: int = 15
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The ``k`` largest by self samples and by inclusive samples (each counted once a stack)."""
    self_: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, n in prof.stacks:
        if frames:
            self_[short(frames[-1])] += n
        for name in {short(f) for f in frames}:
            incl[name] += n
    return self_.most_common(k), incl.most_common(k)


def pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:5.1f}%" if total else "  n/a"


def summary_text(prof: Profile, title: str, us_per_event: float | None) -> str:
    total = prof.total

    def us(n: int) -> str:
        # the share of samples times the worker's measured CPU per event
        return f"{us_per_event * n / total:7.1f} us" if us_per_event and total else ""

    out = [f"## {title}", f"samples: {total:,}"]
    if us_per_event is not None:
        out.append(f"worker CPU time per event (utime + stime, /proc): {us_per_event:,.0f} us")
    out += ["", "threads:"]
    out += [f"  {pct(n, total)}  {t or '(all)'}" for t, n in prof.threads.most_common()]
    out += ["", "self time by module (leaf frame), share and us of CPU per event:"]
    out += [f"  {pct(n, total)} {us(n)}  {name}" for name, n in by_module(prof).most_common()]
    out += ["", "inclusive time by stage (first matching rule on the stack):"]
    out += [f"  {pct(n, total)} {us(n)}  {name}" for name, n in by_stage(prof).most_common()]
    self_top, incl_top = top_functions(prof)
    out += ["", "top 15 functions by self samples:"]
    out += [f"  {pct(n, total)}  {name}" for name, n in self_top]
    out += ["", "top 15 functions by inclusive samples:"]
    out += [f"  {pct(n, total)}  {name}" for name, n in incl_top]
    return "\n".join(out)


def summary_json(prof: Profile) -> dict[str, Any]:
    total = prof.total or 1
    self_top, incl_top = top_functions(prof)
    return {
        "samples": prof.total,
        "threads": {t or "(all)": n / total for t, n in prof.threads.items()},
        "modules": {k: n / total for k, n in by_module(prof).most_common()},
        "stages": {k: n / total for k, n in by_stage(prof).most_common()},
        "top_self": [[k, n / total] for k, n in self_top],
        "top_inclusive": [[k, n / total] for k, n in incl_top],
    }


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class Spy:
    """``py-spy record`` attached to a pid; ``stop()`` sends SIGINT so it writes its file."""

    def __init__(self, out: Path, rate: int, native: bool) -> None:
        exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(exe).exists():
            raise SystemExit("py-spy not found: .venv/bin/pip install 'py-spy>=0.3.14'")
        self.exe = exe
        self.out = out
        self.rate = rate
        self.native = native
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkdtemp(prefix="rampmon-pyspy-")) / "py-spy.log"
        self.started = self.stopped = 0.0

    def attach(self, pid: int) -> None:
        cmd = [
            self.exe, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw",
            "--output", str(self.out), "--threads", "--function",
        ]  # fmt: skip
        # --native unwinds C frames (msgspec, orjson, numpy), which py-spy can only do with
        # the process paused at each sample: slower, so off by default
        cmd.append("--native" if self.native else "--nonblocking")
        with self.log.open("wb") as log:
            # SIGINT is how py-spy is told to write its file; a shell's background job
            # inherits SIGINT ignored, so give py-spy the default disposition back
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )
        self.started = time.monotonic()
        time.sleep(0.5)
        if self.proc.poll() is not None:
            raise RuntimeError(f"py-spy exited at once:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        self.stopped = time.monotonic()
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def counts(self) -> dict[str, int]:
        """py-spy's closing line: ``... Samples: 11365 Errors: 4198``."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return {}
        m = re.search(r"Samples: (\d+) Errors: (\d+)", text)
        return {"samples": int(m.group(1)), "errors": int(m.group(2))} if m else {}


def profile_mode(
    broker: Any,
    redis: Any,
    envelope: int,
    exposures: list[dict],
    telemetry: list[dict],
    truth: Any,
    args: argparse.Namespace,
) -> dict[str, Any]:
    backlog = prepare(broker, envelope, exposures, telemetry, args.partitions)
    out = args.results / f"profile-{envelope}{args.tag}.txt"
    spy = Spy(out, args.rate, args.native)

    def on_first(worker: Any) -> None:
        spy.attach(worker.proc.pid)

    def on_drained(worker: Any) -> None:
        spy.stop()

    env = worker_env(broker.url, redis.url, backlog.topics, args.partitions, backlog.tag)
    env.update(extra_env(args.worker_env))
    result = run_rampmon(
        env, backlog.topics, truth, timeout=args.timeout, poll=args.poll,
        on_first=on_first, on_drained=on_drained,
    )  # fmt: skip
    prof = parse_collapsed(out.read_text().splitlines())
    per_event_us = result["cpu_us_per_event"]
    title = (
        f"{envelope} event(s)/message: {truth.events:,} events, {backlog.messages:,} messages, "
        f"{result['events_per_second']:,.0f} events/s under py-spy ({args.rate} Hz)"
    )
    counts = spy.counts()
    if counts:
        title += f"; py-spy read errors {counts['errors']:,} of {sum(counts.values()):,}"
    text = summary_text(prof, title, per_event_us)
    (args.results / f"profile-{envelope}{args.tag}-summary.txt").write_text(text + "\n")
    print(text, flush=True)
    return {
        "envelope": envelope,
        "messages": backlog.messages,
        "events": truth.events,
        "raw": _display(out),
        "rampmon": result,
        "worker_cpu_us_per_event": per_event_us,
        "worker_cpu_us_per_message": result["cpu_us_per_message"],
        "worker_cpu_busy_share": result["drain_cpu_busy_share"],
        "py_spy": counts,
        "profile": summary_json(prof),
    }


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    from streams.embedded import EmbeddedBroker, EmbeddedRedis

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile_worker",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--units", type=int, default=30_000)
    parser.add_argument("--envelope", choices=("1", "100", "both"), default="both")
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--native", action="store_true", help="py-spy --native: C frames, pauses the worker"
    )
    parser.add_argument("--seed", type=int, default=501)
    parser.add_argument("--duration", type=float, default=1200.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="raw + summary .txt here")
    parser.add_argument("--out", type=Path, default=None, help="JSON summary path")
    parser.add_argument(
        "--worker-env", action="append", default=[], metavar="NAME=VALUE",
        help="extra environment for the worker (what-if profiles)",
    )  # fmt: skip
    parser.add_argument("--tag", default="", help="suffix of the profile file names")
    parser.add_argument(
        "--summarise", type=Path, nargs="*", default=None, metavar="RAW",
        help="profile nothing: summarise existing py-spy raw files",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.summarise is not None:
        for path in args.summarise:
            print(summary_text(parse_collapsed(path.read_text().splitlines()), str(path), None))
            print()
        return 0
    args.results.mkdir(parents=True, exist_ok=True)
    if args.tag and not re.fullmatch(r"[-\w]+", args.tag):
        raise SystemExit("--tag: letters, digits, - and _ only")
    envelopes = [1, 100] if args.envelope == "both" else [int(args.envelope)]
    t_all = time.perf_counter()
    exposures, telemetry, start = generate(args.units, args.seed, args.duration)
    truth = truth_of(exposures, telemetry)
    report: dict[str, Any] = {
        "command": " ".join(
            [".venv/bin/python -m bench.profile_worker", *(sys.argv[1:] if argv is None else argv)]
        ),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "code": code_state(),
        "parameters": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "modes": [],
    }
    import asyncio

    with EmbeddedBroker() as broker, EmbeddedRedis() as redis:
        asyncio.run(set_bench_stage(redis.url, start - 60))
        for envelope in envelopes:
            report["modes"].append(
                profile_mode(broker, redis, envelope, exposures, telemetry, truth, args)
            )
            print()
    report["runtime_seconds"] = time.perf_counter() - t_all
    out = args.out or args.results / (
        f"throughput-profile-{datetime.now(UTC).strftime('%Y-%m-%d')}.json"
    )
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out} and {', '.join(m['raw'] for m in report['modes'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
