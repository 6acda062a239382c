"""How the Faust app is configured, where a setting carries a measured consequence."""

from __future__ import annotations

from streams.app import STREAM_BUFFER_RUNS, build_app
from streams.cli import DEFAULT_CONFIG, load_config
from streams.settings import Settings


def test_regression_the_stream_buffer_holds_few_runs() -> None:
    """A stream message is a whole fetched run (streams.runs), and Faust buffers up to
    ``stream_buffer_maxsize`` of them before it stops fetching. With Faust's default of
    4096, bench/memory.py held ~550 MiB of buffered runs: worker RSS 790 MiB flat from 1M
    to 5M events, against 240 MiB with 16 (bench/README.md, Memory)."""
    rampmon = build_app(Settings(webhook_secret="x" * 32), load_config(DEFAULT_CONFIG))
    assert rampmon.app.conf.stream_buffer_maxsize == STREAM_BUFFER_RUNS <= 64
