"""The ``rampmon`` command line: worker, ramp, simulate, demo, replay, seed-events, report
and webhooks."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from monitor.config import RampmonConfig, parse_config
from monitor.errors import ConfigError
from streams.connections import redis_client
from streams.localtables import discard_local_tables
from streams.settings import Settings

__all__ = ["discard_local_copies", "dump_stacks_on_sigquit", "ensure_data_dir", "main"]

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "experiments.yaml"


def load_config(path: Path) -> RampmonConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from exc
    return parse_config(text, source=str(path))


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        # a check of several fields (the secret files) has no loc and names them itself
        problems = "; ".join(
            f"RAMPMON_{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"]
            else str(e["msg"]).removeprefix("Value error, ")
            for e in exc.errors()
        )
        raise ConfigError(f"environment: {problems}") from exc


def check_worker_settings(settings: Settings, config: RampmonConfig) -> None:
    if config.webhooks and not settings.webhook_secret.get_secret_value():
        raise ConfigError(
            "RAMPMON_WEBHOOK_SECRET: required because the config declares webhooks "
            "(rollback payloads are signed with it)"
        )


def ensure_data_dir(settings: Settings) -> None:
    """Create ``RAMPMON_DATA_DIR`` with its parents: Faust creates only the last level, so
    the default ``var/rampmon`` failed in a fresh checkout (no ``var/``) with a traceback."""
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"RAMPMON_DATA_DIR: cannot create {settings.data_dir}: {exc.strerror}"
        ) from exc


def discard_local_copies(settings: Settings, app: Any) -> None:
    """With ``rocksdb://``, the worker recovers its tables from the changelog alone
    (:mod:`streams.localtables`: a database left by a process that ended mid-run is ahead
    of the changelog)."""
    if settings.store == "rocksdb://":
        discard_local_tables(Path(app.conf.tabledir))


def dump_stacks_on_sigquit() -> None:
    """SIGQUIT writes every thread's Python stack to stderr and the process runs on, as a
    JVM's thread dump does. faulthandler's handler is C and needs no event loop, so it
    shows where a blocked loop is stuck (deploy/RUNBOOK.md, RampmonEvaluationStalled);
    mode's SIGUSR1 handler (every asyncio task's stack) runs on the loop, and a blocked
    loop never runs it."""
    faulthandler.register(signal.SIGQUIT, all_threads=True)


def _worker(args: argparse.Namespace) -> int:
    import faust

    from streams import gctune
    from streams.app import build_app

    settings = load_settings()
    config = load_config(args.config)
    check_worker_settings(settings, config)
    ensure_data_dir(settings)
    rampmon = build_app(settings, config)
    discard_local_copies(settings, rampmon.app)
    worker = faust.Worker(rampmon.app, loglevel=settings.log_level, quiet=True)
    gctune.tune(settings.gc_gen0_threshold)
    dump_stacks_on_sigquit()
    # with a spinner, Faust sets the root logger to DEBUG (faust/worker.py,
    # _setup_spinner_handler) and every aiokafka log.debug builds a record nobody reads:
    # 1-5% of the worker's CPU in bench/results/profile-*-summary.txt
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


async def _ramp(args: argparse.Namespace) -> int:
    from alerts.stages import set_stage

    config = load_config(args.config)
    try:
        experiment = config.experiment(args.experiment)
    except KeyError:
        raise ConfigError(
            f"experiment {args.experiment!r} is not in {args.config} "
            f"(known: {', '.join(e.name for e in config.experiments)})"
        ) from None
    if args.to is None:
        return await _ramp_history(experiment.name)
    if args.to != 0 and args.to not in experiment.stages:
        raise ConfigError(
            f"--to {args.to:g} is not a stage of {experiment.name}: "
            f"{experiment.stages} (0 turns the treatment off)"
        )
    redis = redis_client(load_settings())
    try:
        changed = await set_stage(redis, experiment.name, args.to, now=time.time(), by=args.by)
    finally:
        await redis.aclose()
    if changed:
        print(f"{experiment.name}: stage set to {args.to:g}%")
    else:
        print(f"{experiment.name}: already at {args.to:g}%, nothing changed")
    return 0


async def _ramp_history(experiment: str) -> int:
    """Every audited action on the experiment: stage changes (by operators, rollbacks and
    auto-advance), acknowledgements and overrides."""
    from datetime import UTC, datetime

    from alerts.audit import read_audit

    redis = redis_client(load_settings())
    try:
        entries = await read_audit(redis, experiment)
    finally:
        await redis.aclose()
    for e in entries:
        when = datetime.fromtimestamp(e.at, tz=UTC).isoformat(timespec="seconds")
        details = " ".join(f"{k}={v}" for k, v in sorted(e.fields.items()))
        print(f"{when}  {e.action:<12} {e.by:<22} {details}")
    if not entries:
        print(f"{experiment}: no audited changes")
    return 0


def _simulate_arguments(
    args: argparse.Namespace, config: RampmonConfig
) -> tuple[str, list[float], dict[str, float]]:
    """The experiment, stages and regression ``rampmon simulate`` was asked for, checked
    before anything is produced: a stage outside the config would be written to Redis and
    stamped on every exposure, each one then a dead letter."""
    from monitor.workload import REGRESSION_KEYS
    from streams.simulate import parse_regression

    name = args.experiment or config.experiments[0].name
    try:
        experiment = config.experiment(name)
    except KeyError:
        raise ConfigError(
            f"experiment {name!r} is not in {args.config} "
            f"(known: {', '.join(e.name for e in config.experiments)})"
        ) from None
    flag, specs = ("--stages", args.stages.split(",")) if args.stages else ("--stage", [args.stage])
    stages = []
    for spec in specs:
        try:
            stage = float(spec)
        except ValueError:
            raise ConfigError(f"{flag}: {spec.strip()!r} is not a number") from None
        if stage not in experiment.stages:
            raise ConfigError(f"{flag}: {stage:g} is not a stage of {name}: {experiment.stages}")
        stages.append(stage)
    try:
        regression = parse_regression(args.regression)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    unknown = sorted(set(regression) - set(REGRESSION_KEYS))
    if unknown:
        raise ConfigError(
            f"--regression: unknown metric {unknown[0]!r} (one of {', '.join(REGRESSION_KEYS)})"
        )
    return name, stages, regression


async def _simulate(args: argparse.Namespace) -> int:
    from streams.simulate import RampPlan, simulate

    settings = load_settings()
    config = load_config(args.config)
    name, stages, regression = _simulate_arguments(args, config)
    bootstrap = settings.broker_url.removeprefix("kafka://")
    units = await simulate(
        bootstrap=bootstrap,
        redis_url=settings.redis_url if not args.no_redis else None,
        experiment=name,
        plan=RampPlan(stages, args.seconds_per_stage, args.duration),
        rate=args.rate,
        partitions=settings.partitions,
        exposures_topic=settings.topic_exposures,
        telemetry_topic=settings.topic_telemetry,
        regression=regression,
        seed=args.seed,
        batch_size=args.batch,
    )
    print(f"produced {units} units for {name}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    # the servers run in their own sessions: SIGTERM must unwind through run_demo's
    # cleanup instead of killing the demo and orphaning them
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    return asyncio.run(run_demo(timeout=args.timeout, rate=args.rate))


def _replay(args: argparse.Namespace) -> int:
    import orjson

    from streams.replay import readout_json, readout_table, replay

    config = load_config(args.config)
    name = args.experiment or config.experiments[0].name
    try:
        cfg = config.experiment(name)
    except KeyError:
        raise ConfigError(f"experiment {name!r} is not in {args.config}") from None
    if args.stage is not None and args.stage not in cfg.stages:
        raise ConfigError(f"--stage {args.stage:g} is not a stage of {name}: {cfg.stages}")
    if not args.events.is_file():
        what = "not a file" if args.events.exists() else "no such file"
        print(f"rampmon: {args.events}: {what}", file=sys.stderr)
        return 2
    readout, rejected = replay(
        args.events, config, name, stage=args.stage, fixed_horizon=args.fixed_horizon
    )
    if args.format in ("json", "both"):
        print(orjson.dumps(readout_json(readout, rejected), option=orjson.OPT_INDENT_2).decode())
    if args.format in ("table", "both"):
        print(readout_table(readout))
        if rejected:
            print(f"rejected records: {dict(rejected)}")
    return 0


def _seed_events(args: argparse.Namespace) -> int:
    from monitor.workload import simulate_units, to_events
    from streams.replay import EVENT_FILE_SUFFIXES, write_events

    if args.out.suffix not in EVENT_FILE_SUFFIXES:
        raise ConfigError(
            f"{args.out}: events are written as JSON lines or Parquet: "
            f"name the file {' or '.join(EVENT_FILE_SUFFIXES)}"
        )
    if not args.out.parent.is_dir():
        raise ConfigError(f"{args.out}: no such directory: {args.out.parent}")
    units = simulate_units(args.units, seed=args.seed)
    exposures, telemetry = to_events(
        units, experiment=args.experiment, start_ts=args.start, duration_s=args.days * 86400.0,
        seed=args.seed,
    )  # fmt: skip
    write_events(args.out, exposures + telemetry)
    print(f"wrote {len(exposures)} exposures and {len(telemetry)} telemetry events to {args.out}")
    return 0


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rampmon", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cfg_help = f"experiment config YAML (default {DEFAULT_CONFIG.name} in deploy/)"

    w = sub.add_parser("worker", help="run a stream-processing worker")
    w.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, help=cfg_help)
    w.set_defaults(func=_worker)

    r = sub.add_parser(
        "ramp", help="move an experiment to a ramp stage (in Redis), or show its audit history"
    )
    r.add_argument("experiment")
    r.add_argument(
        "--to",
        type=float,
        help="treatment percent, a config stage (0 turns it off); without it: the history",
    )
    r.add_argument("--by", default="cli", help="who moved it (audit)")
    r.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, help=cfg_help)
    r.set_defaults(func=lambda a: asyncio.run(_ramp(a)))

    s = sub.add_parser("simulate", help="produce seed 000's workflow-assistant traffic")
    s.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, help=cfg_help)
    s.add_argument("--experiment", help="experiment name (default: the first in the config)")
    s.add_argument("--stage", type=float, default=5.0, help="treatment percent")
    s.add_argument("--stages", help="ramp through these percents, e.g. 1,5,25,50")
    s.add_argument("--seconds-per-stage", type=float, default=30.0)
    s.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    s.add_argument("--rate", type=float, default=500.0, help="new units per second")
    s.add_argument("--batch", type=int, default=100, help="events per Kafka message")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument(
        "--regression",
        action="append",
        default=[],
        metavar="METRIC=DELTA",
        help="inject harm into treatment, e.g. error_session=+0.02 (repeatable)",
    )
    s.add_argument("--no-redis", action="store_true", help="do not set the stage in Redis")
    s.set_defaults(func=lambda a: asyncio.run(_simulate(a)))

    p = sub.add_parser("replay", help="run the engine offline over a JSONL or Parquet file")
    p.add_argument("events", type=Path, help="events file (.jsonl or .parquet)")
    p.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG, help=cfg_help)
    p.add_argument("--experiment", help="experiment name (default: the first in the config)")
    p.add_argument("--stage", type=float, help="stage of every exposure (default: the final)")
    p.add_argument(
        "--fixed-horizon",
        action="store_true",
        help="fixed-sample z intervals (valid at one planned look), as in the notebook",
    )
    p.add_argument("--format", choices=("table", "json", "both"), default="both")
    p.set_defaults(func=_replay)

    e = sub.add_parser("seed-events", help="write seed 000's simulated experiment as events")
    e.add_argument("out", type=Path, help="output file (.jsonl, .ndjson or .parquet)")
    e.add_argument("--units", type=int, default=80_000)
    e.add_argument("--seed", type=int, default=501, help="the notebook's seed")
    e.add_argument("--experiment", default="workflow_assistant")
    e.add_argument("--start", type=float, default=1_767_225_600.0, help="epoch seconds")
    e.add_argument("--days", type=float, default=14.0, help="experiment length")
    e.set_defaults(func=_seed_events)

    from streams import report, webhooks_cmd

    report.add_parser(sub)
    webhooks_cmd.add_parser(sub)

    d = sub.add_parser("demo", help="run everything on an embedded broker and Redis")
    d.add_argument(
        "--timeout", type=float, default=240.0, help="seconds to wait for the rollback (240)"
    )
    d.add_argument("--rate", type=float, default=800.0, help="new units per second")
    d.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"rampmon: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
