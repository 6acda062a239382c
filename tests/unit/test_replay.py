"""``rampmon replay`` reproduces seed 000's published readout from events, JSONL or Parquet."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest
from statsmodels.stats.weightstats import CompareMeans

from monitor.config import parse_config
from monitor.readout import Readout, build_readout
from monitor.workload import SEED_EFFECTS, simulate_units, to_events
from streams.cli import load_config, main
from streams.replay import readout_json, readout_table, replay, write_events
from tests.unit.test_readout import stats_of

CONFIG_PATH = Path(__file__).resolve().parents[2] / "deploy" / "experiments.yaml"
EXPERIMENT = "workflow_assistant"


@pytest.fixture(scope="module")
def seed_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seed") / "seed.jsonl"
    assert main(["seed-events", str(path)]) == 0
    return path


@pytest.fixture(scope="module")
def seed_readout(seed_file: Path) -> tuple[Readout, Counter[str]]:
    """One replay of the 437k seed events (about 25 s), shared by the tests below."""
    return replay(seed_file, load_config(CONFIG_PATH), EXPERIMENT, fixed_horizon=True)


def _rows(doc: dict, kind: str) -> dict[str, dict]:
    return {
        r["metric"]: r for r in doc["metrics"] if r["kind"] == kind and r["scale"] == "absolute"
    }


def test_replay_reproduces_the_notebook_table(
    seed_readout: tuple[Readout, Counter[str]],
) -> None:
    # through the JSON document the command prints
    doc = orjson.loads(orjson.dumps(readout_json(*seed_readout)))
    assert doc["interval"] == "fixed_horizon" and doc["rejected"] == {}
    plain = _rows(doc, "mean")
    for metric, published in SEED_EFFECTS["metrics"].items():
        row = plain[metric]
        # published to 6 decimals: equal after rounding
        assert round(row["effect"], 6) == pytest.approx(published["effect"], abs=1e-12), metric
        assert round(row["std_error"], 6) == pytest.approx(published["se"], abs=1e-12), metric
        assert (row["n_treatment"], row["n_control"]) == (39_937, 40_063)
    cuped = _rows(doc, "cuped")["tasks"]
    published = SEED_EFFECTS["cuped"]
    assert round(cuped["effect"], 3) == published["effect"]
    assert round(cuped["std_error"], 3) == published["se"]
    assert round(cuped["theta"], 3) == published["theta"]
    assert (
        round(1 - cuped["std_error"] / plain["tasks"]["std_error"], 3)
        == (published["se_reduction"])
    )
    # the notebook's memo: support's interval reaches past its 0.3 pp threshold -> iterate
    assert (doc["decision"], doc["stage"]) == ("iterate", 50.0)


def test_replay_matches_statsmodels_on_the_units(
    seed_readout: tuple[Readout, Counter[str]],
) -> None:
    """An independent oracle: Welch intervals from statsmodels on the notebook's columns."""
    readout, _ = seed_readout
    units = simulate_units(80_000, seed=501)
    t = units.treatment == 1
    for row in readout.metrics:
        if row.kind != "mean" or row.scale != "absolute":
            continue
        y = units.outcome(row.metric)
        cm = CompareMeans.from_data(y[t], y[~t])
        assert row.effect == pytest.approx(y[t].mean() - y[~t].mean(), rel=1e-9)
        assert row.std_error == pytest.approx(cm.std_meandiff_separatevar, rel=1e-9)


def test_parquet_and_jsonl_give_the_same_readout(tmp_path: Path) -> None:
    units = simulate_units(3_000, seed=7)
    exposures, telemetry = to_events(
        units, experiment=EXPERIMENT, start_ts=1e9, duration_s=3600.0, seed=7
    )
    records = exposures + telemetry
    config = load_config(CONFIG_PATH)
    readouts = []
    for name in ("events.jsonl", "events.parquet"):
        write_events(tmp_path / name, records)
        readouts.append(replay(tmp_path / name, config, EXPERIMENT)[0])
    jsonl, parquet = readouts
    assert jsonl.metrics == parquet.metrics and jsonl.guardrails == parquet.guardrails
    tasks = next(r for r in jsonl.metrics if (r.metric, r.kind) == ("tasks", "mean"))
    y = units.tasks
    assert tasks.effect == pytest.approx(
        y[units.treatment == 1].mean() - y[units.treatment == 0].mean(), rel=1e-9
    )


def test_bad_records_are_counted_by_reason_and_the_rest_replayed(tmp_path: Path) -> None:
    units = simulate_units(500, seed=3)
    exposures, telemetry = to_events(
        units, experiment=EXPERIMENT, start_ts=1e9, duration_s=600.0, seed=3
    )
    path = tmp_path / "events.jsonl"
    write_events(path, exposures + telemetry)
    with path.open("ab") as f:
        f.write(b"{not json\n")
        f.write(orjson.dumps({**telemetry[0], "value": "fast"}) + b"\n")
        f.write(orjson.dumps({**exposures[0], "experiment": "nope"}) + b"\n")
    readout, rejected = replay(path, load_config(CONFIG_PATH), EXPERIMENT)
    assert dict(rejected) == {"bad_json": 1, "wrong_type": 1, "unknown_experiment": 1}
    assert sum(readout.srm[0].result.counts) == 500
    assert np.isfinite(readout.metrics[0].effect)


def test_the_command_prints_json_and_a_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "seed.jsonl"
    assert main(["seed-events", str(path), "--units", "2000"]) == 0
    capsys.readouterr()
    assert main(["replay", str(path), "--format", "both"]) == 0
    out = capsys.readouterr().out
    doc, table = out.split("\n}\n", 1)
    assert orjson.loads(doc + "}")["experiment"] == EXPERIMENT
    assert table.startswith(f"{EXPERIMENT} at 50%:") and "tasks" in table
    assert main(["replay", str(path), "--stage", "33"]) == 2
    assert "--stage 33 is not a stage" in capsys.readouterr().err


def test_regression_the_table_prints_an_infinite_effect_as_inf() -> None:
    """A relative guardrail against a control mean of 0 has effect +inf; the replay table
    printed it as "nan", which reads as missing data (left alone in the 2026-12-05 note)."""
    cfg = parse_config(
        """
experiments:
  - name: crash
    variants: [control, treatment]
    control: control
    stages: [50, 100]
    metrics: [{name: crashed, aggregation: any}]
    guardrails:
      - {metric: crashed, harmful_direction: increase, margin: 0.1, margin_kind: relative}
    sequential: {tuning_units: 4000, min_units_per_variant: 200}
    advance: {min_units_per_variant: 1000, min_duration_seconds: 0}
"""
    ).experiments[0]
    control, treatment = np.zeros((2000, 1)), np.zeros((2000, 1))
    treatment[:100] = 1.0
    r = build_readout(cfg, stats_of(cfg, {(0, "control"): control, (0, "treatment"): treatment}), 0)
    (g,) = r.guardrails
    assert (g.verdict, g.effect) == ("breach", math.inf)
    (line,) = (x for x in readout_table(r).splitlines() if x.endswith("(breach)"))
    assert "effect inf [nan, nan]" in line
