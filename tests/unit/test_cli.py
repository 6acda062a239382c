"""The command line's answers to a user's mistakes: one line naming the problem, exit 2."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from monitor.errors import ConfigError
from streams.cli import ensure_data_dir, main
from streams.settings import Settings


def test_regression_a_config_file_that_is_not_utf8_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes("experiments: []  # caf\u00e9\n".encode("latin-1"))
    assert main(["replay", str(tmp_path / "none.jsonl"), "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rampmon: configuration error: {config}: not UTF-8")
    assert "Traceback" not in err


@pytest.mark.parametrize("level", ["LOUD", "warnings", "10x"])
def test_regression_an_unknown_log_level_is_refused_at_start(
    level: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RAMPMON_LOG_LEVEL", level)
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rampmon: configuration error: environment: RAMPMON_LOG_LEVEL: ")
    assert "DEBUG, INFO, WARNING, ERROR, CRITICAL" in err


@pytest.mark.parametrize(
    ("level", "kept"), [("info", "INFO"), ("WARN", "WARN"), ("debug", "DEBUG")]
)
def test_log_levels_are_case_insensitive(level: str, kept: str) -> None:
    assert Settings(log_level=level).log_level == kept


def test_regression_the_worker_creates_its_data_dir_with_its_parents(tmp_path: Path) -> None:
    # the default var/rampmon in a fresh checkout: Faust creates only the last level
    settings = Settings(data_dir=tmp_path / "var" / "rampmon")
    ensure_data_dir(settings)
    ensure_data_dir(settings)  # and again, as a restarted worker does
    assert settings.data_dir.is_dir()


def test_a_data_dir_that_cannot_be_created_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"^RAMPMON_DATA_DIR: cannot create .*file/rampmon: "):
        ensure_data_dir(Settings(data_dir=tmp_path / "file" / "rampmon"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment", "nope"], "experiment 'nope' is not in .*known: workflow_assistant"),
        (["--stages", "1,x"], "--stages: 'x' is not a number"),
        (["--stages", "1,7"], r"--stages: 7 is not a stage of workflow_assistant: \[1.0, 5.0"),
        (["--stage", "0"], "--stage: 0 is not a stage of workflow_assistant"),
        (["--regression", "bogus"], "--regression expects METRIC=DELTA, got 'bogus'"),
        (["--regression", "error_session=lots"], "--regression: 'lots' is not a number"),
        (["--regression", "errors=+0.1"], r"--regression: unknown metric 'errors' \(one of tasks"),
    ],
)
def test_regression_bad_simulate_arguments_are_refused_before_producing_anything(
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # nothing listens here: a refused argument must not get as far as connecting
    monkeypatch.setenv("RAMPMON_BROKER_URL", "kafka://127.0.0.1:9")
    monkeypatch.setenv("RAMPMON_REDIS_URL", "redis://127.0.0.1:9/0")
    assert main(["simulate", "--duration", "0", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rampmon: configuration error: ") and "Traceback" not in err
    assert re.search(message, err), err


def test_regression_a_secret_file_error_names_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # was "environment: RAMPMON_: Value error, api_token_file: cannot read ..."
    monkeypatch.setenv("RAMPMON_API_TOKEN_FILE", "/nonexistent/token")
    assert main(["ramp", "workflow_assistant", "--to", "5"]) == 2
    assert capsys.readouterr().err == (
        "rampmon: configuration error: environment: RAMPMON_API_TOKEN_FILE: "
        "cannot read /nonexistent/token: No such file or directory\n"
    )


def test_regression_replay_of_a_directory_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``rampmon replay /tmp`` ended in an IsADirectoryError traceback."""
    assert main(["replay", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"rampmon: {tmp_path}: not a file\n"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("events.csv", "events are written as JSON lines or Parquet"),
        ("missing/events.jsonl", "no such directory"),
    ],
)
def test_regression_seed_events_refuses_a_file_it_would_write_wrongly_or_not_at_all(
    name: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``seed-events out.csv`` wrote JSON lines into a .csv file, and a path in a missing
    directory ended in a FileNotFoundError traceback after simulating every unit."""
    out = tmp_path / name
    assert main(["seed-events", str(out), "--units", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rampmon: configuration error: {out}: {message}")
    assert not out.exists()
