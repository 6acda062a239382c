"""The command line's answers to a user's mistakes: one line naming the problem, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.cli import main


def test_regression_a_config_file_that_is_not_utf8_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "latin1.yaml"
    config.write_bytes("experiments: []  # caf\u00e9\n".encode("latin-1"))
    assert main(["replay", str(tmp_path / "none.jsonl"), "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"rampmon: configuration error: {config}: not UTF-8")
    assert "Traceback" not in err
