"""Run ``rampmon worker`` as a child process and read its ``/metrics``.

Used by ``rampmon demo``, the integration tests and the benchmarks, so all of them exercise
the real command, not an in-process shortcut.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from streams.embedded import ServerStartError, free_port

__all__ = ["Sample", "WorkerProcess", "parse_metrics", "sample"]

Sample = tuple[str, frozenset[tuple[str, str]]]


def parse_metrics(text: str) -> dict[Sample, float]:
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def sample(metrics: Mapping[Sample, float], name: str, **labels: str) -> float:
    """The one series of ``name`` whose labels include ``labels``; NaN when there is none.

    Raises ``ValueError`` when the labels match several series: a reader must not get one
    of them by accident.
    """
    want = set(labels.items())
    found = [v for (n, ls), v in metrics.items() if n == name and want <= ls]
    if len(found) > 1:
        raise ValueError(f"{name}{labels} matches {len(found)} series")
    return found[0] if found else float("nan")


class WorkerProcess:
    def __init__(
        self, config_path: Path, env: Mapping[str, str], *, web_port: int | None = None
    ) -> None:
        self.config_path = config_path
        self.web_port = web_port or free_port()
        self.data_dir = Path(tempfile.mkdtemp(prefix="rampmon-worker-"))
        self.log_path = self.data_dir / "worker.log"
        self.env = {
            **os.environ,
            **env,
            "RAMPMON_WEB_PORT": str(self.web_port),
            "RAMPMON_WEB_HOST": "127.0.0.1",
            "RAMPMON_DATA_DIR": str(self.data_dir / "data"),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker", "-c", str(self.config_path)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerStartError(
                    f"worker exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                self.get("/healthz")
                return
            time.sleep(0.2)
        raise ServerStartError(f"worker web server not up in {timeout}s:\n{self.log_tail()}")

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}{path}", timeout=5) as r:
            return bytes(r.read())

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[int, bytes]:
        """(status, body) of one request, non-2xx included (the gate answers 409)."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.web_port}{path}",
            data=body,
            method=method,
            headers=dict(headers or {}),
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, bytes(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, bytes(exc.read())

    def metrics(self) -> dict[Sample, float]:
        return parse_metrics(self.get("/metrics").decode())

    def peak_rss_bytes(self) -> int:
        """VmHWM: the resident-set high-water mark the kernel kept for the process."""
        if self.proc is None:
            return 0
        with contextlib.suppress(OSError), open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def kill(self) -> None:
        """SIGKILL: no shutdown hooks, no offset commit -- a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
