"""Config errors name the field and the reason; the shipped config is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.config import parse_config
from monitor.errors import ConfigError

BASE = """
experiments:
  - name: e
    variants: [control, treatment]
    control: control
    stages: [5, 50, 100]
    metrics: [{name: tasks}, {name: requests}, {name: errors}, {name: err, aggregation: any}]
"""


def test_the_shipped_config_is_valid() -> None:
    text = (Path(__file__).resolve().parents[2] / "deploy" / "experiments.yaml").read_text()
    cfg = parse_config(text).experiments[0]
    assert cfg.final_stage_index == 3 and cfg.quantile_metrics == ["latency_ms"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "    ratios: [{name: epr, numerator: errors, denominator: nope}]",
            "ratio 'epr': 'nope' is not a declared `sum` metric",
        ),
        (
            "    ratios: [{name: epr, numerator: err, denominator: requests}]",
            "ratio 'epr': 'err' is not a declared `sum` metric",
        ),
        (
            "    ratios: [{name: tasks, numerator: errors, denominator: requests}]",
            "ratio names must be unique",
        ),
        ("    covariates: [pre]\n    primary: nope", "primary 'nope' is not a declared"),
        (
            "    guardrails: [{metric: tasks, harmful_direction: decrease, margin: 1,"
            " statistic: quantile}]",
            "set `quantile` exactly when `statistic: quantile`",
        ),
        (
            "    guardrails: [{metric: tasks, harmful_direction: decrease, margin: 1,"
            " alpha: 0.05}]",
            "guardrails.0.alpha: Extra inputs are not permitted",
        ),
        (
            "    sequential: {method: msprt}\n    guardrails: [{metric: tasks,"
            " harmful_direction: decrease, margin: 1}]",
            "method msprt needs `expected_sd`",
        ),
        (
            "    segments: [{attribute: a, values: [x]}, {attribute: a, values: [y]}]",
            "segment attributes must be unique",
        ),
        ("    alpha: 0.7", "alpha: Input should be less than 0.5"),
        ("    segments: [{attribute: a, values: [x, x]}]", "segment values must be unique"),
        ("    segments: [{attribute: a, values: [other]}]", "`other` is reserved"),
    ],
)
def test_bad_experiment_fields_are_named(extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + extra, source="x.yaml")
    assert message in str(err.value) and str(err.value).startswith("x.yaml: ")


def test_cuped_covariate_must_be_declared() -> None:
    text = BASE.replace("{name: tasks}", "{name: tasks, cuped_covariate: pre}")
    with pytest.raises(ConfigError, match="cuped_covariate 'pre' is not in covariates"):
        parse_config(text)
    assert parse_config(text + "    covariates: [pre]\n").experiments[0].covariates == ["pre"]


def test_a_ramp_needs_a_stage_with_a_control() -> None:
    with pytest.raises(ConfigError, match="at least one stage must be below 100%"):
        parse_config(BASE.replace("[5, 50, 100]", "[100]"))


def test_lateness_cannot_exceed_expiry() -> None:
    with pytest.raises(ConfigError, match="allowed_lateness_seconds must not exceed"):
        parse_config(BASE + "windows: {expires_seconds: 60, allowed_lateness_seconds: 61}\n")


@pytest.mark.parametrize(("advance", "ok"), [(99, False), (100, True), (1000, True)])
def test_a_stage_cannot_be_ready_below_the_estimation_floor(advance: int, ok: bool) -> None:
    text = BASE + (
        "    sequential: {min_units_per_variant: 100}\n"
        f"    advance: {{min_units_per_variant: {advance}}}\n"
    )
    if ok:
        assert parse_config(text).experiments[0].advance.min_units_per_variant == advance
        return
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="x.yaml")
    assert str(err.value).startswith("x.yaml: experiments.0: ")
    assert (
        "advance.min_units_per_variant (99) is below sequential.min_units_per_variant (100)"
        in str(err.value)
    )
    assert "before any effect can be estimated" in str(err.value)


def test_a_metric_range_must_be_a_range() -> None:
    bad = BASE.replace("{name: tasks}", "{name: tasks, min_value: 5, max_value: 5}")
    with pytest.raises(ConfigError, match=r"experiments\.0\.metrics\.0.*max_value must exceed"):
        parse_config(bad)
