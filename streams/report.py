"""``rampmon report EXPERIMENT``: the launch decision memo (Markdown) and its figure (PNG).

The events file goes through the same path as ``rampmon replay`` (the worker's decoder,
:class:`monitor.replayer.Replayer`, :func:`monitor.readout.build_readout`), so the memo's
numbers are the live monitor's. Output: ``<out>/<experiment>-memo.md`` (built by the pure
:mod:`monitor.memo`) and ``<out>/<experiment>-ramp.png`` (drawn by :mod:`streams.figure`):
seed 000's four ramp panels (traffic, primary, guardrails against their margins, SRM) over
the metric-stack forest plot.

Ramp schedule. The live worker gives an exposure the stage in force at its event time, from
the stage history in Redis; a file of events has no such history, so ``--ramp`` supplies it:

* ``--ramp 1,5,25,50``: the stages, config stages in increasing order. The experiment's
  exposure time span (first to last exposure) is cut into equal consecutive slices, one per
  stage. Good for simulated ramps that spend equal time per stage.
* ``--ramp 1@T1,5@T2,...``: each stage with its start, epoch seconds -- an explicit stage
  history, for real ramps. Exposures before ``T1`` count in the first stage.
* no ``--ramp``: every exposure at the config's final stage (``rampmon replay``'s default).

One readout is taken at the end of each stage, on the events seen by then: what the monitor
would have decided at that moment. The last one, over every event, is the memo's decision.
If a stage's exposures do not split as the stage's allocation says, the SRM test flags it:
the schedule must describe the ramp the events came from.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alerts.stages import stage_at
from monitor.config import ExperimentConfig, RampmonConfig
from monitor.errors import ConfigError
from monitor.events import Exposure, Telemetry
from monitor.memo import build_memo
from monitor.readout import Readout
from monitor.replayer import Replayer
from streams.figure import DPI, draw_figure

__all__ = [
    "DEFAULT_CONFIG",
    "RampStage",
    "ReportError",
    "ReportFiles",
    "add_parser",
    "check_ramp",
    "parse_ramp",
    "ramp_readouts",
    "run",
    "stage_starts",
    "write_report",
]

#: duplicated from :mod:`streams.cli`, which imports this module to register the command
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "experiments.yaml"


class ReportError(Exception):
    """The events cannot make a report (no exposures, a schedule that does not fit)."""


@dataclass(frozen=True, slots=True)
class RampStage:
    """One stage of the schedule: its percent and, if given, its start (epoch seconds)."""

    percent: float
    start: float | None = None


@dataclass(frozen=True, slots=True)
class ReportFiles:
    memo: Path
    png: Path
    decision: str
    panels: int


# ---------------------------------------------------------------------------------------------
# The ramp schedule
# ---------------------------------------------------------------------------------------------


def parse_ramp(text: str) -> list[RampStage]:
    """``"1,5,25,50"`` or ``"1@T1,5@T2,..."``: all stages with a start or none."""
    stages = []
    for item in text.split(","):
        pct, _, start = item.strip().partition("@")
        try:
            stages.append(RampStage(float(pct), float(start) if start else None))
        except ValueError:
            raise ConfigError(f"--ramp: {item.strip()!r} is not PERCENT or PERCENT@EPOCH") from None
    if len({s.start is None for s in stages}) > 1:
        raise ConfigError("--ramp: give a start (@epoch) for every stage or for none")
    return stages


def check_ramp(cfg: ExperimentConfig, ramp: Sequence[RampStage]) -> None:
    """Stages of the config, increasing, with increasing starts: a ramp goes one way."""
    for s in ramp:
        if s.percent not in cfg.stages:
            raise ConfigError(f"--ramp: {s.percent:g} is not a stage of {cfg.name}: {cfg.stages}")
        if s.start is not None and not math.isfinite(s.start):
            raise ConfigError(f"--ramp: start of {s.percent:g}% is not a finite time")
    for a, b in itertools.pairwise(ramp):
        if b.percent <= a.percent:
            raise ConfigError("--ramp: stages must increase, e.g. 1,5,25,50")
        if a.start is not None and b.start is not None and b.start <= a.start:
            raise ConfigError(f"--ramp: {b.percent:g}% must start after {a.percent:g}%")


def stage_starts(ramp: Sequence[RampStage], first: float, last: float) -> list[float]:
    """Each stage's start: as given, or equal slices of the exposure span ``[first, last]``."""
    if ramp[0].start is not None:
        return [float(s.start) for s in ramp if s.start is not None]
    if len(ramp) > 1 and not last > first:
        raise ReportError("all exposures share one instant: cannot split them into stages")
    width = (last - first) / len(ramp)
    return [first + k * width for k in range(len(ramp))]


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _schedule_note(ramp: Sequence[RampStage], starts: Sequence[float], sliced: bool) -> str:
    how = (
        "equal slices of the exposure time span (`--ramp` without start times)"
        if sliced
        else "the given stage start times"
    )
    shown = ", ".join(f"{s.percent:g}% from {_utc(t)}" for s, t in zip(ramp, starts, strict=True))
    return f"Exposures were assigned to ramp stages by {how}: {shown}."


# ---------------------------------------------------------------------------------------------
# Stage-end readouts
# ---------------------------------------------------------------------------------------------


def ramp_readouts(
    config: RampmonConfig,
    experiment: str,
    events: Sequence[Exposure | Telemetry],
    ramp: Sequence[RampStage],
) -> tuple[list[Readout], str]:
    """One readout at the end of each stage (time-sorted ``events``), and how stages were
    assigned (a caveat for the memo)."""
    cfg = config.experiment(experiment)
    # other experiments' exposures would only cost time; their telemetry attributes nowhere
    own = [e for e in events if not isinstance(e, Exposure) or e.experiment == experiment]
    exposure_ts = [e.ts for e in own if isinstance(e, Exposure)]
    if not exposure_ts:
        raise ReportError(f"the events hold no valid exposures of {experiment!r}")
    starts = stage_starts(ramp, min(exposure_ts), max(exposure_ts))
    history = [(t, s.percent) for s, t in zip(ramp, starts, strict=True)]

    def stage_index(exp: str, ts: float) -> int:
        if exp != experiment:
            return 0
        return cfg.stage_index(stage_at(history, ts, ramp[0].percent))

    replayer = Replayer(config, stage_index)
    times = [e.ts for e in own]
    readouts, done = [], 0
    for k, stage in enumerate(ramp):
        end = bisect.bisect_left(times, starts[k + 1]) if k + 1 < len(ramp) else len(own)
        replayer.feed(own[done:end])
        done = end
        index = cfg.stage_index(stage.percent)
        readouts.append(replayer.readout(experiment, index, fixed_horizon=False))
    return readouts, _schedule_note(ramp, starts, sliced=ramp[0].start is None)


# ---------------------------------------------------------------------------------------------
# Files and the command
# ---------------------------------------------------------------------------------------------


def write_report(
    config: RampmonConfig,
    experiment: str,
    events_path: Path,
    out: Path,
    ramp: Sequence[RampStage] | None = None,
) -> ReportFiles:
    """Replay ``events_path`` and write the memo and the PNG into ``out``."""
    from streams.replay import load_events

    try:
        cfg = config.experiment(experiment)
    except KeyError:
        known = ", ".join(e.name for e in config.experiments)
        raise ConfigError(
            f"experiment {experiment!r} is not in the config (known: {known})"
        ) from None
    ramp = list(ramp) if ramp else [RampStage(cfg.stages[cfg.final_stage_index])]
    check_ramp(cfg, ramp)
    events, rejected = load_events(events_path, config)
    stages, note = ramp_readouts(config, experiment, events, ramp)
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{experiment}-ramp.png"
    fig = draw_figure(cfg, stages)
    fig.savefig(png, dpi=DPI, facecolor=fig.get_facecolor())
    memo = out / f"{experiment}-memo.md"
    text = build_memo(
        cfg, stages, image=png.name, rejected=rejected, notes=[note, f"Source: {events_path.name}."]
    )
    memo.write_text(text)
    return ReportFiles(memo, png, stages[-1].decision, len(fig.axes))


def run(args: argparse.Namespace) -> int:
    """The ``report`` command: returns the exit code; configuration errors propagate."""
    from streams.cli import load_config

    config = load_config(args.config)
    if not args.events.exists():
        print(f"rampmon: {args.events}: no such file", file=sys.stderr)
        return 2
    ramp = parse_ramp(args.ramp) if args.ramp else None
    try:
        files = write_report(config, args.experiment, args.events, args.out, ramp)
    except ReportError as exc:
        print(f"rampmon: report: {exc}", file=sys.stderr)
        return 2
    print(f"{args.experiment}: {files.decision}; wrote {files.memo} and {files.png}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``report`` on the ``rampmon`` subparsers (``parser.add_subparsers()``)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "report",
        help="write the launch decision memo (Markdown) and ramp figure (PNG) from events",
        description="Replay an events file through the engine, take a readout at the end of "
        "each ramp stage, and write <out>/<experiment>-memo.md and <out>/<experiment>-ramp.png.",
    )
    p.add_argument("experiment", help="experiment name (as in the config)")
    p.add_argument("--events", type=Path, required=True, help="events file (.jsonl or .parquet)")
    p.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help=f"experiment config YAML (default {DEFAULT_CONFIG.name} in deploy/)",
    )
    p.add_argument("--out", type=Path, default=Path("."), help="output directory (default .)")
    p.add_argument(
        "--ramp",
        metavar="STAGES",
        help="the ramp the events came from: config stages in order, e.g. 1,5,25,50 (the "
        "exposure time span is cut into equal slices, one per stage), or with start times "
        "in epoch seconds, e.g. 1@1767225600,5@1767312000 (exposures before the first "
        "start count in it). Default: every exposure at the final stage.",
    )
    func: Callable[[argparse.Namespace], int] = run
    p.set_defaults(func=func)
    return p
