"""``rampmon report``: the memo and the PNG from a replayed ramp (1% -> 5% -> 25% -> 50%).

The ramp data come from seed 000's model (:class:`monitor.workload.RampTraffic`) with each
stage's own treatment share, so the SRM test has nothing to flag unless the schedule is
wrong. Every number the tests expect is read from the engine's readouts or from the
generated events, never typed in.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy import ndimage

from monitor.config import RampmonConfig
from monitor.errors import ConfigError
from monitor.guardrails import GuardrailResult
from monitor.memo import build_memo, in_margins, stack_rows
from monitor.readout import Readout
from monitor.workload import RampTraffic
from streams.cli import load_config
from streams.figure import DPI, FIGSIZE, PANELS, draw_figure
from streams.replay import load_events, write_events
from streams.report import RampStage, add_parser, parse_ramp, ramp_readouts, run

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "experiments.yaml"
EXPERIMENT = "workflow_assistant"
T0, STAGE_SECONDS, TICKS = 1_767_225_600.0, 3600.0, 5
#: units per stage: the 1% stage needs ~3000 units for ~30 treated
PLAN = ((1.0, 3000), (5.0, 1000), (25.0, 800), (50.0, 1600))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Ramp:
    events: Path
    config_path: Path
    config: RampmonConfig
    #: per stage percent, exposed units per variant, from the generated events
    truth: dict[float, Counter[str]]


@pytest.fixture(scope="module")
def ramp(tmp_path_factory: pytest.TempPathFactory) -> Ramp:
    tmp = tmp_path_factory.mktemp("ramp")
    doc = yaml.safe_load(DEPLOY.read_text())
    exp = doc["experiments"][0]
    # the deploy floors (200 per arm) suit 80k units; a test ramp has a few thousand. At
    # 100 the 1% and 5% stages (~30 and ~50 treated) stay below the floor: too few units
    # for a rare binary metric's plug-in variance to be trusted.
    exp["sequential"].update(min_units_per_variant=100, tuning_units=4000)
    exp["advance"].update(min_units_per_variant=100)
    config_path = tmp / "experiments.yaml"
    config_path.write_text(yaml.safe_dump(doc))

    traffic = RampTraffic(EXPERIMENT, seed=11)
    exposures, telemetry = [], []
    truth: dict[float, Counter[str]] = {}
    for k, (pct, units) in enumerate(PLAN):
        for j in range(TICKS):
            now = T0 + k * STAGE_SECONDS + j * STAGE_SECONDS / TICKS
            e, t = traffic.next_batch(units // TICKS, pct / 100, now)
            exposures += e
            telemetry += t
            truth.setdefault(pct, Counter()).update(x["variant"] for x in e)
    events = tmp / "ramp.jsonl"
    write_events(events, exposures + telemetry)
    return Ramp(events, config_path, load_config(config_path), truth)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rampmon")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["report", *argv])


@pytest.fixture(scope="module")
def report(ramp: Ramp, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("out")
    args = _args(EXPERIMENT, "--events", str(ramp.events), "-c", str(ramp.config_path),
                 "--out", str(out), "--ramp", "1,5,25,50")  # fmt: skip
    assert run(args) == 0
    return out


@pytest.fixture(scope="module")
def stages(ramp: Ramp) -> list[Readout]:
    events, rejected = load_events(ramp.events, ramp.config)
    assert not rejected
    readouts, _ = ramp_readouts(ramp.config, EXPERIMENT, events, parse_ramp("1,5,25,50"))
    return readouts


def _memo(out: Path) -> str:
    return (out / f"{EXPERIMENT}-memo.md").read_text()


def _section_table(memo: str, heading: str) -> list[dict[str, str]]:
    """The first Markdown table after ``## heading``, as dicts keyed by the header."""
    lines = memo.split(f"## {heading}\n", 1)[1].splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("|"))
    rows = []
    for ln in lines[first:]:
        if not ln.startswith("|"):
            break  # the table ends at its first other line
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    header, body = rows[0], rows[2:]
    return [dict(zip(header, r, strict=True)) for r in body]


def _num(text: str) -> float:
    return float(text.replace("%", "")) / (100 if text.endswith("%") else 1)


def _interval(text: str) -> tuple[float, float]:
    lo, hi = re.fullmatch(r"\[(.+), (.+)\]", text).groups()  # type: ignore[union-attr]
    return _num(lo), _num(hi)


def _close(printed: str, value: float) -> bool:
    # 4 significant digits, or 2 decimals of a percentage
    return _num(printed) == pytest.approx(value, rel=1e-3, abs=6e-5)


# ---------------------------------------------------------------------------------------------
# The command's files
# ---------------------------------------------------------------------------------------------


def test_memo_states_the_decision_guardrails_and_stages(
    report: Path, stages: list[Readout], ramp: Ramp
) -> None:
    memo = _memo(report)
    overall = stages[-1]
    assert f"**Decision: {overall.decision.upper()}** at the 50% stage" in memo
    assert f"(`{overall.reason}`)" in memo
    cfg = ramp.config.experiment(EXPERIMENT)
    guardrails = {row["guardrail"] for row in _section_table(memo, "Guardrails")}
    assert guardrails == {g.id for g in cfg.guardrails}
    history = _section_table(memo, "Ramp history")
    assert [row["stage"] for row in history] == ["1%", "5%", "25%", "50%"]
    for row, (pct, _) in zip(history, PLAN, strict=True):
        # units per arm as generated: the schedule put every exposure in its own stage
        assert int(row["control units"]) == ramp.truth[pct]["control"]
        assert int(row["treatment units"]) == ramp.truth[pct]["treatment"]
    assert f"![Ramp monitor and metric stack for {EXPERIMENT}]({EXPERIMENT}-ramp.png)" in memo
    assert "exploratory" in memo and "Novelty" in memo


def test_png_has_the_configured_size_and_five_panels(report: Path) -> None:
    png = report / f"{EXPERIMENT}-ramp.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(png) as im:
        assert im.size == (round(FIGSIZE[0] * DPI), round(FIGSIZE[1] * DPI))
        rgb = np.asarray(im.convert("RGB"))
    # the panels are the large connected regions that differ from the figure background;
    # text, ticks and legends outside the axes are small islands
    background = rgb == rgb[0, 0]
    regions, _ = ndimage.label(~background.all(axis=2))
    sizes = np.bincount(regions.ravel())[1:]
    assert int((sizes > 0.01 * rgb.shape[0] * rgb.shape[1]).sum()) == PANELS


def test_figure_has_one_axes_per_panel(ramp: Ramp, stages: list[Readout]) -> None:
    fig = draw_figure(ramp.config.experiment(EXPERIMENT), stages)
    assert len(fig.axes) == PANELS == 5
    assert stages[-1].decision.upper() in fig.get_suptitle()


# ---------------------------------------------------------------------------------------------
# The memo's numbers are the engine's
# ---------------------------------------------------------------------------------------------


def test_metric_stack_numbers_equal_the_readout(
    report: Path, stages: list[Readout], ramp: Ramp
) -> None:
    cfg = ramp.config.experiment(EXPERIMENT)
    table = _section_table(_memo(report), "Metric stack")
    expected = stack_rows(cfg, stages[-1])
    assert [row["metric"] for row in table] == [s.label() for s in expected]
    assert [row["role"] for row in table][:2] == ["primary", "primary"]  # plain, then CUPED
    for row, s in zip(table, expected, strict=True):
        a, r = s.absolute, s.relative
        assert r is not None
        assert _close(row["effect"], a.effect), row
        assert _close(row["se"], a.std_error), row
        lo, hi = _interval(row["interval"])
        assert _close(f"{lo}", a.lower) and _close(f"{hi}", a.upper), row
        assert _close(row["relative"], r.effect), row
        rlo, rhi = _interval(row["relative interval"])
        assert rlo == pytest.approx(r.lower, abs=6e-5) and rhi == pytest.approx(r.upper, abs=6e-5)
    assert any(row["estimator"].startswith("CUPED") for row in table)


def test_guardrail_srm_and_history_numbers_equal_the_readouts(
    report: Path, stages: list[Readout]
) -> None:
    memo = _memo(report)
    overall = stages[-1]
    for row, g in zip(_section_table(memo, "Guardrails"), overall.guardrails, strict=True):
        assert row["guardrail"] == g.guardrail and row["verdict"] == f"**{g.verdict}**"
        assert _close(row["effect"], g.effect), row
        if row["interval"] != "n/a":
            lo, hi = _interval(row["interval"])
            assert _close(f"{lo}", g.lower) and _close(f"{hi}", g.upper), row
    srm = _section_table(memo, "Sample-ratio mismatch")
    assert len(srm) == len(overall.srm) == 4
    for row, s in zip(srm, overall.srm, strict=True):
        assert row["stage"] == f"{s.stage:g}%"
        assert (int(row["control units"]), int(row["treatment units"])) == s.result.counts
        assert _close(row["p"], s.result.p_value) and not s.mismatch
    for row, r in zip(_section_table(memo, "Ramp history"), stages, strict=True):
        assert row["decision"] == f"**{r.decision}**" and row["reason"] == f"`{r.reason}`"
        assert row["min arm / required"] == (
            f"{r.progress.min_units} / {r.progress.required_units}"
        )


def test_explicit_stage_starts_give_the_same_ramp(ramp: Ramp, stages: list[Readout]) -> None:
    events, _ = load_events(ramp.events, ramp.config)
    schedule = [RampStage(pct, T0 + k * STAGE_SECONDS) for k, (pct, _) in enumerate(PLAN)]
    explicit, note = ramp_readouts(ramp.config, EXPERIMENT, events, schedule)
    assert [r.srm for r in explicit] == [r.srm for r in stages]
    assert [(r.decision, r.primary) for r in explicit] == [(r.decision, r.primary) for r in stages]
    assert "given stage start times" in note


def test_a_wrong_schedule_is_flagged_as_srm(ramp: Ramp) -> None:
    """Squeezing four stages into three puts 1% traffic into the 5% stage: a real SRM."""
    events, _ = load_events(ramp.events, ramp.config)
    readouts, _ = ramp_readouts(ramp.config, EXPERIMENT, events, parse_ramp("5,25,50"))
    assert readouts[-1].srm_mismatch and readouts[-1].decision == "pause"
    memo = build_memo(ramp.config.experiment(EXPERIMENT), readouts)
    assert "**mismatch**" in memo and "sample-ratio mismatch at 5%" in memo


# ---------------------------------------------------------------------------------------------
# Errors and pure helpers
# ---------------------------------------------------------------------------------------------


def test_an_unknown_experiment_is_a_config_error(ramp: Ramp, tmp_path: Path) -> None:
    args = _args("no_such_experiment", "--events", str(ramp.events), "-c",
                 str(ramp.config_path), "--out", str(tmp_path))  # fmt: skip
    with pytest.raises(ConfigError, match=r"'no_such_experiment' is not in the config.*known: "):
        run(args)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("1,7", "7 is not a stage"),
        ("25,5", "stages must increase"),
        ("1@10,5", "for every stage or for none"),
        ("1@20,5@10", "must start after"),
        ("one", "not PERCENT"),
    ],
)
def test_a_bad_ramp_is_a_config_error(ramp: Ramp, tmp_path: Path, spec: str, message: str) -> None:
    args = _args(EXPERIMENT, "--events", str(ramp.events), "-c", str(ramp.config_path),
                 "--out", str(tmp_path), "--ramp", spec)  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        run(args)


def test_a_missing_events_file_exits_2(
    ramp: Ramp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = _args(EXPERIMENT, "--events", str(tmp_path / "none.jsonl"), "-c", str(ramp.config_path))
    assert run(args) == 2
    assert "no such file" in capsys.readouterr().err


def test_guardrails_in_margin_units_put_harm_up() -> None:
    def result(direction: str, lower: float, upper: float) -> GuardrailResult:
        return GuardrailResult("g", "m", "treatment", "inconclusive", "pass", (lower + upper) / 2,
                               lower, upper, 0.5, direction, 0.05, 1.0, 10, 10, 0.0, 0.0)  # type: ignore[arg-type]  # fmt: skip

    assert in_margins(result("increase", -0.25, 1.0)) == (0.75, -0.5, 2.0)
    # a harmful decrease of 1.0 is two margins up
    assert in_margins(result("decrease", -1.0, 0.25)) == (0.75, -0.5, 2.0)


def test_a_memo_needs_a_readout(ramp: Ramp) -> None:
    with pytest.raises(ValueError, match="at least one"):
        build_memo(ramp.config.experiment(EXPERIMENT), [])


def test_regression_a_figure_with_no_finite_guardrail_effect_is_drawn() -> None:
    """A relative guardrail judged on a control mean of 0 (effect +inf, bounds NaN) is the
    only guardrail of a rollback readout: the guardrail panel had no point to show and its
    y limits were ``min(-2.0)``, a TypeError, so ``rampmon report`` failed on exactly the
    readout that rolled back (as it did on a readout of only insufficient_units ones)."""
    from tests.unit.test_readout import _relative, build_readout, stats_of

    cfg = _relative("increase", 0.1)
    control, treatment = np.zeros((20790, 1)), np.zeros((210, 1))
    treatment[:30] = 1.0
    readout = build_readout(
        cfg, stats_of(cfg, {(0, "control"): control, (0, "treatment"): treatment}), 0
    )
    assert (readout.decision, readout.guardrails[0].method) == (
        "rollback",
        "zero_control_at_margin",
    )
    fig = draw_figure(cfg, [readout])
    assert len(fig.axes) == PANELS
