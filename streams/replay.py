"""``rampmon replay``: the live engine over a JSONL or Parquet file of events.

Each record is an exposure (it has ``variant`` and no ``metric``) or a telemetry event (it
has ``metric``). Records are validated by the worker's own :class:`streams.decode.Decoder`;
rejected ones are counted by reason and reported, never silently skipped. Events are
replayed in event-time order through :class:`monitor.replayer.Replayer`, i.e. the same
attribution, aggregation and readout code as the worker.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from monitor.config import RampmonConfig
from monitor.events import Exposure, Telemetry
from monitor.readout import Readout
from monitor.replayer import Replayer
from streams.decode import Decoder

__all__ = [
    "EVENT_FILE_SUFFIXES",
    "load_events",
    "readout_json",
    "readout_table",
    "replay",
    "write_events",
]


#: the event files :func:`write_events` writes: Parquet by the suffix, JSON lines otherwise
EVENT_FILE_SUFFIXES = (".jsonl", ".ndjson", ".parquet")


def _records(path: Path) -> Iterator[dict[str, Any] | bytes]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches():
            for row in batch.to_pylist():
                yield {k: v for k, v in row.items() if v is not None}
    else:
        with path.open("rb") as f:
            for line in f:
                if line.strip():
                    yield line


def load_events(
    path: Path, config: RampmonConfig
) -> tuple[list[Exposure | Telemetry], Counter[str]]:
    """Valid events sorted by time (exposures first on ties), and rejections by reason."""
    decoder = Decoder(config)
    events: list[Exposure | Telemetry] = []
    rejected: Counter[str] = Counter()
    for rec in _records(path):
        if isinstance(rec, bytes):
            raw = rec
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError:
                rejected["bad_json"] += 1
                continue
        else:
            raw, doc = orjson.dumps(rec), rec
        good: list[Any]
        if isinstance(doc, dict) and "metric" in doc:
            good, bad = decoder.telemetry(raw)
        else:
            good, bad = decoder.exposures(raw)
        events.extend(good)
        rejected.update(r.reason for r in bad)
    events.sort(key=lambda e: (e.ts, isinstance(e, Telemetry)))
    return events, rejected


def write_events(path: Path, records: list[dict[str, Any]]) -> None:
    """Write event dicts as JSONL, or as Parquet when ``path`` ends in ``.parquet``."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        # from_pylist takes its columns from the first record: give every record every key
        keys = list(dict.fromkeys(k for r in records for k in r))
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in records]), path)
        return
    with path.open("wb") as f:
        for r in records:
            f.write(orjson.dumps(r))
            f.write(b"\n")


def replay(
    path: Path,
    config: RampmonConfig,
    experiment: str,
    *,
    stage: float | None = None,
    fixed_horizon: bool = False,
) -> tuple[Readout, Counter[str]]:
    cfg = config.experiment(experiment)
    percent = cfg.stages[cfg.final_stage_index] if stage is None else stage
    index = cfg.stage_index(percent)
    events, rejected = load_events(path, config)
    replayer = Replayer(config, lambda _exp, _ts: index)
    replayer.feed(events)
    return replayer.readout(experiment, index, fixed_horizon=fixed_horizon), rejected


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN/inf
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def readout_json(readout: Readout, rejected: Counter[str] | None = None) -> dict[str, Any]:
    doc = asdict(readout)
    doc["srm_mismatch"] = readout.srm_mismatch
    doc["progress"]["ready"] = readout.progress.ready
    doc["rejected"] = dict(rejected or {})
    return dict(_clean(doc))


def _fmt(x: float, digits: int = 6) -> str:
    # an infinite relative effect (a control mean of 0) prints as "inf", not as missing
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"


def readout_table(readout: Readout) -> str:
    """A plain-text table like the notebook's metric readout, then guardrails and SRM."""
    interval = "95%" if readout.interval == "fixed_horizon" else "anytime-valid"
    lines = [
        f"{readout.experiment} at {readout.stage:g}%: {readout.decision.upper()} "
        f"({readout.reason}); intervals: {readout.interval}",
        "",
        f"{'metric':<16}{'kind':<7}{'scale':<10}{'control':>12}{'treatment':>12}"
        f"{'effect':>12}{'se':>11}{'lower':>12}{'upper':>12}{'theta':>8}",
    ]
    for r in readout.metrics:
        lines.append(
            f"{r.metric:<16}{r.kind:<7}{r.scale:<10}{_fmt(r.control_mean):>12}"
            f"{_fmt(r.treatment_mean):>12}{_fmt(r.effect):>12}{_fmt(r.std_error):>11}"
            f"{_fmt(r.lower):>12}{_fmt(r.upper):>12}{_fmt(r.theta, 3):>8}"
        )
    lines += ["", f"guardrails ({interval}, alpha split per monitor.alpha):"]
    for g in readout.guardrails:
        side = "+" if g.harmful_direction == "increase" else "-"
        lines.append(
            f"  {g.guardrail:<22}{g.variant:<11}{g.verdict:<13}effect {_fmt(g.effect)} "
            f"[{_fmt(g.lower)}, {_fmt(g.upper)}] margin {side}{g.margin:g} "
            f"alpha {g.alpha:.4g} ({g.reason})"
        )
    for s in readout.srm:
        lines.append(
            f"SRM at {s.stage:g}%: counts {list(s.result.counts)}, p {s.result.p_value:.3g}"
            f"{' MISMATCH' if s.mismatch else ''}"
        )
    if readout.late_events:
        lines.append(f"late events (counted in totals, not in windows): {readout.late_events}")
    return "\n".join(lines)
