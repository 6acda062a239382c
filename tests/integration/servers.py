"""Real Prometheus and Alertmanager processes on free loopback ports, for integration tests.

The binaries come from Debian's ``prometheus`` and ``prometheus-alertmanager`` packages
(``make tools`` installs them) or upstream's names on ``PATH``. Without them a test is
skipped, or fails when ``CI`` is set: CI must prove what it claims.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

import pytest

from streams.embedded import free_port

__all__ = ["Alertmanager", "Prometheus", "find_binary"]


def find_binary(names: tuple[str, ...], package: str) -> str:
    """The first of ``names`` on PATH (or /usr/bin); skip or, under CI, fail without one."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/bin", "/usr/local/bin"])
    for name in names:
        found = shutil.which(name, path=search)
        if found:
            return found
    message = f"{names[0]} is not installed (apt-get install {package}, or `make tools`)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class _Server:
    """Start a binary with a config file, wait until ``/-/ready`` answers, stop it."""

    name = ""
    config_name = ""

    def __init__(self, workdir: Path, binary: str, config: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / self.config_name
        self.config_path.write_text(config)
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def args(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, *self.args()],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1.0) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not ready within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> _Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


#: one receiver that does nothing: tests that need no notifications read the API
_BLACKHOLE = """\
route:
  receiver: blackhole
  group_wait: 1h
receivers:
  - name: blackhole
"""


class Alertmanager(_Server):
    """Clustering off (``--cluster.listen-address=``): one process is a whole Alertmanager,
    and tests never gossip with each other."""

    name = "alertmanager"
    config_name = "alertmanager.yml"

    def __init__(self, workdir: Path, config: str = _BLACKHOLE) -> None:
        binary = find_binary(("prometheus-alertmanager", "alertmanager"), "prometheus-alertmanager")
        super().__init__(workdir, binary, config)

    def args(self) -> list[str]:
        storage = self.workdir / "alertmanager-data"
        storage.mkdir(exist_ok=True)
        return [
            f"--config.file={self.config_path}",
            f"--storage.path={storage}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ]

    def __enter__(self) -> Alertmanager:
        self.start()
        return self


class Prometheus(_Server):
    name = "prometheus"
    config_name = "prometheus.yml"

    def __init__(self, workdir: Path, config: str) -> None:
        super().__init__(workdir, find_binary(("prometheus",), "prometheus"), config)

    def args(self) -> list[str]:
        return [
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]

    def __enter__(self) -> Prometheus:
        self.start()
        return self
