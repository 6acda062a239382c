"""SIGQUIT dumps a worker's stacks even while its event loop is blocked (RUNBOOK,
RampmonEvaluationStalled)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: a process whose main thread is stuck in Python code, as a blocked event loop is
BLOCKED = """
import sys, time
from streams.cli import dump_stacks_on_sigquit

def stuck_in_a_readout():
    # "ready" from inside the frame the dump must show: printed before the call, a signal
    # under load could land between the two (a flaky failure seen once)
    print("ready", flush=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pass

dump_stacks_on_sigquit()
stuck_in_a_readout()
"""


def test_sigquit_writes_every_stack_and_the_process_runs_on() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", BLOCKED],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGQUIT)
        time.sleep(0.5)
        assert proc.poll() is None, "SIGQUIT must not stop the worker"
    finally:
        proc.kill()
        _, stderr = proc.communicate(timeout=10)
    assert "stuck_in_a_readout" in stderr
    assert "Current thread" in stderr
